"""The listener: a poller thread and a dispatcher thread per queue.

The poller calls `adapter.receive` while some category is open and fewer than
`in_flight` messages are outstanding, decodes each bag with its category's
codec and passes the batch to the dispatcher. Bags it cannot decode or route
are reported (errors channel or log) and handed to the adapter's poison policy.

The dispatcher owns every received message until it is acknowledged. It
selects, in one call, over new batches, every category's `ack` channel, and a
send case per category with a waiting message, so a category nobody reads
never holds up the others (no head-of-line blocking). It batches acks (at
most `ack_linger` seconds), nacks a message not acked within
`time_to_flight` seconds of the application receiving it (a message still in
`rcv`'s buffer has not been received and never expires), extends visibility
every `heartbeat` seconds when asked to, and at close releases everything not
acked.
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .chan import Chan
from .codec import Codec, JSONCodec
from .errors import (
    ChannelClosed,
    ConnectionLost,
    DecodeError,
    MessageError,
    QchanError,
    QueueFailed,
    UnroutableError,
)
from .message import Bag, Msg
from .select import select

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["ANY", "Listener", "Receiver"]

log = logging.getLogger("qchan.listener")

#: The category of a channel that receives every message no other channel takes.
ANY = "*"


class Receiver:
    """One `dequeue`d category: its channels, codec and undelivered messages."""

    __slots__ = ("ack", "category", "codec", "finished", "pending", "rcv")

    def __init__(self, category: str, codec: Codec[Any], rcv: Chan[Msg[Any]], ack: Chan[Msg[Any]]):
        self.category = category
        self.codec = codec
        self.rcv = rcv
        self.ack = ack
        self.pending: deque[Msg[Any]] = deque()
        self.finished = threading.Event()


class _Poison:
    """A bag the poller could not route: poison (with its error), or, without one, a bag
    received when no channel was open any more (released at once)."""

    __slots__ = ("bag", "error")

    def __init__(self, bag: Bag, error: MessageError | None) -> None:
        self.bag = bag
        self.error = error


# What the poller hands the dispatcher: runs of messages routed to one receiver, and poison.
_Batch = list[tuple[Receiver, list[Msg[Any]]] | _Poison]


class Listener:
    """Poller and dispatcher threads of one queue. `Queue` creates it on the first `dequeue`."""

    def __init__(self, queue: Queue) -> None:
        self.q = queue
        self.adapter = queue.adapter
        self.limit = queue.in_flight
        self.log = logging.LoggerAdapter(log, {"queue": queue.name})
        self.ttf = queue.time_to_flight
        self.ack_linger = queue.ack_linger
        self.heartbeat = queue.heartbeat
        self.poll_wait = queue.poll_wait
        # Routing table, replaced (never mutated) so the poller reads it without a lock.
        self.routes: dict[str, Receiver] = {}
        self._cond = threading.Condition()
        self._count = 0  # in flight: received and not yet acked, nacked, released or rejected
        self._idling = False  # the poller is in adapter.hold or adapter.idle, not receive
        self._stopping = False
        self._reported: OrderedDict[str, None] = OrderedDict()  # unroutable ids said once
        self.ctl: Chan[tuple[str, Any]] = Chan(16, name=f"{queue.name}.listener.ctl")
        self.inbox: Chan[_Batch] = Chan(2, name=f"{queue.name}.inbox")
        scheme, name = queue.adapter.scheme, queue.name
        self._poller = threading.Thread(
            target=self._poll, name=f"qchan-poller-{scheme}-{name}", daemon=True
        )
        self._dispatcher = threading.Thread(
            target=self._dispatch, name=f"qchan-dispatcher-{scheme}-{name}", daemon=True
        )
        # Daemons: losing them loses nothing, the broker redelivers what was not acked.
        self._dispatcher.start()
        self._poller.start()

    @property
    def in_flight(self) -> int:
        return self._count

    # -- called from application threads ------------------------------------

    def add(self, r: Receiver) -> None:
        with self._cond:
            if self._stopping:
                raise ChannelClosed(f"queue {self.q.name!r} is closed")
            self.routes = {**self.routes, r.category: r}
            self._cond.notify_all()
            idling = self._idling
        self.ctl.send(("add", r))
        if idling:  # the poller sits in adapter.idle or hold: look at the state again
            self.adapter.wakeup()

    def remove(self, r: Receiver, timeout: float | None = None) -> None:
        """Stop routing to `r`, apply its pending acks, release what it still holds."""
        with self._cond:
            if self.routes.get(r.category) is r:
                self.routes = {k: v for k, v in self.routes.items() if v is not r}
                self._cond.notify_all()
            idle = not self.routes
        if idle:  # nobody receives now: cut a waiting receive short
            self.adapter.wakeup()
        try:
            self.ctl.send(("remove", r))
        except ChannelClosed:
            return  # the listener stopped, and finished every receiver
        r.finished.wait(timeout)

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.adapter.wakeup()
        deadline = time.monotonic() + timeout
        self._poller.join(timeout)
        if self._poller.is_alive():
            self.log.warning("queue %s: poller still in receive after %.1f s", self.q.name, timeout)
        try:
            self.ctl.send(("stop", None), timeout=max(0.0, deadline - time.monotonic()))
        except (ChannelClosed, TimeoutError):
            pass  # the dispatcher has stopped (it closes ctl), or is stuck: joined below
        self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        if self._dispatcher.is_alive():
            self.log.warning(
                "queue %s: dispatcher did not stop within %.1f s", self.q.name, timeout
            )

    def revoke(self, predicate: Any, timeout: float = 10.0) -> int:
        """Drop held messages the adapter no longer owns (see `Hooks.revoke`); how many."""
        box: list[int] = []
        done = threading.Event()
        try:
            self.ctl.send(("revoke", (predicate, box, done)))
        except ChannelClosed:
            return 0
        done.wait(timeout)
        return box[0] if box else 0

    def _resolved(self, n: int) -> None:
        if n:
            with self._cond:
                was_full = self._count >= self.limit
                self._count -= n
                self._cond.notify_all()
                wake = was_full and self._idling and self.routes
            if wake:  # the poller sits in adapter.hold: room again, let it receive now
                self.adapter.wakeup()

    # -- the poller thread ----------------------------------------------------

    def _is_stopping(self) -> bool:
        return self._stopping

    def _state(self) -> str:
        """What the poller may do now (the caller holds _cond): "receive", "hold" (the
        in-flight limit is reached) or "idle" (no channel to receive for)."""
        if not self.routes:
            return "idle"
        return "hold" if self._count >= self.limit else "receive"

    def _poll(self) -> None:
        try:
            self._poll_loop()
        except BaseException as e:
            self.q._fail(e, "poller")

    def _poll_loop(self) -> None:
        failures = 0
        state = ""
        serviceable = True  # does the adapter want hold/idle calls? (it says so by returning True)
        while True:
            with self._cond:
                while True:
                    if self._stopping or self.q._failure is not None:
                        return
                    now = self._state()
                    if now != state:  # a new state: ask the adapter (again) whether it tends it
                        state, serviceable = now, True
                    if state == "receive" or serviceable:
                        break
                    self._cond.wait()
                room = self.limit - self._count
                self._idling = state != "receive"
            if state != "receive":
                # Two different signals, never one: hold keeps what the adapter took
                # (the application is only slow); idle may give it back (nobody listens).
                tend = self.adapter.hold if state == "hold" else self.adapter.idle
                try:
                    serviceable = bool(tend(self.poll_wait))
                except Exception as e:
                    self.q._report(e)
                    serviceable = False
                continue
            try:
                bags = self.adapter.receive(min(self.adapter.max_receive, room), self.poll_wait)
                failures = 0
            except Exception as e:
                failures += 1
                self.q._report(
                    e if isinstance(e, ConnectionLost) else ConnectionLost(
                        f"queue {self.q.name!r}: receive failed ({e!r}); retrying"
                    )
                )
                backoff = min(5.0, 0.05 * 2 ** min(failures, 7))
                with self._cond:  # back off, but wake at once when the queue closes
                    if self._cond.wait_for(self._is_stopping, backoff):
                        return
                continue
            if bags:
                with self._cond:
                    self._count += len(bags)
                self._route(bags)
                bags = []  # hold no message while receiving the next

    def _route(self, bags: Any) -> None:
        stats = self.q._counters
        routes = self.routes
        batch: _Batch = []
        if not routes:
            # The last channel closed while this receive ran: give the bags back at
            # once rather than leave them to the broker's visibility timeout.
            batch.extend(_Poison(bag, None) for bag in bags)
            self._hand_over(batch)
            return
        stats.received += len(bags)
        run: list[Msg[Any]] = []  # consecutive messages for one receiver
        last: Receiver | None = None
        for bag in bags:
            if bag.deliveries > 1:
                stats.redelivered += 1
            r = routes.get(bag.category) or routes.get(ANY)
            if r is None:
                batch.append(_Poison(bag, UnroutableError(
                    f"queue {self.q.name!r}: no channel receives category "
                    f"{_short(bag.category)} (message {_short(bag.id)}); it goes back to the "
                    f"broker", bag
                )))
                last = None
                continue
            try:
                obj = r.codec.decode(bag.body)
            except Exception as e:
                why = JSONCodec.explain(e)
                err = DecodeError(
                    f"queue {self.q.name!r}: cannot decode a {_short(bag.category)} message "
                    f"({_short(bag.id)}, {len(bag.body)} bytes) as {_type_name(r.codec)}: "
                    f"{why[:500]}", bag
                )
                err.__cause__ = e
                batch.append(_Poison(bag, err))
                last = None
                continue
            if r is not last:
                run = []
                batch.append((r, run))
                last = r
            run.append(Msg(obj, bag.category, bag.digest, bag.attributes, bag=bag))
        self._hand_over(batch)

    def _hand_over(self, batch: _Batch) -> None:
        try:
            self.inbox.send(batch)
        except ChannelClosed:
            # The queue closed while this receive was still running (a long poll
            # that outlived close's timeout). Nothing acks these bags: the broker
            # makes them visible again by its own redelivery.
            self.log.info(
                "queue %s: %d message(s) received after close; left to broker redelivery",
                self.q.name, len(batch),
            )

    # -- the dispatcher thread -------------------------------------------------

    def _dispatch(self) -> None:
        dispatcher = _Dispatcher(self)
        try:
            dispatcher.run()
        except BaseException as e:
            # What it held stays un-acked on the broker, which redelivers it.
            self.q._fail(e, "dispatcher")
            self.ctl.close()
            self.inbox.close()
            for r in [*dispatcher.receivers, *self.routes.values()]:
                r.finished.set()

    def report_unroutable(self, p: _Poison) -> None:
        """Say once per message id that it is unroutable (the broker will bring it back)."""
        assert p.error is not None
        key = p.bag.id or str(id(p.bag))
        if key in self._reported:
            return
        self._reported[key] = None
        if len(self._reported) > 10_000:
            self._reported.popitem(last=False)
        self.q._report(p.error)


_repr = reprlib.Repr()
_repr.maxstring = 80


def _short(value: object) -> str:
    """repr() cut to a readable length: the text comes from the message, maybe hostile."""
    return _repr.repr(value)


def _type_name(codec: Codec[Any]) -> str:
    t = getattr(codec, "type", None)
    return getattr(t, "__name__", None) or repr(t) if t is not None else type(codec).__name__


class _Dispatcher:
    """The dispatcher thread's state (only that thread touches it)."""

    def __init__(self, listener: Listener) -> None:
        self.l = listener
        self.q = listener.q
        self.log = listener.log
        self.adapter = listener.adapter
        self.receivers: list[Receiver] = []
        self.acks_open: list[Receiver] = []
        # bag -> (receiver, deadline) for messages handed to the application, one
        # tuple shared by the messages of a hand-off. time_to_flight is constant, so
        # the dict's insertion order is deadline order: the first entries expire first.
        self.flight: dict[Bag, tuple[Receiver, float]] = {}
        # Messages handed into a buffered rcv: the application has not received them,
        # so their time_to_flight has not started (an expiry nacks, and a nack counts as
        # a delivery toward the dead-letter threshold). Looked at every park_interval;
        # once received they move to `flight` with a full time_to_flight.
        self.parked: dict[Bag, Receiver] = {}
        self.park_interval = min(1.0, max(0.01, listener.ttf / 4))
        self.park_due = 0.0
        self.to_ack: list[Bag] = []
        # delay -> the bags the application failed with it, and its errors
        self.to_nack: dict[float, tuple[list[Bag], list[BaseException]]] = {}
        # the bags the application gave up on, and its errors
        self.to_dead: tuple[list[Bag], list[BaseException]] = ([], [])
        self.ack_due: float | None = None
        # Acks go to the broker in batches of at most max_batch, and at half the
        # in-flight limit: the poller receives again while the application works on
        # the other half. (At max_batch alone, an in_flight below it made every batch
        # wait for ack_linger: Kafka with in_flight=200 consumed 17k msg/s, not 100k.)
        # Measured on Kafka, alternating in one process, median of 4: the whole limit
        # 115k msg/s, half 127k, a quarter 120k. Half also halves the garbage
        # collections: fewer messages are allocated before the first ones are freed.
        self.ack_batch = max(1, min(self.adapter.max_batch, listener.limit // 2))
        self.next_beat = time.monotonic() + (listener.heartbeat or 0.0)
        self.failed = False  # the queue failed: its rcv and ack channels raise now

    def _failed(self) -> None:
        """The queue failed: apply the acks already sent, hand out nothing more, and wait
        for the wind-down's stop (which releases what is held)."""
        self.failed = True
        now = time.monotonic()
        for r in self.acks_open:
            for m in r.ack._recv_many(1 << 30):
                self._on_ack(m, now)
        self.acks_open = []
        self._flush_acks()

    def run(self) -> None:
        ctl, inbox = self.l.ctl, self.l.inbox
        while True:
            cases: list[Any] = [ctl, inbox]
            cases.extend(r.ack for r in self.acks_open)
            first_send = len(cases)
            sending = [r for r in self.receivers if r.pending] if not self.failed else []
            cases.extend((r.rcv, r.pending[0]) for r in sending)
            try:
                sel = select(*cases, timeout=self._timeout())
            except QueueFailed:
                self._failed()
                continue
            now = time.monotonic()
            if sel is not None:
                i = sel.index
                if i == 0:
                    op, arg = sel.value
                    if op == "add":
                        self._open(arg)
                    elif op == "remove":
                        self._finish(arg)
                    elif op == "revoke":
                        self._revoke(*arg)
                    else:  # stop
                        self._stop()
                        return
                elif i == 1:
                    self._take(sel.value)
                elif i < first_send:
                    r = self.acks_open[i - 2]
                    if sel.ok:
                        self._acked(r, sel.value, now)
                    else:  # the application closed its ack channel
                        self.acks_open.remove(r)
                else:
                    self._hand(sending[i - first_send], now)
            sel = None  # hold no message while waiting
            self._timers(time.monotonic())

    # -- bookkeeping ----------------------------------------------------------

    def _timeout(self) -> float | None:
        due = []
        if self.ack_due is not None:
            due.append(self.ack_due)
        if self.flight:
            due.append(next(iter(self.flight.values()))[1])
        if self.parked:
            due.append(self.park_due)
        if self.l.heartbeat and (
            self.flight or self.parked or any(r.pending for r in self.receivers)
        ):
            due.append(self.next_beat)
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _open(self, r: Receiver) -> None:
        if r not in self.receivers:
            self.receivers.append(r)
            if not self.failed:
                self.acks_open.append(r)

    def _take(self, batch: _Batch) -> None:
        for item in batch:
            if isinstance(item, _Poison):
                self._poison(item)
                continue
            r, msgs = item
            if r not in self.receivers:
                if self.l.routes.get(r.category) is not r:
                    # its channel closed while the messages were on their way
                    self._release([m.bag for m in msgs if m.bag])
                    continue
                # The poller routed by the new table before this thread took the
                # receiver's "add" from ctl: the messages overtook it (select picks any
                # ready case), so open it now rather than release them.
                self._open(r)
            r.pending.extend(msgs)

    def _poison(self, p: _Poison) -> None:
        if p.error is None:
            self._release([p.bag])
            return
        self.q._counters.poison += 1
        if isinstance(p.error, UnroutableError):
            self.l.report_unroutable(p)
        else:
            self.q._report(p.error)
        try:
            self.adapter.reject(p.bag, p.error)
        except Exception as e:
            self.q._report(e)
        self.l._resolved(1)

    def _acked(self, r: Receiver, first: Msg[Any], now: float) -> None:
        self._on_ack(first, now)
        for m in r.ack._recv_many(1024):  # the rest, without more selects
            self._on_ack(m, now)

    def _hand(self, r: Receiver, now: float) -> None:
        """The first pending message of `r` was received: hand over what more fits."""
        handed = [r.pending.popleft()]
        if r.pending:  # room in a buffered rcv: fill it without more selects
            handed += r.rcv._send_many(r.pending)
        # The last len(rcv) messages handed to r wait in its buffer; the others were
        # taken by the application already.
        waiting = min(len(r.rcv), len(handed))
        taken = len(handed) - waiting
        if taken:
            entry = (r, now + self.l.ttf)
            flight = self.flight
            for m in handed[:taken]:
                assert m.bag is not None
                flight[m.bag] = entry
        if waiting:
            if not self.parked:
                self.park_due = now + self.park_interval
            parked = self.parked
            for m in handed[taken:]:
                assert m.bag is not None
                parked[m.bag] = r

    def _on_ack(self, msg: Msg[Any] | object, now: float) -> None:
        if type(msg) is not Msg and not isinstance(msg, Msg):  # the application's mistake
            self.q._report(QchanError(
                f"queue {self.q.name!r}: the ack channel got {_short(msg)}, not a Msg received "
                f"from rcv; ignored (send the Msg itself, or msg.fail(err))"
            ))
            return
        bag = msg.bag
        entry = self.flight.pop(bag, None) if bag is not None else None
        if entry is None and bag is not None and self.parked:
            owner = self.parked.pop(bag, None)
            entry = None if owner is None else (owner, 0.0)
        if entry is None:
            self.log.warning(
                "queue %s: ack for a %r message that is not in flight (acked twice, expired "
                "after time_to_flight=%ss, revoked by a rebalance, or from another queue); "
                "ignored",
                self.q.name, msg.category, self.l.ttf,
            )
            return
        assert bag is not None
        if msg.error is None:
            self.to_ack.append(bag)
        elif msg.dead:
            self.to_dead[0].append(bag)
            self.to_dead[1].append(msg.error)
        else:
            bags, errors = self.to_nack.setdefault(msg.delay or 0.0, ([], []))
            bags.append(bag)
            errors.append(msg.error)
        if self.ack_due is None:
            self.ack_due = now + self.l.ack_linger
        if len(self.to_ack) >= self.ack_batch:
            self._flush_acks()

    def _flush_acks(self) -> None:
        stats = self.q._counters
        acks, self.to_ack = self.to_ack, []
        nacks, self.to_nack = self.to_nack, {}
        dead, self.to_dead = self.to_dead, ([], [])
        self.ack_due = None
        if acks:
            try:
                self.adapter.ack(acks)
                stats.acked += len(acks)
            except Exception as e:
                self.q._report(e)
            self.l._resolved(len(acks))
        for delay, (bags, errors) in nacks.items():
            try:
                self.adapter.nack_failed(bags, errors, delay)
                stats.nacked += len(bags)
            except Exception as e:
                self.q._report(e)
            self.l._resolved(len(bags))
        if dead[0]:
            try:
                self.adapter.dead_letter(*dead)
                stats.gave_up += len(dead[0])
            except Exception as e:
                self.q._report(e)
            self.l._resolved(len(dead[0]))

    def _timers(self, now: float) -> None:
        if self.ack_due is not None and now >= self.ack_due:
            self._flush_acks()
        expired: list[Bag] = []
        for bag, (_, deadline) in self.flight.items():
            if deadline > now:
                break
            expired.append(bag)
        if expired:
            self._expire(expired)
        if self.parked and now >= self.park_due:
            self._unpark(now)
        if self.l.heartbeat and now >= self.next_beat:
            self.next_beat = now + self.l.heartbeat
            held = [*self.flight, *self.parked,
                    *(m.bag for r in self.receivers for m in r.pending if m.bag)]
            if held:
                try:
                    self.adapter.extend(held)
                except Exception as e:
                    self.q._report(e)

    def _expire(self, bags: list[Bag]) -> None:
        """time_to_flight ran out for these: nack them (the application received each)."""
        for bag in bags:
            del self.flight[bag]
        self.log.warning(
            "queue %s: %d message(s) not acked within time_to_flight=%ss; released for "
            "redelivery", self.q.name, len(bags), self.l.ttf,
        )
        self.q._counters.expired += len(bags)
        error = TimeoutError(f"not acked within time_to_flight={self.l.ttf} s")
        try:
            self.adapter.nack_failed(bags, [error] * len(bags), 0.0)
        except Exception as e:
            self.q._report(e)
        self.l._resolved(len(bags))

    def _unpark(self, now: float) -> None:
        """Parked messages the application has received since: in flight from now on.

        They were received within the last park_interval, so each gets between
        time_to_flight and time_to_flight + park_interval from its receipt. Appended
        with now + ttf, `flight` stays in deadline order."""
        buffered: dict[int, set[Bag]] = {}
        deadline = now + self.l.ttf
        for bag, r in list(self.parked.items()):
            inside = buffered.get(id(r))
            if inside is None:
                inside = buffered[id(r)] = {m.bag for m in r.rcv._buffered() if m.bag}
            if bag not in inside:
                del self.parked[bag]
                self.flight[bag] = (r, deadline)
        self.park_due = now + self.park_interval

    def _revoke(self, predicate: Any, box: list[int], done: threading.Event) -> None:
        """Forget messages the adapter lost (a rebalance): no release, no ack; a new owner
        redelivers them. Messages already in a buffered rcv still reach the application;
        their acks are then ignored."""
        dropped = 0
        for r in self.receivers:
            keep = deque(m for m in r.pending if not (m.bag and predicate(m.bag)))
            dropped += len(r.pending) - len(keep)
            r.pending = keep
        for bag in [b for b in self.flight if predicate(b)]:
            del self.flight[bag]
            dropped += 1
        for bag in [b for b in self.parked if predicate(b)]:
            del self.parked[bag]
            dropped += 1
        self.l._resolved(dropped)
        box.append(dropped)
        done.set()

    def _release(self, bags: list[Bag]) -> None:
        if not bags:
            return
        try:
            self.adapter.release(bags)
        except Exception as e:
            self.q._report(e)
        self.l._resolved(len(bags))

    def _finish(self, r: Receiver) -> None:
        """Close one receiver: apply its acks, release everything it still holds."""
        if r not in self.receivers:
            r.finished.set()
            return
        self.receivers.remove(r)
        if r in self.acks_open:
            self.acks_open.remove(r)
        r.rcv.close()
        held: list[Bag] = [m.bag for m in r.pending if m.bag is not None]
        r.pending.clear()
        for m in r.rcv._recv_many(1 << 30):  # buffered, never received by the application
            assert m.bag is not None
            if self.flight.pop(m.bag, None) is None:
                self.parked.pop(m.bag, None)
            held.append(m.bag)
        r.ack.close()
        now = time.monotonic()
        for m in r.ack._recv_many(1 << 30):  # acks the application sent before closing
            self._on_ack(m, now)
        self._flush_acks()
        for bag, (owner, _) in list(self.flight.items()):
            if owner is r:  # delivered, not acked
                del self.flight[bag]
                held.append(bag)
        for bag, owner in list(self.parked.items()):
            if owner is r:  # received from the buffer since it was parked, not acked
                del self.parked[bag]
                held.append(bag)
        self._release(held)
        r.finished.set()

    def _stop(self) -> None:
        for r in list(self.receivers):
            self._finish(r)
        # Batches the poller passed on before it stopped: nobody will receive them now.
        while True:
            try:
                batch = self.l.inbox.recv(timeout=0)
            except (TimeoutError, ChannelClosed):
                break
            for item in batch:
                if isinstance(item, _Poison):
                    self._poison(item)
                else:
                    self._release([m.bag for m in item[1] if m.bag is not None])
        self.l.ctl.close()
        self.l.inbox.close()
