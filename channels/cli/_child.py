"""One child of `qchan worker`: `serve` on the queue, its state in a file the parent reads.

The state (`starting`, `consuming`, `reconnecting`, `stopping`) is what /healthz
reports. "Consuming" needs evidence: a call to the broker that returned (the
consumer thread's receive, hold or idle) since the last connection error reported, and no
such error for `_QUIET` seconds (librdkafka returns empty receives while its brokers
are down and reports that on the side). A child that is not consuming within
--retry-seconds of its start exits 1: the broker cannot be reached.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..chan import Chan
from ..errors import ConnectionLost, QchanError, QueueFailed
from ..kernel.queue import Queue
from ..urls import redact
from ..worker import serve, stop_on_signals
from ._state import write_state
from ._target import EXIT_FAILED, EXIT_OK, resolve, retries
from .commands import factory

__all__ = ["run_child"]

log = logging.getLogger("qchan.cli.worker")

_QUIET = 2.0  # seconds without a connection error before a child counts as consuming
_REPEAT = 30.0  # a connection error that repeats is logged once per this many seconds


class _Pulse:
    """When the broker last answered and when a connection error was last reported."""

    def __init__(self) -> None:
        self.answered: float | None = None
        self.lost: float | None = None
        self.first_answer = threading.Event()

    def watch(self, q: Queue) -> None:
        """Note every broker call of the consumer thread that returns. It looks the adapter's
        methods up per call, so wrapping them on the instance leaves the kernel as it is."""
        adapter = q.adapter
        for name in ("receive", "hold", "idle"):
            setattr(adapter, name, self._noting(getattr(adapter, name)))

    def _noting(self, call: Any) -> Any:
        def noted(*args: Any) -> Any:
            result = call(*args)
            self.answered = time.monotonic()
            self.first_answer.set()
            return result

        return noted

    def consuming(self, now: float) -> bool:
        if self.answered is None:
            return False
        return self.lost is None or (self.answered > self.lost and now - self.lost > _QUIET)


class _Watch:
    """A thread: reads the queue's errors, logs them, keeps the state file current."""

    def __init__(self, args: argparse.Namespace, index: int, state: Path, stop: threading.Event):
        self.args = args
        self.index = index
        self.state = state
        self.stop = stop
        self.errors: Chan[Exception] = Chan(256, name="worker.errors")
        self.pulse = _Pulse()
        self.unreachable: Exception | str | None = None
        self._said: dict[str, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qchan-worker-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        write_state(self.state, self.index, "stopped")

    def _run(self) -> None:
        started = time.monotonic()
        ever = False
        current = ""
        last_error: Exception | None = None
        while not self._done.is_set():
            try:
                error = self.errors.recv(timeout=0.1)
            except TimeoutError:
                pass
            else:
                if isinstance(error, ConnectionLost):
                    self.pulse.lost = time.monotonic()
                    last_error = error
                self._log(error)
            now = time.monotonic()
            consuming = self.pulse.consuming(now)
            ever = ever or consuming
            value = (
                "stopping"
                if self.stop.is_set()
                else "consuming"
                if consuming
                else "reconnecting"
                if ever
                else "starting"
            )
            if value != current:
                write_state(self.state, self.index, value)
                current = value
            if not ever and not self.stop.is_set() and now - started > self.args.retry_seconds:
                self.unreachable = last_error or "no answer"
                self.stop.set()

    def _log(self, error: Exception) -> None:
        text = str(error)
        if isinstance(error, ConnectionLost):  # it repeats while the broker is away
            now = time.monotonic()
            if now - self._said.get(type(error).__name__, -_REPEAT) < _REPEAT:
                return
            self._said[type(error).__name__] = now
        if isinstance(error, QchanError):
            log.error("%s", text)
        else:
            log.error("%s", text, exc_info=error)


def _watch_parent(stop: threading.Event) -> None:
    """Stop when the parent dies: stdin is its pipe, and reads EOF then."""

    def wait() -> None:
        # os.read on the descriptor, not sys.stdin: a daemon thread blocked in a buffered
        # reader holds its lock, and the interpreter aborts on it at exit.
        while os.read(0, 4096):
            pass
        stop.set()

    threading.Thread(target=wait, name="qchan-worker-parent", daemon=True).start()


def run_child(args: argparse.Namespace) -> int:
    """Run `serve` until the parent signals, dies, or the broker cannot be reached."""
    index_text, _, state_dir = args.child.partition(":")
    index, state = int(index_text), Path(state_dir)
    stop = threading.Event()
    with stop_on_signals(stop):  # before anything slow, so an early SIGTERM is not lost
        write_state(state, index, "starting")
        _watch_parent(stop)
        target = resolve(args.handler, args.type)
        policy = retries(args)
        watch = _Watch(args, index, state, stop)
        make = factory(
            args.url, args.retry_seconds, agent="qchan-worker", close_timeout=args.close_timeout
        )
        q: Queue = make(errors=watch.errors)
        watch.pulse.watch(q)
        handler = target.handler
        if args.metrics_port is not None:
            from ._metrics import ChildMetrics  # noqa: PLC0415

            handler = ChildMetrics(q).timed(handler)
        watch.start()
        try:
            done = serve(
                handler,
                target.type_,
                q,
                workers=args.threads,
                capacity=args.capacity,
                category=args.category,
                with_msg=target.with_msg,
                stop=stop,
                signals=(),  # installed above
                retries=policy,
            )
        except QueueFailed as e:
            log.error("child %d: %s", index, e)
            return EXIT_FAILED
        finally:
            watch.close()
    if watch.unreachable is not None:
        log.error(
            "cannot reach %s within %g s (--retry-seconds): %s",
            redact(args.url),
            args.retry_seconds,
            watch.unreachable,
        )
        return EXIT_FAILED
    log.info("child %d: handled %d, failed %d", index, done.handled, done.failed)
    return EXIT_OK
