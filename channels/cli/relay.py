"""`qchan relay FROM TO`: forward an outbox to a queue until stopped (qchan.outbox.relay).

Runs the relay in this process. SIGTERM or Ctrl-C stops it after the batch in hand (its
rows are confirmed and removed, or left for the next relay); an unexpected error is
logged with its traceback and the relay starts the batch again after a growing delay
(it never dies quietly). With --metrics-port it serves /metrics (Prometheus:
`qchan_relay_*_total`) and /healthz (200 while the relay reaches both ends, 503 once it
has failed for longer than --unhealthy-after).
"""

from __future__ import annotations

import argparse
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from ._target import EXIT_FAILED, EXIT_OK, EXIT_USAGE, WorkerRuntimeError, WorkerUsageError

__all__ = ["register", "run"]

_COUNTERS = {
    "relayed": "messages confirmed by the target and removed from the outbox",
    "dead_lettered": "messages moved to the outbox's dead-letter table",
    "resent": "messages sent again after a send whose outcome was unknown",
    "batches": "batches committed",
    "failures": "failed attempts (the target or the outbox's database)",
}


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 s, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return value


def register(sub: Any) -> None:
    """Add `relay` to the `qchan` command's subparsers."""
    p = sub.add_parser(
        "relay",
        help="forward an outbox (publish on commit) to a queue, until stopped",
        description="Forward the rows of the outbox FROM (postgresql://...?queue=outbox) to "
        "the queue TO (any qchan URL), in order; a row leaves the outbox only once TO "
        "confirmed it; what TO refuses goes to the outbox's dead-letter table. Many relays "
        "may run on one outbox: one sends at a time, the others wait their turn. SIGTERM "
        "or Ctrl-C stops after the batch in hand.",
        epilog="exit codes: 0 stopped by a signal; 1 a runtime failure (port in use); "
        "2 bad usage (URL, option).",
    )
    p.add_argument(
        "source", metavar="FROM", help="the outbox, postgresql://user@host/db?queue=outbox"
    )
    p.add_argument(
        "target",
        metavar="TO",
        help="the queue, e.g. amqp://guest:guest@127.0.0.1/%%2F?queue=orders",
    )
    p.add_argument("--batch", type=_count, default=500, help="rows per transaction (500)")
    p.add_argument(
        "--drain", action="store_true", help="stop once the outbox is empty (scripts, jobs)"
    )
    p.add_argument(
        "--hold",
        type=_seconds,
        default=10.0,
        help="longest a batch's transaction stays open while TO fails, s (10)",
    )
    p.add_argument(
        "--unhealthy-after",
        type=_seconds,
        default=30.0,
        help="/healthz answers 503 after failing this long, s (30)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="serve /metrics (Prometheus) and /healthz on this port (needs qchan[metrics])",
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="the address to serve on (0.0.0.0)")  # noqa: S104
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The `relay` command."""
    from ..errors import QchanError  # noqa: PLC0415
    from ..outbox import Relayed, relay  # noqa: PLC0415
    from ..outbox._relay import open_target  # noqa: PLC0415
    from ..urls import redact  # noqa: PLC0415
    from ..worker import stop_on_signals  # noqa: PLC0415

    def say(text: str) -> None:
        for url in (args.source, args.target):
            text = text.replace(url, redact(url))
        print(f"qchan relay: {text}", file=sys.stderr, flush=True)

    try:
        from qchan.adapters.postgres import from_url  # noqa: PLC0415

        source = from_url(args.source)
        target = open_target(args.target)
    except ImportError as e:
        say(f"{e} (pip install 'qchan[postgres]' and the extra of TO's transport)")
        return EXIT_USAGE
    except (QchanError, TypeError, ValueError) as e:
        say(str(e))
        return EXIT_USAGE
    done = Relayed()
    stop = threading.Event()
    server = None
    try:
        with stop_on_signals(stop):
            if args.metrics_port is not None:
                try:
                    server = _serve_metrics(args, done, source.options.queue)
                except WorkerUsageError as e:
                    say(str(e))
                    return EXIT_USAGE
                except WorkerRuntimeError as e:
                    say(str(e))
                    return EXIT_FAILED
            say(f"relaying {redact(args.source)} to {redact(args.target)}")
            try:
                relay(
                    source,
                    target,
                    stop=stop,
                    drain=args.drain,
                    batch=args.batch,
                    hold=args.hold,
                    done=done,
                )
            except QchanError as e:
                say(str(e))
                return EXIT_USAGE
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        target.close()
        source.close()
    say(
        f"stopped: {done.relayed:,} relayed, {done.dead_lettered:,} dead-lettered, "
        f"{done.resent:,} sent again after a lost answer"
    )
    return EXIT_OK


def _serve_metrics(args: argparse.Namespace, done: Any, outbox: str) -> ThreadingHTTPServer:
    """/metrics: the relay's counters; /healthz: 503 once it has failed `--unhealthy-after`."""
    from ._metrics import TEXT, Reply, _prometheus, serve_http  # noqa: PLC0415

    prom = _prometheus()
    from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415
    from prometheus_client.registry import Collector  # noqa: PLC0415

    class Numbers(Collector):
        def collect(self) -> Any:
            for name, text in _COUNTERS.items():
                family = CounterMetricFamily(f"qchan_relay_{name}", text, labels=["outbox"])
                family.add_metric([outbox], getattr(done, name))
                yield family

    registry = prom.CollectorRegistry()
    registry.register(Numbers())

    def metrics() -> Reply:
        return 200, prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST

    def health() -> Reply:
        ok = done.healthy(args.unhealthy_after)
        text = "relaying\n" if ok else f"failing: {done.last_error}\n"
        return 200 if ok else 503, text.encode(), TEXT

    return serve_http(
        args.metrics_host,
        args.metrics_port,
        metrics=metrics,
        health=health,
        name="qchan-relay-metrics",
    )
