"""Typed logical channels on a queue: `enqueue`, `enqueue_sync` and `dequeue`."""

from __future__ import annotations

import abc
import enum
import logging
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, NamedTuple, TypeVar, get_origin

import cattrs

from . import tracing
from .chan import Chan, Pipe, RecvChan, SendChan, chan_of
from .codec import Codec, category_for, codec_for
from .errors import EnqueueError, QueueFailed, SendOnlyError
from .event import Event
from .kernel.emitter import Sender
from .kernel.queue import Queue
from .kernel.routes import Receiver
from .message import Bag, Msg
from .options import OptionError, check_count
from .select import select

__all__ = [
    "AT_LEAST_ONCE",
    "AT_MOST_ONCE",
    "Dequeued",
    "DirectQueue",
    "Enqueued",
    "Policy",
    "SyncEnqueuer",
    "dequeue",
    "enqueue",
    "enqueue_sync",
]

T = TypeVar("T")
log = logging.getLogger("qchan.endpoints")


class Policy(enum.Enum):
    """Delivery policy of an `enqueue`d channel.

    AT_LEAST_ONCE: `out` is unbuffered, so the emitter takes each message as it
    is sent and a broker failure holds further sends back until the failed
    messages are on `dlq` (the delayed guarantee). AT_MOST_ONCE: `out` is
    buffered (`capacity`); messages still in the buffer when the process dies
    are lost.
    """

    AT_LEAST_ONCE = "at-least-once"
    AT_MOST_ONCE = "at-most-once"


AT_LEAST_ONCE = Policy.AT_LEAST_ONCE
AT_MOST_ONCE = Policy.AT_MOST_ONCE

# out channel -> its sender, so that leaving `with enqueue(...)` finds it.
_SENDERS: weakref.WeakKeyDictionary[Chan[Any], tuple[Queue, Sender]] = weakref.WeakKeyDictionary()
_RECEIVERS: weakref.WeakKeyDictionary[Chan[Any], tuple[Queue, Receiver]] = (
    weakref.WeakKeyDictionary()
)


class Enqueued(NamedTuple, Generic[T]):
    """`(out, dlq)` of an `enqueue`d channel; as a context manager, leaving it closes `out`
    and waits until everything sent is delivered or on `dlq`.

    Leaving the block raises `EnqueueError` for messages that ended on `dlq`
    and were not received from it (its `failed` lists them), so none is lost
    silently; receive from `dlq` inside the block (or in a thread) to handle
    them yourself.
    """

    out: SendChan[T]
    dlq: RecvChan[Msg[T]]

    def __enter__(self) -> Enqueued[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failed = self.close()
        if not failed:
            return
        summary = (
            f"{len(failed)} {failed[0].category!r} message(s) were not delivered and not "
            f"received from dlq (first error: {failed[0].error!r})"
        )
        if exc_type is None or isinstance(exc, QueueFailed):
            # On a failed queue this error, with the list, replaces the block's QueueFailed
            # (its cause): the messages it names are what the application needs.
            cause = (
                exc
                if isinstance(exc, QueueFailed)
                else next((m.error for m in failed if isinstance(m.error, QueueFailed)), None)
            )
            raise EnqueueError(summary + "; see .failed", failed) from cause
        log.error("%s; the block raised %s first", summary, exc_type.__name__)

    def close(self) -> list[Msg[T]]:
        """Close `out`, wait for its flush, and return what ended on `dlq` unreceived, and
        what is not known to be delivered (a failed queue, a close that timed out)."""
        entry = _SENDERS.pop(chan_of(self.out), None)
        self.out.close()
        dlq = chan_of(self.dlq)
        assert isinstance(dlq, Pipe)  # enqueue made it
        if entry is None:  # closed before
            return dlq.recv_many(1 << 30)
        queue, sender = entry
        failed: list[Msg[T]] = []
        # Drain the dlq while waiting: the emitter may be waiting for room on it.
        dlq_open = True
        while True:
            cases: list[Any] = [sender.finished]
            if dlq_open:
                cases.append(dlq)
            try:
                sel = select(*cases)
            except QueueFailed:  # the queue failed: the emitter finishes this sender now
                dlq_open = False
                continue
            assert sel is not None
            if sel.index == 0:
                break
            if sel.ok:
                failed.append(sel.value)
            else:
                dlq_open = False
        failed.extend(dlq.recv_many(1 << 30))
        failed.extend(queue._undelivered(sender.category))
        queue._drop_sender(sender)
        return failed


class Dequeued(NamedTuple, Generic[T]):
    """`(rcv, ack)` of a `dequeue`d channel; as a context manager, leaving it stops receiving
    this category, applies the acks already sent and releases un-acked messages."""

    rcv: RecvChan[Msg[T]]
    ack: SendChan[Msg[T]]

    def __enter__(self) -> Dequeued[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        entry = _RECEIVERS.pop(chan_of(self.rcv), None)
        if entry is not None:
            queue, receiver = entry
            queue._drop_receiver(receiver)


class DirectQueue(abc.ABC):
    """A queue whose sends are written in the caller's thread, before `send` returns.

    `qchan.outbox.Outbox` is one: a send there is a row written in the application's
    own database transaction, so it cannot go through the emitter thread. `enqueue` on
    it gives an `out` whose `send` encodes and calls `_write` at once (an error is
    raised at the call; `dlq` stays empty), and `enqueue_sync` a `put` that does the
    same. There is no receive side.
    """

    name: str

    @abc.abstractmethod
    def attributes(self, category: str) -> Mapping[str, str]:
        """The wire attributes of a message of `category` (Category, Source, ...)."""

    @property
    @abc.abstractmethod
    def agent(self) -> str:
        """The sending agent (`Source`), for `Event` metadata."""

    @abc.abstractmethod
    def _write(self, bags: Sequence[Bag]) -> None:
        """Write the bags now, or raise (nothing of them written)."""


class _DirectOut(SendChan[T]):
    """`out` of an `enqueue` on a `DirectQueue`: `send` writes before it returns."""

    __slots__ = ("_q", "_sender")
    _direct = True

    def __init__(self, q: DirectQueue, sender: Sender) -> None:
        super().__init__(Chan(0, name=f"{q.name}/{sender.category}.out"))
        self._q = q
        self._sender = sender
        self.send = self._send

    def _send(self, value: T, timeout: float | None = None) -> None:
        """Encode and write `value` now (`timeout` is not used: the write is the caller's
        own database statement). ChannelClosed once `out` is closed."""
        if self._chan.closed:
            raise self._chan._closed_error()
        self._q._write([self._sender.encode(value, self._q.agent, tracing.carrier())])


def _direct_sender(
    q: DirectQueue, type_: Any, cat: str, cod: Codec[Any], key: Callable[[Any], str | None] | None
) -> Sender:
    return Sender(
        category=cat,
        codec=cod,
        attributes=q.attributes(cat),
        out=None,
        dlq=None,
        key=key,
        is_event=_is_event(type_),
    )


def _check(call: str, type_: Any, q: Any, **counts: tuple[Any, int, bool]) -> None:
    """The arguments every endpoint shares: a type, a Queue, counts (value, minimum, may be
    None)."""
    if isinstance(q, DirectQueue):
        if call == "dequeue":
            raise SendOnlyError(
                f"dequeue: {q!r} only sends; its messages are received where they are "
                f"relayed to (qchan.outbox.relay)"
            )
    elif not isinstance(q, Queue):
        hint = " (open one with qchan.connect(url))" if isinstance(q, str) else ""
        raise OptionError(f"{call} needs a qchan.Queue as its second argument, not {q!r}{hint}")
    if not isinstance(type_, type) and get_origin(type_) is None:
        raise OptionError(
            f"{call} needs the type of the objects as its first argument (a class such as "
            f"Order, or str, bytes, Event[Meta, Order]), not {type_!r}"
        )
    for name, (value, minimum, optional) in counts.items():
        check_count(name, value, minimum=minimum, optional=optional, where=call)


def _is_event(type_: Any) -> bool:
    return type_ is Event or get_origin(type_) is Event


def _resolve(
    type_: Any,
    category: str | None,
    codec: Codec[Any] | None,
    converter: cattrs.Converter | None,
) -> tuple[str, Codec[Any]]:
    cat = category_for(type_) if category is None else category
    return cat, codec or codec_for(type_, converter)


def _add_sender(
    q: Queue,
    type_: Any,
    cat: str,
    cod: Codec[Any],
    *,
    key: Callable[[Any], str | None] | None,
    out: Pipe[Any] | None,
    dlq: Pipe[Msg[Any]] | None,
) -> Sender:
    """Register a sender of `type_` objects on `q` (no channels: `enqueue_sync`'s)."""
    sender = Sender(
        category=cat,
        codec=cod,
        attributes=q.attributes(cat),
        out=out,
        dlq=dlq,
        key=key,
        is_event=_is_event(type_),
    )
    q._add_sender(sender)
    return sender


def enqueue(
    type_: type[T],
    q: Queue | DirectQueue,
    *,
    category: str | None = None,
    policy: Policy = AT_LEAST_ONCE,
    capacity: int | None = None,
    dlq_capacity: int | None = None,
    key: Callable[[T], str | None] | None = None,
    codec: Codec[T] | None = None,
    converter: cattrs.Converter | None = None,
    trace: bool | None = None,
) -> Enqueued[T]:
    """Open a channel that sends `type_` objects to `q`: returns `(out, dlq)`.

    `category` defaults to the type's name. `policy` picks the capacity of
    `out` (AT_LEAST_ONCE: 0; AT_MOST_ONCE: `capacity`, default 1024). `dlq`
    buffers `dlq_capacity` failures (default: two batches). `key(obj)` gives
    the ordering key (SQS FIFO message group, Kafka key). `trace`: carry the
    sender's OpenTelemetry context as `traceparent` (default: when
    OpenTelemetry is installed; `select` send cases carry none).
    """
    _check("enqueue", type_, q, capacity=(capacity, 0, True), dlq_capacity=(dlq_capacity, 0, True))
    if not isinstance(policy, Policy):
        raise OptionError(f"enqueue: policy must be AT_LEAST_ONCE or AT_MOST_ONCE, not {policy!r}")
    cat, cod = _resolve(type_, category, codec, converter)
    if isinstance(q, DirectQueue):
        # Written at the call: nothing waits, nothing can end on dlq (it stays empty).
        dead: Pipe[Msg[T]] = Pipe(0, name=f"{q.name}/{cat}.dlq")
        dead.close()
        return Enqueued(_DirectOut(q, _direct_sender(q, type_, cat, cod, key)), dead.recv_only())
    if policy is AT_LEAST_ONCE:
        if capacity:
            raise ValueError(
                "AT_LEAST_ONCE uses an unbuffered out channel; use AT_MOST_ONCE for a buffered one"
            )
        out_cap = 0
    else:
        out_cap = 1024 if capacity is None else capacity
    dlq_cap = 2 * (q.options.batch_size or 1) if dlq_capacity is None else dlq_capacity
    out: Pipe[T] = Pipe(out_cap, name=f"{q.name}/{cat}.out")
    dlq: Pipe[Msg[T]] = Pipe(dlq_cap, name=f"{q.name}/{cat}.dlq")
    sender = _add_sender(q, type_, cat, cod, key=key, out=out, dlq=dlq)
    _SENDERS[out] = (q, sender)
    view = out.send_only()
    if tracing.enabled() if trace is None else trace:
        view.send = _traced_send(out)
    return Enqueued(view, dlq.recv_only())


def _traced_send(out: Chan[Any]) -> Any:
    """`out.send` that carries the caller's trace context to the emitter (it encodes
    on its own thread, where the caller's context is unknown)."""
    raw = out.send
    active = tracing.active

    def send(value: Any, timeout: float | None = None) -> None:
        if active():  # the cheap test first: it is false outside any span
            attributes = tracing.carrier()
            if attributes:
                value = tracing.Traced(value, attributes)
        raw(value, timeout)

    return send


def dequeue(
    type_: type[T],
    q: Queue | DirectQueue,
    *,
    category: str | None = None,
    capacity: int = 32,
    ack_capacity: int = 256,
    codec: Codec[T] | None = None,
    converter: cattrs.Converter | None = None,
) -> Dequeued[T]:
    """Open a channel that receives `type_` objects from `q`: returns `(rcv, ack)`.

    Polling of `q` starts with its first dequeue. `category` defaults to the
    type's name; `"*"` receives every message no other channel of this queue
    takes, and `""` the messages that carry no `Category` attribute. Messages
    in `rcv`'s buffer (`capacity`) count toward the queue's in-flight limit.
    Acknowledge each message with `ack.send(msg)`, or refuse it with
    `ack.send(msg.fail(err))` for redelivery.
    """
    _check(
        "dequeue", type_, q, capacity=(capacity, 0, False), ack_capacity=(ack_capacity, 1, False)
    )
    assert isinstance(q, Queue)  # _check refused a DirectQueue
    q._receiving()  # a send-only transport: SendOnlyError, at the call
    cat, cod = _resolve(type_, category, codec, converter)
    rcv: Pipe[Msg[T]] = Pipe(capacity, name=f"{q.name}/{cat}.rcv")
    ack: Pipe[Msg[T]] = Pipe(ack_capacity, name=f"{q.name}/{cat}.ack")
    receiver = Receiver(cat, cod, rcv, ack)
    q._add_receiver(receiver)
    _RECEIVERS[rcv] = (q, receiver)
    return Dequeued(rcv.recv_only(), ack.send_only())


class SyncEnqueuer(Generic[T]):
    """Sends one object at a time and returns only once the broker accepted it.

    Thread-safe: many threads (say, a web server's) may share one; the emitter
    batches their concurrent puts.
    """

    def __init__(self, q: Queue, sender: Sender) -> None:
        self._q = q
        self._sender = sender
        self.category = sender.category

    def put(self, obj: T, timeout: float | None = None) -> None:
        """Send `obj`; return once the broker accepted it.

        Raises `EncodeError` if `obj` cannot be encoded (nothing was sent),
        `EnqueueError` (with `__cause__`) if the broker did not accept it within
        the queue's retry policy, and `TimeoutError` after `timeout` seconds, in
        which case the outcome is unknown: the message may still be delivered.
        """
        started = time.monotonic()
        bag = self._sender.encode(obj, self._q.options.agent or "", tracing.carrier())
        put = self._q._put(self._sender, bag, timeout)
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        if not put.done.wait(remaining):
            put.cancelled = True
            raise TimeoutError(
                f"no answer from {self._q!r} within {timeout} s; the message may still be delivered"
            )
        if isinstance(put.error, QueueFailed):
            failed = QueueFailed(str(put.error))
            raise failed from put.error.__cause__
        if put.error is not None:
            raise EnqueueError(
                f"{self._q!r} did not accept a {self.category!r} message: {put.error}",
                [Msg(obj, self.category, attributes=bag.attributes, error=put.error, bag=bag)],
            ) from put.error

    def close(self) -> None:
        self._q._drop_sender(self._sender)

    def __enter__(self) -> SyncEnqueuer[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirectSyncEnqueuer(SyncEnqueuer[T]):
    """`enqueue_sync` on a `DirectQueue`: `put` writes before it returns (the outbox: in the
    caller's transaction), and raises what the write raised."""

    def __init__(self, q: DirectQueue, sender: Sender) -> None:
        self._direct = q
        self._sender = sender
        self.category = sender.category

    def put(self, obj: T, timeout: float | None = None) -> None:
        self._direct._write([self._sender.encode(obj, self._direct.agent, tracing.carrier())])

    def close(self) -> None:
        pass  # nothing registered: a direct queue has no emitter


def enqueue_sync(
    type_: type[T],
    q: Queue | DirectQueue,
    *,
    category: str | None = None,
    key: Callable[[T], str | None] | None = None,
    codec: Codec[T] | None = None,
    converter: cattrs.Converter | None = None,
) -> SyncEnqueuer[T]:
    """Open a synchronous sender of `type_` objects: `put(obj)` returns once the broker has it."""
    _check("enqueue_sync", type_, q)
    cat, cod = _resolve(type_, category, codec, converter)
    if isinstance(q, DirectQueue):
        return _DirectSyncEnqueuer(q, _direct_sender(q, type_, cat, cod, key))
    sender = _add_sender(q, type_, cat, cod, key=key, out=None, dlq=None)
    return SyncEnqueuer(q, sender)
