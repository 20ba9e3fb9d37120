"""The emitter's send path: at-least-once sends joining the batch being gathered, and
batches pipelined to adapters that send asynchronously (`Adapter.submit`)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from support.helpers import start, wait_for

from qchan import AT_MOST_ONCE, Bag, Constant, EnqueueError, Queue, dequeue, enqueue
from qchan.adapter import Sending
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.errors import ConnectionLost
from qchan.testing import Order, Spy, Wrapped


@pytest.fixture
def name() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


class Gated(Spy):
    """Blocks every send_batch until `gate` is set."""

    def __init__(self, inner: EmbeddedAdapter) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.sending = threading.Event()

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self.sending.set()
        assert self.gate.wait(10), "gate never opened"
        return super().send_batch(bags)


# -- at-least-once: a send joins the batch being gathered --------------------------


def test_at_least_once_sends_join_the_batch_being_gathered(queues: list[Queue], name: str) -> None:
    """While the emitter gathers, a send returns without waiting for the emitter
    thread to take it (no thread switch per message), up to the batch's room."""
    spy = Spy(EmbeddedAdapter(name))
    q = Queue(spy, batch_size=50, linger=30.0)
    queues.append(q)
    out, _ = enqueue(Order, q)
    out.send(Order("0", 1.0))  # the emitter now gathers, for up to 30 s
    for i in range(1, 50):
        out.send(Order(str(i), 1.0), timeout=0)  # never waits for the emitter
    wait_for(lambda: spy.batches == [50], what="the full batch sent at once, not after linger")
    assert broker(name).depth == 50


def test_at_least_once_sends_wait_while_the_emitter_sends(queues: list[Queue], name: str) -> None:
    """The room is lent only while gathering: during a send the channel is unbuffered."""
    gated = Gated(EmbeddedAdapter(name))
    q = Queue(gated, batch_size=10, linger=0.0)
    queues.append(q)
    out, _ = enqueue(Order, q)
    out.send(Order("first", 1.0))
    assert gated.sending.wait(5)  # the emitter is inside send_batch now
    with pytest.raises(TimeoutError):
        out.send(Order("held", 1.0), timeout=0.2)
    gated.gate.set()
    out.send(Order("then", 1.0), timeout=5)
    q.close(timeout=5)
    assert broker(name).depth == 2


# -- pipelining ---------------------------------------------------------------------


class _Later(Sending):
    __slots__ = ("outcomes", "owner", "released")

    def __init__(self, owner: Piped, outcomes: Sequence[BaseException | None]) -> None:
        super().__init__()
        self.owner = owner
        self.outcomes = outcomes
        self.released = threading.Event()

    def result(self, wait: float | None) -> Sequence[BaseException | None] | None:
        if wait is None:
            self.owner.blocked.set()
            assert self.released.wait(20), "never released"
        elif not self.released.wait(wait):
            return None
        return self.outcomes


class Piped(Wrapped):
    """An adapter that pipelines: submit sends at once (to the embedded broker) but its
    outcomes are known only once the test releases them, oldest first or not."""

    pipeline = 3

    def __init__(
        self, inner: EmbeddedAdapter, poison: str | None = None, auto: bool = False
    ) -> None:
        super().__init__(inner)
        self.auto = auto  # outcomes known at once
        self.submitted: list[_Later] = []
        self.retries: list[int] = []
        self.blocked = threading.Event()  # the emitter waits for an outcome
        self.poison = poison  # a body containing this fails, always

    def _send(self, bags: Sequence[Bag]) -> list[BaseException | None]:
        good = [b for b in bags if not (self.poison and self.poison.encode() in b.body)]
        results = iter(self.inner.send_batch(good))
        return [next(results) if b in good else ConnectionLost("injected failure") for b in bags]

    def submit(self, bags: Sequence[Bag]) -> Sending:
        sending = _Later(self, self._send(bags))
        if self.auto:
            sending.released.set()
        self.submitted.append(sending)
        return sending

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self.retries.append(len(bags))
        return self._send(bags)

    def release_all(self) -> None:
        for s in self.submitted:
            s.released.set()


def test_batches_are_pipelined_up_to_the_adapters_limit(queues: list[Queue], name: str) -> None:
    piped = Piped(EmbeddedAdapter(name))
    q = Queue(piped, batch_size=10, linger=0.0)
    queues.append(q)
    sending = start(_send_all, q, 60)
    wait_for(piped.blocked.is_set, what="the emitter waiting on the oldest batch")
    assert len(piped.submitted) == 3, "three batches on the wire, no more"
    assert q.stats().sent == 0  # nothing counts as sent before its outcome
    piped.submitted[0].released.set()
    wait_for(lambda: len(piped.submitted) == 4, what="the next batch once one settled")
    piped.release_all()
    wait_for(lambda: len(piped.submitted) == 6, what="every batch submitted")
    piped.release_all()
    sending.outcome()
    assert q.stats().sent == 60 and piped.retries == []
    assert sorted(o.id for o in _receive(q, 60)) == sorted(str(i) for i in range(60))


def test_failures_of_a_pipelined_batch_are_retried_then_dead_lettered(
    queues: list[Queue], name: str
) -> None:
    piped = Piped(EmbeddedAdapter(name), poison="bad", auto=True)
    q = Queue(piped, batch_size=10, linger=0.0, retry=Constant(0.0, max_attempts=3))
    queues.append(q)
    with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=100) as (out, dlq):
        for i in range(30):
            out.send(Order("bad" if i == 7 else str(i), 1.0))
        dead = dlq.recv(timeout=10)
    assert dead.object == Order("bad", 1.0) and isinstance(dead.error, ConnectionLost)
    assert piped.retries == [1, 1], "attempts 2 and 3 go through send_batch"
    assert q.stats().sent == 29 and q.stats().dead_lettered == 1
    assert len(_receive(q, 29)) == 29


def test_close_waits_for_the_batches_in_flight(queues: list[Queue], name: str) -> None:
    piped = Piped(EmbeddedAdapter(name))
    q = Queue(piped, batch_size=10, linger=0.0)
    with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=100) as (out, _):
        for i in range(25):
            out.send(Order(str(i), 1.0))
        wait_for(piped.blocked.is_set, what="batches in flight")
        closing = start(q.close, timeout=10)
        assert not closing.done.wait(0.2), "close returned with batches in flight"
        piped.release_all()
        wait_for(lambda: len(piped.submitted) == 3, what="the last batch submitted")
        piped.release_all()
    closing.outcome()
    assert q.stats().sent == 25


def test_close_reports_batches_whose_outcome_never_comes(name: str) -> None:
    piped = Piped(EmbeddedAdapter(name))
    q = Queue(piped, batch_size=10, linger=0.0)
    try:
        out, _ = enqueue(Order, q, policy=AT_MOST_ONCE, capacity=100)
        for i in range(15):
            out.send(Order(str(i), 1.0))
        wait_for(piped.blocked.is_set, what="the emitter stuck on an outcome")
        with pytest.raises(EnqueueError) as info:
            q.close(timeout=0.5)
        assert sorted(m.object.id for m in info.value.failed) == sorted(map(str, range(15)))
        assert all("outcome unknown" in str(m.error) for m in info.value.failed)
    finally:
        piped.release_all()  # let the abandoned emitter thread finish


def _send_all(q: Queue, n: int) -> None:
    with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=n) as (out, _):
        for i in range(n):
            out.send(Order(str(i), 1.0))


def _receive(q: Queue, n: int) -> list[Any]:
    got = []
    with dequeue(Order, q) as (rcv, ack):
        for _ in range(n):
            m = rcv.recv(timeout=10)
            got.append(m.object)
            ack.send(m)
    return got


def test_a_wrapped_adapter_keeps_the_pipelined_path() -> None:
    """`Wrapped` forwards `pipeline` and `submit`: a wrapped Kafka adapter once ran the
    non-pipelined path (one send_batch at a time) without a word; a `Spy` still sees
    every batch."""

    class Submitting(EmbeddedAdapter):
        pipeline = 3

        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.submitted = 0

        def submit(self, bags: Any) -> Sending:
            self.submitted += 1
            return super().submit(bags)

    inner = Submitting(f"wrap-{uuid.uuid4().hex[:8]}")
    wrapped = Wrapped(inner)
    assert wrapped.pipeline == 3
    spy = Spy(inner)
    q = Queue(spy, linger=0.001)
    try:
        with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=100) as (out, _):
            for i in range(20):
                out.send(Order(str(i), 1.0))
    finally:
        q.close()
    assert inner.submitted >= 1 and sum(spy.batches) == 20
