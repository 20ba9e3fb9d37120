"""The embedded broker (mem://): the conformance suite, plus its own SQS-like semantics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from support.helpers import slow_consume

from qchan import Adapter, Bag, ConnectionLost, MessageTooLarge, connect
from qchan.adapters.embedded import EmbeddedAdapter, broker, from_url
from qchan.testing import FEATURES, Conformance, Peers


class TestEmbeddedConformance(Peers, Conformance):
    queue_options = {"poll_wait": 0.5}
    patience = 10.0
    quiet = 0.5
    redelivery_after = 1.0
    features = frozenset(FEATURES) - {"missing_queue"}  # one process: no missing queue
    # As RabbitMQ's default and serve's: the peer suite checks that closing consumers
    # never dead-letters (without a limit mem:// never does).
    peer_max_deliveries = 10

    @pytest.fixture
    def adapter_factory(self) -> Iterator[Callable[[str], Adapter]]:
        names: set[str] = set()

        def make(name: str) -> Adapter:
            names.add(name)
            return EmbeddedAdapter(
                name,
                visibility_timeout=self.redelivery_after,
                max_deliveries=self.peer_max_deliveries,
            )

        yield make
        for name in names:
            broker(name).purge()

    def dead_lettered(self, name: str) -> int:
        return len(broker(name).dead_letters)


def _bag(body: bytes = b"{}") -> Bag:
    return Bag("Order", body, {"Category": "Order"}, id="m1")


def test_same_name_is_the_same_queue() -> None:
    a, b = EmbeddedAdapter("shared-x"), EmbeddedAdapter("shared-x")
    assert a.send_batch([_bag()]) == [None]
    got = b.receive(10, 0)
    assert [g.id for g in got] == ["m1"]
    b.ack(got)


def test_visibility_timeout_redelivers_an_unacked_message() -> None:
    a = EmbeddedAdapter("vis-x", visibility_timeout=0.1)
    a.send_batch([_bag()])
    first = a.receive(1, 0)
    assert a.receive(1, 0) == []  # invisible now
    again = a.receive(1, 2.0)  # waits for the timeout to pass, without polling
    assert [g.id for g in again] == ["m1"]
    assert again[0].deliveries == 2
    a.ack(first)  # a stale receipt deletes nothing
    assert broker("vis-x").in_flight == 1
    a.ack(again)
    assert broker("vis-x").in_flight == 0


def test_redrive_to_dead_letters_after_max_deliveries() -> None:
    a = EmbeddedAdapter("redrive-x", max_deliveries=2)
    a.send_batch([_bag()])
    for _ in range(2):
        got = a.receive(1, 0)
        assert got
        a.give_back(got, counted=True)
    assert a.receive(1, 0) == []
    assert [b.id for b in broker("redrive-x").dead_letters] == ["m1"]


def test_oversized_message_is_rejected_not_stored() -> None:
    a = EmbeddedAdapter("big-x", max_message_size=100)
    outcomes = a.send_batch([_bag(b"x" * 200), _bag(b"y")])
    assert isinstance(outcomes[0], MessageTooLarge)
    assert outcomes[1] is None
    assert broker("big-x").depth == 1


def test_fault_injection() -> None:
    a = EmbeddedAdapter("faults-x")
    broker("faults-x").fail_sends(1)
    assert [type(o).__name__ if o else None for o in a.send_batch([_bag(), _bag()])] == [
        "ConnectionLost",
        None,
    ]
    broker("faults-x").fail_receives(1)
    with pytest.raises(ConnectionLost, match="injected"):
        a.receive(1, 0)


def test_a_wakeup_before_the_receive_is_not_lost() -> None:
    """A wakeup just before a receive cuts that receive short (the consumer thread asks
    for one when work comes while it decides to call the adapter): it returns at once,
    with what is ready or nothing, and the wakeup is spent."""
    a = EmbeddedAdapter(f"wake-{time.monotonic_ns()}")
    a.wakeup()
    t0 = time.monotonic()
    assert a.receive(10, 10.0) == []
    assert time.monotonic() - t0 < 5.0
    a.wakeup()
    a.broker.send([_bag(b"ready")])
    assert [b.body for b in a.receive(10, 10.0)] == [b"ready"]  # what is ready, at once
    t0 = time.monotonic()
    assert a.receive(10, 0.3) == []  # one wakeup, one receive: this one waited
    assert time.monotonic() - t0 >= 0.25


def test_a_wakeup_is_for_its_own_adapter() -> None:
    name = f"wake-{time.monotonic_ns()}"
    woken, other = EmbeddedAdapter(name), EmbeddedAdapter(name)
    woken.wakeup()
    other.broker.send([_bag(b"m")])
    assert [b.body for b in other.receive(10, 10.0)] == [b"m"]
    assert woken.receive(10, 0) == []


def test_url_options_and_unknown_option() -> None:
    a = from_url("mem://url-x?visibility_timeout=5&max_deliveries=3")
    assert (a.name, broker("url-x").visibility_timeout, broker("url-x").max_deliveries) == (
        "url-x",
        5.0,
        3,
    )
    with pytest.raises(TypeError, match="bogus"):
        from_url("mem://url-x?bogus=1")
    with connect("mem://url-y", visibility_timeout=7) as q:
        assert q.name == "url-y" and broker("url-y").visibility_timeout == 7


@pytest.mark.parametrize("in_flight", [50, 500])
def test_a_slow_consumer_gets_every_message_once_and_in_order(in_flight: int) -> None:
    """Issue 13 on mem://: max_deliveries=1 dead-letters any message received twice; a
    consumer slower than the broker makes the kernel hold, so none is."""
    name = f"slow-{uuid.uuid4().hex[:8]}"
    with connect(f"mem://{name}?max_deliveries=1", in_flight=in_flight) as q:
        got = slow_consume(q, 1500, work=0.001)
        stats = q.stats()
    assert got == [str(i) for i in range(1500)]
    assert (stats.redelivered, stats.expired) == (0, 0)
    assert broker(name).dead_letters == []
