"""`qchan worker MODULE:FUNCTION URL`: `serve` in several processes, under a supervisor.

The parent imports the handler once to check it (a mistake is a usage error before
any process starts), then starts `--processes` children (`python -m qchan worker
--child ...`: never a fork of a process with threads), each running `serve` with
`--threads` workers. It restarts a child that dies (with a growing delay), forwards
the first SIGTERM/SIGINT (each child finishes and acks what it holds, then exits) and
kills the children on a second one. Its own exit code: 0 only when every child
stopped cleanly after a graceful stop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ._state import read_state
from ._target import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Target,
    WorkerRuntimeError,
    WorkerUsageError,
    resolve,
    retries,
)

__all__ = ["Supervisor", "register", "run"]

log = logging.getLogger("qchan.cli.worker")

N = TypeVar("N", int, float)

# A child that ran this long before dying starts again at the shortest delay.
_STEADY_SECONDS = 10.0
_FIRST_DELAY, _MAX_DELAY = 0.5, 30.0


# ---- the command line --------------------------------------------------------------


def _parsed(
    text: str, kind: Callable[[str], N], noun: str, ok: Callable[[N], bool], rule: str
) -> N:
    """`text` as a `kind` that passes `ok`, or argparse's usage error saying which rule."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")
    return value


def _count(text: str) -> int:
    return _parsed(text, int, "a whole number", lambda v: v >= 1, ">= 1")


def _seconds(text: str) -> float:
    return _parsed(text, float, "a number", lambda v: v > 0, "> 0")


def _port(text: str) -> int:
    return _parsed(text, int, "a port number", lambda v: 0 < v < 65536, "1..65535")


def register(sub: Any) -> None:
    """Add `worker` to the `qchan` command's subparsers."""
    p = sub.add_parser(
        "worker",
        help="run a handler on a queue in several processes and threads, supervised",
        description="Import MODULE:FUNCTION and run serve(FUNCTION, Type, URL) in --processes "
        "child processes of --threads threads each. The message type comes from the "
        "function's first annotation (def handle(order: Order), or msg: Msg[Order]) or "
        "--type. A child that dies is restarted; SIGTERM or Ctrl-C stops gracefully (each "
        "child finishes and acks the messages in hand), a second one stops at once.",
        epilog="exit codes: 0 stopped gracefully; 1 a runtime failure (broker unreachable, "
        "port in use, a child that kept failing at start); 2 bad usage (handler, type, "
        "URL, option); 130 stopped at once by a second signal.",
    )
    p.add_argument("handler", metavar="MODULE:FUNCTION", help="the handler, e.g. orders.tasks:bill")
    p.add_argument("url", help="the queue URL, e.g. amqp://guest:guest@127.0.0.1/%%2F?queue=orders")
    p.add_argument("--processes", type=_count, default=1, help="child processes (1)")
    p.add_argument("--threads", type=_count, default=4, help="serve threads per process (4)")
    p.add_argument(
        "--capacity",
        type=_count,
        default=32,
        help="messages each process takes ahead of its threads (32; serve's capacity=)",
    )
    p.add_argument("--type", metavar="MODULE:CLASS", help="the message type, if not annotated")
    p.add_argument("--category", help="receive this category (default: the type's name)")
    p.add_argument(
        "--max-deliveries",
        type=lambda t: 0 if t == "0" else _count(t),
        help="dead-letter a message on this delivery (10; 0: never here, the broker's own "
        "threshold still applies)",
    )
    p.add_argument("--retry-delay", type=_seconds, help="first redelivery delay, s (1)")
    p.add_argument("--retry-max-delay", type=_seconds, help="longest redelivery delay, s (300)")
    p.add_argument(
        "--give-up-on",
        action="append",
        default=[],
        metavar="EXCEPTION",
        help="dead-letter at once on this error (ValueError, or MODULE:CLASS); repeatable",
    )
    p.add_argument(
        "--retry-on",
        action="append",
        default=[],
        metavar="EXCEPTION",
        help="retry only these errors, dead-letter others (default: every Exception)",
    )
    p.add_argument(
        "--close-timeout",
        type=_seconds,
        default=10.0,
        help="how long a graceful stop may take, s (10)",
    )
    p.add_argument(
        "--retry-seconds",
        type=_seconds,
        default=30.0,
        help="how long a child may take to reach the broker at start, s (30)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="serve /metrics (Prometheus) and /healthz on this port (needs qchan[metrics])",
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="the address to serve on (0.0.0.0)")  # noqa: S104
    p.add_argument("--child", help=argparse.SUPPRESS)  # INDEX:STATE_DIR, set by the parent
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The `worker` command: the parent, or (with --child) one child."""
    try:
        if args.child:
            from ._child import run_child  # noqa: PLC0415

            return run_child(args)
        return _parent(args)
    except WorkerUsageError as e:
        _say(args, e)
        return EXIT_USAGE
    except WorkerRuntimeError as e:
        _say(args, e)
        return EXIT_FAILED


def _say(args: argparse.Namespace, e: Exception) -> None:
    from ..urls import redact  # noqa: PLC0415

    text = str(e).replace(args.url, redact(args.url))
    print(f"qchan worker: {text}", file=sys.stderr, flush=True)
    if args.verbose and e.__cause__ is not None:
        import traceback  # noqa: PLC0415

        traceback.print_exception(e.__cause__, file=sys.stderr)


def check(args: argparse.Namespace) -> Target:
    """Everything the children would trip on, checked once here: handler, type, URL, options."""
    target = resolve(args.handler, args.type)
    retries(args)
    scheme = args.url.partition(":")[0].lower()
    if scheme == "mem":
        if args.processes > 1:
            raise WorkerUsageError(
                f"a mem:// queue lives inside one process: {args.processes} processes would "
                f"each have their own queue. Use a broker URL (amqp://, kafka://, sqs://) or "
                f"--processes 1"
            )
        log.warning("mem:// is in-process: only this worker's own process can send to %s", args.url)
    return target


def _parent(args: argparse.Namespace) -> int:
    check(args)
    from ..urls import open_adapter  # noqa: PLC0415

    _check_url(args.url, open_adapter)
    from ..worker import stop_on_signals  # noqa: PLC0415

    stop = threading.Event()
    # The handlers go in before anything another process can see (the /healthz port, the
    # children): a SIGTERM sent after /healthz answered is a graceful stop, never the
    # default death by signal (a CI run saw the parent killed by one, exit -15).
    with (
        stop_on_signals(stop) as received,
        tempfile.TemporaryDirectory(prefix="qchan-worker-", ignore_cleanup_errors=True) as state,
        _serving_metrics(args, Path(state)),
    ):
        return Supervisor(args, Path(state), stop, received).run()


@contextlib.contextmanager
def _serving_metrics(args: argparse.Namespace, state: Path) -> Iterator[None]:
    """/metrics and /healthz on --metrics-port while inside (nothing without it)."""
    if args.metrics_port is None:
        yield
        return
    from ._metrics import serve_metrics  # noqa: PLC0415

    (state / "prometheus").mkdir()
    server = serve_metrics(args.metrics_host, args.metrics_port, state, args.processes)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _check_url(url: str, open_adapter: Callable[..., Any]) -> None:
    """A bad URL (unknown scheme, option, missing extra) is a usage error now, not per child.

    Opening the adapter does not reach the network (nothing connects eagerly)."""
    from ..errors import QchanError  # noqa: PLC0415
    from ..kernel.queue import connect  # noqa: PLC0415

    try:
        q = connect(url)
    except (QchanError, TypeError, ValueError) as e:
        raise WorkerUsageError(str(e)) from None
    q.close()


class _Child:
    """One slot of the pool: its process, how often it died in a row, when to restart it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.crashes = 0
        self.restart_at: float | None = None
        self.ever_consumed = False


class Supervisor:
    """Starts the children, restarts the ones that die, stops them on a signal."""

    def __init__(
        self,
        args: argparse.Namespace,
        state: Path,
        stop: threading.Event,
        received: list[signal.Signals],
    ) -> None:
        """`stop` is set, and `received` lists the signals, by the caller's signal handlers
        (`stop_on_signals`, installed before anything another process can see)."""
        self.args = args
        self.state = state
        self.children = [_Child(i) for i in range(args.processes)]
        self.stop = stop
        self.received = received
        self.starting = True  # until every child has consumed once

    def command(self, index: int) -> list[str]:
        a = self.args
        argv = [sys.executable, "-m", "qchan"]
        if a.verbose:
            argv.append("-v")
        argv += ["worker", a.handler, a.url, "--threads", str(a.threads)]
        argv += ["--capacity", str(a.capacity)]
        for option in ("type", "category", "max_deliveries", "retry_delay", "retry_max_delay"):
            value = getattr(a, option)
            if value is not None:
                argv += [f"--{option.replace('_', '-')}", str(value)]
        for path in a.give_up_on:
            argv += ["--give-up-on", path]
        for path in a.retry_on:
            argv += ["--retry-on", path]
        argv += ["--close-timeout", str(a.close_timeout), "--retry-seconds", str(a.retry_seconds)]
        if a.metrics_port is not None:
            argv += ["--metrics-port", str(a.metrics_port)]
        return [*argv, "--child", f"{index}:{self.state}"]

    def spawn(self, child: _Child) -> None:
        env = dict(os.environ)
        if self.args.metrics_port is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.state / "prometheus")
        (self.state / f"child-{child.index}.state").unlink(missing_ok=True)
        # stdin is a pipe nobody writes to: the child sees EOF when this process dies,
        # however it dies, and stops gracefully instead of running on as an orphan.
        child.proc = subprocess.Popen(  # noqa: S603 - this Python, our own arguments
            self.command(child.index), stdin=subprocess.PIPE, env=env
        )
        child.started = time.monotonic()
        child.restart_at = None
        log.info("child %d started (pid %d)", child.index, child.proc.pid)

    def consumed(self, child: _Child) -> bool:
        return read_state(self.state, child.index) == "consuming"

    def run(self) -> int:
        a = self.args
        for child in self.children:
            self.spawn(child)
        print(
            f"qchan worker: {a.processes} process(es) x {a.threads} thread(s) on "
            f"{_redact(a.url)}" + (f", metrics on :{a.metrics_port}" if a.metrics_port else ""),
            file=sys.stderr,
            flush=True,
        )
        try:
            failed = self._supervise()
            if failed is not None:
                return failed
            return self._stop()
        finally:
            self._kill_all()

    def _supervise(self) -> int | None:
        """Until a signal: restart children that die. An exit code to return at once, or None."""
        while not self.stop.wait(0.1):
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if child.restart_at is not None and now >= child.restart_at:
                        self.spawn(child)
                    continue
                if not child.ever_consumed and self.consumed(child):
                    child.ever_consumed = True
                code = child.proc.poll()
                if code is None:
                    continue
                if self.starting and not child.ever_consumed and code in (1, 2):
                    # It never got going (the broker is away, the handler's module fails in
                    # the child): restarting would only repeat it. It said why on stderr.
                    log.error("child %d exited %d at start; stopping", child.index, code)
                    return code
                self._died(child, code, now)
            if self.starting and all(c.ever_consumed for c in self.children):
                self.starting = False
        return None

    def _died(self, child: _Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid = child.proc.pid
        child.proc = None
        _forget_metrics(self.state, pid)
        if now - child.started >= _STEADY_SECONDS:
            child.crashes = 0
        delay = min(_MAX_DELAY, _FIRST_DELAY * 2**child.crashes)
        child.crashes += 1
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        log.warning("child %d (pid %d) %s; restarting it in %.1f s", child.index, pid, how, delay)
        child.restart_at = now + delay

    def _stop(self) -> int:
        """The first signal: each child stops gracefully; a second one: kill them."""
        received = self.received
        first = received[0] if received else signal.SIGTERM
        running = [c for c in self.children if c.proc is not None]
        log.warning(
            "%s: stopping %d child(ren) gracefully (a second signal stops at once)",
            first.name,
            len(running),
        )
        for child in running:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        # The children's own close bounds the stop; a margin for starting Python and the client.
        deadline = time.monotonic() + self.args.close_timeout + 5.0
        pause = threading.Event()
        codes: dict[int, int] = {}
        while len(codes) < len(running):
            if len(received) > 1:
                log.error("%s again: killing the children now", received[-1].name)
                self._kill_all()
                return EXIT_INTERRUPTED
            if time.monotonic() > deadline:
                log.error(
                    "children still running %.0f s after the signal: killed",
                    self.args.close_timeout + 5.0,
                )
                self._kill_all()
                return EXIT_FAILED
            for child in running:
                assert child.proc is not None
                code = child.proc.poll()
                if code == -signal.SIGTERM and not read_state(self.state, child.index):
                    code = 0  # it died still starting, before it could take a message
                if code is not None:
                    codes[child.index] = code
            pause.wait(0.05)
        bad = {i: c for i, c in codes.items() if c != 0}
        if bad:
            log.error("children did not stop cleanly: %s", bad)
            return EXIT_FAILED
        print("qchan worker: stopped", file=sys.stderr, flush=True)
        return EXIT_OK

    def _kill_all(self) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()


def _forget_metrics(state: Path, pid: int) -> None:
    """A dead child's live gauges leave the sum (its counters stay: they are totals)."""
    if (state / "prometheus").is_dir():
        from ._metrics import forget  # noqa: PLC0415

        forget(state, pid)


def _redact(url: str) -> str:
    from ..urls import redact  # noqa: PLC0415

    return redact(url)
