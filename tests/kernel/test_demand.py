"""The poller takes what the consumers can use (DESIGN.md section 9, issue 25): the free
buffer of every open `rcv` plus the receivers waiting on it, never the in-flight limit's
worth; and the queue keeps what it holds invisible by default where the broker has a
visibility timeout."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from support.helpers import start, wait_for
from support.queues import open_q, put_raw

from qchan import AT_MOST_ONCE, Bag, Queue, connect, dequeue, enqueue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.options import OptionError
from qchan.testing import Order, Wrapped


def _fill(q: Queue, n: int) -> None:
    with enqueue(Order, q, policy=AT_MOST_ONCE) as (out, _):
        for i in range(n):
            out.send(Order(str(i), 1.0))


def _stays(predicate: object, seconds: float = 0.3) -> bool:
    """`predicate()` still holds after `seconds` (for something that must not happen)."""
    threading.Event().wait(seconds)
    return bool(predicate())  # type: ignore[operator]


def _settle(rcv: Any, ack: Any, n: int) -> None:
    for _ in range(n):
        ack.send(rcv.recv(timeout=5))


def test_a_fresh_consumer_takes_what_it_waits_for_then_earns_its_buffer(
    queues: list[Queue], name: str
) -> None:
    """100 waiting, in_flight 500, a buffer of 8: nothing is taken before anyone receives
    (before: all 100); after 10 settled the buffer holds up to its 8, or up to the 10
    earned if the application settles fast enough to use more (RATE_WINDOW), refilled
    by halves: never the 100."""
    q = open_q(queues, name)
    _fill(q, 100)
    rcv, ack = dequeue(Order, q, capacity=8)
    assert _stays(lambda: broker(name).depth == 100)
    _settle(rcv, ack, 10)
    wait_for(lambda: len(rcv) >= 4, what="the earned buffer refilled")
    assert _stays(lambda: 80 <= broker(name).depth <= 86 and len(rcv) <= 10)


def test_the_buffer_grows_one_message_per_settled_message(queues: list[Queue], name: str) -> None:
    """A slow start: after k settled messages the buffer holds k (capacity 32)."""
    q = open_q(queues, name)
    _fill(q, 100)
    rcv, ack = dequeue(Order, q)
    settled = 0
    for k in (1, 3, 6):
        _settle(rcv, ack, k - settled)
        settled = k
        wait_for(lambda k=k: len(rcv) == k, what=f"{k} buffered after {k} settled")
        assert _stays(lambda k=k: len(rcv) == k)


def test_an_unbuffered_rcv_takes_one_message_per_waiting_receiver(
    queues: list[Queue], name: str
) -> None:
    """capacity=0: nothing is taken until a receiver waits, then one per waiting receiver."""
    q = open_q(queues, name)
    _fill(q, 10)
    rcv, ack = dequeue(Order, q, capacity=0)
    assert _stays(lambda: broker(name).depth == 10)
    waiting = [start(rcv.recv, 10.0) for _ in range(3)]
    got = [w.outcome(10.0) for w in waiting]
    assert sorted(m.object.id for m in got) == ["0", "1", "2"]
    assert _stays(lambda: broker(name).depth == 7)
    for m in got:
        ack.send(m)


def test_the_default_heartbeat_is_a_third_of_the_visibility_timeout(name: str) -> None:
    adapter = EmbeddedAdapter(name, visibility_timeout=3.0)
    with Queue(adapter) as q:
        assert q.options.extend_every == pytest.approx(1.0)
    with Queue(EmbeddedAdapter(name), extend_every=0.5) as q:
        assert q.options.extend_every == 0.5


@pytest.mark.parametrize("every", [1.5, 3.0, 5.0, 0.0, -1.0])
def test_an_extension_interval_out_of_range_is_refused_at_the_call(name: str, every: float) -> None:
    with pytest.raises(OptionError, match="extend_every"):
        Queue(EmbeddedAdapter(name, visibility_timeout=3.0), extend_every=every)
    with pytest.raises(OptionError, match="extend_every"):
        connect(f"mem://{name}?visibility_timeout=3", extend_every=every)


def test_messages_waiting_in_the_buffer_outlive_the_visibility_timeout(
    queues: list[Queue], name: str
) -> None:
    """Visibility 0.3 s and no heartbeat option: messages wait in rcv's buffer 1.5 s, five
    timeouts, and none is delivered twice (before: every one came back)."""
    q = open_q(queues, name, EmbeddedAdapter(name, visibility_timeout=0.3))
    _fill(q, 20)
    rcv, ack = dequeue(Order, q, capacity=10)
    _settle(rcv, ack, 10)
    wait_for(lambda: len(rcv) >= 5, what="the buffer refilled (it refills by halves)")
    threading.Event().wait(1.5)  # the scenario: they wait, longer than the timeout
    got = [rcv.recv(timeout=5) for _ in range(10)]
    assert [m.deliveries for m in got] == [1] * 10
    for m in got:
        ack.send(m)
    assert _stays(lambda: broker(name).depth == 0 and len(rcv) == 0)
    assert q.stats().redelivered == 0


class _Revoking(Wrapped):
    """Says, from within a receive, that it lost the messages whose id is odd (as a Kafka
    adapter does in its rebalance callback)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.lose = threading.Event()
        self.dropped = -1

    def receive(self, max_items: int, wait: float) -> Any:
        if self.lose.is_set():
            self.lose.clear()
            self.dropped = self.hooks.revoke(lambda bag: int(bag.id or "0") % 2 == 1)
            return []
        return self.inner.receive(max_items, wait)


def test_messages_a_rebalance_takes_away_leave_the_buffer_unhandled(
    queues: list[Queue], name: str
) -> None:
    """Issue 25: what waits in rcv's buffer for a partition the adapter lost is taken out of
    it, so the application never handles it here (the new owner does); before, it was
    handed out anyway, and handled twice."""
    put_raw(
        name,
        *[
            Bag(
                "Order",
                f'{{"id": "{i}", "amount": 1.0}}'.encode(),
                {"Category": "Order"},
                id=str(i),
            )
            for i in range(12)
        ],
    )
    adapter = _Revoking(EmbeddedAdapter(name))
    q = open_q(queues, name, adapter)
    rcv, ack = dequeue(Order, q, capacity=8)
    _settle(rcv, ack, 2)  # ids 0 and 1: now the buffer may hold two
    wait_for(lambda: len(rcv) == 2, what="two buffered")
    adapter.lose.set()
    with dequeue(Order, q, category="other"):  # a route change wakes the poller
        wait_for(lambda: adapter.dropped >= 0, what="the revoke")
    got = []
    while True:
        try:
            m = rcv.recv(timeout=1)
        except TimeoutError:
            break
        got.append(m.object.id)
        ack.send(m)
    assert adapter.dropped >= 1
    assert not [i for i in got[:2] if int(i) % 2 == 1], got  # none handed out after the loss
