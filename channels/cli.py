"""The `qchan` command."""

from __future__ import annotations

import argparse
import sys
import threading
import time

from .chan import Chan
from .select import select


def _demo(args: argparse.Namespace) -> int:
    """A producer, a squarer and a printer connected by channels; a select watches a deadline."""
    numbers: Chan[int] = Chan(0, name="numbers")
    squares: Chan[int] = Chan(16, name="squares")
    n = args.count

    def produce() -> None:
        for i in range(n):
            numbers.send(i)
        numbers.close()

    def square() -> None:
        for i in numbers:
            squares.send(i * i)
        squares.close()

    started = time.perf_counter()
    workers = [threading.Thread(target=produce, name="producer"),
               threading.Thread(target=square, name="squarer")]
    for w in workers:
        w.start()
    total = received = 0
    tick: Chan[None] = Chan(0, name="never")
    while True:
        sel = select(squares, tick, timeout=5.0)
        if sel is None:
            print("timed out waiting for squares", file=sys.stderr)
            return 1
        if not sel.ok:
            break
        total += sel.value
        received += 1
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    print(f"sent {n} numbers through an unbuffered channel, squared them into a buffered one")
    print(f"received {received} squares, sum {total} (expected {sum(i * i for i in range(n))})")
    print(f"{received / elapsed:,.0f} items/s through two channel hops and a select")
    return 0 if received == n else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qchan", description="Message queues as Go channels, in plain Python."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a producer/consumer pipeline and print what it did")
    demo.add_argument("--count", type=int, default=100_000, help="items to move (default 100000)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
