"""The plugin's helpers called directly: sends and what ends on dlq, drain, run_until_settled
(retries without real backoff, dead letters, the settle condition, timeouts), bad arguments."""

from __future__ import annotations

import threading
from collections.abc import Callable

import attrs
import pytest

from qchan import Bag, Constant, OptionError, Queue, Retries, enqueue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.pytest_plugin import (
    dead_bags,
    dead_letters,
    drain,
    enqueue_all,
    run_until_settled,
)
from qchan.testing.doubles import Wrapped


@attrs.frozen
class Order:
    id: str
    amount: float = 1.0


class Declined(Exception):
    pass


def _broker_of(q: Queue) -> EmbeddedAdapter:
    assert isinstance(q.adapter, EmbeddedAdapter)
    return q.adapter


def test_enqueue_all_returns_what_ended_on_dlq(qchan_queue_factory: Callable[..., Queue]) -> None:
    q = qchan_queue_factory(retry=Constant(interval=0.0, max_attempts=1))
    _broker_of(q).broker.fail_sends(1)
    failed = enqueue_all(q, [Order("lost"), Order("kept")])
    assert [m.object for m in failed] == [Order("lost")]
    assert failed[0].error is not None
    assert drain(q, Order, 1) == [Order("kept")]


def test_drain_takes_n_in_order_and_leaves_the_rest(qchan_queue: Queue) -> None:
    enqueue_all(qchan_queue, [Order(str(i)) for i in range(3)])
    assert drain(qchan_queue, Order, 2) == [Order("0"), Order("1")]
    assert drain(qchan_queue, Order, 1) == [Order("2")]
    assert _broker_of(qchan_queue).broker.pending == 0  # drained messages are acked


def test_drain_fails_with_what_did_arrive(qchan_queue: Queue) -> None:
    enqueue_all(qchan_queue, [Order("1")])
    with pytest.raises(AssertionError, match=r"1 of 2 'Order' .* within 0.2 s: \[Order"):
        drain(qchan_queue, Order, 2, timeout=0.2)


def test_run_until_settled_waits_for_every_ack(qchan_queue: Queue) -> None:
    orders = [Order(str(i)) for i in range(50)]
    enqueue_all(qchan_queue, orders)
    seen: list[Order] = []
    lock = threading.Lock()

    def handle(order: Order) -> None:
        with lock:
            seen.append(order)

    result = run_until_settled(handle, Order, qchan_queue, workers=4)
    assert (result.handled, result.failed) == (50, 0)
    assert sorted(seen, key=lambda o: int(o.id)) == orders
    b = _broker_of(qchan_queue).broker
    assert (b.pending, qchan_queue.stats().acked) == (0, 50)
    assert not qchan_queue.closed  # the test may go on with it


def test_retries_skip_the_policys_real_delays(qchan_queue: Queue) -> None:
    """A production policy (60 s between deliveries) retried at once: seconds, not minutes."""
    calls: list[int] = []

    def handle(order: Order) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"down ({len(calls)})")

    enqueue_all(qchan_queue, [Order("1")])
    policy = Retries(delay=60.0, max_deliveries=5)
    result = run_until_settled(handle, Order, qchan_queue, retries=policy, timeout=5.0)
    assert (result.handled, result.failed, result.dead_letters) == (1, 2, [])
    assert [str(e) for e in result.errors] == ["down (1)", "down (2)"]
    assert result.seconds < 5.0


def test_retry_delay_none_keeps_the_policys_delay(qchan_queue: Queue) -> None:
    enqueue_all(qchan_queue, [Order("1")])
    calls: list[str] = []

    def handle(order: Order) -> None:
        calls.append(order.id)
        raise ConnectionError("down")

    with pytest.raises(AssertionError, match=r"not settled within 1\.0 s"):
        run_until_settled(
            handle, Order, qchan_queue, retries=Retries(delay=60.0), retry_delay=None, timeout=1.0
        )
    assert calls == ["1"]  # the retry waits its 30-60 s; with retry_delay=0, 10 calls


def test_max_deliveries_dead_letters_and_reports_them(qchan_queue: Queue) -> None:
    enqueue_all(qchan_queue, [Order("bad"), Order("good")])

    def handle(order: Order) -> None:
        if order.id == "bad":
            raise ValueError("cannot handle")

    result = run_until_settled(handle, Order, qchan_queue, max_deliveries=3)
    assert (result.handled, result.failed, result.dead_letters) == (1, 3, [Order("bad")])
    assert dead_letters(qchan_queue, Order) == [Order("bad")]
    assert [b.category for b in dead_bags(qchan_queue)] == ["Order"]


def test_give_up_on_dead_letters_at_once(qchan_queue: Queue) -> None:
    enqueue_all(qchan_queue, [Order("7")])

    def handle(order: Order) -> None:
        raise Declined(order.id)

    result = run_until_settled(handle, Order, qchan_queue, give_up_on=Declined)
    assert (result.failed, result.dead_letters) == (1, [Order("7")])


def test_dead_letters_of_one_run_only(qchan_queue: Queue) -> None:
    def handle(order: Order) -> None:
        raise Declined(order.id)

    enqueue_all(qchan_queue, [Order("a")])
    run_until_settled(handle, Order, qchan_queue, give_up_on=Declined)
    enqueue_all(qchan_queue, [Order("b")])
    second = run_until_settled(handle, Order, qchan_queue, give_up_on=Declined)
    assert second.dead_letters == [Order("b")]
    assert dead_letters(qchan_queue, Order) == [Order("a"), Order("b")]


def test_a_category_nobody_handles_never_settles(qchan_queue: Queue) -> None:
    with enqueue(Order, qchan_queue, category="other") as (out, _):
        out.send(Order("x"))
    with pytest.raises(AssertionError, match=r"not settled within 0\.3 s"):
        run_until_settled(lambda o: None, Order, qchan_queue, timeout=0.3)


def test_bad_arguments_are_named(qchan_queue: Queue) -> None:
    with pytest.raises(OptionError, match="retries= or max_deliveries=, not both"):
        run_until_settled(lambda o: None, Order, qchan_queue, retries=Retries(), max_deliveries=2)
    with pytest.raises(OptionError, match=r"retries must be a qchan\.Retries"):
        run_until_settled(lambda o: None, Order, qchan_queue, retries=3)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="max_deliveries"):
        run_until_settled(lambda o: None, Order, qchan_queue, max_deliveries=0)
    with pytest.raises(OptionError, match="timeout"):
        drain(qchan_queue, Order, 1, timeout=-1)
    with pytest.raises(OptionError, match="n"):
        drain(qchan_queue, Order, 0)


def test_the_broker_helpers_need_a_mem_queue() -> None:
    q = Queue(Wrapped(EmbeddedAdapter("qchan-test-wrapped")))
    try:
        with pytest.raises(OptionError, match="needs a mem:// queue"):
            run_until_settled(lambda o: None, Order, q, timeout=0.1)
        with pytest.raises(OptionError, match="needs a mem:// queue"):
            dead_bags(q)
    finally:
        q.close()
        broker("qchan-test-wrapped").purge()


def test_the_fixture_queues_are_fresh(
    qchan_queue: Queue, qchan_queue_factory: Callable[..., Queue]
) -> None:
    other = qchan_queue_factory(max_deliveries=2)
    assert other.url != qchan_queue.url
    assert _broker_of(other).broker.max_deliveries == 2
    assert _broker_of(qchan_queue).broker.pending == 0


def test_broker_pending_counts_waiting_in_flight_and_delayed() -> None:
    name = "qchan-test-pending"
    b = broker(name)
    try:
        b.send([Bag(category="Order", body=b"{}", attributes={}) for _ in range(3)])
        first, second = b.receive(2, 0.0)
        assert (b.depth, b.in_flight, b.pending) == (1, 2, 3)
        b.delete([second.digest])
        b.dead_letter([first.digest])
        assert b.pending == 1
        (third,) = b.receive(1, 0.0)
        b.change_visibility([third.digest], 60.0)  # a delayed retry is still pending
        assert (b.depth, b.in_flight, b.pending) == (0, 1, 1)
    finally:
        b.purge()
