"""The consumer thread: one thread polls, routes and settles, and work for it (an ack, a
channel closing) never waits for a broker call in progress, whether the adapter can cut
that call short (`wakes`) or not (its `receive` then runs on a helper thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from support.helpers import start, wait_for
from support.queues import put_raw

from qchan import Bag, Chan, ChannelClosed, ConnectionLost, Queue, dequeue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Order, Spy, Wrapped


def _order(i: int = 1) -> Bag:
    return Bag("Order", b'{"id": "%d", "amount": 1.0}' % i, {"Category": "Order"}, id=str(i))


class LongPoll(Wrapped):
    """An embedded broker whose `receive` nobody can cut short, as SQS's long poll."""

    wakes = False

    def __init__(self, inner: EmbeddedAdapter) -> None:
        super().__init__(inner)
        self.wakes = False
        self.polls = 0

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        self.polls += 1
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # not woken: it waits its whole wait out
            got = self.inner.receive(max_items, min(0.05, deadline - time.monotonic()))
            if got:
                return got
        return []

    def wakeup(self) -> None:
        pass  # cannot cut a poll short


def _timed(f: object) -> float:
    began = time.monotonic()
    f()  # type: ignore[operator]
    return time.monotonic() - began


def test_an_ack_cuts_a_long_receive_short(name: str) -> None:
    """Acks wait in their channel, not in a thread hand-off: the first of a batch wakes
    the consumer out of its broker call, so they reach the broker within `ack_linger`."""
    put_raw(name, _order())
    adapter = Spy(EmbeddedAdapter(name))
    with Queue(adapter, poll_wait=30.0) as q, dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=5)
        waiter = start(rcv.recv, timeout=10)  # demand: the consumer polls again, 30 s long
        wait_for(lambda: adapter.receives >= 2, what="the next receive in flight")
        ack.send(m)
        wait_for(lambda: q.stats().acked == 1, timeout=2.0, what="the ack, within 2 s")
        assert broker(name).in_flight == 0
    waiter.join(5)


def test_closing_a_dequeue_never_waits_for_a_poll_that_cannot_be_cut_short(name: str) -> None:
    adapter = LongPoll(EmbeddedAdapter(name))
    put_raw(name, _order())
    q = Queue(adapter, poll_wait=5.0, close_timeout=10.0)
    try:
        d = dequeue(Order, q)
        rcv, ack = d
        m = rcv.recv(timeout=5)
        waiter = start(rcv.recv, timeout=10)  # demand: the consumer polls again, 5 s long
        wait_for(lambda: adapter.polls >= 2, what="the next long poll in flight")
        ack.send(m)
        wait_for(lambda: q.stats().acked == 1, timeout=2.0, what="the ack, during the poll")
        took = _timed(d.close)
        assert took < 1.0, f"closing the dequeue took {took:.1f} s (the poll's 5 s?)"
        waiter.join(5)
        assert isinstance(waiter.error, ChannelClosed)  # woken by the close, not by a message
    finally:
        q.close()


def test_what_a_poll_in_flight_brings_at_close_is_given_back_uncounted(name: str) -> None:
    """The queue closes while a receive that cannot be cut short runs; it brings a
    message. Nobody will receive it: the close waits for it and gives it back at once, as
    no delivery, before the adapter closes (left alone, it would wait out its visibility
    timeout with a delivery counted)."""
    release, started, returned = threading.Event(), threading.Event(), threading.Event()

    class Held(LongPoll):
        closed_in_poll: bool | None = None

        def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
            if self.polls == 0:
                self.polls += 1
                return []
            started.set()
            release.wait(10)
            got = self.inner.receive(max_items, 0)
            returned.set()
            return got

        def close(self) -> None:
            self.closed_in_poll = not returned.is_set()
            super().close()

    adapter = Held(EmbeddedAdapter(name))
    q = Queue(adapter, poll_wait=5.0, close_timeout=10.0)
    rcv, _ = dequeue(Order, q)
    waiter = start(rcv.recv, timeout=10)  # demand
    assert started.wait(5), "no receive in flight"
    closing = start(q.close)
    waiter.join(5)  # the close reached the receivers; the poll is still in flight
    assert isinstance(waiter.error, ChannelClosed)
    put_raw(name, _order())
    release.set()
    closing.join(10)
    assert closing.error is None
    assert adapter.closed_in_poll is False, "the adapter closed under a receive in flight"
    b = broker(name)
    assert (b.depth, b.in_flight) == (1, 0)
    (again,) = b.receive(1, 1)
    assert again.deliveries == 1


def test_acks_that_fill_their_channel_during_a_long_receive_all_arrive(name: str) -> None:
    """Backpressure on `ack`: with room for one ack, 50 acks sent back to back while the
    consumer sits in a 30 s receive. Each must wake it (the first item after a drain, or
    a sender parked on the full channel), or the application hangs on its acks until
    the poll ends. Fails when an ack wakes nobody."""
    n = 50
    put_raw(name, *(_order(i) for i in range(n)))
    adapter = Spy(EmbeddedAdapter(name))
    with Queue(adapter, poll_wait=30.0, in_flight=200) as q:
        with dequeue(Order, q, ack_capacity=1) as (rcv, ack):
            held = [rcv.recv(timeout=5) for _ in range(n)]
            waiter = start(rcv.recv, timeout=10)  # demand on an empty broker: a long receive
            calls = adapter.receives
            wait_for(lambda: adapter.receives > calls, what="the long receive")
            acking = start(lambda: [ack.send(m, timeout=5) for m in held])
            acking.join(5)
            assert not acking.is_alive() and acking.error is None, acking.error
            wait_for(lambda: q.stats().acked == n, timeout=5.0, what="every ack applied")
            assert broker(name).in_flight == 0
        waiter.join(5)


def test_a_receive_that_fails_on_the_fetch_thread_is_reported_and_retried(name: str) -> None:
    """Without `wakes`, `receive` runs on a helper thread; an error there reaches the
    queue's errors like any failed receive, and polling goes on: nothing is lost."""
    failures = [ConnectionLost("injected: the poll failed")]

    class Flaky(LongPoll):
        def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
            if failures:
                raise failures.pop()
            return super().receive(max_items, wait)

    put_raw(name, _order())
    errors: Chan[Exception] = Chan(16)
    with Queue(Flaky(EmbeddedAdapter(name)), poll_wait=1.0, errors=errors) as q:
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=10)
            ack.send(m)
            wait_for(lambda: q.stats().acked == 1, timeout=5.0, what="the ack")
        assert q.failure is None
    err = errors.recv(timeout=1)
    assert isinstance(err, ConnectionLost) and "injected" in str(err)
