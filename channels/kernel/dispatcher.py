"""The dispatcher: one thread per queue that owns every received message until it is
settled.

It selects, in one call, over new handoffs from the poller, every category's
`ack` channel, and a send case per category with a waiting message, so a
category nobody reads never holds up the others (no head-of-line blocking). It
batches acks (at most `ack_linger` seconds), nacks a message not acked within
`time_to_flight` seconds of the application receiving it (a message still in
`rcv`'s buffer has not been received and never expires), extends visibility
every `extend_every` seconds when asked to, and at close releases everything not
acked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from ..chan import Chan
from ..errors import ChannelClosed, QchanError, QueueFailed, UnroutableError
from ..message import Bag, Msg
from ..select import select
from .context import Context
from .routes import Gate, Handoff, Poison, Receiver, Stray, short

__all__ = ["Dispatcher"]

log = logging.getLogger("qchan.listener")


class Dispatcher:
    """The dispatcher thread of one queue (started by `Listener`), and its state: only
    that thread touches it."""

    def __init__(
        self, ctx: Context, gate: Gate, ctl: Chan[tuple[str, Any]], inbox: Chan[Handoff]
    ) -> None:
        self.ctx = ctx
        self.gate = gate
        self.ctl = ctl
        self.inbox = inbox
        self.log = logging.LoggerAdapter(log, {"queue": ctx.name})
        self.adapter = gate.adapter
        opts = ctx.options
        self.time_to_flight = opts.time_to_flight
        self.extend_every = opts.extend_every
        self.ack_linger = opts.ack_linger
        self._reported: OrderedDict[str, None] = OrderedDict()  # unroutable ids said once
        self.thread = threading.Thread(
            target=self._run,
            name=f"qchan-dispatcher-{gate.adapter.scheme}-{ctx.name}",
            daemon=True,
        )
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
        self.park_interval = min(1.0, max(0.01, opts.time_to_flight / 4))
        self.park_due = 0.0
        self.to_ack: list[Bag] = []
        # delay -> the bags the application failed with it, and its errors
        self.to_nack: dict[float, tuple[list[Bag], list[BaseException]]] = {}
        # the bags the application gave up on, and its errors
        self.to_dead: tuple[list[Bag], list[BaseException]] = ([], [])
        self.ack_due: float | None = None
        # Acks go to the broker in batches of at most max_batch, and at half the
        # in-flight limit: the poller receives again while the application works on
        # the other half (the measurements behind it: docs/measurements.md).
        self.ack_batch = max(1, min(self.adapter.max_batch, opts.in_flight // 2))
        self.next_beat = time.monotonic() + (opts.extend_every or 0.0)
        self.beaten: set[Bag] = set()  # what was held at the last extension
        self.failed = False  # the queue failed: its rcv and ack channels raise now

    def _failed(self) -> None:
        """The queue failed: apply the acks already sent, hand out nothing more, and wait
        for the wind-down's stop (which releases what is held)."""
        self.failed = True
        now = time.monotonic()
        for r in self.acks_open:
            for m in r.ack.recv_many(1 << 30):
                self._on_ack(m, now)
        self.acks_open = []
        self._flush_acks()

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as e:
            # What it held stays un-acked on the broker, which redelivers it.
            self.ctx.fail(e, "dispatcher")
            self.ctl.close()
            self.inbox.close()
            for r in [*self.receivers, *self.gate.routes.values()]:
                r.finished.set()

    def run(self) -> None:
        ctl, inbox = self.ctl, self.inbox
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
        if self.extend_every and (
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

    def _take(self, handoff: Handoff) -> None:
        for item in handoff:
            if isinstance(item, Poison):
                self._poison(item)
                continue
            if isinstance(item, Stray):
                self._release([item.bag])
                continue
            r, msgs = item
            if r not in self.receivers:
                if self.gate.routes.get(r.category) is not r:
                    # its channel closed while the messages were on their way
                    self.gate.arrived += len(msgs)
                    self._release([m.bag for m in msgs if m.bag])
                    continue
                # The poller routed by the new table before this thread took the
                # receiver's "add" from ctl: the messages overtook it (select picks any
                # ready case), so open it now rather than release them.
                self._open(r)
            r.pending.extend(msgs)
            # After the extend: the poller may count them twice for a moment, never zero
            # times (it would take more than the consumers can use).
            self.gate.arrived += len(msgs)
        if self.gate.watching:
            # The poller counted these as in transit, against every category; now they
            # count only against their own: another may still want some.
            self.gate.wake()

    def _poison(self, p: Poison) -> None:
        self.ctx.counters.poison += 1
        if isinstance(p.error, UnroutableError):
            self._report_unroutable(p)
        else:
            self.ctx.report(p.error)
        try:
            self.adapter.reject(p.bag, p.error)
        except Exception as e:
            self.ctx.report(e)
        self.gate.resolved(1)

    def _acked(self, r: Receiver, first: Msg[Any], now: float) -> None:
        self._on_ack(first, now)
        for m in r.ack.recv_many(1024):  # the rest, without more selects
            self._on_ack(m, now)

    def _hand(self, r: Receiver, now: float) -> None:
        """The first pending message of `r` was received: hand over what more fits."""
        handed = [r.pending.popleft()]
        if r.pending:  # room in a buffered rcv: fill it without more selects
            handed += r.rcv.send_many(r.pending)
        # The last len(rcv) messages handed to r wait in its buffer; the others were
        # taken by the application already.
        waiting = min(len(r.rcv), len(handed))
        taken = len(handed) - waiting
        if taken:
            entry = (r, now + self.time_to_flight)
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
            self.ctx.report(
                QchanError(
                    f"queue {self.ctx.name!r}: the ack channel got {short(msg)}, not a Msg "
                    f"received from rcv; ignored (send the Msg itself, or msg.fail(err))"
                )
            )
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
                self.ctx.name,
                msg.category,
                self.time_to_flight,
            )
            return
        assert bag is not None
        self.gate.earned += 1  # the application settled one: it may buffer one more
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
            self.ack_due = now + self.ack_linger
        if len(self.to_ack) >= self.ack_batch:
            self._flush_acks()

    def _flush_acks(self) -> None:
        stats = self.ctx.counters
        acks, self.to_ack = self.to_ack, []
        nacks, self.to_nack = self.to_nack, {}
        dead, self.to_dead = self.to_dead, ([], [])
        self.ack_due = None
        if acks:
            try:
                self.adapter.ack(acks)
                stats.acked += len(acks)
            except Exception as e:
                self.ctx.report(e)
            self.gate.resolved(len(acks))
        for delay, (bags, errors) in nacks.items():
            try:
                self.adapter.give_back(bags, counted=True, delay=delay, errors=errors)
                stats.nacked += len(bags)
            except Exception as e:
                self.ctx.report(e)
            self.gate.resolved(len(bags))
        if dead[0]:
            try:
                self.adapter.dead_letter(*dead)
                stats.gave_up += len(dead[0])
            except Exception as e:
                self.ctx.report(e)
            self.gate.resolved(len(dead[0]))

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
        if self.extend_every and now >= self.next_beat:
            self.next_beat = now + self.extend_every
            held = {*self.flight, *self.parked}
            held.update(m.bag for r in self.receivers for m in r.pending if m.bag)
            # Only what was held at the last beat too: a message received since is at
            # most one beat old (every one is extended before two, well inside the
            # visibility timeout), and most are settled before their first extension.
            due = [b for b in held if b in self.beaten]
            self.beaten = held
            if due:
                try:
                    self.adapter.extend(due)
                except Exception as e:
                    self.ctx.report(e)

    def _expire(self, bags: list[Bag]) -> None:
        """time_to_flight ran out for these: nack them (the application received each)."""
        for bag in bags:
            del self.flight[bag]
        self.log.warning(
            "queue %s: %d message(s) not acked within time_to_flight=%ss; released for redelivery",
            self.ctx.name,
            len(bags),
            self.time_to_flight,
        )
        self.ctx.counters.expired += len(bags)
        error = TimeoutError(f"not acked within time_to_flight={self.time_to_flight} s")
        try:
            self.adapter.give_back(bags, counted=True, errors=[error] * len(bags))
        except Exception as e:
            self.ctx.report(e)
        self.gate.resolved(len(bags))

    def _unpark(self, now: float) -> None:
        """Parked messages the application has received since: in flight from now on.

        They were received within the last park_interval, so each gets between
        time_to_flight and time_to_flight + park_interval from its receipt. Appended
        with now + time_to_flight, `flight` stays in deadline order."""
        buffered: dict[int, set[Bag]] = {}
        deadline = now + self.time_to_flight
        for bag, r in list(self.parked.items()):
            inside = buffered.get(id(r))
            if inside is None:
                inside = buffered[id(r)] = {m.bag for m in r.rcv.buffered() if m.bag}
            if bag not in inside:
                del self.parked[bag]
                self.flight[bag] = (r, deadline)
        self.park_due = now + self.park_interval

    def _revoke(self, predicate: Any, box: list[int], done: threading.Event) -> None:
        """Forget messages the adapter lost (a rebalance): no release, no ack; a new owner
        redelivers them. Those waiting in rcv's buffer are taken out of it, so the
        application never handles them here; only the ones it holds already may be
        handled twice (their acks are ignored)."""
        dropped = 0

        def lost(m: Msg[Any]) -> bool:
            return m.bag is not None and bool(predicate(m.bag))

        for r in self.receivers:
            keep = deque(m for m in r.pending if not lost(m))
            dropped += len(r.pending) - len(keep)
            r.pending = keep
            for m in r.rcv.withdraw(lost):
                if m.bag is not None and self.parked.pop(m.bag, None) is None:
                    self.flight.pop(m.bag, None)
                dropped += 1
        for bag in [b for b in self.flight if predicate(b)]:
            del self.flight[bag]
            dropped += 1
        for bag in [b for b in self.parked if predicate(b)]:
            del self.parked[bag]
            dropped += 1
        self.gate.resolved(dropped)
        box.append(dropped)
        done.set()

    def _release(self, bags: list[Bag]) -> None:
        if not bags:
            return
        try:
            self.adapter.give_back(bags, counted=False)
        except Exception as e:
            self.ctx.report(e)
        self.gate.resolved(len(bags))

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
        for m in r.rcv.recv_many(1 << 30):  # buffered, never received by the application
            assert m.bag is not None
            if self.flight.pop(m.bag, None) is None:
                self.parked.pop(m.bag, None)
            held.append(m.bag)
        r.ack.close()
        now = time.monotonic()
        for m in r.ack.recv_many(1 << 30):  # acks the application sent before closing
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
                batch = self.inbox.recv(timeout=0)
            except (TimeoutError, ChannelClosed):
                break
            for item in batch:
                if isinstance(item, Poison):
                    self._poison(item)
                elif isinstance(item, Stray):
                    self._release([item.bag])
                else:
                    self._release([m.bag for m in item[1] if m.bag is not None])
        self.ctl.close()
        self.inbox.close()

    def _report_unroutable(self, p: Poison) -> None:
        """Say once per message id that it is unroutable (the broker will bring it back)."""
        key = p.bag.id or str(id(p.bag))
        if key in self._reported:
            return
        self._reported[key] = None
        if len(self._reported) > 10_000:
            self._reported.popitem(last=False)
        self.ctx.report(p.error)
