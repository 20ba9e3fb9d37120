"""The receive side's rules (DESIGN.md section 5), on the embedded broker: the consumer
thread (receive, hold, idle, route, hand over, acks, time_to_flight, heartbeats,
release)."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import pytest
from support.helpers import join_all, start, wait_for
from support.queues import open_q, put_raw

from qchan import (
    AT_MOST_ONCE,
    Bag,
    Chan,
    ChannelClosed,
    QchanError,
    Queue,
    ReceivingAdapter,
    UnroutableError,
    dequeue,
    enqueue,
)
from qchan.adapter import Bags, Errors
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Order, Refund, Spy, Wrapped

# -- listener rules ------------------------------------------------------------


def test_acks_flush_at_half_the_in_flight_limit(queues: list[Queue], name: str) -> None:
    """With `in_flight` below the adapter's batch, acks once waited for `ack_linger` before
    the poller could receive again (each batch stalled for it)."""
    q = open_q(queues, name, in_flight=10, ack_linger=60.0)
    with enqueue(Order, q) as (out, _):
        for i in range(30):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q) as (rcv, ack):
        for _ in range(30):
            ack.send(rcv.recv(timeout=10))
    assert q.stats().acked == 30


def test_polling_starts_with_the_first_dequeue(queues: list[Queue], name: str) -> None:
    spy = Spy(EmbeddedAdapter(name))
    q = open_q(queues, name, spy)
    with enqueue(Order, q) as (out, _):
        for i in range(3):
            out.send(Order(str(i), 1.0))
    assert spy.receives == 0 and broker(name).depth == 3, "polled before anyone could receive"
    with dequeue(Order, q) as (rcv, ack):
        ack.send(rcv.recv(timeout=5))
        assert spy.receives >= 1


class _Idle(Wrapped):
    """Counts idle calls; says it has something to service when `serviceable`."""

    def __init__(self, inner: Any, serviceable: bool) -> None:
        super().__init__(inner)
        self.serviceable = serviceable
        self.calls = 0

    def idle(self, wait: float) -> bool:
        self.calls += 1
        if self.serviceable:
            threading.Event().wait(min(wait, 0.05))  # as a real connection would block
        return self.serviceable


@pytest.mark.parametrize("serviceable", [True, False])
def test_the_poller_idles_while_nothing_may_be_taken(
    queues: list[Queue], name: str, serviceable: bool
) -> None:
    idle = _Idle(EmbeddedAdapter(name), serviceable)
    q = open_q(queues, name, idle)
    with dequeue(Order, q):
        pass  # the last channel closes: nothing may be taken now
    if serviceable:  # an adapter with a connection to tend is called again and again
        wait_for(lambda: idle.calls >= 5, what="repeated idle calls")
    else:  # one call, then the poller waits without spinning
        wait_for(lambda: idle.calls >= 1, what="one idle call")
        calls = idle.calls
        threading.Event().wait(0.3)
        assert idle.calls == calls
    with enqueue(Order, q) as (out, _):
        out.send(Order("x", 1.0))
    with dequeue(Order, q) as (rcv, ack):  # receiving resumes at once
        ack.send(rcv.recv(timeout=5))


class _FlowRecorder(Wrapped):
    """Records which flow-control call the poller makes, and every release and nack."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: list[str] = []
        self.given_back = 0

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        self.calls.append("receive")
        return self.inner.receive(max_items, wait)

    def hold(self, wait: float) -> bool:
        self.calls.append("hold")
        threading.Event().wait(min(wait, 0.02))  # as a connection to tend would block
        return True

    def idle(self, wait: float) -> bool:
        self.calls.append("idle")
        threading.Event().wait(min(wait, 0.02))
        return True

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        self.given_back += len(bags)
        self.inner.give_back(bags, counted=counted, delay=delay, errors=errors)


def test_a_slow_consumer_makes_the_poller_hold_never_idle(queues: list[Queue], name: str) -> None:
    """Issue 13: "hold" (in-flight limit reached) and "nobody listens" are different
    signals. While a dequeue is open and the application is only slow, the adapter is
    told to hold, never to idle, and nothing is released or nacked; once the last
    dequeue closes it is told to idle."""
    rec = _FlowRecorder(EmbeddedAdapter(name))
    q = open_q(queues, name, rec, in_flight=4, ack_linger=0.001)
    n = 40
    with enqueue(Order, q) as (out, _):
        for i in range(n):
            out.send(Order(str(i), 1.0))
    got: list[str] = []
    with dequeue(Order, q, capacity=0) as (rcv, ack):
        for _ in range(n):
            m = rcv.recv(timeout=10)
            threading.Event().wait(0.005)  # slower than the broker
            got.append(m.object.id)
            ack.send(m)
        open_calls = list(rec.calls)
    wait_for(lambda: rec.calls[-1:] == ["idle"], what="idle once nobody listens")
    assert got == [str(i) for i in range(n)]
    assert "hold" in open_calls, "the in-flight limit was never reached"
    assert "idle" not in open_calls[open_calls.index("receive") :], open_calls
    assert rec.given_back == 0
    assert q.stats().redelivered == 0


def test_time_to_flight_starts_when_the_application_receives(
    queues: list[Queue], name: str
) -> None:
    """A message waiting in rcv's buffer has not been received: it never expires there
    (an expiry nacks, and counts toward max_deliveries); it expired after time_to_flight
    from its hand-off to the buffer before (issue 13: 51 of 60 redelivered)."""
    q = open_q(queues, name, EmbeddedAdapter(name, max_deliveries=1), time_to_flight=0.3)
    with enqueue(Order, q) as (out, _):
        for i in range(12):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q, capacity=8) as (rcv, ack):
        for i in range(12):  # the last in the buffer waits ~0.9 s > time_to_flight
            m = rcv.recv(timeout=5)
            assert (m.object.id, m.bag.deliveries if m.bag else 0) == (str(i), 1)
            threading.Event().wait(0.1)
            ack.send(m)
    stats = q.stats()
    assert (stats.expired, stats.redelivered, stats.acked) == (0, 0, 12)
    assert broker(name).dead_letters == []


def test_a_received_message_still_expires_after_time_to_flight(
    queues: list[Queue], name: str
) -> None:
    q = open_q(queues, name, time_to_flight=0.2)
    with enqueue(Order, q) as (out, _):
        out.send(Order("late", 1.0))
    with dequeue(Order, q, capacity=8) as (rcv, ack):
        first = rcv.recv(timeout=5)  # taken from the buffer, never acked
        again = rcv.recv(timeout=5)
        ack.send(again)
    assert (first.object, again.object) == (Order("late", 1.0), Order("late", 1.0))
    assert again.bag is not None and again.bag.deliveries == 2
    assert q.stats().expired == 1


def test_in_flight_limit_counts_buffered_messages(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name, in_flight=5)
    with enqueue(Order, q, policy=AT_MOST_ONCE) as (out, _):
        for i in range(26):
            out.send(Order(str(i), 1.0))
    rcv, ack = dequeue(Order, q, capacity=32)
    for _ in range(6):  # six settled: the buffer may hold six, the limit says five
        ack.send(rcv.recv(timeout=5))
    wait_for(lambda: q.stats().acked == 6 and q.stats().in_flight == 5, what="5 in flight")
    assert broker(name).depth == 15, "took more than the in-flight limit from the broker"
    m = rcv.recv(timeout=5)
    ack.send(m)  # one slot frees: exactly one more comes in
    wait_for(lambda: broker(name).depth == 14, what="one more message taken")
    assert q.stats().in_flight == 5


def test_an_unread_category_does_not_stall_the_others(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    with enqueue(Order, q) as (orders, _), enqueue(Refund, q) as (refunds, _):
        for i in range(10):
            orders.send(Order(str(i), 1.0))
        for i in range(10):
            refunds.send(Refund(str(i), "x"))
    # Orders fill their rcv (capacity 1) and are never read.
    unread, _ = dequeue(Order, q, capacity=1)
    with dequeue(Refund, q) as (rcv, ack):
        for _ in range(10):
            ack.send(rcv.recv(timeout=5))
    assert len(unread) == 1


def test_unroutable_message_is_reported_once_and_left_to_the_broker(
    queues: list[Queue], name: str
) -> None:
    EmbeddedAdapter(name, visibility_timeout=0.1)
    errors: Chan[Exception] = Chan(16)
    q = open_q(queues, name, errors=errors)
    put_raw(name, Bag("Ghost", b"{}", {"Category": "Ghost"}, id="ghost-1"))
    with dequeue(Order, q) as (rcv, _):
        start(rcv.recv, 10.0)  # a receiver waits: the poller takes what there is
        err = errors.recv(timeout=5)
        # The broker brings it back after each visibility timeout; the kernel
        # must not ack it, and must not report it again.
        wait_for(lambda: q.stats().received >= 3, what="two redeliveries")
    assert isinstance(err, UnroutableError) and "Ghost" in str(err)
    assert len(errors) == 0, "reported more than once"
    assert q.stats().acked == 0 and broker(name).depth + broker(name).in_flight == 1


def test_catch_all_and_no_category_channels(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    put_raw(
        name,
        Bag("", b"plain", {}, id="no-category"),
        Bag("Whatever", b'{"k": 1}', {"Category": "Whatever"}, id="other"),
    )
    with (
        dequeue(bytes, q, category="") as (bare, a1),
        dequeue(bytes, q, category="*") as (
            anything,
            a2,
        ),
    ):
        m1 = bare.recv(timeout=5)
        m2 = anything.recv(timeout=5)
        a1.send(m1)
        a2.send(m2)
    assert (m1.object, m2.object, m2.category) == (b"plain", b'{"k": 1}', "Whatever")


def test_message_not_acked_within_time_to_flight_is_redelivered(
    queues: list[Queue], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = open_q(queues, name, time_to_flight=0.2)
    with enqueue(Order, q) as (out, _):
        out.send(Order("slow", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        first = rcv.recv(timeout=5)  # held past time_to_flight
        again = rcv.recv(timeout=5)
        assert again.object == first.object and again.bag is not None
        assert again.bag.deliveries == 2
        with caplog.at_level(logging.WARNING, logger="qchan.listener"):
            ack.send(first)  # too late: ignored, with a warning
            ack.send(again)
            wait_for(lambda: q.stats().acked == 1, what="the second delivery acked")
    assert q.stats().expired == 1
    assert "not in flight" in caplog.text


def test_time_to_flight_expires_only_the_messages_still_held(
    queues: list[Queue], name: str
) -> None:
    q = open_q(queues, name, time_to_flight=0.3)
    with enqueue(Order, q) as (out, _):
        for i in range(6):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q, capacity=6) as (rcv, ack):
        got = [rcv.recv(timeout=5) for _ in range(6)]
        for m in got[1::2]:
            ack.send(m)  # 1, 3, 5 acked in time; 0, 2, 4 held
        again = [rcv.recv(timeout=5) for _ in range(3)]
        for m in again:
            ack.send(m)
        assert sorted(m.object.id for m in again) == ["0", "2", "4"]
        with pytest.raises(TimeoutError):
            rcv.recv(timeout=0.5)  # the acked ones do not come back
    assert q.stats().expired == 3


def test_acked_messages_are_not_kept_alive(queues: list[Queue], name: str) -> None:
    """Nothing in the dispatcher holds a message after its ack (time_to_flight is long)."""
    q = open_q(queues, name, ack_linger=0.0)
    with enqueue(Order, q) as (out, _):
        out.send(Order("x", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=5)
        assert m.bag is not None
        ref = weakref.ref(m.bag)
        ack.send(m)
        del m
        wait_for(lambda: q.stats().acked == 1, what="the ack")
        gc.collect()
        assert ref() is None, "the acked message is still referenced"


def test_heartbeat_keeps_a_held_message_invisible(queues: list[Queue], name: str) -> None:
    EmbeddedAdapter(name, visibility_timeout=0.3)
    q = open_q(queues, name, extend_every=0.1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("long", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=5)
        # Held three visibility timeouts: without the heartbeat it would come back.
        with pytest.raises(TimeoutError):
            rcv.recv(timeout=1.0)
        ack.send(m)
    assert q.stats().received == 1


def test_heartbeat_keeps_messages_waiting_in_the_rcv_buffer_invisible(
    queues: list[Queue], name: str
) -> None:
    """Messages in rcv's buffer are held too (not yet received, so not in flight): the
    heartbeat must extend them even when nothing else is held."""
    EmbeddedAdapter(name, visibility_timeout=0.3)
    q = open_q(queues, name, extend_every=0.1)
    with enqueue(Order, q) as (out, _):
        for i in range(6):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q, capacity=8) as (rcv, ack):
        for _ in range(3):  # three settled: the buffer may hold three (a slow start)
            ack.send(rcv.recv(timeout=5))
        wait_for(lambda: len(rcv) == 3, what="three buffered")
        threading.Event().wait(1.0)  # three visibility timeouts, nothing received
        for _ in range(3):
            ack.send(rcv.recv(timeout=5))
        with pytest.raises(TimeoutError):
            rcv.recv(timeout=0.5)
    assert (q.stats().received, q.stats().redelivered) == (6, 0)


def test_nack_with_delay_redelivers_after_the_delay(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    with enqueue(Order, q) as (out, _):
        out.send(Order("later", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=5)
        t0 = time.monotonic()
        ack.send(m.fail(RuntimeError("busy"), delay=0.4))
        again = rcv.recv(timeout=5)
        assert time.monotonic() - t0 >= 0.35
        ack.send(again)
    assert q.stats().nacked == 1


class _Failures(Wrapped):
    """Records what the kernel passes to a counted `give_back`."""

    def __init__(self, inner: ReceivingAdapter) -> None:
        super().__init__(inner)
        self.failed: list[tuple[bytes, str, float]] = []

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        if counted:
            self.failed += [(b.body, repr(e), delay) for b, e in zip(bags, errors, strict=True)]
        super().give_back(bags, counted=counted, delay=delay, errors=errors)


def test_the_adapter_is_told_why_each_message_failed(queues: list[Queue], name: str) -> None:
    adapter = _Failures(EmbeddedAdapter(name))
    q = open_q(queues, name, adapter, time_to_flight=0.3)
    with enqueue(Order, q) as (out, _):
        for i in range(3):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q, capacity=3) as (rcv, ack):
        m0, m1, m2 = (rcv.recv(timeout=5) for _ in range(3))
        ack.send(m0.fail(ValueError("no such customer")))
        ack.send(m1.fail(RuntimeError("busy"), delay=0.1))
        # m2 is held past time_to_flight; each redelivery is acked as it comes
        again: set[str] = set()
        while len(again) < 3:
            m = rcv.recv(timeout=5)
            again.add(m.object.id)
            ack.send(m)
    assert m0.bag is not None and m1.bag is not None and m2.bag is not None
    assert sorted(adapter.failed) == sorted(
        [
            (m0.bag.body, "ValueError('no such customer')", 0.0),
            (m1.bag.body, "RuntimeError('busy')", 0.1),
            (m2.bag.body, "TimeoutError('not acked within time_to_flight=0.3 s')", 0.0),
        ]
    )
    assert (q.stats().nacked, q.stats().expired) == (2, 1)


def test_close_releases_delivered_and_buffered_messages_at_once(
    queues: list[Queue], name: str
) -> None:
    q = open_q(queues, name)
    with enqueue(Order, q) as (out, _):
        for i in range(9):
            out.send(Order(str(i), 1.0))
    rcv, ack = dequeue(Order, q, capacity=8)
    for _ in range(4):  # four settled: the buffer may hold four (a slow start)
        ack.send(rcv.recv(timeout=5))
    rcv.recv(timeout=5)  # one delivered, the rest buffered in rcv
    # The buffer refills once half of it is free: 3 or 4 wait there.
    wait_for(
        lambda: q.stats().acked == 4 and len(rcv) >= 3 and q.stats().in_flight == 1 + len(rcv),
        what="1 held, the rest buffered",
    )
    q.close()
    assert broker(name).depth == 5 and broker(name).in_flight == 0


def test_leaving_dequeue_applies_acks_and_releases_the_rest(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    with enqueue(Order, q) as (out, _):
        for i in range(5):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q) as (rcv, ack):
        for _ in range(2):
            ack.send(rcv.recv(timeout=5))
        wait_for(lambda: q.stats().acked == 2, what="2 acked")
    assert q.stats().acked == 2
    assert broker(name).depth == 3 and broker(name).in_flight == 0
    with pytest.raises(ChannelClosed):
        ack.send(rcv.recv(timeout=0))  # rcv is closed and drained: nothing after leaving


def test_messages_that_overtake_their_channels_opening_are_kept_for_it(
    queues: list[Queue], name: str
) -> None:
    """A receive routes by the new table at once, which may be before the consumer served
    the channel's "add" (the request came during the receive). They were released, and
    came back with one delivery more (seen on CI: deliveries 3 where 2 was due)."""
    q = open_q(queues, name)
    put_raw(name, Bag("Order", b'{"id": "early", "amount": 1.0}', {"Category": "Order"}))
    (bag,) = broker(name).receive(1, 5)
    with dequeue(Order, q, capacity=0) as (rcv, _):
        listener = q._listener
        assert listener is not None
        consumer = listener.consumer
        r = listener.gate.routes["Order"]
        late = type(consumer)(listener.ctx, listener.gate)  # has not served the "add" yet
        late.gate.taken(1)  # as the consumer counts what it receives
        late._route([bag])
        assert r in late.receivers and list(late.clock.held) == [bag]  # kept, not released
        m = rcv.recv(timeout=0)
        assert m.bag is bag and broker(name).depth == 0
        late._on_ack(m, time.monotonic())
        late._flush_acks()
    assert (broker(name).depth, broker(name).in_flight, broker(name).pending) == (0, 0, 0)


def test_one_open_channel_per_category_and_side(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    with enqueue(Order, q):
        with pytest.raises(QchanError, match="already has an open enqueue"):
            enqueue(Order, q)
        enqueue(Order, q, category="other").out.close()
    with dequeue(Order, q), pytest.raises(QchanError, match="already has an open dequeue"):
        dequeue(Order, q)
    with enqueue(Order, q), dequeue(Order, q):  # reopening after close is fine
        pass


def test_many_consumer_threads_share_one_rcv(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    n = 1_000
    with enqueue(Order, q, policy=AT_MOST_ONCE) as (out, _):
        for i in range(n):
            out.send(Order(str(i), 1.0))
    rcv, ack = dequeue(Order, q)
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        while True:
            try:
                m = rcv.recv(timeout=2)
            except TimeoutError:
                return
            with lock:
                seen.append(m.object.id)
            ack.send(m)

    join_all([start(consume) for _ in range(4)], 60)
    assert sorted(seen, key=int) == [str(i) for i in range(n)]
    wait_for(lambda: q.stats().acked == n, what="every ack applied")


def _clock_over(capacity: int, handed: int) -> tuple[Any, Any, Any, list[Bag]]:
    """A receiver whose rcv holds `capacity`, a time_to_flight clock of 10 s looking every
    second, and `handed` bags pushed into the rcv at time 0 (what does not fit waits in
    its overflow): (rcv, receiver, clock, bags)."""
    from qchan.chan import Pipe
    from qchan.codec import codec_for
    from qchan.kernel.consumer import Clock
    from qchan.kernel.routes import Receiver

    rcv: Pipe[Any] = Pipe(capacity)
    r = Receiver("Order", codec_for(Order), rcv, Pipe(4))
    clock = Clock(time_to_flight=10.0, interval=1.0)
    clock.open(r)
    bags = [Bag("Order", str(i).encode()) for i in range(handed)]
    rcv.push(list(bags))
    clock.handed(r, bags, now=0.0)
    return rcv, r, clock, bags


def test_the_clock_starts_when_the_application_takes_a_message_from_the_buffer() -> None:
    """time_to_flight's clock, by FIFO arithmetic over what was handed into `rcv`: a
    message waiting in the buffer never expires; one received does, once; a settled one
    is not held, and a second settlement says so."""
    rcv, r, clock, bags = _clock_over(capacity=4, handed=4)
    assert clock.next_due() == 1.0  # all four wait in the buffer: only a look is due
    assert rcv.recv() is bags[0] and rcv.recv() is bags[1]  # the application takes two
    clock.look(now=2.0)
    assert clock.next_due() == 3.0 and clock.expired(now=11.9) == []
    assert clock.settle(bags[1], now=5.0) and not clock.settle(bags[1], now=5.0)
    assert clock.expired(now=12.0) == [bags[0]]  # received at 2, held past 10 s
    assert rcv.recv() is bags[2]
    assert clock.settle(bags[2], now=13.0)  # taken and settled between two looks
    assert clock.expired(now=100.0) == []  # bags[3] still waits in the buffer
    assert clock.close(r) == [bags[3]] and clock.held == {}


def test_the_clock_keeps_its_count_when_a_rebalance_takes_messages_out_of_the_buffer() -> None:
    """A revoke withdraws messages from the middle of `rcv`'s buffer: the clock's FIFO must
    lose them too, or it would count a message still waiting as received and expire it
    (a delivery counted for a message the application never saw)."""
    rcv, r, clock, bags = _clock_over(capacity=4, handed=4)
    lost = rcv.withdraw(lambda b: b in (bags[1], bags[2]))
    clock.withdrawn(r, lost)
    clock.look(now=1.0)  # bags[0] and bags[3] both still wait
    assert clock.expired(now=1000.0) == []
    assert rcv.recv() is bags[0]  # bags[3] still waits
    clock.look(now=1001.0)
    assert clock.expired(now=2000.0) == [bags[0]]
    assert set(clock.held) == {bags[3]}
    assert clock.close(r) == [bags[3]]


def test_the_clock_counts_the_overflow_as_not_received() -> None:
    """A run goes into rcv whole: what does not fit waits in its overflow, unseen by the
    application. The clock's arithmetic must count it as waiting, or it would start the
    clock of (and expire, counting a delivery) messages nobody received."""
    rcv, _, clock, bags = _clock_over(capacity=2, handed=5)
    assert (len(rcv), len(rcv.overflow)) == (2, 3)
    assert rcv.recv() is bags[0]  # one received; the overflow moved up by one
    clock.look(now=1.0)
    assert clock.expired(now=100.0) == [bags[0]]
    assert [rcv.recv() for _ in range(4)] == bags[1:]
    clock.look(now=200.0)
    assert clock.expired(now=209.9) == [] and clock.expired(now=210.0) == bags[1:]
