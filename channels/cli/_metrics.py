"""Metrics of `qchan worker`: prometheus_client in multiprocess mode, /metrics and /healthz.

Each child writes its numbers to PROMETHEUS_MULTIPROC_DIR (the parent's temporary
folder): every `q.stats()` counter as `qchan_<name>_total`, the in-flight gauge
summed over live children, and the handler's duration as a histogram, all
labelled by queue. The parent serves their sum, and /healthz: 200 while every
child reports that it consumes, 503 otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..kernel.queue import Queue
from ..kernel.stats import Stats, observe
from ._state import read_state
from ._target import WorkerRuntimeError, WorkerUsageError

__all__ = ["TEXT", "ChildMetrics", "Reply", "forget", "serve_http", "serve_metrics"]

_GAUGES = {"in_flight": "livesum", "failed": "livemax"}
_HELP = {
    "sent": "messages accepted by the broker",
    "retried": "send attempts repeated after a failure",
    "dead_lettered": "messages handed back on a dlq",
    "received": "messages taken from the broker",
    "redelivered": "messages received that the broker had delivered before",
    "acked": "acks applied",
    "nacked": "nacks applied (redeliveries asked for)",
    "gave_up": "messages sent to the dead-letter queue by the handler's retry policy",
    "expired": "messages not acked within time_to_flight",
    "poison": "undecodable or unroutable messages",
    "in_flight": "messages received and not yet settled (live children)",
    "failed": "1 if a child's queue failed",
}


def _prometheus() -> Any:
    try:
        import prometheus_client  # noqa: PLC0415
    except ImportError:
        raise WorkerUsageError(
            "--metrics-port needs prometheus_client: pip install 'qchan[metrics]'"
        ) from None
    return prometheus_client


Reply = tuple[int, bytes, str]  # status, body, content type
TEXT = "text/plain; charset=utf-8"


def serve_http(
    host: str,
    port: int,
    *,
    metrics: Callable[[], Reply],
    health: Callable[[], Reply],
    name: str,
) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz (what `metrics()` and `health()` answer) on a daemon thread
    called `name`; a port in use is a runtime error."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                status, body, kind = metrics()
            elif path == "/healthz":
                status, body, kind = health()
            else:
                status, body, kind = 404, b"/metrics or /healthz\n", TEXT
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not news

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise WorkerRuntimeError(
            f"cannot serve metrics on {host}:{port}: {e.strerror} (another process uses the "
            f"port? pick another --metrics-port)"
        ) from e
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def serve_metrics(host: str, port: int, state: Path, processes: int) -> ThreadingHTTPServer:
    """The worker's /metrics (every child's numbers, summed) and /healthz (200 while every
    child consumes)."""
    prom = _prometheus()
    from prometheus_client import multiprocess  # noqa: PLC0415

    folder = str(state / "prometheus")

    def metrics() -> Reply:
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        return 200, prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST

    def health() -> Reply:
        states = [read_state(state, i) or "starting" for i in range(processes)]
        ok = all(s == "consuming" for s in states)
        body = "".join(f"child {i}: {s}\n" for i, s in enumerate(states))
        return 200 if ok else 503, body.encode(), TEXT

    return serve_http(host, port, metrics=metrics, health=health, name="qchan-worker-metrics")


def forget(state: Path, pid: int) -> None:
    """A child died: its live gauges leave the sums."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(pid, str(state / "prometheus"))  # type: ignore[no-untyped-call]


class ChildMetrics:
    """A child's side: the queue's counters every second, and the handler's durations."""

    def __init__(self, q: Queue) -> None:
        prom = _prometheus()
        self.queue = q.name
        self._last = Stats().as_dict()
        self._counters = {
            name: prom.Counter(f"qchan_{name}", _HELP[name], ["queue"])
            for name in self._last
            if name not in _GAUGES
        }
        self._gauges = {
            name: prom.Gauge(f"qchan_{name}", _HELP[name], ["queue"], multiprocess_mode=mode)
            for name, mode in _GAUGES.items()
        }
        self._seconds = prom.Histogram(
            "qchan_handler_seconds", "how long the handler took per message", ["queue"]
        ).labels(self.queue)
        for metric in [*self._counters.values(), *self._gauges.values()]:
            metric.labels(self.queue)  # every series from the start, at 0
        observe(q, self._export, every=1.0)

    def _export(self, name: str, stats: Stats) -> None:
        now = stats.as_dict()
        for key, counter in self._counters.items():
            grew = now[key] - self._last[key]
            if grew > 0:
                counter.labels(name).inc(grew)
        for key, gauge in self._gauges.items():
            gauge.labels(name).set(now[key])
        self._last = now

    def timed(self, handler: Callable[[Any], object]) -> Callable[[Any], object]:
        """`handler`, its duration observed whether it returns or raises."""
        seconds = self._seconds

        def timed_handler(message: Any) -> object:
            started = time.perf_counter()
            try:
                return handler(message)
            finally:
                seconds.observe(time.perf_counter() - started)

        return timed_handler
