"""The `qchan` command (`python -m qchan` too)."""

from __future__ import annotations

import argparse


def _demo(args: argparse.Namespace) -> int:
    from .demo import run  # noqa: PLC0415 - each command imports only what it needs

    return run(count=args.count, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qchan",
        description="Message queues as Go channels, in plain Python. "
        "Start with `qchan demo`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = sub.add_parser(
        "demo",
        help="run a producer and a consumer over the in-process broker and show what happened",
        description="Send typed messages through the embedded broker (mem://) and receive "
        "them, with a few injected faults, then print a summary: sent, retried, "
        "dead-lettered, received, redelivered, acked, throughput and latency.",
    )
    demo.add_argument("--count", type=int, default=20_000, help="messages to send (20000)")
    demo.add_argument("--quiet", action="store_true", help="no progress line")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
