"""The emitter's rules, on the embedded broker: failures, dead letters, the delayed
guarantee, synchronous puts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from support.helpers import join_all, start, wait_for
from support.queues import open_q

from qchan import (
    AT_MOST_ONCE,
    Backoff,
    Bag,
    Chan,
    Constant,
    EncodeError,
    EnqueueError,
    Queue,
    enqueue,
    enqueue_sync,
)
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Faulty, Order, Spy, Wrapped

# -- emitter: failures, dead letters, the delayed guarantee -------------------


def test_leaving_enqueue_raises_for_undrained_dead_letters(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name, Faulty(EmbeddedAdapter(name)), retry=Constant(0.0, max_attempts=2))
    sent = Order("x", 1.0)
    with pytest.raises(EnqueueError) as info, enqueue(Order, q) as (out, _):
        out.send(sent)
    assert [m.object for m in info.value.failed] == [sent]
    assert "not delivered" in str(info.value)


def test_a_failure_holds_sends_back_until_dlq_is_drained(queues: list[Queue], name: str) -> None:
    """At-least-once: the delayed guarantee of an unbuffered out channel.

    Once a failed message waits for room on dlq, no further send is taken."""
    q = open_q(queues, name, Faulty(EmbeddedAdapter(name)), retry=Constant(0.0, max_attempts=1))
    out, dlq = enqueue(Order, q, dlq_capacity=1)
    out.send(Order("a", 1.0))  # fails, lands on dlq (room for one)
    wait_for(lambda: len(dlq) == 1, what="a on dlq")
    out.send(Order("b", 1.0))  # taken; fails; the emitter waits for room on dlq
    wait_for(lambda: dlq._chan._sendq, what="the emitter waiting on the full dlq")
    with pytest.raises(TimeoutError):
        out.send(Order("c", 1.0), timeout=0.3)  # held back
    assert dlq.recv(timeout=5).object.id == "a"
    assert dlq.recv(timeout=5).object.id == "b"
    out.send(Order("c", 1.0), timeout=5)  # flows again
    assert dlq.recv(timeout=5).object.id == "c"


def test_close_raises_for_messages_nobody_took_from_dlq(queues: list[Queue], name: str) -> None:
    q = Queue(Faulty(EmbeddedAdapter(name)), retry=Constant(0.0, max_attempts=1))
    out, _ = enqueue(Order, q, dlq_capacity=0)  # unbuffered dlq, never read
    out.send(Order("lost?", 1.0))
    with pytest.raises(EnqueueError) as info:
        q.close(timeout=0.3)
    assert [m.object.id for m in info.value.failed] == ["lost?"]
    assert not any(t.name.endswith(name) for t in threading.enumerate()), "threads left behind"


def test_unencodable_object_goes_to_dlq_without_retries(queues: list[Queue], name: str) -> None:
    spy = Spy(EmbeddedAdapter(name))
    q = open_q(queues, name, spy)
    out, dlq = enqueue(Order, q)
    out.send("not an Order")  # type: ignore[arg-type]
    dead = dlq.recv(timeout=5)
    assert isinstance(dead.error, EncodeError) and dead.object == "not an Order"
    assert spy.batches == []


def test_a_run_with_a_bad_or_traced_object_keeps_order_and_loses_nothing(
    queues: list[Queue], name: str
) -> None:
    # The emitter encodes what it takes from an out channel as a run; a run it
    # cannot encode in one go (a refused object, a trace context) is redone one
    # by one: the bad object goes to dlq, the others keep their order.
    from qchan.codec import codec_for
    from qchan.kernel.emitter import Outgoing, Sender
    from qchan.tracing import Traced

    q = open_q(queues, name, EmbeddedAdapter(name))
    with enqueue(Order, q) as (_, dlq):
        emitter = q._emitter
        assert emitter is not None
        sender = Sender(
            category="Order",
            codec=codec_for(Order),
            attributes={"Category": "Order"},
            out=None,
            dlq=Chan(4),
            key=None,
            is_event=False,
        )
        batch = Outgoing()
        trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        objs = [Order("a", 1.0), "bad", Traced(Order("b", 2.0), trace), Order("c", 3.0)]
        emitter._take(sender, objs, batch)
        assert batch.objs == [Order("a", 1.0), Order("b", 2.0), Order("c", 3.0)]
        assert [json.loads(b.body)["id"] for b in batch.bags] == ["a", "b", "c"]
        assert [b.attributes.get("traceparent") for b in batch.bags] == [
            None,
            trace["traceparent"],
            None,
        ]
        assert batch.origins == [sender] * 3
        assert len({b.id for b in batch.bags}) == 3
        assert sender.dlq is not None
        dead = sender.dlq.recv(timeout=0)
        assert dead.object == "bad" and isinstance(dead.error, EncodeError)
        assert len(dlq) == 0


def test_oversized_message_goes_to_dlq_without_retries(queues: list[Queue], name: str) -> None:
    spy = Spy(EmbeddedAdapter(name, max_message_size=64))
    q = open_q(queues, name, spy)
    out, dlq = enqueue(str, q, category="text")
    out.send("x" * 100)
    dead = dlq.recv(timeout=5)
    assert "over the 64-byte limit" in str(dead.error)
    assert spy.batches == [1]


# -- synchronous puts ----------------------------------------------------------


def test_sync_put_raises_enqueue_error_with_the_cause(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name, Faulty(EmbeddedAdapter(name)), retry=Constant(0.0, max_attempts=2))
    orders = enqueue_sync(Order, q)
    with pytest.raises(EnqueueError, match="did not accept") as info:
        orders.put(Order("p", 1.0))
    assert info.value.__cause__ is not None and "injected" in str(info.value.__cause__)
    with pytest.raises(EncodeError):
        orders.put("not an Order")  # type: ignore[arg-type]


class _Slow(Wrapped):
    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self.entered.set()
        self.gate.wait(10)
        return super().send_batch(bags)


def test_sync_put_timeout_says_the_outcome_is_unknown(queues: list[Queue], name: str) -> None:
    slow = _Slow(EmbeddedAdapter(name))
    q = open_q(queues, name, slow)
    orders = enqueue_sync(Order, q)
    with pytest.raises(TimeoutError, match="may still be delivered"):
        orders.put(Order("t", 1.0), timeout=0.2)
    slow.gate.set()
    wait_for(lambda: broker(name).depth == 1, what="the timed-out put delivered after all")


def test_close_gives_up_on_an_emitter_stuck_in_the_adapter(name: str) -> None:
    """A stalled link: close(timeout) returns about then, reporting the batch in flight
    as 'outcome unknown' and what was still buffered as 'not sent'; a waiting put()
    gets its answer too."""
    slow = _Slow(EmbeddedAdapter(name))
    q = Queue(slow, linger=0, batch_size=1)
    out, _ = enqueue(Order, q, policy=AT_MOST_ONCE, capacity=10)
    for i in range(3):
        out.send(Order(str(i), 1.0))
    assert slow.entered.wait(10), "no batch reached send_batch"
    orders = enqueue_sync(Order, q, category="sync")
    put = start(orders.put, Order("p", 1.0))  # queued behind the stuck batch
    wait_for(lambda: len(q._emitter.puts) == 1, what="the put queued")  # type: ignore[union-attr]
    t0 = time.monotonic()
    with pytest.raises(EnqueueError) as info:
        q.close(timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    reasons = {m.object.id: str(m.error) for m in info.value.failed}
    assert "outcome unknown" in reasons["0"]
    assert all("not sent" in reasons[k] for k in ("1", "2"))
    with pytest.raises(EnqueueError, match="not sent"):
        put.outcome(5)
    slow.gate.set()  # let the abandoned emitter thread finish


def test_sync_puts_from_many_threads_are_batched(queues: list[Queue], name: str) -> None:
    spy = Spy(EmbeddedAdapter(name))
    q = open_q(queues, name, spy, linger=0.02)
    orders = enqueue_sync(Order, q)
    join_all([start(orders.put, Order(str(i), 1.0)) for i in range(40)], 30)
    assert sum(spy.batches) == 40 and max(spy.batches) > 1


@attrs.frozen
class _SlowToAnswer(Backoff):
    """A retry policy that takes its time to say when to try again (until `gate` is set)."""

    gate: threading.Event = attrs.field(factory=threading.Event)
    asked: threading.Event = attrs.field(factory=threading.Event)

    def delay(self, attempt: int) -> float:
        return 0.01

    def next(self, attempt: int, elapsed: float) -> float | None:
        self.asked.set()
        self.gate.wait(10.0)
        return 0.01


def test_close_names_the_batch_the_emitter_holds_between_two_tries() -> None:
    """close_timeout passes while the emitter holds a batch between two tries (outside
    `send_batch`, no longer in the out channel): close() names that batch too. It used to
    name only what was in the out channel or inside a send, so this one was lost."""
    policy = _SlowToAnswer()
    q = Queue(
        Faulty(EmbeddedAdapter(f"between-{time.monotonic_ns()}"), fail=-1),
        retry=policy,
        close_timeout=0.3,
    )
    out, _ = enqueue(Order, q, policy=AT_MOST_ONCE, capacity=10)
    for i in range(3):
        out.send(Order(str(i), 1.0))
    assert policy.asked.wait(5.0), "the batch was never tried"
    try:
        with pytest.raises(EnqueueError) as e:
            q.close()
        assert sorted(m.object.id for m in e.value.failed) == ["0", "1", "2"]
    finally:
        policy.gate.set()


def test_the_ledger_holds_each_batch_once_from_gathered_to_settled() -> None:
    """What close() names when it gives up on the emitter: every unsettled batch, once,
    at every step (a batch used to be in neither place between the pipe and settling)."""
    from qchan.kernel.emitter import Ledger
    from qchan.message import Bag

    ledger = Ledger()
    first = ledger.gather()
    assert ledger.held() == [] and ledger.held(gathering=True) == [first]
    first.add(None, "a", Bag("c", b"a"))
    first.add(None, "b", Bag("c", b"b"))
    assert ledger.gathered() is first and ledger.held() == [first]
    assert ledger.gathering is None
    empty = ledger.gather()
    assert ledger.gathered() is empty and ledger.held() == [first]  # nothing to hold
    second = ledger.gather()
    second.add(None, "c", Bag("c", b"c"))
    ledger.gathered()
    rest = ledger.narrow(first, first.subset([1]))  # "a" settled, "b" to retry
    assert ledger.held() == [rest, second] and rest.objs == ["b"]
    ledger.settled(rest)
    assert ledger.held() == [second]
    with pytest.raises(AssertionError, match="does not hold"):
        ledger.settled(first)
