"""select: Go's select semantics over Chan, one behaviour per test."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from support.helpers import join_all, start, wait_for

from qchan import Chan, ChannelClosed, Selected, select


def test_no_cases_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one case"):
        select()


@pytest.mark.parametrize("bad", ["x", 3, (1, 2), (Chan(1),), None])
def test_malformed_case_is_a_type_error_even_when_another_case_is_ready(bad: object) -> None:
    ready: Chan[int] = Chan(1)
    ready.send(1)
    with pytest.raises(TypeError, match="select"):
        select(ready, bad)  # type: ignore[arg-type]
    assert len(ready) == 1, "the ready case ran although the select was rejected"


def test_receive_case() -> None:
    a: Chan[int] = Chan(1)
    b: Chan[int] = Chan(1)
    b.send(9)
    assert select(a, b) == Selected(1, 9, True)


def test_send_case() -> None:
    a: Chan[int] = Chan()
    b: Chan[int] = Chan(1)
    assert select(a, (b, 4)) == Selected(1, None, True)
    assert b.recv(timeout=0) == 4


def test_closed_and_drained_receive_case_reports_not_ok() -> None:
    a: Chan[int] = Chan(1)
    a.send(1)
    a.close()
    assert select(a) == Selected(0, 1, True)
    assert select(a) == Selected(0, None, False)


def test_send_case_on_closed_channel_raises() -> None:
    a: Chan[int] = Chan(1, name="gone")
    a.close()
    with pytest.raises(ChannelClosed, match="gone"):
        select((a, 1))


def test_timeout_zero_polls_once() -> None:
    assert select(Chan[int](), (Chan[int](), 1), timeout=0) is None


def test_timeout_returns_none_and_withdraws_from_every_channel() -> None:
    a: Chan[int] = Chan()
    b: Chan[int] = Chan()
    t0 = time.monotonic()
    assert select(a, b, timeout=0.05) is None
    assert time.monotonic() - t0 >= 0.05
    for ch in (a, b):  # nobody is left parked to swallow an item
        with pytest.raises(TimeoutError):
            ch.send(1, timeout=0)


def test_views_are_cases() -> None:
    a: Chan[int] = Chan(1)
    a.send(3)
    b: Chan[int] = Chan(1)
    assert select(a.recv_only()) == Selected(0, 3, True)
    assert select((b.send_only(), 8)) == Selected(0, None, True)
    assert b.recv() == 8


def test_same_channel_in_two_cases() -> None:
    a: Chan[int] = Chan()
    w = start(lambda: select(a, a))
    wait_for(lambda: len(a._recvq) == 2, what="select parked twice on one channel")
    a.send(5)
    sel = w.outcome()
    assert sel.value == 5 and sel.index in (0, 1)
    assert not a._recvq, "the select left a stale waiter behind"


def test_blocked_select_takes_exactly_one_and_leaves_the_others() -> None:
    a: Chan[int] = Chan()
    b: Chan[int] = Chan()
    w = start(lambda: select(a, b))
    wait_for(lambda: a._recvq and b._recvq, what="select parked on both channels")
    a.send(1)
    assert w.outcome() == Selected(0, 1, True)
    # The select withdrew from b: a send there finds no receiver.
    with pytest.raises(TimeoutError):
        b.send(2, timeout=0)


def test_blocked_select_woken_by_close_of_a_receive_case() -> None:
    a: Chan[int] = Chan()
    b: Chan[int] = Chan()
    w = start(lambda: select(a, b))
    wait_for(lambda: b._recvq, what="select to park")
    b.close()
    assert w.outcome() == Selected(1, None, False)


def test_blocked_select_send_case_woken_by_close_raises() -> None:
    a: Chan[int] = Chan()
    w = start(lambda: select((a, 1)))
    wait_for(lambda: a._sendq, what="select to park")
    a.close()
    with pytest.raises(ChannelClosed):
        w.outcome()


def test_choice_among_ready_cases_is_uniform() -> None:
    n, k = 40_000, 4
    chans: list[Chan[int]] = [Chan(n) for _ in range(k)]
    for c in chans:
        for i in range(n):
            c.send(i)
    counts = Counter(select(*chans).index for _ in range(n))  # type: ignore[union-attr]
    expected = n / k
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(k))
    # 3 degrees of freedom: P(chi2 > 21.1) = 0.0001.
    assert chi2 < 21.1, counts


def test_choice_is_uniform_among_the_ready_subset() -> None:
    n = 20_000
    chans: list[Chan[int]] = [Chan(n) for _ in range(5)]
    for c in (chans[1], chans[3]):
        for i in range(n):
            c.send(i)
    counts = Counter(select(*chans).index for _ in range(n))  # type: ignore[union-attr]
    assert set(counts) == {1, 3}
    assert abs(counts[1] - n / 2) < 4.5 * (n * 0.25) ** 0.5, counts


def test_select_to_select_rendezvous_on_unbuffered_channels() -> None:
    """Both sides select; no value is lost or duplicated and neither side deadlocks."""
    n = 3_000
    data: Chan[int] = Chan()
    never: Chan[int] = Chan()  # a case that never fires, on both sides

    def sender() -> None:
        for i in range(n):
            sel = select((data, i), never)
            assert sel is not None and sel.index == 0

    def receiver() -> list[int]:
        got = []
        for _ in range(n):
            sel = select(never, data)
            assert sel is not None and sel.index == 1
            got.append(sel.value)
        return got

    s, r = start(sender), start(receiver)
    s.outcome(60)
    assert r.outcome(60) == list(range(n))
    assert not never._recvq and not never._sendq, "stale waiters left on the idle channel"


def test_blocked_select_burns_no_cpu() -> None:
    def run() -> float:
        t0 = time.thread_time()
        assert select(Chan[int](), Chan[int](), timeout=1.0) is None
        return time.thread_time() - t0

    cpu = start(run).outcome(10)
    assert cpu < 0.01, f"{cpu:.4f} s of CPU in a select blocked for 1 s"


def test_many_selects_send_and_receive_across_shared_channels() -> None:
    """8 threads select-send over 3 unbuffered channels, 8 select-receive: exactly once each."""
    chans: list[Chan[int]] = [Chan() for _ in range(3)]
    per, producers, consumers = 2_000, 8, 8
    done = threading.Event()
    stop: Chan[None] = Chan()

    def produce(p: int) -> None:
        for i in range(per):
            v = p * per + i
            sel = select(*[(c, v) for c in chans])
            assert sel is not None

    def consume() -> list[int]:
        got = []
        while True:
            sel = select(stop, *chans)
            assert sel is not None
            if sel.index == 0:
                return got
            got.append(sel.value)

    ps = [start(produce, p) for p in range(producers)]
    cs = [start(consume) for _ in range(consumers)]
    join_all(ps, 120)
    done.set()
    stop.close()
    got = [v for part in join_all(cs, 60) for v in part]
    assert len(got) == producers * per
    assert sorted(got) == list(range(producers * per))
