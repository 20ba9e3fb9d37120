"""The RabbitMQ adapter against the real broker on 127.0.0.1:5672 (guest/guest).

Adapter-level tests drive the contract methods directly (send_batch, receive,
ack, nack, release, reject) from the threads the kernel would use, and check
the broker side with plain pika (`admin`), so qchan never vouches for itself.
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pika
import pytest
from support.helpers import join_all, slow_consume, start, wait_for
from support.rabbitmq import (
    Recorder,
    Relay,
    bag,
    broker_ready,
    close_connection,
    connection_pids,
    declare,
    delete_queues,
    ensure_broker_running,
    get_one,
    queue_depth,
    rabbitmqctl,
    ready_count,
    receive_n,
    self_signed_cert,
    stays,
    url_for,
)

from qchan import Adapter, Chan, ChannelClosed, Retries, connect, dequeue, enqueue, serve
from qchan.adapters.rabbitmq import (
    DeadLettered,
    MissingQueue,
    RabbitMQAdapter,
    from_url,
)
from qchan.errors import (
    ConnectionLost,
    DecodeError,
    MessageTooLarge,
    RejectedError,
    UnroutableError,
)
from qchan.retry import Exponential
from qchan.testing import FEATURES, Conformance, Order, Peers, Refund
from qchan.urls import URLError

integration = pytest.mark.integration


def hooks(adapter: RabbitMQAdapter) -> Recorder:
    rec = adapter.hooks
    assert isinstance(rec, Recorder)
    return rec


# ---- configuration (no broker needed) ------------------------------------------


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="prefetchh"):
        from_url(url_for("q"), prefetchh=3)


def test_url_errors_say_what_to_do_and_hide_the_password() -> None:
    with pytest.raises(URLError, match=r"\?queue=NAME") as e:
        from_url("amqp://guest:s3cret@127.0.0.1/%2F")
    assert "s3cret" not in str(e.value)
    with pytest.raises(URLError, match="unknown query key 'qeue'") as e:
        from_url("amqp://guest:s3cret@127.0.0.1/%2F?qeue=x")
    assert "s3cret" not in str(e.value)
    with pytest.raises(URLError, match="amqps://"):
        from_url("amqp://h/%2F?queue=q&cafile=/tmp/ca.pem")


def test_repr_redacts_the_password() -> None:
    adapter = from_url("amqp://app:s3cret@127.0.0.1:5672/%2F?queue=orders")
    assert repr(adapter) == "<RabbitMQAdapter amqp://app:***@127.0.0.1:5672/%2F?queue=orders>"
    assert "s3cret" not in repr(adapter.settings)


def test_query_options_and_keywords() -> None:
    adapter = from_url(
        "amqp://h/vhost?queue=orders&prefetch=50&max_deliveries=3&heartbeat=30&queue_type=classic",
        prefetch=70,
    )
    s = adapter.settings
    assert (s.queue, s.prefetch, s.max_deliveries, s.queue_type) == ("orders", 70, 3, "classic")
    assert s.dead_letter == "orders.dlq"
    assert adapter.name == "orders"
    assert adapter.max_receive == 70  # never more than the prefetch window
    unlimited = from_url("amqp://h/?queue=q&dead_letter=none&max_deliveries=none")
    assert (unlimited.settings.dead_letter, unlimited.settings.max_deliveries) == (None, None)


def test_invalid_combinations_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="discard poison"):
        from_url("amqp://h/?queue=q&dead_letter=none")
    with pytest.raises(ValueError, match="bindings"):
        from_url("amqp://h/?queue=q", exchange="ex", exchange_type="direct")
    with pytest.raises(ValueError, match="queue_type"):
        from_url("amqp://h/?queue=q", queue_type="stream")


def test_amqps_builds_a_verifying_tls_context() -> None:
    from qchan.adapters.rabbitmq._config import connection_parameters

    params: Any = connection_parameters(
        from_url("amqps://u:p@broker.example/%2F?queue=q").settings, "consumer"
    )
    assert params.port == 5671 and params.virtual_host == "/"
    context = params.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    publisher: Any = connection_parameters(from_url("amqp://h/%2F?queue=q").settings, "publisher")
    assert publisher.heartbeat == 0  # its I/O loop runs only inside send_batch
    assert publisher.client_properties["connection_name"] == "qchan publisher q"


# ---- round trip and wire format --------------------------------------------------


@integration
def test_round_trip_keeps_body_attributes_and_properties(
    make_adapter: Any, queue_name: str
) -> None:
    adapter = make_adapter(queue_name)
    sent = [bag(i, Tenant="t-1") for i in range(3)]
    assert list(adapter.send_batch(sent)) == [None, None, None]
    got = receive_n(adapter, 3)
    for s, g in zip(sent, got, strict=True):
        assert (g.category, g.body, dict(g.attributes), g.id, g.content_type, g.deliveries) == (
            s.category,
            s.body,
            dict(s.attributes),
            s.id,
            "application/json",
            1,
        )
    adapter.ack(got)


@integration
def test_adapter_message_as_plain_pika_sees_it(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name)
    b = bag(7, Tenant="t-7")
    assert list(adapter.send_batch([b])) == [None]
    _, props, body = get_one(admin, queue_name)
    assert body == b'{"i": 7}'
    ours = {k: v for k, v in props.headers.items() if not k.startswith("x-")}
    assert ours == dict(b.attributes)  # the broker adds x-delivery-count (quorum)
    assert props.content_type == "application/json"
    assert props.message_id == "m-7"
    assert props.delivery_mode == 2  # persistent


@integration
def test_plain_pika_message_as_the_adapter_sees_it(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name)
    adapter.receive(1, 0)  # declares the queue
    headers = {"Category": "Refund", "Source": "go-billing", "Retries": 3, "Nested": {"a": 1}}
    admin.basic_publish(
        "",
        queue_name,
        b'{"order": "o-1"}',
        pika.BasicProperties(
            headers=headers, content_type="application/json", message_id="foreign-1"
        ),
    )
    (got,) = receive_n(adapter, 1)
    assert got.category == "Refund"
    assert dict(got.attributes) == {"Category": "Refund", "Source": "go-billing", "Retries": "3"}
    assert (got.id, got.body, got.content_type) == (
        "foreign-1",
        b'{"order": "o-1"}',
        "application/json",
    )
    admin.basic_publish("", queue_name, b"raw")  # no headers at all: category ""
    (bare,) = receive_n(adapter, 1)
    assert (bare.category, dict(bare.attributes), bare.id) == ("", {}, None)
    adapter.ack([got, bare])


@integration
def test_a_batch_of_500_is_confirmed_and_kept_in_order(make_adapter: Any, queue_name: str) -> None:
    adapter = make_adapter(queue_name)
    sent = [bag(i) for i in range(500)]
    assert adapter.send_batch(sent) == [None] * 500
    got = receive_n(adapter, 500)
    assert [g.id for g in got] == [s.id for s in sent]
    adapter.ack(got)


@integration
def test_message_too_large_is_refused_alone(make_adapter: Any, queue_name: str) -> None:
    adapter = make_adapter(queue_name, max_message_size=100)
    big = bag(1)
    big = type(big)(big.category, b"x" * 200, big.attributes, id="big")
    outcomes = adapter.send_batch([big, bag(2)])
    assert isinstance(outcomes[0], MessageTooLarge) and outcomes[1] is None


# ---- acknowledgements ------------------------------------------------------------


@integration
def test_ack_removes_for_good_and_unacked_come_back(make_adapter: Any, queue_name: str) -> None:
    first = make_adapter(queue_name)
    first.send_batch([bag(i) for i in range(3)])
    got = receive_n(first, 3)
    first.ack(got[:2])
    first.close()
    second = make_adapter(queue_name)
    (again,) = receive_n(second, 1)
    assert (again.id, again.deliveries) == ("m-2", 2)
    assert second.receive(10, 0.3) == []
    second.ack([again])


@integration
def test_acks_from_four_threads_reach_the_broker_while_the_poller_waits(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    """prefetch 20 and 200 messages: the poller, blocked in receive(wait=30), gets the
    next ones only if the acks from the other threads reach the broker meanwhile."""
    adapter = make_adapter(queue_name, prefetch=20)
    adapter.send_batch([bag(i) for i in range(200)])
    work: list[Any] = []
    cond = threading.Condition()
    seen: list[str] = []

    def poll() -> None:
        while len(seen) < 200:
            got = adapter.receive(50, 30.0)
            with cond:
                seen.extend(g.id for g in got)
                work.extend(got)
                cond.notify_all()

    def acker() -> int:
        acked = 0
        while True:
            with cond:
                while not work and len(seen) < 200:
                    cond.wait(1.0)
                if not work:
                    return acked
                b = work.pop()
            adapter.ack([b])
            acked += 1

    t0 = time.monotonic()
    poller = start(poll, name="poller")
    ackers = [start(acker, name=f"acker-{i}") for i in range(4)]
    poller.outcome(timeout=20.0)  # 200 / 20 windows; far less than one 30 s wait
    assert sum(join_all(ackers, 10.0)) == 200
    assert sorted(seen) == sorted(f"m-{i}" for i in range(200))
    assert time.monotonic() - t0 < 20.0
    adapter.close()
    assert stays(lambda: queue_depth(admin, queue_name) == 0)  # nothing comes back


@integration
def test_coalesced_acks_never_cover_a_held_or_repeated_delivery(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    """Acks go out as one multiple=True ack where they can; a delivery held by a delayed
    nack in the middle must survive it, and acking something twice must not break the
    channel (the broker closes a channel on an unknown delivery tag)."""
    adapter = make_adapter(queue_name)
    adapter.send_batch([bag(i) for i in range(10)])
    got = receive_n(adapter, 10)
    adapter.give_back([got[3]], counted=True, delay=0.3)
    adapter.ack(got[:3] + got[4:])
    adapter.ack(got[:2])  # again
    (again,) = receive_n(adapter, 1, timeout=5.0)
    assert (again.id, again.deliveries) == ("m-3", 2)
    adapter.ack([again])
    adapter.send_batch([bag(10)])
    (fresh,) = receive_n(adapter, 1)  # the channel is still healthy
    adapter.ack([fresh])
    assert not hooks(adapter).errors
    adapter.close()
    assert stays(lambda: queue_depth(admin, queue_name) == 0)  # nothing comes back


@integration
def test_nack_with_delay_holds_the_message_then_requeues_it(
    make_adapter: Any, queue_name: str
) -> None:
    adapter = make_adapter(queue_name)
    adapter.send_batch([bag(1)])
    (got,) = receive_n(adapter, 1)
    t0 = time.monotonic()
    adapter.give_back([got], counted=True, delay=0.6)
    assert adapter.receive(1, 0.3) == []  # held
    again = adapter.receive(1, 10.0)  # the poller itself wakes when the delay is due
    elapsed = time.monotonic() - t0
    assert [a.id for a in again] == ["m-1"]
    assert 0.55 <= elapsed < 5.0
    adapter.ack(again)


@integration
def test_release_requeues_and_never_dead_letters(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name, max_deliveries=2)
    adapter.send_batch([bag(1)])
    (got,) = receive_n(adapter, 1)
    adapter.give_back([got], counted=True)
    (again,) = receive_n(adapter, 1)
    assert again.deliveries == 2  # a nack now would dead-letter it; a release must not
    adapter.give_back([again], counted=False)
    adapter.close()
    wait_for(lambda: queue_depth(admin, queue_name) == 1, 10.0, "the message back")
    assert queue_depth(admin, f"{queue_name}.dlq") == 0


@integration
def test_wakeup_cuts_a_blocked_receive_short_and_gives_nothing_back(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    """A wakeup only interrupts: it does not pause the subscription nor requeue anything
    (it used to, and a slow consumer's prefetched messages were requeued until
    max_deliveries dead-lettered them; issue 13)."""
    adapter = make_adapter(queue_name)
    adapter.receive(1, 0)  # connect and subscribe
    waiting = start(adapter.receive, 10, 30.0, name="poller")
    time.sleep(0.2)  # let it block (the outcome is checked with its own deadline)
    adapter.wakeup()
    assert waiting.outcome(timeout=3.0) == []
    adapter.send_batch([bag(i) for i in range(3)])
    wait_for(lambda: queue_depth(admin, queue_name) == 0, 10.0, "pushed to the subscriber")
    got = receive_n(adapter, 3)
    assert [b.deliveries for b in got] == [1, 1, 1]
    adapter.ack(got)


@integration
def test_idle_pauses_and_gives_what_arrived_ahead_back_uncounted(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    """Nobody listens (Adapter.idle): the credit lines are cancelled and what the broker
    pushed but the kernel did not take goes back uncounted (a copy, then an ack), so
    other consumers get it; the next receive subscribes again."""
    adapter = make_adapter(queue_name)
    adapter.send_batch([bag(i) for i in range(3)])
    first = adapter.receive(1, 10.0)  # a line of credit 1: the broker pushes one
    assert len(first) == 1
    assert stays(lambda: queue_depth(admin, queue_name) == 2)  # no more than asked for
    got = adapter.receive(2, 10.0)  # a line of credit 2 more
    wait_for(lambda: queue_depth(admin, queue_name) == 0, 10.0, "pushed to the subscriber")
    adapter.idle(0.1)  # what arrived and was not returned goes back
    wait_for(lambda: queue_depth(admin, queue_name) == 2 - len(got), 10.0, "the rest back")
    adapter.send_batch([bag(3)])
    assert stays(lambda: queue_depth(admin, queue_name) == 3 - len(got))  # paused
    adapter.ack([*first, *got])
    rest = receive_n(adapter, 3 - len(got))
    assert [b.deliveries for b in rest] == [1] * len(rest)  # a give-back is no delivery
    adapter.ack(rest)


@integration
def test_the_adapter_takes_no_more_than_the_kernel_asks(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    """Credit follows demand (issue 25): asked for 3 of 40, the broker pushes 3, however
    long the kernel holds; asked for 2 more, 2 more."""
    adapter = make_adapter(queue_name)
    adapter.send_batch([bag(i) for i in range(40)])
    got = receive_n(adapter, 3)
    for _ in range(5):
        assert adapter.hold(0.05) is True
    assert queue_depth(admin, queue_name) == 37
    got += receive_n(adapter, 2)
    assert stays(lambda: queue_depth(admin, queue_name) == 35)
    adapter.ack(got)


@integration
def test_hold_keeps_every_delivery_uncounted(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    """The kernel holds (Adapter.hold): nothing is requeued, so no delivery count grows,
    however long and however often the kernel holds and wakes."""
    adapter = make_adapter(queue_name, max_deliveries=2)
    adapter.send_batch([bag(i) for i in range(5)])
    first = adapter.receive(5, 10.0)
    wait_for(lambda: queue_depth(admin, queue_name) == 0, 10.0, "pushed to the subscriber")
    for _ in range(5):  # hold, woken again and again as acks free room
        adapter.wakeup()
        assert adapter.hold(0.05) is True
    assert queue_depth(admin, queue_name) == 0  # still ours, not requeued
    rest = receive_n(adapter, 5 - len(first))
    assert [b.deliveries for b in [*first, *rest]] == [1] * 5
    adapter.ack([*first, *rest])
    assert stays(lambda: queue_depth(admin, f"{queue_name}.dlq") == 0)


# ---- backpressure: a consumer slower than the broker (issue 13) ----------------------


@integration
@pytest.mark.parametrize("in_flight", [None, 100, 500, 1000])  # default, below, equal, above
def test_a_slow_consumer_loses_nothing_and_nothing_is_redelivered(
    queue_name: str, admin: Any, in_flight: int | None
) -> None:
    """3,000 messages, 1 ms of work each, prefetch 500: before the fix 1,380 of them were
    dead-lettered unseen after 10 requeues each. Now: all received once, in order."""
    errors: Chan[Exception] = Chan(10_000)
    options = {} if in_flight is None else {"in_flight": in_flight}
    with connect(url_for(queue_name), errors=errors, **options) as q:
        got = slow_consume(q, 3000, work=0.001)
        stats = q.stats()
    assert got == [str(i) for i in range(3000)]  # one producer, one consumer: in order
    assert stats.redelivered == 0
    assert queue_depth(admin, f"{queue_name}.dlq") == 0
    assert not [e for e in drain(errors) if isinstance(e, DeadLettered)]


@integration
def test_acking_one_by_one_redelivers_nothing(queue_name: str, admin: Any) -> None:
    with connect(url_for(queue_name)) as q:
        got = slow_consume(q, 2000, work=0.0)
        stats = q.stats()
    assert got == [str(i) for i in range(2000)]
    assert (stats.received, stats.redelivered, stats.acked) == (2000, 0, 2000)


# ---- poison messages -------------------------------------------------------------


@integration
def test_poison_is_dead_lettered_after_max_deliveries(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name, max_deliveries=3)
    adapter.send_batch([bag(1)])
    for attempt in (1, 2, 3):
        (got,) = receive_n(adapter, 1)
        assert got.deliveries == attempt
        adapter.give_back([got], counted=True)
    assert adapter.receive(1, 0.5) == []
    _, props, body = get_one(admin, f"{queue_name}.dlq")
    assert body == b'{"i": 1}' and props.message_id == "m-1"
    assert props.headers["Category"] == "Order"
    assert props.headers["x-death"][0]["reason"] == "rejected"
    (err,) = hooks(adapter).of(DeadLettered)
    assert "m-1" in str(err) and queue_name in str(err)


@integration
def test_reject_holds_an_unroutable_message_then_dead_letters_it(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name, max_deliveries=2, reject_delay=0.4)
    adapter.send_batch([bag(1, category="Nobody")])
    (got,) = receive_n(adapter, 1)
    adapter.reject(got, UnroutableError("no channel for 'Nobody'", got))
    assert adapter.receive(1, 0.2) == []  # held back, no hot loop
    (again,) = receive_n(adapter, 1, timeout=5.0)
    assert again.deliveries == 2
    adapter.reject(again, DecodeError("bad JSON", again))
    assert adapter.receive(1, 0.3) == []  # the poller sends the dead-letter nack
    _, props, _ = get_one(admin, f"{queue_name}.dlq")
    assert props.message_id == "m-1"
    assert stays(lambda: queue_depth(admin, queue_name) == 0)  # nothing comes back


@integration
def test_a_message_that_keeps_killing_consumers_is_dead_lettered_on_receive(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    first = make_adapter(queue_name, max_deliveries=2)
    first.send_batch([bag(1)])
    for _ in range(2):  # two consumers "crash": they close without settling
        consumer = make_adapter(queue_name, max_deliveries=2)
        receive_n(consumer, 1)
        consumer.close()
    last = make_adapter(queue_name, max_deliveries=2)
    assert last.receive(1, 0.5) == []
    assert [type(e) for e in hooks(last).errors] == [DeadLettered]
    _, props, _ = get_one(admin, f"{queue_name}.dlq")
    assert props.message_id == "m-1"


# ---- declaration -----------------------------------------------------------------


@integration
def test_passive_declare_names_the_missing_queue(make_adapter: Any, queue_name: str) -> None:
    adapter = from_url(url_for(queue_name), declare="passive")
    try:
        with pytest.raises(MissingQueue, match=queue_name) as e:
            adapter.receive(1, 0)
        assert "guest:guest" not in str(e.value)
        with pytest.raises(MissingQueue, match=queue_name):
            adapter.send_batch([bag(1)])
    finally:
        adapter.close()


@integration
def test_existing_classic_queue_declare_none_and_mismatch(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    admin.queue_declare(queue_name, durable=True)  # someone else's classic queue
    mismatched = make_adapter(queue_name)
    assert list(mismatched.receive(1, 0)) == []  # adopted as it is (it used to refuse: 406)
    assert hooks(mismatched).errors == []
    mismatched.close()
    trusting = make_adapter(queue_name, declare="none", queue_type="classic")
    assert list(trusting.send_batch([bag(1)])) == [None]
    (got,) = receive_n(trusting, 1)
    assert got.deliveries == 1
    trusting.give_back([got], counted=True)
    (again,) = receive_n(trusting, 1)
    assert again.deliveries == 2  # classic queues only say "redelivered"
    trusting.ack([again])


@integration
def test_named_exchange_routes_by_category_and_unroutable_is_rejected(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    exchange = f"{queue_name}-ex"
    try:
        adapter = make_adapter(
            queue_name, exchange=exchange, exchange_type="direct", bindings=["Order"]
        )
        outcomes = adapter.send_batch([bag(1), bag(2, category="Refund"), bag(3)])
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], RejectedError)
        assert "Refund" in str(outcomes[1]) and "312" in str(outcomes[1])
        got = receive_n(adapter, 2)
        assert [g.id for g in got] == ["m-1", "m-3"]
        adapter.ack(got)
    finally:
        admin.exchange_delete(exchange)


# ---- connection loss -------------------------------------------------------------


@integration
def test_consumer_reconnects_after_the_broker_closes_its_connection(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name)
    adapter.send_batch([bag(1)])
    (got,) = receive_n(adapter, 1)
    close_connection(f"qchan consumer {queue_name}")
    (again,) = receive_n(adapter, 1, timeout=20.0)
    assert (again.id, again.deliveries) == ("m-1", 2)
    (lost,) = hooks(adapter).of(ConnectionLost)
    assert queue_name in str(lost) and "guest:guest" not in str(lost)
    adapter.ack([got])  # a receipt from the dead connection: dropped, harmless
    adapter.ack([again])
    adapter.send_batch([bag(2)])
    (fresh,) = receive_n(adapter, 1)  # the new channel is still healthy
    adapter.ack([fresh])
    adapter.close()
    assert stays(lambda: queue_depth(admin, queue_name) == 0)  # nothing comes back


@integration
def test_a_paused_idle_connection_dropped_by_the_broker_is_replaced_quietly(
    make_adapter: Any, queue_name: str
) -> None:
    adapter = make_adapter(queue_name)
    adapter.receive(1, 0)
    adapter.idle(0.1)  # paused: nothing outstanding
    close_connection(f"qchan consumer {queue_name}")  # say, missed heartbeats while idle
    adapter.send_batch([bag(1)])
    (got,) = receive_n(adapter, 1, timeout=20.0)
    assert got.deliveries == 1
    assert hooks(adapter).errors == []  # no message was at stake: not a reported loss
    adapter.ack([got])


@integration
def test_publisher_reconnects_after_the_broker_closes_its_connection(
    make_adapter: Any, queue_name: str, admin: Any
) -> None:
    adapter = make_adapter(queue_name)
    assert list(adapter.send_batch([bag(1)])) == [None]
    name = f"qchan publisher {queue_name}"
    close_connection(name)  # the broker waits for our close-ok, sent in the next send_batch
    outcomes: list[Any] = []
    for i in (2, 3):  # at most one failed attempt, as the kernel would retry it
        outcomes = list(adapter.send_batch([bag(i)]))
        if outcomes == [None]:
            break
        assert isinstance(outcomes[0], ConnectionLost)
    assert outcomes == [None]
    assert hooks(adapter).of(ConnectionLost)
    assert queue_depth(admin, queue_name) == 2


@integration
def test_unconfirmed_publishes_fail_retryably_and_the_retry_gets_through(
    relay: Any, queue_name: str, admin: Any
) -> None:
    """Confirms that never come (timeout) or a connection cut mid-batch: every unconfirmed
    bag fails with ConnectionLost (the kernel retries: duplicates possible, no loss)."""
    url = f"amqp://guest:guest@127.0.0.1:{relay.port}/%2F?queue={queue_name}"
    impatient, patient = from_url(url, confirm_timeout=1.0), from_url(url, confirm_timeout=30.0)
    for adapter in (impatient, patient):
        adapter.bind(Recorder())
        assert list(adapter.send_batch([bag(0)])) == [None]  # connected
    try:
        relay.freeze()  # the broker gets what we publish, we never see its confirms
        timed_out = impatient.send_batch([bag(i) for i in range(1, 51)])
        assert all(isinstance(o, ConnectionLost) for o in timed_out)
        assert "confirm" in str(timed_out[0])
        cut = threading.Timer(0.3, relay.sever)
        cut.start()
        t0 = time.monotonic()
        try:
            severed = patient.send_batch([bag(i) for i in range(51, 61)])
        finally:
            cut.join()
        assert time.monotonic() - t0 < 10.0  # the cut, not the 30 s confirm timeout
        assert all(isinstance(o, ConnectionLost) for o in severed)
        (lost,) = hooks(patient).of(ConnectionLost)
        assert "guest:guest" not in str(lost)
        # the retries, on fresh connections through the (thawed) relay
        assert list(impatient.send_batch([bag(i) for i in range(1, 51)])) == [None] * 50
        assert list(patient.send_batch([bag(i) for i in range(51, 61)])) == [None] * 10
        # 2 + 50 + 10 published while frozen + 60 retried: nothing lost, duplicates allowed
        wait_for(lambda: queue_depth(admin, queue_name) == 122, 10.0, "122 messages")
    finally:
        impatient.close()
        patient.close()


@integration
def test_unreachable_broker_is_connection_lost_without_the_password(rabbit: str) -> None:
    adapter = from_url("amqp://guest:s3cret-pw@127.0.0.1:1/%2F?queue=nowhere")
    try:
        with pytest.raises(ConnectionLost) as sent:
            adapter.send_batch([bag(1)])
        with pytest.raises(ConnectionLost) as received:
            adapter.receive(1, 0)
        for e in (sent.value, received.value):
            assert "s3cret-pw" not in str(e) and "nowhere" in str(e)
    finally:
        adapter.close()


# ---- TLS -------------------------------------------------------------------------


@pytest.fixture
def tls_proxy(tmp_path: Path, rabbit: str) -> Any:
    cert, key = self_signed_cert(tmp_path)
    proxy = Relay(cert, key)
    yield proxy, cert
    proxy.close()


@pytest.fixture
def relay(rabbit: str) -> Any:
    proxy = Relay()
    yield proxy
    proxy.close()


@integration
def test_amqps_round_trip_with_a_custom_ca(tls_proxy: Any, queue_name: str) -> None:
    proxy, cert = tls_proxy
    url = f"amqps://guest:guest@localhost:{proxy.port}/%2F?queue={queue_name}&cafile={cert}"
    adapter = from_url(url)
    try:
        assert list(adapter.send_batch([bag(1)])) == [None]
        (got,) = receive_n(adapter, 1)
        adapter.ack([got])
    finally:
        adapter.close()
    untrusting = from_url(url.split("&cafile=", maxsplit=1)[0])  # system CAs do not know our cert
    try:
        with pytest.raises(ConnectionLost, match=r"(?i)certificate"):
            untrusting.send_batch([bag(2)])
    finally:
        untrusting.close()


# =====================================================================================
# Through the kernel: qchan.connect / enqueue / dequeue over amqp://
# =====================================================================================


@attrs.frozen
class Item:
    n: int


def drain(ch: Any) -> list[Any]:
    """Everything buffered on a channel right now."""
    out = []
    while True:
        try:
            out.append(ch.recv(timeout=0))
        except (TimeoutError, ChannelClosed):
            return out


@integration
class TestRabbitMQConformance(Peers, Conformance):
    queue_options = {"poll_wait": 0.5}
    patience = 20.0
    quiet = 1.0
    # No visibility timeout: a delivery is the consumer's until it settles it or its
    # channel closes, so there is nothing to extend.
    features = frozenset(FEATURES) - {"extend"}
    peer_max_deliveries = 10  # the adapter's default max_deliveries

    def dead_lettered(self, name: str) -> int:
        return ready_count(f"{name}.dlq")

    @pytest.fixture
    def missing_adapter_factory(self, rabbit: str) -> Callable[[str], Adapter]:
        def make(name: str) -> Adapter:
            return from_url(url_for(name), declare="passive")

        return make

    @pytest.fixture
    def adapter_factory(self, rabbit: str) -> Iterator[Callable[[str], Adapter]]:
        names: set[str] = set()

        def make(name: str) -> Adapter:
            names.add(name)
            return from_url(url_for(name), reject_delay=0.5)

        yield make
        delete_queues(*names, *(f"{n}.dlq" for n in names))


@integration
def test_enqueue_dequeue_over_the_url_and_the_wire_format(queue_name: str, admin: Any) -> None:
    with connect(url_for(queue_name), agent="billing") as q:
        with enqueue(Order, q) as (out, _):
            for i in range(5):
                out.send(Order(str(i), float(i)))
        with dequeue(Order, q) as (rcv, ack):
            got = [rcv.recv(timeout=20.0) for _ in range(5)]
            for m in got:
                ack.send(m)
        assert [m.object for m in got] == [Order(str(i), float(i)) for i in range(5)]
        assert dict(got[0].attributes) == {
            "Category": "Order",
            "Source": "billing",
            "System": "amqp",
            "Queue": queue_name,
        }
        with enqueue(Order, q) as (out, _):
            out.send(Order("wire", 1.5))
    _, props, body = get_one(admin, queue_name)
    assert json.loads(body) == {"id": "wire", "amount": 1.5, "tags": []}
    assert props.content_type == "application/json" and props.delivery_mode == 2
    assert props.headers["Category"] == "Order" and props.message_id


@integration
def test_acks_from_four_application_threads(queue_name: str, admin: Any) -> None:
    n = 400
    with connect(url_for(queue_name)) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(n):
                out.send(Order(str(i), 1.0))
        seen: list[str] = []
        lock = threading.Lock()
        with dequeue(Order, q) as (rcv, ack):

            def work() -> None:
                while True:
                    with lock:
                        if len(seen) >= n:
                            return
                    try:
                        m = rcv.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    with lock:
                        seen.append(m.object.id)
                    ack.send(m)

            join_all([start(work, name=f"app-{i}") for i in range(4)], timeout=60.0)
            wait_for(lambda: q.stats().in_flight == 0, 10.0, "every ack to be applied")
    assert sorted(seen) == sorted(str(i) for i in range(n))  # each once: no redelivery
    assert stays(lambda: queue_depth(admin, queue_name) == 0)  # nothing comes back


@integration
def test_closing_and_reopening_dequeue_pauses_and_resumes(queue_name: str, admin: Any) -> None:
    """The last dequeue closing cuts the poller's receive short (it pauses the subscription
    and hands back what the broker pushed ahead); a new dequeue resumes, and every message
    is received once."""
    seen: list[str] = []
    with connect(url_for(queue_name)) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(50):
                out.send(Order(str(i), 1.0))
        for take in (5, 20, 25):
            with dequeue(Order, q) as (rcv, ack):
                for _ in range(take):
                    m = rcv.recv(timeout=20.0)
                    seen.append(m.object.id)
                    ack.send(m)
    assert sorted(seen, key=int) == [str(i) for i in range(50)]
    assert stays(lambda: queue_depth(admin, queue_name) == 0)  # nothing comes back


@integration
def test_an_idle_consumer_connection_keeps_answering_heartbeats(
    queue_name: str, admin: Any
) -> None:
    """With no dequeue open, the poller keeps the consumer connection's I/O going
    (Adapter.idle): releases reach the broker and heartbeats are answered, so the broker
    does not drop the connection (without it: dropped after two missed 1 s heartbeats)."""
    with connect(url_for(queue_name, heartbeat="1")) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(3):
                out.send(Order(str(i), 1.0))
        with dequeue(Order, q) as (rcv, _):
            rcv.recv(timeout=20.0)  # held, never acked: released when the dequeue closes
        wait_for(lambda: queue_depth(admin, queue_name) == 3, 10.0, "the release applied")
        consumer = f"qchan consumer {queue_name}"
        pids = connection_pids(consumer)
        assert pids
        assert stays(lambda: connection_pids(consumer) == pids, seconds=5.0)


@integration
def test_poison_payload_from_a_foreign_producer_ends_on_the_dlq(
    queue_name: str, admin: Any
) -> None:
    errors: Chan[Exception] = Chan(64)
    declare(queue_name)  # before plain pika publishes to it
    q = connect(url_for(queue_name), errors=errors, max_deliveries=3, reject_delay=0.1)
    with q, dequeue(Order, q) as (rcv, ack):
        admin.basic_publish(
            "",
            queue_name,
            b"\xff{not json",
            pika.BasicProperties(headers={"Category": "Order"}, message_id="poison-1"),
        )
        admin.basic_publish(
            "",
            queue_name,
            b'{"id": "ok", "amount": 1}',
            pika.BasicProperties(headers={"Category": "Order"}, message_id="good-1"),
        )
        m = rcv.recv(timeout=20.0)
        ack.send(m)
        _, props, body = get_one(admin, f"{queue_name}.dlq", timeout=20.0)
    assert m.object.id == "ok"
    assert (props.message_id, body) == ("poison-1", b"\xff{not json")
    reported = drain(errors)
    assert sum(isinstance(e, DecodeError) for e in reported) == 3
    assert any(isinstance(e, DeadLettered) for e in reported)


@integration
def test_a_message_the_application_keeps_failing_is_dead_lettered(
    queue_name: str, admin: Any
) -> None:
    errors: Chan[Exception] = Chan(64)
    with connect(url_for(queue_name), errors=errors, max_deliveries=3) as q:
        with enqueue(Order, q) as (out, _):
            out.send(Order("doomed", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            for attempt in (1, 2, 3):
                m = rcv.recv(timeout=20.0)
                assert m.bag is not None and m.bag.deliveries == attempt
                ack.send(m.fail(ValueError("no")))
            _, _, body = get_one(admin, f"{queue_name}.dlq")
            with pytest.raises(TimeoutError):
                rcv.recv(timeout=0.5)
    assert json.loads(body)["id"] == "doomed"
    (dead,) = [e for e in drain(errors) if isinstance(e, DeadLettered)]
    assert "failed (ValueError: no) on delivery 3" in str(dead)


@integration
def test_unroutable_publish_ends_on_the_senders_dlq(queue_name: str, admin: Any) -> None:
    exchange = f"{queue_name}-ex"
    try:
        q = connect(
            url_for(queue_name), exchange=exchange, exchange_type="direct", bindings=["Order"]
        )
        with q, enqueue(Refund, q) as (out, dlq):
            out.send(Refund("o-1", "lost"))
            dead = dlq.recv(timeout=20.0)
    finally:
        admin.exchange_delete(exchange)
    assert dead.object == Refund("o-1", "lost")
    assert isinstance(dead.error, RejectedError) and "Refund" in str(dead.error)


@integration
def test_lost_consumer_connection_is_reported_and_delivery_resumes(
    queue_name: str, admin: Any
) -> None:
    errors: Chan[Exception] = Chan(64)
    with connect(url_for(queue_name), errors=errors) as q:
        with enqueue(Order, q) as (out, _):
            out.send(Order("a", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            first = rcv.recv(timeout=20.0)
            close_connection(f"qchan consumer {queue_name}")
            lost = errors.recv(timeout=20.0)
            ack.send(first)  # its delivery died with the connection: it comes again
            with enqueue(Order, q) as (out, _):
                out.send(Order("b", 2.0))
            later = {rcv.recv(timeout=20.0).object.id for _ in range(2)}
            for m in drain(rcv):
                later.add(m.object.id)
        assert isinstance(lost, ConnectionLost) and queue_name in str(lost)
        assert later >= {"a", "b"}
    # everything was acked in the end (the with-block released the rest)


@pytest.mark.slow
@pytest.mark.serial
@integration
def test_broker_restart_in_the_middle_of_10000_messages_loses_nothing(queue_name: str) -> None:
    """stop_app / start_app while 10,000 messages flow: each is received at least once or is
    on the sender's dlq. The broker is running again at the end whatever happens."""
    total = 10_000
    url = url_for(queue_name)
    errors: Chan[Exception] = Chan(10_000)
    received: set[int] = set()
    deliveries = 0
    lock = threading.Lock()
    restarted = threading.Event()
    progress: dict[str, int] = {}
    stopped = False

    def restart_when_midway() -> None:
        nonlocal stopped
        wait_for(lambda: len(received) >= 2_000, 60.0, "2,000 messages received")
        progress["sent"], progress["received"] = sent_count[0], len(received)
        stopped = True
        rabbitmqctl("stop_app")
        rabbitmqctl("start_app")
        wait_for(broker_ready, 90.0, "RabbitMQ back after start_app")
        restarted.set()

    sent_count = [0]
    producer_q = connect(url, errors=errors, retry=Exponential(max_attempts=20))
    consumer_q = connect(url, errors=errors)
    try:
        with dequeue(Item, consumer_q) as (rcv, ack):

            def consume() -> None:
                nonlocal deliveries
                while True:
                    try:
                        m = rcv.recv(timeout=0.5)
                    except TimeoutError:
                        if restarted.is_set() and done():
                            return
                        continue
                    with lock:
                        received.add(m.object.n)
                        deliveries += 1
                    ack.send(m)

            dead: list[Any] = []

            def done() -> bool:
                with lock:
                    return len(received | {m.object.n for m in dead}) >= total

            consumer = start(consume, name="consumer")
            restarter = start(restart_when_midway, name="restarter")
            sender = enqueue(Item, producer_q)
            pace = threading.Event()
            for i in range(total):
                sender.out.send(Item(i))
                sent_count[0] = i + 1
                if i % 100 == 99:
                    pace.wait(0.01)  # spread the stream over a few seconds
            dead.extend(sender.close())
            restarter.outcome(timeout=180.0)
            consumer.outcome(timeout=120.0)
    finally:
        if stopped:
            ensure_broker_running()
        producer_q.close()
        consumer_q.close()
    lost = set(range(total)) - received - {m.object.n for m in dead}
    reported = drain(errors)
    assert not lost, f"{len(lost)} messages lost, e.g. {sorted(lost)[:10]}"
    assert progress["sent"] < total and progress["received"] < total, progress
    assert any(isinstance(e, ConnectionLost) for e in reported)
    print(
        f"restart at {progress}; {deliveries - len(received)} duplicates, {len(dead)} on dlq, "
        f"{len(reported)} errors reported"
    )


@integration
def test_serve_retries_a_failing_handler_with_backoff_then_gives_up(
    queue_name: str, admin: Any
) -> None:
    """Issue 14: a short downstream outage used to burn all 10 deliveries in under 2 s.
    Now each redelivery waits longer (RabbitMQ: held un-acked, then requeued), and a
    give_up_on error goes to <queue>.dlq at once."""
    calls: dict[str, list[float]] = {"outage": [], "invalid": []}
    stop = threading.Event()

    def handle(order: Order) -> None:
        calls[order.id].append(time.monotonic())
        if order.id == "invalid":
            raise KeyError("no such customer")
        if len(calls["outage"]) < 3:
            raise ConnectionError("downstream is down")
        stop.set()

    q = connect(url_for(queue_name))
    with enqueue(Order, q) as (out, _):
        out.send(Order("invalid", 1.0))
        out.send(Order("outage", 1.0))
    retries = Retries(delay=0.3, factor=2.0, jitter=False, max_deliveries=5, give_up_on=KeyError)
    worker = start(serve, handle, Order, q, workers=2, stop=stop, signals=(), retries=retries)
    served = worker.outcome(60.0)
    _, _, body = get_one(admin, f"{queue_name}.dlq", timeout=20.0)
    assert json.loads(body)["id"] == "invalid" and len(calls["invalid"]) == 1
    gaps = [b - a for a, b in itertools.pairwise(calls["outage"])]
    assert len(gaps) == 2 and gaps[0] >= 0.27 and gaps[1] >= 0.54, gaps
    assert (served.handled, served.failed) == (1, 3)


# -- existing topology is adopted (issue 14, point 4) ---------------------------------


@integration
@pytest.mark.parametrize(
    "arguments",
    [
        None,
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "{name}.theirs",
        },
    ],
    ids=["classic-plain", "quorum-other-dead-letter"],
)
def test_a_queue_declared_by_another_service_is_adopted(
    queue_name: str,
    admin: Any,
    arguments: dict[str, str] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another service declared the queue with its own arguments (plain pika): qchan used to
    fail every send with 406 PRECONDITION_FAILED. Now it uses the queue as it is, warns once,
    and dead-letters by a confirmed copy to <queue>.dlq (never by a nack that RabbitMQ
    would drop for want of a dead-letter exchange)."""
    args = {k: v.format(name=queue_name) for k, v in (arguments or {}).items()}
    admin.queue_declare(queue_name, durable=True, arguments=args or None)
    errors: Chan[Exception] = Chan(64)
    with caplog.at_level(logging.WARNING, logger="qchan.adapters.rabbitmq"):
        q = connect(url_for(queue_name), errors=errors, max_deliveries=2)
        with q:
            with enqueue(Order, q) as (out, _):
                out.send(Order("kept", 1.0))
                out.send(Order("doomed", 2.0))
                out.send(Order("invalid", 3.0))
            with dequeue(Order, q) as (rcv, ack):
                seen: dict[str, int] = {}
                while "kept" not in seen or seen.get("doomed", 0) < 2 or "invalid" not in seen:
                    m = rcv.recv(timeout=20.0)
                    seen[m.object.id] = seen.get(m.object.id, 0) + 1
                    if m.object.id == "kept":
                        ack.send(m)
                    elif m.object.id == "invalid":
                        ack.send(m.dead_letter(ValueError("invalid")))
                    else:
                        ack.send(m.fail(ConnectionError("down")))
                dead = sorted(
                    json.loads(get_one(admin, f"{queue_name}.dlq")[2])["id"] for _ in range(2)
                )
    adopted = [r for r in caplog.records if "exists with other arguments" in r.getMessage()]
    assert len(adopted) == 1, [r.getMessage() for r in adopted]  # once, not per connection
    # Quorum counts deliveries exactly; classic says 2 once redelivered, which is exactly
    # max_deliveries=2 here: both dead-letter "doomed" at its second delivery.
    assert dead == ["doomed", "invalid"]
    assert stays(lambda: queue_depth(admin, queue_name) == 0)
    delete_queues(f"{queue_name}.theirs")
