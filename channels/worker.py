"""`serve`: the "consume forever" loop, with worker threads and a graceful stop.

    def handle(order: Order) -> None: ...
    qchan.serve(handle, Order, q, workers=4)    # returns after SIGTERM / SIGINT

is the same as writing, per worker thread::

    with dequeue(Order, q) as (rcv, ack):
        for msg in rcv:
            try:
                handle(msg.object)
            except Exception as e:
                log.exception(...)
                ack.send(msg.fail(e))           # redelivered
            else:
                ack.send(msg)

plus the stop: on a signal (or `stop.set()`), each worker finishes the message
it holds and acks it, messages not yet handed to a worker go back to the
broker, and the queue closes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import attrs

from . import tracing
from .chan import Chan
from .endpoints import Dequeued, dequeue
from .errors import ChannelClosed
from .message import Msg
from .queue import Queue
from .select import select

__all__ = ["Served", "serve"]

T = TypeVar("T")
log = logging.getLogger("qchan.worker")


@attrs.frozen
class Served:
    """What `serve` did: messages handled (acked), and those whose handler raised (nacked)."""

    handled: int
    failed: int
    seconds: float


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handled = 0
        self.failed = 0


class _Pool(Generic[T]):
    def __init__(
        self, *, handler: Callable[[Any], object], rcv: Any, ack: Any, stop: Chan[None],
        with_msg: bool, name: str, stopped: threading.Event,
    ) -> None:
        self.stopped = stopped
        self.handler = handler
        self.rcv = rcv
        self.ack = ack
        self.stop = stop
        self.with_msg = with_msg
        self.name = name
        self.counts = _Counts()

    def work(self) -> None:
        while True:
            sel = select(self.stop, self.rcv)
            if sel is None or sel.index == 0:
                return  # stopping
            if not sel.ok:  # the queue closed under us: stop everything
                self.stopped.set()
                return
            msg: Msg[T] = sel.value
            try:
                with tracing.consumer_span(msg, f"{msg.category} process"):
                    self.handler(msg if self.with_msg else msg.object)
            except Exception as e:
                log.exception(
                    "queue %s: handler failed on a %r message (%s); it will be redelivered",
                    self.name, msg.category, msg.bag.id if msg.bag else "?",
                )
                self._send_ack(msg.fail(e))
                with self.counts.lock:
                    self.counts.failed += 1
            else:
                self._send_ack(msg)
                with self.counts.lock:
                    self.counts.handled += 1

    def _send_ack(self, msg: Msg[T]) -> None:
        try:
            self.ack.send(msg)
        except ChannelClosed as e:  # the queue closed under us: the broker redelivers it
            log.warning("queue %s: could not ack (%s); it will be redelivered", self.name, e)


class _SignalStop:
    """Sets `stop` when a signal arrives, from a thread of its own.

    A Python signal handler runs in the main thread between two bytecodes,
    possibly while that thread holds the very lock `stop.set()` needs (inside
    `stop.wait()`, entering or leaving it): setting the event there would
    deadlock. So the handler only writes a byte to a pipe (no lock), and this
    thread, blocked reading it, sets the event.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._read, self._write = os.pipe()
        self._stop = stop
        self._thread = threading.Thread(target=self._watch, name="qchan-serve-signals", daemon=True)
        self._thread.start()

    def handler(self, signum: int, frame: Any) -> None:
        os.write(self._write, b"s")

    def _watch(self) -> None:
        while os.read(self._read, 1) == b"s":
            self._stop.set()

    def close(self) -> None:
        os.write(self._write, b"q")
        self._thread.join()
        os.close(self._read)
        os.close(self._write)


def serve(
    handler: Callable[[T], object] | Callable[[Msg[T]], object],
    type_: type[T],
    q: Queue,
    *,
    workers: int = 4,
    category: str | None = None,
    with_msg: bool = False,
    stop: threading.Event | None = None,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    close_queue: bool = True,
    timeout: float | None = None,
) -> Served:
    """Handle every `type_` message of `q` with `handler` in `workers` threads, until stopped.

    The handler gets the object (or the `Msg`, with `with_msg=True`). Return
    normally to ack; raise to nack (the exception is logged and the message
    redelivered). Stops when `stop` is set or, when called from the main
    thread, on any of `signals` (previous handlers are restored on return).
    Then each worker finishes its current message, un-handled messages go
    back to the broker, and the queue is closed (unless `close_queue=False`)
    within `timeout` seconds (default: the queue's close_timeout).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    stop = stop or threading.Event()
    started = time.monotonic()
    installed: dict[int, Any] = {}
    watcher: _SignalStop | None = None
    if threading.current_thread() is threading.main_thread():
        watcher = _SignalStop(stop)
        for sig in signals:
            # The handler only has the event set: the stop itself runs below, in
            # this thread, outside the signal handler.
            installed[sig] = signal.signal(sig, watcher.handler)
    halt: Chan[None] = Chan(0, name=f"{q.name}.serve.stop")
    rcv, ack = dequeue(type_, q, category=category, capacity=workers)
    pool: _Pool[T] = _Pool(
        handler=handler, rcv=rcv, ack=ack, stop=halt, with_msg=with_msg, name=q.name,
        stopped=stop,
    )
    threads = [
        threading.Thread(target=pool.work, name=f"qchan-worker-{q.name}-{i}")
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    try:
        stop.wait()  # a signal handler, the caller, or a worker seeing the queue close sets it
    finally:
        log.info("queue %s: stopping %d worker(s)", q.name, workers)
        halt.close()  # workers finish the message they hold, then return
        deadline = time.monotonic() + (q.close_timeout if timeout is None else timeout)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("queue %s: workers still busy at the deadline: %s", q.name, stuck)
        Dequeued(rcv, ack).close()  # acks applied, un-handled messages released
        if close_queue:
            q.close(max(0.0, deadline - time.monotonic()))
        for signum, previous in installed.items():
            signal.signal(signum, previous)
        if watcher is not None:
            watcher.close()
    return Served(pool.counts.handled, pool.counts.failed, time.monotonic() - started)
