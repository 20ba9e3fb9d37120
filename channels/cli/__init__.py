"""The `qchan` command (`python -m qchan` too): demo, send, listen, bench, worker, and the
operator's peek, redrive, purge, stats."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from ..errors import QchanError
from ..logs import CLIENT
from ..urls import redact
from . import relay, worker

EPILOG = """\
URLs:
  mem://orders                                         in-process (this process only)
  sqs://orders?endpoint=http://127.0.0.1:4566&region=us-east-1
  kafka://127.0.0.1:9092/orders?group=billing
  amqp://guest:guest@127.0.0.1:5672/%2F?queue=orders

examples:
  qchan demo
  printf '{"id": 1}\\n{"id": 2}\\n' | qchan send amqp://guest:guest@127.0.0.1/%2F?queue=orders
  qchan listen amqp://guest:guest@127.0.0.1/%2F?queue=orders --count 2
  qchan redrive 'sqs://orders-dlq?region=eu-west-1' 'sqs://orders?region=eu-west-1'

exit codes: 0 done; 1 messages not delivered (or none received in time, or the
broker could not be reached); 2 bad usage, URL, option or input; 130 interrupted.
"""


def _demo(args: argparse.Namespace) -> int:
    from .demo import run  # noqa: PLC0415 - each command imports only what it needs

    return run(count=args.count, quiet=args.quiet)


def _send(args: argparse.Namespace) -> int:
    from .commands import factory, send  # noqa: PLC0415

    make = factory(args.url, args.retry_seconds, agent="qchan-cli")
    if args.file == "-":
        return send(make, args.category, sys.stdin, stream=args.stream, quiet=args.quiet)
    try:
        with open(args.file, encoding="utf-8") as f:
            return send(make, args.category, f, stream=args.stream, quiet=args.quiet)
    except OSError as e:
        raise _UsageError(f"cannot read {args.file}: {e.strerror}") from None


def _listen(args: argparse.Namespace) -> int:
    from .commands import factory, listen  # noqa: PLC0415

    # With --timeout, a first connection attempt gets no longer than that.
    seconds = min(args.retry_seconds, args.timeout or args.retry_seconds)
    make = factory(args.url, seconds, agent="qchan-cli")
    return listen(
        make,
        args.category,
        count=args.count,
        ack=not args.no_ack,
        timeout=args.timeout,
        out=sys.stdout,
        grace=0.0 if args.url.startswith("mem:") else seconds + 1.0,
    )


def _bench(args: argparse.Namespace) -> int:
    from .commands import bench, factory  # noqa: PLC0415

    make = factory(args.url, 30.0, agent="qchan-bench")
    return bench(make, count=args.count, size=args.size, category=args.category, quiet=False)


def _peek(args: argparse.Namespace) -> int:
    from .operate import guarded, peek_command  # noqa: PLC0415

    return guarded(
        lambda: peek_command(
            args.url,
            count=args.count,
            timeout=args.timeout,
            retry_seconds=args.retry_seconds,
            out=sys.stdout,
        ),
        [args.url],
        args.verbose,
    )


def _redrive(args: argparse.Namespace) -> int:
    from .operate import guarded, redrive_command  # noqa: PLC0415

    return guarded(
        lambda: redrive_command(
            args.source,
            args.target,
            count=args.count,
            timeout=args.timeout,
            retry_seconds=args.retry_seconds,
        ),
        [args.source, args.target],
        args.verbose,
    )


def _purge(args: argparse.Namespace) -> int:
    from .operate import guarded, purge  # noqa: PLC0415

    return guarded(lambda: purge(args.url, yes=args.yes, stdin=sys.stdin), [args.url], args.verbose)


def _stats(args: argparse.Namespace) -> int:
    from .operate import guarded, stats  # noqa: PLC0415

    return guarded(
        lambda: stats(args.url, as_json=args.json, out=sys.stdout), [args.url], args.verbose
    )


class _UsageError(Exception):
    pass


def version() -> str:
    """The installed distribution's version; `qchan.__version__` when run from a bare tree."""
    from importlib import metadata  # noqa: PLC0415 - only `--version` needs it

    try:
        return metadata.version("qchan")
    except metadata.PackageNotFoundError:
        from .. import __version__  # noqa: PLC0415

        return __version__


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number > 0 (so a bad value is a usage error naming the option)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qchan",
        description="Message queues as Go channels, in plain Python. New here? Run "
        "`qchan demo`, then send and listen on a queue URL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log more, including the client libraries' own messages",
    )
    p.add_argument("--version", action="version", version=f"qchan {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    demo = sub.add_parser(
        "demo",
        help="run a producer and a consumer over the in-process broker and show what happened",
        description="Send typed messages through the embedded broker (mem://) and receive "
        "them, with a few injected faults, then print a summary: sent, retried, "
        "dead-lettered, received, redelivered, acked, throughput and latency.",
    )
    demo.add_argument(
        "--count", type=_positive(int), default=20_000, help="messages to send (20000)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress line")
    demo.set_defaults(run=_demo)

    send = sub.add_parser(
        "send",
        help="send JSON lines (stdin or a file) to a queue",
        description="Read one JSON document per line and send each as a message. Every line "
        "is checked before anything is sent: a bad line stops the command with its number "
        "and the reason, and nothing is sent. Prints how many were sent and which were not "
        "delivered.",
    )
    send.add_argument("url", help="the queue URL, e.g. mem://orders or sqs://orders?region=...")
    send.add_argument(
        "--category",
        default="message",
        help="the Category attribute of every message (default: message)",
    )
    send.add_argument("--file", default="-", help="read this file instead of stdin")
    send.add_argument(
        "--stream",
        action="store_true",
        help="send while reading (for endless input); a bad line stops there",
    )
    _retry_seconds(send, 30.0, "how long to keep retrying an unreachable broker")
    send.add_argument("--quiet", action="store_true", help="print nothing unless it failed")
    send.set_defaults(run=_send)

    listen = sub.add_parser(
        "listen",
        help="print received messages as JSON lines, and ack them",
        description="Print each message as one JSON line: category, attributes, and the body "
        "(`body` if it is JSON, `body_text` if it is other text, `body_base64` otherwise). "
        "Messages are acked once printed, unless --no-ack (then they go back to the queue).",
    )
    listen.add_argument("url", help="the queue URL")
    listen.add_argument(
        "--category", default="*", help="only this category (default: every message)"
    )
    listen.add_argument("--count", type=_positive(int), help="stop after this many messages")
    listen.add_argument(
        "--timeout",
        type=_positive(float),
        help="stop when no message arrives for this many seconds",
    )
    listen.add_argument(
        "--no-ack", action="store_true", help="do not ack: the messages stay on the queue"
    )
    _retry_seconds(listen, 10.0, "the transport's timeouts for one call")
    listen.set_defaults(run=_listen)

    bench = sub.add_parser(
        "bench",
        help="measure enqueue and dequeue throughput and latency against a queue",
        description="Send --count messages of --size bytes while receiving and acking them; "
        "print enqueue, dequeue and end-to-end rates and p50/p99 latency.",
    )
    bench.add_argument("url", help="the queue URL")
    bench.add_argument("--count", type=_positive(int), default=10_000, help="messages (10000)")
    bench.add_argument("--size", type=_positive(int), default=1024, help="bytes per message (1024)")
    bench.add_argument("--category", default="qchan-bench", help="category (qchan-bench)")
    bench.set_defaults(run=_bench)
    _operator_parsers(sub)
    worker.register(sub)
    relay.register(sub)
    return p


def _retry_seconds(command: argparse.ArgumentParser, default: float, what: str) -> None:
    """The command's --retry-seconds: `what` it bounds, `default` seconds."""
    command.add_argument(
        "--retry-seconds", type=_positive(float), default=default, help=f"{what} ({default:g})"
    )


def _operator_parsers(sub: Any) -> None:
    """peek, redrive, purge, stats (the work is in operate.py)."""
    patience = {"type": _positive(float), "default": 5.0}
    peek = sub.add_parser(
        "peek",
        help="print messages as JSON lines and give them back untouched",
        description="Receive up to --count messages, print each as `listen` does (plus its id "
        "and delivery count), then give them all back. SQS counts a peek as a receive; "
        "RabbitMQ marks the messages redelivered.",
    )
    peek.add_argument("url", help="the queue URL")
    peek.add_argument("--count", type=_positive(int), default=10, help="at most this many (10)")
    peek.add_argument("--timeout", **patience, help="stop after this long without a message (5)")
    _retry_seconds(peek, 10.0, "patience with an unreachable broker")
    peek.set_defaults(run=_peek)

    redrive = sub.add_parser(
        "redrive",
        help="move messages from one queue to another (dead letters back after a fix)",
        description="Move messages from FROM to TO, bodies and attributes as they are. Each "
        "leaves FROM only after TO accepted it; one TO refuses goes back to FROM. Prints "
        "moved and failed, and what may be duplicated after a lost connection. Exits 1 if "
        "any message was not moved.",
    )
    redrive.add_argument("source", metavar="FROM", help="the queue to take from, e.g. orders.dlq")
    redrive.add_argument("target", metavar="TO", help="the queue to send to")
    redrive.add_argument("--count", type=_positive(int), help="move at most this many")
    redrive.add_argument("--timeout", **patience, help="stop after this long without a message (5)")
    _retry_seconds(redrive, 30.0, "how long to keep retrying an unreachable broker")
    redrive.set_defaults(run=_redrive)

    purge = sub.add_parser(
        "purge",
        help="delete every message of a queue (asks first)",
        description="Delete every message of the queue. Asks on the terminal first; without "
        "a terminal, nothing is purged unless --yes. On Kafka: skip, for the URL's group only.",
    )
    purge.add_argument("url", help="the queue URL")
    purge.add_argument("--yes", action="store_true", help="do not ask")
    purge.set_defaults(run=_purge)

    stats = sub.add_parser(
        "stats",
        help="how many messages a queue holds (ready, in flight) as the broker tells",
        description="Print the queue's ready and in-flight messages (and delayed, on SQS); "
        "`unknown` where the broker does not tell. On Kafka: the group's lag.",
    )
    stats.add_argument("url", help="the queue URL")
    stats.add_argument("--json", action="store_true", help="one JSON object instead")
    stats.set_defaults(run=_stats)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The library logs through `qchan.*` loggers; on the command line, say it in our voice.
    # Client libraries (pika, botocore, ...) log their own retries loudly: only with -v.
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR if quiet else logging.WARNING,
        format="qchan: %(levelname)s: %(message)s",
    )
    if args.verbose:  # the client libraries' own lines (librdkafka's are at DEBUG)
        logging.getLogger(CLIENT).setLevel(logging.DEBUG)
    else:
        for noisy in ("pika", "botocore", "boto3", "urllib3", "confluent_kafka"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (_UsageError, QchanError) as e:
        # URL errors, unknown options, missing extras: say what to do, no traceback.
        url = getattr(args, "url", "")
        text = str(e).replace(url, redact(url)) if url else str(e)
        print(f"qchan {args.command}: {text}", file=sys.stderr)
        return 2


def run() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    run()
