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

(with `retries.failed(msg, e)`, the policy's delayed nack or dead letter, in place
of `msg.fail(e)`), plus the stop: on a signal (or `stop.set()`), each worker finishes the message
it holds and acks it, messages not yet handed to a worker go back to the
broker, and the queue closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import attrs

from . import tracing
from .chan import Chan, Pipe, chan_of
from .endpoints import Dequeued, dequeue
from .errors import ChannelClosed, QueueFailed
from .kernel.queue import Queue
from .message import Msg
from .options import OptionError, check_count, check_seconds
from .retry import Retries
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


class _Pool(Generic[T]):
    def __init__(
        self,
        *,
        handler: Callable[[Any], object],
        rcv: Any,
        ack: Any,
        stop: Chan[None],
        with_msg: bool,
        name: str,
        stopped: threading.Event,
        q: Queue,
        retries: Retries,
    ) -> None:
        self.q = q
        self.retries = retries
        self.stopped = stopped
        self.handler = handler
        self.rcv = rcv
        self.ack = ack
        self.stop = stop
        self.with_msg = with_msg
        self.name = name
        # [handled, failed] per worker: each writes only its own, with no lock per
        # message; the totals are summed when read (a stuck worker's count included).
        self.tallies: list[list[int]] = []
        self.listen = threading.Lock()

    def handled(self) -> int:
        return sum(t[0] for t in list(self.tallies))

    def failed(self) -> int:
        return sum(t[1] for t in list(self.tallies))

    def work(self) -> None:
        counts = [0, 0]
        self.tallies.append(counts)  # list.append is atomic: no lock needed
        try:
            self._work(counts)
        except QueueFailed:
            self.stopped.set()  # the queue failed (serve raises it once stopped)
        except BaseException as e:  # noqa: BLE001 - supervised: the queue fails loudly
            self.q._fail(e, "serve worker")
            self.stopped.set()

    def _work(self, counts: list[int]) -> None:
        stop, rcv, listen = self.stop, self.rcv, self.listen
        recv = rcv.recv
        pipe = chan_of(rcv)
        assert isinstance(pipe, Pipe), "serve receives from a dequeue's rcv"
        buffered = pipe.buffer  # looked at without the lock: recv(0) decides
        handler, with_msg, span = self.handler, self.with_msg, tracing.consumer_span
        nothing = tracing.NOTHING
        while True:
            msg: Msg[T]
            # While messages wait in rcv's buffer and no stop is asked, take the
            # next one without select: the same choice select makes then (only
            # rcv is ready), at a third of its cost. Another worker may empty the
            # buffer between the look and the take: then select waits as before.
            if buffered and not stop.closed:
                try:
                    msg = recv(0)
                except (TimeoutError, ChannelClosed):  # select sees why, and acts
                    continue
            else:
                # One idle worker at a time waits on rcv; the others wait for their
                # turn here, so a hand-off wakes one worker, not every idle one.
                with listen:
                    sel = select(stop, rcv)
                if sel is None or sel.index == 0:
                    return  # stopping
                if not sel.ok:  # the queue closed under us: stop everything
                    self.stopped.set()
                    return
                msg = sel.value
            try:
                traced = span(msg)
                if traced is nothing:
                    handler(msg if with_msg else msg.object)
                else:
                    with traced:
                        handler(msg if with_msg else msg.object)
            except Exception as e:  # noqa: BLE001 - logged with its traceback, nacked by policy
                nack = self.retries.failed(msg, e)
                self._log_failure(msg, nack, e)
                self._send_ack(nack)
                counts[1] += 1
            else:
                self._send_ack(msg)
                counts[0] += 1

    def _log_failure(self, msg: Msg[T], nack: Msg[T], error: Exception) -> None:
        """One record per failure, with the traceback."""
        limit = self.retries.max_deliveries
        where = (
            f"{msg.category!r} message {msg.bag.id if msg.bag else '?'} (delivery "
            f"{msg.deliveries}{f' of {limit}' if limit else ''})"
        )
        if nack.dead:
            why = (
                "give_up_on"
                if isinstance(error, self.retries.give_up_on)
                else (
                    "not retry_on"
                    if not isinstance(error, self.retries.retry_on)
                    else "max_deliveries reached"
                )
            )
            log.error(
                "queue %s: handler failed on %s; giving up (%s): to the dead-letter queue",
                self.name,
                where,
                why,
                exc_info=error,
            )
        else:
            log.warning(
                "queue %s: handler failed on %s; redelivered in %.1f s",
                self.name,
                where,
                nack.delay or 0.0,
                exc_info=error,
            )

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
    deadlock. So the handler only writes the signal's number to a pipe (no
    lock), and this thread, blocked reading it, records it and sets the event.
    """

    def __init__(self, stop: threading.Event, received: list[signal.Signals]) -> None:
        self._read, self._write = os.pipe()
        self._stop = stop
        self._received = received
        self._thread = threading.Thread(target=self._watch, name="qchan-serve-signals", daemon=True)
        self._thread.start()

    def handler(self, signum: int, frame: Any) -> None:
        os.write(self._write, bytes([signum]))

    def _watch(self) -> None:
        while (byte := os.read(self._read, 1)) != b"\0":
            self._received.append(signal.Signals(byte[0]))
            self._stop.set()

    def close(self) -> None:
        os.write(self._write, b"\0")
        self._thread.join()
        os.close(self._read)
        os.close(self._write)


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[list[signal.Signals]]:
    """While inside, each of `signals` sets `stop`; yields the list of signals received.

    The previous handlers come back on exit. The handler itself takes no lock
    (it writes to a pipe; a thread of its own sets the event), so a signal that
    arrives while the main thread is inside `stop.wait()` cannot deadlock it.
    `serve` does this itself; use it to install the handlers earlier, e.g.
    before a worker prints that it is ready. Outside the main thread (where
    Python delivers no signals) it installs nothing.
    """
    received: list[signal.Signals] = []
    wanted = list(signals)
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield received
        return
    watcher = _SignalStop(stop, received)
    previous = {sig: signal.signal(sig, watcher.handler) for sig in wanted}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        watcher.close()


class _Default:
    """The type of `_DEFAULT`: an argument not given (None means something)."""


_DEFAULT = _Default()


def serve(
    handler: Callable[[T], object] | Callable[[Msg[T]], object],
    type_: type[T],
    q: Queue,
    *,
    workers: int = 4,
    capacity: int = 32,
    category: str | None = None,
    with_msg: bool = False,
    stop: threading.Event | None = None,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    close_queue: bool = True,
    timeout: float | None = None,
    retries: Retries | None = None,
    max_deliveries: int | _Default | None = _DEFAULT,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
) -> Served:
    """Handle every `type_` message of `q` with `handler` in `workers` threads, until stopped.

    The handler gets the object (or the `Msg`, with `with_msg=True`). Return
    normally to ack; raise to nack: the exception is logged (one record, with
    the traceback) and the message redelivered after a delay that grows per
    delivery, or dead-lettered, by `retries` (default `Retries()`: from 1 s,
    doubling, with jitter, at most 5 min; dead-lettered on the 10th delivery).
    `max_deliveries`, `retry_on` and `give_up_on` are shorthands that change
    those of the default policy. Stops when `stop` is set or, when called from the main
    thread, on any of `signals` (previous handlers are restored on return).
    Then each worker finishes its current message, un-handled messages go
    back to the broker, and the queue is closed (unless `close_queue=False`)
    within `timeout` seconds (default: the queue's close_timeout). If the queue
    fails (a worker thread of it raised, see `QueueFailed`), serve stops the same
    way and raises `QueueFailed`.

    `capacity` is how many messages may wait, received from the broker, for a free
    worker (`dequeue`'s `capacity`; at least `workers` are). A consumer takes only what
    it can use: the buffer grows with the messages settled, up to `capacity` (or to what
    the workers settle in 50 ms, if more), so several consumers share a waiting backlog.
    More makes fast handlers cheaper; less leaves more of a backlog to other consumers.
    Where the broker has a visibility timeout (SQS), what waits is kept invisible.
    """
    if not callable(handler):
        raise OptionError(f"serve needs a handler function as its first argument, not {handler!r}")
    if not isinstance(q, Queue):
        raise OptionError(f"serve needs a qchan.Queue as its third argument, not {q!r}")
    check_count("workers", workers, where="serve")
    check_count("capacity", capacity, where="serve")
    check_seconds("timeout", timeout, optional=True, where="serve")
    retries = _retries(retries, max_deliveries, retry_on, give_up_on)
    stop = stop or threading.Event()
    # The handlers only have the event set: the stop itself runs below, in this
    # thread, outside any signal handler.
    with stop_on_signals(stop, signals):
        return _serve(
            handler,
            type_,
            q,
            workers=workers,
            capacity=capacity,
            category=category,
            with_msg=with_msg,
            stop=stop,
            close_queue=close_queue,
            timeout=timeout,
            retries=retries,
        )


def _retries(
    retries: Retries | None,
    max_deliveries: int | _Default | None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None,
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] | None,
    where: str = "serve",
) -> Retries:
    """The handler retry policy from `retries=` or the shorthand keywords (not both);
    errors name `where` (the call that was given them)."""
    changes: dict[str, Any] = {}
    if not isinstance(max_deliveries, _Default):
        changes["max_deliveries"] = max_deliveries
    if retry_on is not None:
        changes["retry_on"] = retry_on
    if give_up_on is not None:
        changes["give_up_on"] = give_up_on
    if retries is not None and not isinstance(retries, Retries):
        raise OptionError(f"{where}: retries must be a qchan.Retries policy, not {retries!r}")
    if retries is not None and changes:
        raise OptionError(
            f"{where}: give retries= or {', '.join(f'{k}=' for k in changes)}, not both "
            f"(set them on the Retries policy)"
        )
    try:
        return attrs.evolve(Retries(), **changes) if retries is None else retries
    except (TypeError, ValueError) as e:
        raise OptionError(f"{where}: {e}") from None


def _serve(
    handler: Callable[[T], object] | Callable[[Msg[T]], object],
    type_: type[T],
    q: Queue,
    *,
    workers: int,
    capacity: int,
    category: str | None,
    with_msg: bool,
    stop: threading.Event,
    close_queue: bool,
    timeout: float | None,
    retries: Retries,
) -> Served:
    started = time.monotonic()
    halt: Chan[None] = Chan(0, name=f"{q.name}.serve.stop")
    # A buffer shared by the workers, at least one message per worker: with only
    # `workers` slots the kernel and the workers woke each other for every
    # message (5x slower). The buffered messages go back to the broker on stop,
    # uncounted.
    rcv, ack = dequeue(type_, q, category=category, capacity=max(capacity, workers))
    pool: _Pool[T] = _Pool(
        handler=handler,
        rcv=rcv,
        ack=ack,
        stop=halt,
        with_msg=with_msg,
        name=q.name,
        stopped=stop,
        q=q,
        retries=retries,
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
        deadline = time.monotonic() + (q.options.close_timeout if timeout is None else timeout)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("queue %s: workers still busy at the deadline: %s", q.name, stuck)
        Dequeued(rcv, ack).close()  # acks applied, un-handled messages released
        if close_queue:
            q.close(max(0.0, deadline - time.monotonic()))
    if q.failure is not None:
        raise q._failure_now()
    return Served(pool.handled(), pool.failed(), time.monotonic() - started)
