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
from collections.abc import Callable
from typing import Any

from ..chan import Chan
from ..errors import ChannelClosed, QchanError, QueueFailed, UnroutableError
from ..message import Bag, Msg
from ..select import select
from .context import Context
from .routes import Gate, Handoff, Poison, Receiver, Stray, short

__all__ = ["Dispatcher"]

log = logging.getLogger("qchan.listener")


class Clock:
    """The `time_to_flight` clock: which messages the application holds, and since when.

    `held` maps every message handed to a receiver's `rcv` (waiting in its buffer, or
    received) to that receiver until it is settled: an ack for a message not there is
    a late or second one. A message waiting in the buffer has not been received, so
    its clock has not started (an expiry counts as a delivery). Which ones were
    received is arithmetic, because `rcv` is FIFO and only the dispatcher fills it: of
    those handed into it (`waiting`, oldest first) all but the last `len(rcv)` were.
    The dispatcher looks at every hand-off, every settlement and every `interval`, so
    a clock starts at most `interval` late; a received message joins its receiver's
    `due` with its deadline (`time_to_flight` being constant, insertion order is
    deadline order). Nothing keeps a settled message: it leaves `held` and `due` at
    once, and `waiting` at the latest when the receiver is next looked at, which its
    settlement does first.
    """

    def __init__(self, time_to_flight: float, interval: float) -> None:
        self.time_to_flight = time_to_flight
        self.interval = interval
        self.held: dict[Bag, Receiver] = {}
        self.waiting: dict[Receiver, deque[Bag]] = {}
        self.due: dict[Receiver, dict[Bag, float]] = {}
        self.look_at: float | None = None  # when to look at the buffers again

    def open(self, r: Receiver) -> None:
        self.waiting[r] = deque()
        self.due[r] = {}

    def handed(self, r: Receiver, bags: list[Bag], now: float) -> None:
        """`bags` went into `r`'s rcv just now, in order (to a waiting receiver, or into
        its buffer)."""
        held = self.held
        for bag in bags:
            held[bag] = r
        waiting = self.waiting[r]
        waiting.extend(bags)
        self._received(r, waiting, now)
        if waiting and self.look_at is None:
            self.look_at = now + self.interval

    def look(self, now: float) -> None:
        """Start the clock of what the application received from the buffers since."""
        left = False
        for r, waiting in self.waiting.items():
            if waiting:
                self._received(r, waiting, now)
                left = left or bool(waiting)
        self.look_at = now + self.interval if left else None

    def _received(self, r: Receiver, waiting: deque[Bag], now: float) -> None:
        n = len(waiting) - len(r.rcv)  # the buffer only shrinks meanwhile: never too few
        if n > 0:
            held, due = self.held, self.due[r]
            deadline = now + self.time_to_flight
            for _ in range(n):
                bag = waiting.popleft()
                if held.get(bag) is r:
                    due[bag] = deadline

    def settle(self, bag: Bag, now: float) -> bool:
        """`bag` was settled: False if it was not held (a second or late settlement)."""
        r = self.held.pop(bag, None)
        if r is None:
            return False
        waiting = self.waiting[r]
        if waiting:  # it may have been received since the last look
            self._received(r, waiting, now)
        self.due[r].pop(bag, None)
        return True

    def expired(self, now: float) -> list[Bag]:
        """What the application held past `time_to_flight`, no longer held from now."""
        out: list[Bag] = []
        for due in self.due.values():
            for bag, deadline in due.items():
                if deadline > now:
                    break
                out.append(bag)
        for bag in out:
            del self.due[self.held.pop(bag)][bag]
        return out

    def next_due(self) -> float | None:
        """The earliest deadline, or look, that may be due (None: nothing is timed)."""
        first = [next(iter(due.values())) for due in self.due.values() if due]
        if self.look_at is not None:
            first.append(self.look_at)
        return min(first) if first else None

    def close(self, r: Receiver) -> list[Bag]:
        """Stop timing `r`: what it still holds, no longer held from now."""
        held = self.held
        out = [b for b in self.waiting.pop(r, ()) if held.get(b) is r]
        out += self.due.pop(r, {})
        for bag in out:
            del held[bag]
        return out

    def withdrawn(self, r: Receiver, bags: list[Bag]) -> None:
        """`bags` were taken back out of `r`'s buffer (no receiver will get them)."""
        gone = {id(b) for b in bags}
        self.waiting[r] = deque(b for b in self.waiting[r] if id(b) not in gone)
        for bag in bags:
            self.held.pop(bag, None)

    def forget(self, predicate: Callable[[Bag], bool]) -> int:
        """Stop holding the messages `predicate` picks; how many."""
        lost = [(b, r) for b, r in self.held.items() if predicate(b)]
        for bag, r in lost:
            del self.held[bag]
            self.due[r].pop(bag, None)
        return len(lost)


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
        self.clock = Clock(opts.time_to_flight, min(1.0, max(0.01, opts.time_to_flight / 4)))
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
        clock = self.clock.next_due()
        if clock is not None:
            due.append(clock)
        if self.extend_every and (self.clock.held or any(r.pending for r in self.receivers)):
            due.append(self.next_beat)
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _open(self, r: Receiver) -> None:
        if r not in self.receivers:
            self.receivers.append(r)
            self.clock.open(r)
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
        self.clock.handed(r, [m.bag for m in handed if m.bag is not None], now)

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
        if bag is None or not self.clock.settle(bag, now):
            self.log.warning(
                "queue %s: ack for a %r message that is not in flight (acked twice, expired "
                "after time_to_flight=%ss, revoked by a rebalance, or from another queue); "
                "ignored",
                self.ctx.name,
                msg.category,
                self.time_to_flight,
            )
            return
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
        clock = self.clock
        if clock.look_at is not None and now >= clock.look_at:
            clock.look(now)
        expired = clock.expired(now)
        if expired:
            self._expire(expired)
        if self.extend_every and now >= self.next_beat:
            self.next_beat = now + self.extend_every
            held = set(clock.held)
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
            withdrawn = r.rcv.withdraw(lost)
            self.clock.withdrawn(r, [m.bag for m in withdrawn if m.bag is not None])
            dropped += len(withdrawn)
        dropped += self.clock.forget(predicate)
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
        r.rcv.recv_many(1 << 30)  # buffered, never received: the clock still holds them
        r.ack.close()
        now = time.monotonic()
        for m in r.ack.recv_many(1 << 30):  # acks the application sent before closing
            self._on_ack(m, now)
        self._flush_acks()
        held += self.clock.close(r)  # delivered or buffered, not acked
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
