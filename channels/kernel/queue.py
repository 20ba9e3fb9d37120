"""`Queue`: one queue on one broker, and its lifecycle. Channels open on it with
`enqueue`, `enqueue_sync` and `dequeue` (see ../endpoints.py); its threads are the
emitter and the consumer (this package)."""

from __future__ import annotations

import logging
import textwrap
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ..adapter import Adapter, Hooks, ReceivingAdapter
from ..errors import (
    ChannelClosed,
    ConnectionLost,
    EnqueueError,
    QchanError,
    QueueFailed,
    SendOnlyError,
    describe,
)
from ..logs import Repeats
from ..message import ATTR_CATEGORY, ATTR_QUEUE, ATTR_SOURCE, ATTR_SYSTEM, Bag
from ..options import (
    QUEUE_OPTIONS,
    OptionError,
    QueueKeywords,
    QueueOptions,
    check_keywords,
    program,
    split_query,
)
from ..retry import Exponential
from ..urls import adapter_names, open_adapter, redact
from .context import Context, resolved
from .emitter import Emitter, Put, Sender
from .listener import Listener, Receiver
from .stats import Counters, Stats

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Queue", "connect"]

log = logging.getLogger("qchan.queue")
_T = TypeVar("_T")


class _KernelHooks(Hooks):
    def __init__(self, queue: Queue) -> None:
        self._queue = weakref.ref(queue)
        self.in_flight = queue.options.in_flight

    def report(self, error: BaseException) -> None:
        q = self._queue()
        if q is not None:
            q._report(error)

    def revoke(self, predicate: Any) -> int:
        q = self._queue()
        return q._revoke(predicate) if q is not None else 0


class Queue:
    __doc__ = f"""A queue on a broker: open channels on it with `enqueue`/`dequeue`, close it
    when done.

    Options (all keyword-only; `q.options` holds them, resolved against the adapter):

{textwrap.indent(QueueOptions.describe(), "    ")}
    """

    def __init__(
        self, adapter: Adapter, *, url: str | None = None, **options: Unpack[QueueKeywords]
    ) -> None:
        if not isinstance(adapter, Adapter):  # a caller without a type checker
            hint = (  # type: ignore[unreachable]
                " (for a URL, use qchan.connect(url))" if isinstance(adapter, str) else ""
            )
            raise OptionError(f"Queue needs a qchan.Adapter, not {adapter!r}{hint}")
        given = QueueOptions.of("Queue", options)
        receiving = adapter if isinstance(adapter, ReceivingAdapter) else None
        visibility = receiving.visibility if receiving else None
        every = given.extend_every
        if every is not None and visibility is not None and 2 * every >= visibility:
            raise OptionError(
                f"extend_every={every!r} s is not shorter than half the visibility timeout of "
                f"{adapter!r} ({visibility} s): a message is first extended up to two beats "
                f"after it arrives, so it could be delivered again first; leave extend_every "
                f"out (a third of the timeout) or give less"
            )
        if every is None and visibility:
            every = max(0.01, visibility / 3)
        #: The options this queue runs by, each default resolved against the adapter.
        self.options: QueueOptions = attrs.evolve(
            given,
            agent=given.agent or program(),
            system=given.system or adapter.scheme,
            batch_size=given.batch_size or adapter.max_batch,
            retry=given.retry or Exponential(),
            poll_wait=(receiving or ReceivingAdapter).poll_wait
            if given.poll_wait is None
            else given.poll_wait,
            extend_every=every,
        )
        self.adapter = adapter
        self.name = adapter.name
        self.log = logging.LoggerAdapter(log, {"queue": adapter.name})
        self.url = redact(url) if url else f"{adapter.scheme}://{adapter.name}"
        self._counters = Counters()
        self._repeats = Repeats()
        self._lock = threading.Lock()
        self._senders: dict[str, Sender] = {}
        self._receivers: dict[str, Receiver] = {}
        self._emitter: Emitter | None = None
        self._listener: Listener | None = None
        self._closing = False
        self._closed = threading.Event()
        self._failure: QueueFailed | None = None
        self._down = threading.Event()  # closed, or failed: what q.wait() waits for
        # Messages not known to be delivered, left when a failed queue wound down:
        # `with enqueue` takes its category's, close() raises the rest.
        self._leftover: list[Any] = []
        adapter.bind(_KernelHooks(self))
        _OPEN.add(self)

    if not TYPE_CHECKING:  # a type checker says `q.in_flight` is no attribute: good

        def __getattr__(self, name: str) -> Any:
            """`q.in_flight` and the other options' names: deprecated, read `q.options`."""
            if name in QUEUE_OPTIONS and name != "options":
                warnings.warn(
                    f"Queue.{name} is deprecated: read q.options.{name}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(self.__dict__["options"], name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in QUEUE_OPTIONS:
            raise AttributeError(
                f"Queue.{name} cannot change once the queue is open: give {name}= to Queue(...) "
                f"or connect(...)"
            )
        super().__setattr__(name, value)

    def _context(self) -> Context:
        """What this queue's worker threads get (they never see the Queue itself)."""
        return Context(
            name=self.name,
            adapter=self.adapter,
            options=self.options,
            counters=self._counters,
            report=self._report,
            fail=self._fail,
            failure=lambda: self._failure,
        )

    def __repr__(self) -> str:
        state = (
            " failed" if self._failure is not None else " closed" if self._closed.is_set() else ""
        )
        return f"<Queue {self.url}{state}>"

    # -- state -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def failure(self) -> QueueFailed | None:
        """Why the queue failed (a worker thread raised; see `QueueFailed`), or None."""
        return self._failure

    def stats(self) -> Stats:
        """Counters since the queue opened, and how many messages are in flight now."""
        listener = self._listener
        return self._counters.snapshot(
            listener.in_flight if listener else 0, self._failure is not None
        )

    def attributes(self, category: str) -> Mapping[str, str]:
        """The wire attributes this queue sends with a message of `category`."""
        return types.MappingProxyType(
            {
                ATTR_CATEGORY: category,
                ATTR_SOURCE: resolved(self.options.agent),
                ATTR_SYSTEM: resolved(self.options.system),
                ATTR_QUEUE: self.name,
            }
        )

    # -- registration (used by endpoints.py) -----------------------------------

    def _add_sender(self, sender: Sender) -> None:
        hint = "close it first, or give this one another category="
        emitter = self._register(self._senders, sender, "enqueue", hint, self._emitter_started)
        if sender.out is not None:
            emitter.add(sender)

    def _emitter_started(self) -> Emitter:
        if self._emitter is None:
            self._emitter = Emitter(self._context())
        return self._emitter

    def _drop_sender(self, sender: Sender) -> None:
        with self._lock:
            if self._senders.get(sender.category) is sender:
                del self._senders[sender.category]

    def _put(self, sender: Sender, bag: Bag, timeout: float | None) -> Any:
        with self._lock:
            self._check_open()
            emitter = self._emitter
        assert emitter is not None
        put = Put(bag)
        try:
            emitter.puts.send(put, timeout=timeout)
        except ChannelClosed:
            raise EnqueueError(f"{self!r} is closed; nothing was sent") from None
        return put

    def _add_receiver(self, receiver: Receiver) -> None:
        hint = "one channel per category and queue receives it"
        listener = self._register(
            self._receivers, receiver, "dequeue", hint, self._listener_started
        )
        listener.add(receiver)

    def _listener_started(self) -> Listener:
        if self._listener is None:
            self._listener = Listener(self._context(), self._receiving())
        return self._listener

    def _receiving(self) -> ReceivingAdapter:
        """The adapter's receive side; SendOnlyError (dequeue's) for a send-only transport."""
        adapter = self.adapter
        if not isinstance(adapter, ReceivingAdapter):
            raise SendOnlyError(
                f"dequeue: {self!r} only sends ({adapter.scheme}:// delivers to its "
                f"subscribers); receive its messages where they are delivered: an SQS queue "
                f"subscribed to the topic or targeted by a rule (dequeue on "
                f"connect('sqs://...')), or an AWS Lambda function (qchan.aws.lambda_handler)"
            )
        return adapter

    def _register(
        self,
        table: dict[str, Any],
        item: Sender | Receiver,
        what: str,
        hint: str,
        started: Callable[[], _T],
    ) -> _T:
        """Record `item` under its category; returns the thread it goes to.

        Refused while the queue is not open or another `what` holds the category;
        `started()` (under the lock, before `item` is recorded) starts the thread once.
        """
        with self._lock:
            self._check_open()
            if item.category in table:
                raise QchanError(
                    f"category {item.category!r} already has an open {what} on {self!r}; {hint}"
                )
            thread = started()
            table[item.category] = item
        return thread

    def _drop_receiver(self, receiver: Receiver) -> None:
        with self._lock:
            listener = self._listener
            if self._receivers.get(receiver.category) is receiver:
                del self._receivers[receiver.category]
        if listener is not None:
            listener.remove(receiver, self.options.close_timeout)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure_now()
        if self._closing:
            raise ChannelClosed(f"{self!r} is closed")

    def _failure_now(self) -> QueueFailed:
        """A fresh QueueFailed to raise (the queue has failed)."""
        assert self._failure is not None
        error = QueueFailed(str(self._failure))
        error.__cause__ = self._failure.__cause__
        return error

    # -- errors ---------------------------------------------------------------

    def _report(self, error: BaseException) -> None:
        """Hand an error no channel owns to the errors channel, or log it."""
        errors = self.options.errors
        if errors is not None and isinstance(error, Exception):
            try:
                errors.send(error, timeout=0)
                return
            except (TimeoutError, ChannelClosed):
                pass
        text = str(error) or type(error).__name__
        if f"{self.name!r}" not in text and f"queue {self.name}" not in text:
            text = f"queue {self.name}: {text}"  # prefixed once: most of ours name it already
        if isinstance(error, ConnectionLost):  # it repeats while the broker is away
            self._repeats.log(self.log, logging.ERROR, text)  # like lines: one per 30 s
        elif isinstance(error, QchanError):  # expected (one per message, say): it says it all
            self.log.error("%s", text)
        else:
            self.log.error("%s", text, exc_info=error)

    def _fail(self, error: BaseException, thread: str) -> None:
        """A worker thread of this queue raised unexpectedly: fail the queue, loudly.

        The one rule for every kernel thread (emitter, consumer, serve's
        workers): the error is logged with its traceback and put on `errors`; every
        channel of the queue fails, so each call blocked on one raises `QueueFailed`;
        a thread of its own then winds the queue down as close() does (within
        close_timeout), naming the messages not known to be delivered.
        """
        with self._lock:
            if self._failure is not None or self._closed.is_set():
                first = False
            else:
                first = True
                failure = QueueFailed(
                    f"queue {self.name!r} failed: its {thread} thread raised {describe(error)}"
                )
                failure.__cause__ = error
                self._failure = failure
                closing = self._closing
                self._closing = True
                senders = list(self._senders.values())
                receivers = list(self._receivers.values())
                emitter = self._emitter
        if not first:  # failed (or closed) already: still say what happened
            self.log.error("%s thread raised after the queue stopped", thread, exc_info=error)
            return
        self.log.critical("%s; it winds down now", failure, exc_info=error)
        if self.options.errors is not None:
            try:
                self.options.errors.send(failure, timeout=0)
            except (TimeoutError, QchanError):
                self.log.error("the errors channel did not take the failure (full or closed)")
        self._down.set()
        for sender in senders:
            for ch in (sender.out, sender.dlq):
                if ch is not None:
                    ch.fail(failure)
        for receiver in receivers:
            receiver.rcv.fail(failure)
            receiver.ack.fail(failure)
        if emitter is not None:
            emitter.puts.fail(failure)
            emitter._ring()
        if not closing:  # nobody is closing it yet: wind down now, off this thread
            threading.Thread(
                target=self._wind_down, name=f"qchan-failed-{self.name}", daemon=True
            ).start()

    def _wind_down(self) -> None:
        try:
            self._shut(self.options.close_timeout)
        except Exception as e:
            self.log.error("winding down after the failure: %s", e, exc_info=e)

    def _undelivered(self, category: str) -> list[Any]:
        """Take the messages of `category` not known to be delivered (see `_leftover`)."""
        with self._lock:
            emitter = self._emitter
            mine = [m for m in self._leftover if m.category == category]
            self._leftover = [m for m in self._leftover if m.category != category]
        if emitter is not None:
            mine += emitter.take_undelivered(category)
        return mine

    def _revoke(self, predicate: Any) -> int:
        listener = self._listener
        return listener.revoke(predicate) if listener is not None else 0

    # -- lifecycle --------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop receiving, release un-acked messages, flush what was sent, join every thread.

        Returns within `timeout` (default close_timeout) and a little more. Raises
        `EnqueueError` listing the messages that were neither delivered nor handed
        back on a dlq (its `failed` attribute holds them); on a failed queue its
        `__cause__` is the `QueueFailed`.
        """
        timeout = self.options.close_timeout if timeout is None else timeout
        with self._lock:
            closing_elsewhere = self._closing
            self._closing = True
        if closing_elsewhere:
            # Another thread (or a failure's wind-down) closes it: wait for that.
            if not self._closed.wait(timeout + 2.0):
                self.log.warning("still closing after %.1f s; not waiting longer", timeout)
        else:
            self._shut(timeout)
        with self._lock:
            undelivered, self._leftover = self._leftover, []
        if undelivered:
            error = EnqueueError(
                f"{self!r} closed with {len(undelivered)} message(s) neither delivered nor "
                f"handed back on a dlq (first: {undelivered[0].error!r}); see .failed",
                undelivered,
            )
            raise error from self._failure

    def _shut(self, timeout: float) -> None:
        """The close itself (one thread runs it): listener, emitter, adapter, in that order."""
        with self._lock:
            listener, emitter = self._listener, self._emitter
        deadline = time.monotonic() + timeout
        try:
            if listener is not None:
                listener.stop(timeout)
            if emitter is not None:
                # Some time for the flush, even if the listener took it all.
                left = emitter.stop(max(deadline - time.monotonic(), min(1.0, timeout)))
                with self._lock:
                    self._leftover.extend(left)
        finally:
            try:
                self.adapter.close()
            except Exception as e:
                self.log.warning("closing the adapter failed: %s", e)
            _OPEN.discard(self)
            self._closed.set()
            self._down.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queue is closed (by another thread or a signal handler) or has
        failed (see `failure`); False if `timeout` seconds passed first."""
        return self._down.wait(timeout)

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Queues still open at interpreter exit are closed then, so that the emitter
# (not a daemon: it may hold messages) flushes instead of hanging the exit.
_OPEN: weakref.WeakSet[Queue] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for q in list(_OPEN):
        try:
            q.close()
        except Exception as e:
            log.error("queue %s: %s", q.name, e)


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_close_all_at_exit)


def connect(url: str, **options: Any) -> Queue:
    """Open the queue a URL names: `mem://orders`, `sqs://orders?region=...`, `amqp://...`.

    Options the queue knows (see `Queue`) configure it, as keywords or, for the
    numbers and names among them, as URL query keys (`mem://orders?in_flight=100`;
    a keyword wins). The rest go to the transport's adapter. An unknown name, a
    value of the wrong type or out of range raises `OptionError` (a TypeError and
    a ValueError) naming it, with the valid names and the nearest one; in the URL
    query, `URLError`.
    """
    if not isinstance(url, str):
        raise OptionError(f"connect needs a queue URL string, not {url!r}")
    url_for_adapter, from_query = split_query(url, adapter_names(url, "QUERY_KEYS") or ())
    ours = {k: options.pop(k) for k in list(options) if k in QUEUE_OPTIONS or k == "heartbeat"}
    where = f"connect({redact(url)!r})"
    # Checked before the adapter opens (it may reach the network).
    checked = QueueOptions.of(where, {**from_query, **ours})
    own = adapter_names(url_for_adapter)
    if own is not None:
        check_keywords(where, options, {*QUEUE_OPTIONS, *own})
    adapter = open_adapter(url_for_adapter, **options)
    return Queue(adapter, url=url, **attrs.asdict(checked, recurse=False))
