"""The poller takes what the consumers can use (DESIGN.md section 9, issue 25): the free
buffer of every open `rcv` plus the receivers waiting on it, never the in-flight limit's
worth; and the queue keeps what it holds invisible by default where the broker has a
visibility timeout."""

from __future__ import annotations

import threading

import pytest
from support.helpers import start, wait_for
from support.queues import open_q

from qchan import AT_MOST_ONCE, Queue, connect, dequeue, enqueue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.options import OptionError
from qchan.testing import Order


def _fill(q: Queue, n: int) -> None:
    with enqueue(Order, q, policy=AT_MOST_ONCE) as (out, _):
        for i in range(n):
            out.send(Order(str(i), 1.0))


def _stays(predicate: object, seconds: float = 0.3) -> bool:
    """`predicate()` still holds after `seconds` (for something that must not happen)."""
    threading.Event().wait(seconds)
    return bool(predicate())  # type: ignore[operator]


def test_the_poller_takes_the_buffer_not_the_in_flight_limit(
    queues: list[Queue], name: str
) -> None:
    """100 waiting, in_flight 500, a buffer of 8 and nobody receiving: 8 are taken (before:
    all 100); each message the application takes makes room for exactly one more."""
    q = open_q(queues, name)
    _fill(q, 100)
    rcv, ack = dequeue(Order, q, capacity=8)
    wait_for(lambda: broker(name).depth == 92, what="the buffer filled")
    assert _stays(lambda: broker(name).depth == 92)
    for i in range(3):
        ack.send(rcv.recv(timeout=5))
        wait_for(lambda i=i: broker(name).depth == 91 - i, what="one more taken")
    wait_for(lambda: q.stats().in_flight == 8, what="the acks applied: 8 held, all buffered")


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


def test_several_categories_add_their_demand(queues: list[Queue], name: str) -> None:
    """Two categories with buffers of 4 and 6: up to 10 are taken between them."""
    q = open_q(queues, name)
    _fill(q, 50)
    orders = dequeue(Order, q, capacity=4)
    others = dequeue(Order, q, category="other", capacity=6)
    wait_for(lambda: broker(name).depth == 40, what="both buffers' worth taken")
    assert _stays(lambda: broker(name).depth == 40)
    orders.close()
    others.close()


def test_the_default_heartbeat_is_a_third_of_the_visibility_timeout(name: str) -> None:
    adapter = EmbeddedAdapter(name, visibility_timeout=3.0)
    with Queue(adapter) as q:
        assert q._context().heartbeat == pytest.approx(1.0)
    with Queue(EmbeddedAdapter(name), heartbeat=0.5) as q:
        assert q._context().heartbeat == 0.5


@pytest.mark.parametrize("heartbeat", [3.0, 5.0, 0.0, -1.0])
def test_a_heartbeat_out_of_range_is_refused_at_the_call(name: str, heartbeat: float) -> None:
    with pytest.raises(OptionError, match="heartbeat"):
        Queue(EmbeddedAdapter(name, visibility_timeout=3.0), heartbeat=heartbeat)
    with pytest.raises(OptionError, match="heartbeat"):
        connect(f"mem://{name}?visibility_timeout=3", heartbeat=heartbeat)


def test_messages_waiting_in_the_buffer_outlive_the_visibility_timeout(
    queues: list[Queue], name: str
) -> None:
    """Visibility 0.3 s and no heartbeat option: messages wait in rcv's buffer 1.5 s, five
    timeouts, and none is delivered twice (before: every one came back)."""
    q = open_q(queues, name, EmbeddedAdapter(name, visibility_timeout=0.3))
    _fill(q, 10)
    rcv, ack = dequeue(Order, q, capacity=10)
    wait_for(lambda: broker(name).depth == 0, what="all ten in the buffer")
    threading.Event().wait(1.5)  # the scenario: they wait, longer than the timeout
    got = [rcv.recv(timeout=5) for _ in range(10)]
    assert [m.deliveries for m in got] == [1] * 10
    for m in got:
        ack.send(m)
    assert _stays(lambda: broker(name).depth == 0 and len(rcv) == 0)
    assert q.stats().redelivered == 0
