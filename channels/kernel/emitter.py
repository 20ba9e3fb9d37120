"""The emitter: one thread per queue that batches, encodes, sends, retries and dead-letters.

It selects over every `out` channel of the queue (plus the synchronous puts),
gathers up to `batch_size` messages or waits at most `linger` seconds, and
hands the batch to the adapter. Failed messages are retried with the queue's
backoff policy, in their original order; when the policy gives up (or the
broker refuses a message for good) the original object goes to its channel's
`dlq`, with the error. Nothing is dropped: what cannot reach a `dlq` at close
is returned by `stop()` and raised by `Queue.close()`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..adapter import Sending
from ..chan import Chan, Pipe
from ..codec import Codec, EncodeError
from ..errors import ChannelClosed, QchanError, QueueFailed, RejectedError
from ..event import Event, stamp
from ..message import Bag, Msg
from ..select import select
from ..tracing import Traced
from .context import Context, resolved

__all__ = ["Emitter", "Put", "Sender"]

log = logging.getLogger("qchan.emitter")

# Message ids: unique across processes (a random prefix per process) and cheap
# (a counter: os.urandom per message is a system call, measured at 10% of a
# send; str() of the counter is twice as fast as formatting it as hex).
_ID_PREFIX = os.urandom(8).hex() + "-"
_next_id = itertools.count().__next__


class Sender:
    """One `enqueue`d category: its channels and how to encode for it."""

    __slots__ = ("attributes", "category", "codec", "dlq", "finished", "is_event", "key", "out")

    def __init__(
        self,
        *,
        category: str,
        codec: Codec[Any],
        attributes: Mapping[str, str],
        out: Pipe[Any] | None,
        dlq: Pipe[Msg[Any]] | None,
        key: Callable[[Any], str | None] | None,
        is_event: bool,
    ) -> None:
        self.category = category
        self.codec = codec
        self.attributes = attributes
        self.out = out
        self.dlq = dlq
        self.key = key
        self.is_event = is_event
        # Closed once the emitter has sent, or dead-lettered, everything of this sender.
        self.finished: Chan[None] = Chan(0, name=f"{category}.finished")

    def encode(self, obj: Any, agent: str, extra: Mapping[str, str] | None = None) -> Bag:
        """The bag for `obj` (EncodeError if the codec refuses it); `extra`: more attributes."""
        if self.is_event and isinstance(obj, Event):
            obj = stamp(obj, self.category, agent)
        # Positional (category, body, attributes, id, key, content_type): measurably
        # faster than keywords, once per message. The id is stable across retries:
        # brokers de-duplicate on it.
        return Bag(
            self.category,
            self.codec.encode(obj),
            {**self.attributes, **extra} if extra else self.attributes,
            _ID_PREFIX + str(_next_id()),
            self.key(obj) if self.key is not None else None,
            self.codec.content_type,
        )


class Put:
    """A synchronous put waiting for the broker's answer."""

    __slots__ = ("bag", "cancelled", "done", "error")

    def __init__(self, bag: Bag) -> None:
        self.bag = bag
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.cancelled = False

    def resolve(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()


class Outgoing:
    """Messages gathered for one send, as parallel lists (index i is one message).

    `origins[i]` is the sender `objs[i]` came from, or None for a synchronous
    put (then `objs[i]` is the `Put`). Lists rather than an object per message:
    while a batch is in flight every per-message object is one more for the
    garbage collector to track and, once it survives a collection, to traverse
    again (measured: a full collection per 50,000 Kafka messages, 60 ms).
    """

    __slots__ = ("bags", "objs", "origins")

    def __init__(self) -> None:
        self.bags: list[Bag] = []
        self.objs: list[Any] = []
        self.origins: list[Sender | None] = []

    def __len__(self) -> int:
        return len(self.bags)

    def add(self, origin: Sender | None, obj: Any, bag: Bag) -> None:
        self.bags.append(bag)
        self.objs.append(obj)
        self.origins.append(origin)

    def subset(self, indices: list[int]) -> Outgoing:
        """The messages at `indices`, in that order."""
        part = Outgoing()
        for i in indices:
            part.add(self.origins[i], self.objs[i], self.bags[i])
        return part

    def fail(self, error: BaseException) -> list[Msg[Any]]:
        """Answer every synchronous put with `error`; the other messages, as Msgs naming it."""
        failed: list[Msg[Any]] = []
        for origin, obj, bag in zip(self.origins, self.objs, self.bags, strict=True):
            if origin is None:  # its put() caller gets the answer directly
                obj.resolve(error)
            else:
                failed.append(
                    Msg(
                        object=obj,
                        category=bag.category,
                        attributes=bag.attributes,
                        error=error,
                        bag=bag,
                    )
                )
        return failed


class Ledger:
    """Every batch the emitter thread holds unsettled, once each, in one place: those
    gathered (submitted and waiting for their outcomes, or being sent and retried), oldest
    first, and the one being gathered.

    Only the emitter thread changes it; `close()`, giving up on a stuck thread, reads it
    from another (`held`). Each change is one step (an append, an item assignment, a
    removal), so that reader never finds a batch in neither place: a batch leaves the
    gathering slot only once it is in the list, and stays there, narrowed to what is
    left to retry, until it is settled.
    """

    __slots__ = ("batches", "gathering")

    def __init__(self) -> None:
        self.batches: list[Outgoing] = []
        self.gathering: Outgoing | None = None

    def gather(self) -> Outgoing:
        """A new batch to gather into."""
        batch = self.gathering = Outgoing()
        return batch

    def gathered(self) -> Outgoing:
        """The batch being gathered is complete: held until settled (if not empty)."""
        batch = self.gathering
        assert batch is not None
        if batch:
            self.batches.append(batch)
        self.gathering = None
        return batch

    def narrow(self, batch: Outgoing, rest: Outgoing) -> Outgoing:
        """Only `rest` of `batch` is left to settle (the failures to retry)."""
        self.batches[self._index(batch)] = rest
        return rest

    def settled(self, batch: Outgoing) -> None:
        del self.batches[self._index(batch)]

    def held(self, gathering: bool = False) -> list[Outgoing]:
        """What is held now (the batch being gathered too, with `gathering`: only from the
        emitter thread, which is the one filling it)."""
        held = list(self.batches)
        if gathering and self.gathering is not None:
            held.append(self.gathering)
        return held

    def clear(self) -> None:
        self.batches.clear()
        self.gathering = None

    def _index(self, batch: Outgoing) -> int:
        for i, b in enumerate(self.batches):
            if b is batch:
                return i
        raise AssertionError("a batch the ledger does not hold")


class Emitter:
    """The emitter thread of one queue. `Queue` creates it on the first `enqueue`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.name = ctx.name
        self.adapter = ctx.adapter
        self.batch_size = resolved(ctx.options.batch_size)
        self.agent = resolved(ctx.options.agent)
        self.log = logging.LoggerAdapter(log, {"queue": ctx.name})
        self.linger = ctx.options.linger
        self.retry = resolved(ctx.options.retry)
        self.ctl: Chan[None] = Chan(1, name=f"{ctx.name}.emitter.ctl")  # a doorbell
        self.puts: Pipe[Put] = Pipe(4 * self.batch_size, name=f"{ctx.name}.puts")
        self._lock = threading.Lock()
        self._added: list[Sender] = []
        self._senders: list[Sender] = []  # the emitter thread's own
        self._puts_open = True
        self._stopping = False
        self.abort = threading.Event()
        self._abort_chan: Chan[None] = Chan(0)
        self.undelivered: list[Msg[Any]] = []  # appended by this thread, taken under _lock
        self._warned_full: set[str] = set()
        # A daemon only where CPython's threading exit hook exists: queue.py registers
        # one that closes (flushes) every open queue before the interpreter exits,
        # so no message is lost; an emitter abandoned by close() then cannot hang exit.
        self.thread = threading.Thread(
            target=self._run,
            name=f"qchan-emitter-{ctx.adapter.scheme}-{ctx.name}",
            daemon=hasattr(threading, "_register_atexit"),
        )
        # What the thread holds unsettled, for a crash or an abandoning close() to name.
        self._ledger = Ledger()
        # Set when close() gave up on this thread and named what it held.
        self._abandoned = False
        # Submitted batches whose outcomes are not settled yet, oldest first.
        self.depth = max(1, int(ctx.adapter.pipeline))
        self._pipe: deque[tuple[Outgoing, Sending, float]] = deque()
        self.thread.start()

    # -- called from application threads ------------------------------------

    def add(self, sender: Sender) -> None:
        with self._lock:
            if self._stopping:
                raise ChannelClosed(f"queue {self.name!r} is closed")
            self._added.append(sender)
        self._ring()

    def stop(self, timeout: float) -> list[Msg[Any]]:
        """Close every out channel, flush, and return what could not be delivered or dead-lettered.

        After `timeout` seconds the emitter stops retrying and stops waiting for
        full dlqs; whatever is left then is returned too.
        """
        with self._lock:
            self._stopping = True
            senders = [*self._added, *self._senders]
        for s in senders:
            if s.out is not None:
                s.out.close()
        self.puts.close()
        self._ring()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.log.warning(
                "queue %s: emitter still flushing after %.1f s; giving up on retries",
                self.name,
                timeout,
            )
            self.abort.set()
            self._abort_chan.close()
            self.thread.join(min(1.0, timeout))
        if self.thread.is_alive():
            abandoned = self._abandon(senders, timeout)
            return self.take_undelivered(None) + abandoned
        return self.take_undelivered(None)

    def take_undelivered(self, category: str | None) -> list[Msg[Any]]:
        """Take the undelivered messages (of `category`, or all)."""
        with self._lock:
            if category is None:
                mine, self.undelivered = self.undelivered, []
            else:
                mine = [m for m in self.undelivered if m.category == category]
                self.undelivered = [m for m in self.undelivered if m.category != category]
        return mine

    def _undeliverable(self, msg: Msg[Any]) -> None:
        with self._lock:
            if not self._abandoned:
                self.undelivered.append(msg)
                return
        # close() returned already, naming what this thread held; should a message reach
        # here that it did not name, the log does.
        self.log.error(
            "queue %s: %r message %s not delivered (%s), after close() gave up on the emitter",
            self.name,
            msg.category,
            msg.bag.id if msg.bag is not None else "(not encoded)",
            msg.error,
        )

    def _abandon(self, senders: list[Sender], timeout: float) -> list[Msg[Any]]:
        """The emitter is stuck inside the adapter (a stalled link): stop waiting for it.

        What it is sending has an unknown outcome (the broker may still take
        it); what is still buffered in the out channels was never sent. Both
        are returned for close() to raise; the thread is left to finish or die
        with the process (it is a daemon where the exit hook flushes queues).
        """
        unknown = RuntimeError(
            f"outcome unknown: the broker did not answer within close_timeout={timeout} s; "
            f"the message may still be delivered"
        )
        with self._lock:
            self._abandoned = True
        abandoned = [msg for batch in self._ledger.held() for msg in batch.fail(unknown)]
        unsent = RuntimeError(f"not sent: close_timeout={timeout} s passed first")
        abandoned.extend(self._unsent(senders, unsent))
        self.log.error(
            "queue %s: the emitter is blocked in %r past close_timeout; %d message(s) with "
            "an unknown outcome or not sent are reported",
            self.name,
            self.adapter,
            len(abandoned),
        )
        return abandoned

    def _unsent(self, senders: list[Sender], error: BaseException) -> list[Msg[Any]]:
        """What is still buffered in the out channels, and the puts not taken: never sent.
        Then every sender is finished: its dlq closes, and leaving `with enqueue` returns."""
        unsent: list[Msg[Any]] = []
        for put in self.puts.recv_many(1 << 30):
            put.resolve(error)
        for s in senders:
            if s.out is not None:
                unsent.extend(
                    Msg(object=obj, category=s.category, attributes=s.attributes, error=error)
                    for obj in s.out.recv_many(1 << 30)
                )
            if s.dlq is not None:
                s.dlq.close()
            s.finished.close()
        return unsent

    def _ring(self) -> None:
        try:
            self.ctl.send(None, timeout=0)
        except TimeoutError:
            pass  # already rung

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                closed: list[Sender] = []
                batch = self._gather(closed)
                if batch:
                    self._submit(batch)
                # Outcomes: every batch's before finishing a closed sender or going idle
                # (nothing was waiting to be sent), else the oldest while the pipe is full.
                self._collect(wait_all=bool(closed) or not batch)
                for s in closed:  # everything of theirs is flushed now
                    self._senders.remove(s)
                    if s.dlq is not None:
                        s.dlq.close()
                    s.finished.close()
                failure = self.ctx.failure()
                if failure is not None:  # another thread failed the queue: take no more
                    self._collect(wait_all=True)
                    self._finish_all(failure)
                    return
                if self._drained():
                    return
        except BaseException as e:
            self._crashed(e)

    def _finish_all(self, error: BaseException) -> None:
        """Stop for good: everything not yet sent is undelivered, every sender finished."""
        with self._lock:
            self._stopping = True
            senders = [*self._added, *self._senders]
            self._added = []
        self._senders = []
        self._puts_open = False
        for msg in self._unsent(senders, error):
            self._undeliverable(msg)

    def _crashed(self, error: BaseException) -> None:
        """This thread raised: fail the queue, and name every message it held."""
        self.ctx.fail(error, "emitter")
        failure = self.ctx.failure() or QueueFailed(f"queue {self.name!r} failed")
        batches = self._ledger.held(gathering=True)
        self._ledger.clear()
        self._pipe.clear()
        for batch in batches:
            for msg in batch.fail(failure):
                self._undeliverable(msg)
        try:
            self._finish_all(failure)
        except BaseException as e:
            self.log.critical("emitter could not wind down: %s", e, exc_info=e)

    def _drained(self) -> bool:
        """Stopping, and every channel this emitter reads is closed and flushed."""
        with self._lock:
            return (
                self._stopping and not self._added and not self._senders and (not self._puts_open)
            )

    def _layout(self) -> tuple[list[Any], list[Sender], int]:
        """The select cases [doorbell, puts (while open), each out], the senders in case
        order, and the index of the first out case."""
        senders = [s for s in self._senders if s.out is not None]
        cases: list[Any] = [self.ctl, self.puts] if self._puts_open else [self.ctl]
        first_out = len(cases)
        cases.extend(s.out for s in senders)
        return cases, senders, first_out

    def _gather(self, closed: list[Sender]) -> Outgoing:
        """Collect up to batch_size items, waiting at most `linger` after the first one.

        With batches in flight it does not wait for a first item: the caller
        collects their outcomes instead. At-least-once `out` channels are lent
        the batch's room meanwhile (see `Pipe.lend`).
        """
        lent: list[Pipe[Any]] = []
        self._lend(self._senders, lent)
        try:
            return self._gather_lent(closed, lent)
        finally:
            for out in lent:
                out.lend(0)

    def _lend(self, senders: list[Sender], lent: list[Pipe[Any]]) -> None:
        for s in senders:
            if s.out is not None and s.out.capacity == 0:
                s.out.lend(self.batch_size)
                lent.append(s.out)

    def _gather_lent(self, closed: list[Sender], lent: list[Pipe[Any]]) -> Outgoing:
        batch = self._ledger.gather()
        deadline: float | None = None
        cases, senders, first_out = self._layout()
        while len(batch) < self.batch_size:
            timeout = 0.0 if self._pipe else None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            try:
                sel = select(*cases, timeout=timeout)
            except QueueFailed:  # the queue failed: its channels raise now
                break
            if sel is None:
                break
            index = sel.index
            if index == 0:  # the doorbell: new senders, stopping, or the queue failed
                if self.ctx.failure() is not None:
                    break
                with self._lock:
                    added, self._added = self._added, []
                self._senders.extend(added)
                self._lend(added, lent)
                if self._drained():
                    break
                cases, senders, first_out = self._layout()
                continue
            if index < first_out:  # synchronous puts
                if not sel.ok:
                    self._puts_open = False
                    if self._drained():  # nothing left to read: the doorbell won't ring again
                        break
                    cases, senders, first_out = self._layout()
                    continue
                put: Put = sel.value
                if not put.cancelled:
                    batch.add(None, put, put.bag)
            else:
                sender = senders[index - first_out]
                if not sel.ok:  # closed and drained: flush now, then finish it
                    closed.append(sender)
                    break
                # Take what is already waiting too (buffered, or a parked sender) in one go.
                out = sender.out
                assert out is not None
                self._take(
                    sender, [sel.value, *out.recv_many(self.batch_size - len(batch) - 1)], batch
                )
            if batch and deadline is None:
                deadline = time.monotonic() + self.linger
        return self._ledger.gathered()

    def _take(self, sender: Sender, objs: list[Any], batch: Outgoing) -> None:
        """Encode `objs` of `sender` into the batch, in order; dead-letter what cannot be.

        The common run (plain objects: no trace context, not `Event`s, all
        encodable) goes through `Sender.encode` inlined, with what is
        per-sender looked up once; anything else redoes the run one by one.
        """
        bags = batch.bags
        if not sender.is_event:
            category, attributes, key = sender.category, sender.attributes, sender.key
            encode, content_type = sender.codec.encode, sender.codec.content_type
            mark = len(bags)
            try:
                for obj in objs:
                    if type(obj) is Traced:
                        break
                    bags.append(
                        Bag(
                            category,
                            encode(obj),
                            attributes,
                            _ID_PREFIX + str(_next_id()),
                            None if key is None else key(obj),
                            content_type,
                        )
                    )
                else:
                    batch.objs += objs
                    batch.origins += [sender] * len(objs)
                    return
            except Exception:  # noqa: S110 - the careful path below says what failed
                pass
            del bags[mark:]
        for obj in objs:
            self._take_one(sender, obj, batch)

    def _take_one(self, sender: Sender, obj: Any, batch: Outgoing) -> None:
        extra = None
        if type(obj) is Traced:  # sent with a trace context (see tracing.py)
            obj, extra = obj.obj, obj.attributes
        try:
            bag = sender.encode(obj, self.agent, extra)
        except Exception as e:
            err = e if isinstance(e, EncodeError) else EncodeError(f"cannot encode: {e!r}")
            self._dead_letter(sender, obj, None, err)
            return
        batch.add(sender, obj, bag)

    def _submit(self, batch: Outgoing) -> None:
        """Send a batch: synchronously, or (a pipelining adapter) into the pipe."""
        started = time.monotonic()
        if self.depth == 1:
            self._flush(batch, started)
            return
        try:
            sending = self.adapter.submit(batch.bags)
        except Exception as e:
            self._flush(batch, started, [e] * len(batch))
            return
        self._pipe.append((batch, sending, started))

    def _collect(self, wait_all: bool) -> None:
        """Settle submitted batches in order: those done; the oldest while the pipe is
        full; all of them with `wait_all`."""
        pipe = self._pipe
        while pipe:
            batch, sending, started = pipe[0]
            outcomes: Sequence[BaseException | None] | None
            try:
                outcomes = sending.result(None if wait_all or len(pipe) >= self.depth else 0)
            except Exception as e:
                outcomes = [e] * len(batch)
            if outcomes is None:
                return
            pipe.popleft()
            self._flush(batch, started, outcomes)

    def _send(self, pending: Outgoing) -> list[BaseException | None]:
        bags = pending.bags
        try:
            return self._checked(self.adapter.send_batch(bags), len(bags))
        except Exception as e:
            return [e] * len(bags)

    def _checked(
        self, outcomes: Sequence[BaseException | None], n: int
    ) -> list[BaseException | None]:
        if len(outcomes) != n:
            raise QchanError(f"{self.adapter!r} returned {len(outcomes)} outcomes for {n} messages")
        return list(outcomes)

    def _flush(
        self,
        batch: Outgoing,
        started: float,
        outcomes: Sequence[BaseException | None] | None = None,
    ) -> None:
        """Settle the batch (sending it first unless its outcomes are known); retry the
        failures in order; dead-letter what the policy gives up on. The ledger holds what
        is left of it until then (and after, if this raised: a crash names it)."""
        self._ledger.settled(self._settle(batch, started, outcomes))

    def _settle(
        self,
        batch: Outgoing,
        started: float,
        outcomes: Sequence[BaseException | None] | None,
    ) -> Outgoing:
        """Settle `batch`; return what the ledger holds of it now."""
        stats = self.ctx.counters
        attempt = 0
        pending = batch
        while pending:
            attempt += 1
            if outcomes is None:
                results = self._send(pending)
            else:
                try:
                    results = self._checked(outcomes, len(pending))
                except QchanError as e:
                    results = [e] * len(pending)
                outcomes = None
            if results.count(None) == len(results):  # all accepted: the common case
                stats.sent += len(results)
                if None in pending.origins:  # synchronous puts wait for the answer
                    self._resolve_puts(pending)
                return pending
            failed: list[int] = []
            errors: list[BaseException] = []
            for i, err in enumerate(results):
                if err is None:
                    stats.sent += 1
                    if pending.origins[i] is None:
                        pending.objs[i].resolve(None)
                elif isinstance(err, RejectedError):
                    self._fail(pending, i, err)
                else:
                    failed.append(i)
                    errors.append(err)
            if not failed:
                return pending
            pending = self._ledger.narrow(pending, pending.subset(failed))
            failed = list(range(len(failed)))
            wait = (
                None
                if self.abort.is_set()
                else self.retry.next(attempt, time.monotonic() - started)
            )
            if wait is None:  # the dlq hands them back: the application's to say (INFO here)
                self.log.info(
                    "queue %s: %d message(s) not accepted after %d attempt(s): %s",
                    self.name,
                    len(failed),
                    attempt,
                    errors[0],
                )
                for i, err in zip(failed, errors, strict=True):
                    self._fail(pending, i, err)
                return pending
            stats.retried += len(failed)
            self.log.info(
                "queue %s: %d message(s) failed (%s); retry %d in %.2f s",
                self.name,
                len(failed),
                errors[0],
                attempt,
                wait,
            )
            self.abort.wait(wait)
        return pending

    @staticmethod
    def _resolve_puts(batch: Outgoing) -> None:
        for origin, obj in zip(batch.origins, batch.objs, strict=True):
            if origin is None:
                obj.resolve(None)

    def _fail(self, batch: Outgoing, i: int, err: BaseException) -> None:
        origin, obj = batch.origins[i], batch.objs[i]
        if origin is None:
            self.ctx.counters.dead_lettered += 1
            obj.resolve(err)
        else:
            self._dead_letter(origin, obj, batch.bags[i], err)

    def _dead_letter(self, sender: Sender, obj: Any, bag: Bag | None, err: BaseException) -> None:
        """Hand the original object back on the sender's dlq, waiting while it is full."""
        self.ctx.counters.dead_lettered += 1
        msg: Msg[Any] = Msg(
            object=obj, category=sender.category, attributes=sender.attributes, error=err, bag=bag
        )
        dlq = sender.dlq
        if dlq is None:
            self._undeliverable(msg)
            return
        try:
            dlq.send(msg, timeout=0)
            return
        except TimeoutError:
            pass
        except (ChannelClosed, QueueFailed):
            self._undeliverable(msg)
            return
        if sender.category not in self._warned_full and not self.abort.is_set():
            self._warned_full.add(sender.category)
            self.log.warning(
                "queue %s: dlq of %r is full; sends of that channel wait until the application "
                "receives from its dlq",
                self.name,
                sender.category,
            )
        try:
            sel = select((dlq, msg), self._abort_chan)
            if sel is not None and sel.index == 0:
                return
        except (ChannelClosed, QueueFailed):
            pass
        self._undeliverable(msg)
