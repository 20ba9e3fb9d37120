"""Pipe: the kernel's batch operations keep Go's invariants (`len(ch) <= cap(ch)`, FIFO,
close) for every receiver, whichever way it receives."""

from __future__ import annotations

import pytest
from support.helpers import start, wait_for

from qchan import ChannelClosed, select
from qchan.chan import Chan, Pipe

# -- push: a run goes in whole, what does not fit waits in the overflow ---------------


def test_push_fills_the_buffer_and_keeps_the_rest_in_order_beyond_len() -> None:
    p: Pipe[int] = Pipe(2)
    p.push([1, 2, 3, 4, 5])
    assert (len(p), p.capacity, list(p.buffer), list(p.overflow)) == (2, 2, [1, 2], [3, 4, 5])
    assert p.recv(timeout=0) == 1
    assert (len(p), list(p.overflow)) == (2, [4, 5])  # the overflow moved up by one
    p.push([6])  # behind what waits: FIFO across pushes
    assert [p.recv(timeout=0) for _ in range(5)] == [2, 3, 4, 5, 6]
    with pytest.raises(TimeoutError):
        p.recv(timeout=0)


def test_push_hands_to_parked_receivers_first() -> None:
    p: Pipe[int] = Pipe(0)
    got: list[int] = []
    waiters = [start(lambda: got.append(p.recv(timeout=5))) for _ in range(2)]
    wait_for(lambda: p.waiting == 2, what="two receivers parked")
    p.push([1, 2, 3])
    for w in waiters:
        w.join(5)
    assert sorted(got) == [1, 2] and len(p) == 0 and list(p.overflow) == [3]
    assert p.recv(timeout=0) == 3  # unbuffered: straight from the overflow


@pytest.mark.parametrize("view", [False, True])
def test_select_receives_from_the_overflow(view: bool) -> None:
    p: Pipe[int] = Pipe(1)
    p.push([1, 2, 3])
    case = p.recv_only() if view else p
    other: Chan[int] = Chan()
    got = []
    for _ in range(3):
        sel = select(other, case, timeout=0)
        assert sel is not None and sel.index == 1
        got.append(sel.value)
        assert len(p) <= 1
    assert got == [1, 2, 3]
    assert select(other, case, timeout=0) is None


def test_a_select_parked_on_an_empty_pipe_gets_the_first_of_a_push() -> None:
    p: Pipe[int] = Pipe(0)
    box: list[object] = []
    t = start(lambda: box.append(select(p, timeout=5)))
    wait_for(lambda: p.waiting == 1, what="select parked")
    p.push([7, 8])
    t.join(5)
    sel = box[0]
    assert sel is not None and sel.value == 7  # type: ignore[attr-defined]
    assert p.recv(timeout=0) == 8


def test_close_drops_the_overflow_like_parked_sends_and_keeps_the_buffer() -> None:
    p: Pipe[int] = Pipe(1)
    p.push([1, 2, 3])
    p.close()
    assert list(p) == [1]  # the buffer drains; the overflow was never sent, in Go's terms
    with pytest.raises(ChannelClosed):
        p.push([4])


def test_withdraw_and_recv_many_see_the_overflow() -> None:
    p: Pipe[int] = Pipe(2)
    p.push([1, 2, 3, 4, 5])
    assert p.withdraw(lambda x: x % 2 == 0) == [2, 4]
    assert (list(p.buffer), list(p.overflow)) == ([1, 3], [5])
    assert p.recv_many(10) == [1, 3, 5] and not p.overflow


# -- notify: a reader that never parks hears of the first item -------------------------


def test_notify_fires_for_the_first_item_and_for_a_parked_sender() -> None:
    p: Pipe[int] = Pipe(2)
    calls: list[int] = []
    p.notify(lambda c: calls.append(len(c)))
    p.send(1)
    p.send(2)  # the buffer was not empty: no call
    assert calls == [1]
    blocked = start(lambda: p.send(3, timeout=5))
    wait_for(lambda: len(calls) == 2, what="the parked sender's call")
    assert p.recv_many(10) == [1, 2, 3]  # the parked sender's item moves in behind
    blocked.join(5)
    assert blocked.error is None
    p.send(4)  # empty again: a call
    assert len(calls) == 3


def test_notify_fires_for_a_select_send() -> None:
    p: Pipe[int] = Pipe(1)
    calls: list[int] = []
    p.notify(lambda c: calls.append(len(c)))
    sel = select((p, 1), timeout=0)
    assert sel is not None and calls == [1]
    p.notify(None)
    p.recv(timeout=0)
    p.send(2)
    assert calls == [1]
