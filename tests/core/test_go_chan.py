"""The behaviour of Go's test/chan programs, rewritten for qchan from what they check.

sieve (a chain of unbuffered channels), nonblock (operations that must not
block), doubleselect (senders selecting over several channels, each value
received exactly once), select fairness, and closedchan (close semantics).
"""

from __future__ import annotations

from collections import Counter

import pytest
from support.helpers import join_all, start, wait_for

from qchan import Chan, ChannelClosed, Selected, select


def test_sieve_of_eratosthenes_over_a_chain_of_unbuffered_channels() -> None:
    def generate(out: Chan[int]) -> None:
        n = 2
        while True:
            try:
                out.send(n)
            except ChannelClosed:
                return
            n += 1

    def filter_(inp: Chan[int], out: Chan[int], prime: int) -> None:
        try:
            for n in inp:
                if n % prime:
                    out.send(n)
        except ChannelClosed:
            pass
        finally:
            inp.close()  # propagate shutdown up the chain

    chans: list[Chan[int]] = [Chan()]
    threads = [start(generate, chans[0])]
    primes = []
    for _ in range(60):
        prime = chans[-1].recv(timeout=10)
        primes.append(prime)
        nxt: Chan[int] = Chan()
        threads.append(start(filter_, chans[-1], nxt, prime))
        chans.append(nxt)
    chans[-1].close()
    join_all(threads, 30)

    expected = [n for n in range(2, 300) if all(n % d for d in range(2, int(n**0.5) + 1))]
    assert primes == expected[:60]


@pytest.mark.parametrize("capacity", [0, 1, 10])
def test_nonblock_operations_never_block(capacity: int) -> None:
    ch: Chan[int] = Chan(capacity)
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0)
    assert select(ch, timeout=0) is None
    for i in range(capacity):
        ch.send(i, timeout=0)
    with pytest.raises(TimeoutError):
        ch.send(-1, timeout=0)
    assert select((ch, -1), timeout=0) is None
    # A parked receiver makes a non-blocking send succeed, as in Go.
    if capacity == 0:
        w = start(ch.recv)
        wait_for(lambda: ch._recvq, what="the receiver to park")
        ch.send(42, timeout=0)
        assert w.outcome() == 42


def test_doubleselect_each_value_received_exactly_once() -> None:
    n = 5_000
    chans: list[Chan[int]] = [Chan() for _ in range(4)]
    mux: Chan[int] = Chan()

    def sender() -> None:
        for i in range(n):
            select(*[(c, i) for c in chans])
        for c in chans:
            c.close()

    def recver(inp: Chan[int]) -> None:
        for v in inp:
            mux.send(v)

    workers = [start(sender)] + [start(recver, c) for c in chans]

    def closer() -> None:
        join_all(workers[1:], 60)
        mux.close()

    c = start(closer)
    seen = Counter(mux)
    c.outcome(60)
    assert sorted(seen) == list(range(n))
    assert max(seen.values()) == 1


def test_select_fairness_over_four_ready_channels() -> None:
    """Go's selectfair: with every case ready, each is chosen about as often. Every channel
    holds all its items from the start, so all four are ready at each select (fillers
    refilling in the background made readiness, not select, decide: with one filler slow
    to be scheduled, its channel got 3,518 of 20,000 picks in a CI run)."""
    n = 20_000
    chans: list[Chan[int]] = [Chan(n) for _ in range(4)]
    for c in chans:
        for _ in range(n):
            c.send(1, timeout=0)
    counts: Counter[int] = Counter()
    for _ in range(n):
        sel = select(*chans)
        assert sel is not None
        counts[sel.index] += 1
    # Each expects 5,000 (a standard deviation of about 61): 4,000 is far out of chance.
    assert min(counts.values()) > n / 4 * 0.8, counts


def test_select_takes_from_channels_refilled_by_parked_senders() -> None:
    """Four channels kept full by senders parked on them: every channel gets picked, and
    every item sent is received once (how often each is ready depends on the scheduler,
    so fairness itself is the test above)."""
    chans: list[Chan[int]] = [Chan(1) for _ in range(4)]
    sent = [0, 0, 0, 0]

    def keep_full(i: int) -> None:
        try:
            while True:
                chans[i].send(i)
                sent[i] += 1
        except ChannelClosed:
            pass

    fillers = [start(keep_full, i) for i in range(4)]
    counts: Counter[int] = Counter()
    for _ in range(4_000):
        sel = select(*chans)
        assert sel is not None
        counts[sel.index] += 1
    for c in chans:
        c.close()
    join_all(fillers)
    assert set(counts) == {0, 1, 2, 3}, counts
    leftover = [len(c) for c in chans]  # buffered items stay readable after close
    assert [counts[i] + leftover[i] for i in range(4)] == sent


@pytest.mark.parametrize("capacity", [0, 3])
def test_closedchan_semantics(capacity: int) -> None:
    ch: Chan[int] = Chan(capacity)
    if capacity:
        ch.send(1)
    ch.close()
    if capacity:
        assert ch.recv(timeout=0) == 1  # buffered items survive close
    # Receive from a closed, drained channel: immediately "closed", never blocks.
    with pytest.raises(ChannelClosed):
        ch.recv(timeout=0)
    assert select(ch, timeout=0) == Selected(0, None, False)
    assert list(ch) == []
    with pytest.raises(ChannelClosed):
        ch.send(2, timeout=0)
    with pytest.raises(ChannelClosed):
        select((ch, 2), timeout=0)
    ch.close()  # Go panics on a double close; qchan makes close idempotent
