"""Small test helpers: start threads, wait for an outcome with a deadline (never a bare sleep)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest


def need_service(host: str, port: int, what: str) -> None:
    """Skip the test when nothing answers on `host:port` (fail it under CI, where `.ci/run`
    starts every service the tests need)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError:
        message = f"{what} is not answering on {host}:{port}: these tests need the real server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Return predicate()'s first truthy value, or fail after `timeout` seconds.

    Waits on an Event with a short timeout between checks, for outcomes that
    cannot signal (state in another process or a broker).
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause.wait(0.01)


class Worker(threading.Thread):
    """A thread that keeps its target's result or exception for the test to inspect."""

    def __init__(
        self, target: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self._args = args
        self._kwargs = kwargs
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self._fn(*self._args, **self._kwargs)
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()

    def outcome(self, timeout: float = 10.0) -> Any:
        """Join; re-raise the thread's exception, or return its result."""
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def start(target: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> Worker:
    w = Worker(target, *args, name=name, **kwargs)
    w.start()
    return w


def join_all(workers: Iterable[Worker], timeout: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    return [w.outcome(max(0.0, deadline - time.monotonic())) for w in workers]


def slow_consume(q: Any, n: int, work: float = 0.001, deadline: float = 120.0) -> list[str]:
    """Send `n` Orders (ids "0".."n-1") through `q`, then receive them with `work` seconds
    of simulated work per message, acking each one; the ids in the order received.

    The consumer is slower than the broker, so the queue's in-flight limit is reached
    and the kernel holds (issue 13). Fails if a message is missing after `deadline`.
    """
    from qchan import dequeue, enqueue
    from qchan.testing import Order

    with enqueue(Order, q) as (out, _):
        for i in range(n):
            out.send(Order(str(i), 1.0))
    got: list[str] = []
    seen: set[str] = set()
    pause = threading.Event()
    end = time.monotonic() + deadline
    with dequeue(Order, q) as (rcv, ack):
        while len(seen) < n:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                m = rcv.recv(timeout=min(left, 30.0))
            except TimeoutError:
                break
            pause.wait(work)  # the handler's work
            got.append(m.object.id)
            seen.add(m.object.id)
            ack.send(m)
    assert len(seen) == n, f"received {len(seen)} of {n} distinct messages"
    return got


def outage_then_invalid() -> tuple[list[float], Callable[[Any], None]]:
    """A `serve` handler that fails once with ConnectionError (retried), then with ValueError
    (give it as give_up_on), and the times it was called."""
    calls: list[float] = []

    def handle(obj: Any) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ConnectionError("downstream is down")
        raise ValueError("invalid after all")

    return calls, handle


def long_variant(why: str) -> None:
    """Skip the calling test unless QCHAN_SLOW=1 (`make test-reliability`): for one
    parametrized case of a test whose other cases run in `make test`."""
    if not os.environ.get("QCHAN_SLOW"):
        pytest.skip(f"long variant ({why}): set QCHAN_SLOW=1 (make test-reliability)")
