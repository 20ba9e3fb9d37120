"""Items per second between two threads: qchan.Chan and select vs queue.Queue, same run.

Run: `python benchmarks/bench_chan.py [--items N] [--repeat R]` (or `make bench`).
Each figure is the best of R runs; the ratio column is qchan / baseline.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Callable

from qchan import Chan, ChannelClosed, select

_DONE = object()


def _pair(produce: Callable[[], None], consume: Callable[[], None]) -> float:
    """Run a producer and a consumer thread; return the seconds until both finish."""
    t_c = threading.Thread(target=consume)
    t_p = threading.Thread(target=produce)
    start = time.perf_counter()
    t_c.start()
    t_p.start()
    t_p.join()
    t_c.join()
    return time.perf_counter() - start


def queue_rate(n: int, maxsize: int) -> float:
    q: queue.Queue[object] = queue.Queue(maxsize)

    def produce() -> None:
        put = q.put
        for i in range(n):
            put(i)
        put(_DONE)

    def consume() -> None:
        get = q.get
        while get() is not _DONE:
            pass

    return n / _pair(produce, consume)


def chan_rate(n: int, capacity: int) -> float:
    ch: Chan[object] = Chan(capacity)

    def produce() -> None:
        send = ch.send
        for i in range(n):
            send(i)
        ch.close()

    def consume() -> None:
        for _ in ch:
            pass

    return n / _pair(produce, consume)


def recv_rate(n: int, capacity: int = 1024) -> float:
    """Baseline for select: a single recv loop on one channel."""
    ch: Chan[object] = Chan(capacity)

    def produce() -> None:
        send = ch.send
        for i in range(n):
            send(i)
        ch.close()

    def consume() -> None:
        recv = ch.recv
        try:
            while True:
                recv()
        except ChannelClosed:
            pass

    return n / _pair(produce, consume)


def select_rate(n: int, capacity: int = 1024) -> float:
    """One producer round-robins over 4 channels; the consumer selects over all 4."""
    chans: list[Chan[object]] = [Chan(capacity) for _ in range(4)]

    def produce() -> None:
        # Unrolled round robin so the producer does no more work per item than
        # the baseline's plain `send` loop.
        s0, s1, s2, s3 = (c.send for c in chans)
        for i in range(0, n, 4):
            s0(i)
            s1(i)
            s2(i)
            s3(i)
        for c in chans:
            c.close()

    def consume() -> None:
        open_ = list(chans)
        while open_:
            sel = select(*open_)
            assert sel is not None
            if not sel.ok:
                del open_[sel.index]

    return n / _pair(produce, consume)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    n, r = args.items, args.repeat

    def best(f: Callable[[], float]) -> float:
        return max(f() for _ in range(r))

    rows = [
        (
            "buffered 1024",
            "queue.Queue(1024)",
            best(lambda: queue_rate(n, 1024)),
            "Chan(1024)",
            best(lambda: chan_rate(n, 1024)),
            1.5,
        ),
        (
            "rendezvous",
            "queue.Queue(1)",
            best(lambda: queue_rate(n // 4, 1)),
            "Chan(0)",
            best(lambda: chan_rate(n // 4, 0)),
            1.2,
        ),
        (
            "select over 4 ready",
            "Chan(1024).recv",
            best(lambda: recv_rate(n)),
            "select(4 x Chan(1024))",
            best(lambda: select_rate(n)),
            0.5,
        ),
    ]
    print(
        f"qchan.Chan vs queue.Queue, 1 producer -> 1 consumer thread, best of {r}, "
        f"Python {sys.version.split()[0]}"
    )
    print()
    print("| case | baseline | items/s | qchan | items/s | ratio | target |")
    print("|---|---|---:|---|---:|---:|---:|")
    failed = False
    for case, bname, brate, qname, qrate, target in rows:
        ratio = qrate / brate
        failed |= ratio < target
        mark = "" if ratio >= target else " (below)"
        print(
            f"| {case} | {bname} | {brate:,.0f} | {qname} | {qrate:,.0f} | "
            f"{ratio:.2f}x{mark} | >= {target}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
