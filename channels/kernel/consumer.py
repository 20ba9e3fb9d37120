"""The consumer: one thread per consumed queue that takes messages from the broker,
routes them to their receivers and settles them.

Each turn of its loop it serves what the application's threads asked for
(a channel opened or closed, a rebalance's revoke), applies the acks waiting in
every `ack` channel, runs its timers (the ack linger, `time_to_flight`, visibility
extension), and then makes one broker call by the queue's state (see
`Gate.want`): `receive` while the consumers have demand, asking for no more than
that, `hold` while they have none or the in-flight limit is reached, `idle` while
no channel is open. What `receive` returns is decoded with each category's
codec, and each run of messages for one receiver goes into its `rcv` whole (one
lock for the run). Messages it cannot decode or route are reported and go to the
adapter's poison policy (`reject`).

Nothing crosses a channel to reach it: an ack waits in its `ack` channel until the
next turn. A broker call waits at most until the next timer is due, and work for
the thread (the first ack of a batch, a request) cuts it short through
`adapter.wakeup`. An adapter that cannot cut a call short (`wakes = False`: SQS's
long poll) has its `receive` run on a helper thread while this one waits for
either (see `Fetcher`), so that closing a channel never waits for a long poll.

A message not acked within `time_to_flight` seconds of the application receiving
it is nacked (a message still in `rcv`'s buffer has not been received and never
expires: see `Clock`); at close everything not acked is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from ..codec import JSONCodec
from ..errors import (
    ChannelClosed,
    ConnectionLost,
    DecodeError,
    MessageError,
    QchanError,
    QueueFailed,
    UnroutableError,
)
from ..message import Bag, Msg, received
from .context import Context, resolved
from .routes import ANY, Gate, Receiver, short, type_name

__all__ = ["Clock", "Consumer"]

log = logging.getLogger("qchan.listener")


class Clock:
    """The `time_to_flight` clock: which messages the application holds, and since when.

    `held` maps every message handed to a receiver's `rcv` (waiting in its buffer, or
    received) to that receiver until it is settled: an ack for a message not there is
    a late or second one. A message waiting in the buffer has not been received, so
    its clock has not started (an expiry counts as a delivery). Which ones were
    received is arithmetic, because `rcv` is FIFO and only the consumer fills it: of
    those handed into it (`waiting`, oldest first) all but the last `len(rcv)` were.
    The consumer looks at every hand-off, every settlement and every `interval`, so
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
        rcv = r.rcv
        n = len(waiting) - len(rcv.buffer) - len(rcv.overflow)  # only shrinks meanwhile
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
        if self.due[r].pop(bag, None) is None:
            # Not timed: received since the last look (or taken back). Look now, so the
            # messages received before it start their clocks (it is no longer held).
            waiting = self.waiting[r]
            if waiting:
                self._received(r, waiting, now)
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


class Fetcher:
    """Runs `receive` on a helper thread, for an adapter that cannot cut it short
    (`wakes = False`), so that the consumer thread stays free to serve the
    application while a long poll runs: it starts one receive at a time and
    collects its outcome when there is one. At close the consumer waits for the
    poll in flight (within `close_timeout`) and gives back what it brought; the
    helper is a daemon, and a long poll that outlives that leaves what it took to
    the broker's redelivery.
    """

    def __init__(self, adapter: Any, name: str, done: Callable[[], None]) -> None:
        self.adapter = adapter
        self.done = done  # called on the helper thread when an outcome is ready
        self.lock = threading.Lock()
        self.ask = threading.Condition(self.lock)
        self.request: tuple[int, float] | None = None
        self.outcome: tuple[Sequence[Bag] | None, BaseException | None] | None = None
        self.busy = False
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"qchan-fetch-{name}", daemon=True)
        self.thread.start()

    def start(self, max_items: int, wait: float) -> None:
        with self.lock:
            self.busy = True
            self.request = (max_items, wait)
            self.ask.notify()

    def take(self) -> tuple[Sequence[Bag] | None, BaseException | None] | None:
        """The outcome of the receive started last, once it is there (then it may start
        another), or None."""
        with self.lock:
            got, self.outcome = self.outcome, None
            if got is not None:
                self.busy = False
            return got

    def wait(self, timeout: float) -> tuple[Sequence[Bag] | None, BaseException | None] | None:
        """The outcome of the receive in flight, waiting up to `timeout` s for it."""
        with self.lock:
            self.ask.wait_for(lambda: self.outcome is not None, timeout)
        return self.take()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.ask.notify_all()

    def _run(self) -> None:
        while True:
            with self.lock:
                while self.request is None and not self.stopped:
                    self.ask.wait()
                if self.stopped:
                    return
                request, self.request = self.request, None
            assert request is not None
            try:
                outcome: tuple[Sequence[Bag] | None, BaseException | None] = (
                    self.adapter.receive(*request),
                    None,
                )
            except BaseException as e:
                outcome = (None, e)
            with self.lock:
                if self._stopped():
                    return  # left to the broker's redelivery (see the class docstring)
                self.outcome = outcome
                self.ask.notify_all()
            self.done()

    def _stopped(self) -> bool:
        return self.stopped


class Consumer:
    """The consumer thread of one queue (started by `Listener`), and its state: only that
    thread touches it, but for `requests` (guarded by the gate's lock)."""

    def __init__(self, ctx: Context, gate: Gate) -> None:
        self.ctx = ctx
        self.gate = gate
        self.adapter = adapter = gate.adapter
        self.log = logging.LoggerAdapter(log, {"queue": ctx.name})
        opts = ctx.options
        self.time_to_flight = opts.time_to_flight
        self.extend_every = opts.extend_every
        self.ack_linger = opts.ack_linger
        self.poll_wait = resolved(opts.poll_wait)
        #: What the application's threads asked for, oldest first (see `Listener`).
        self.requests: deque[tuple[str, Any]] = deque()
        self.closed = False  # it takes no more requests (set under the gate's lock)
        self._reported: OrderedDict[str, None] = OrderedDict()  # unroutable ids said once
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
        # in-flight limit: the consumer receives again while the application works on
        # the other half (the measurements behind it: docs/measurements.md).
        self.ack_batch = max(1, min(adapter.max_batch, opts.in_flight // 2))
        self.next_beat = time.monotonic() + (opts.extend_every or 0.0)
        self.beaten: set[Bag] = set()  # what was held at the last extension
        self.failed = False  # the queue failed: its rcv and ack channels raise now
        self.name = f"{adapter.scheme}-{ctx.name}"
        self.fetcher: Fetcher | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"qchan-consumer-{self.name}", daemon=True
        )

    # -- the application's threads -------------------------------------------------

    def request(self, op: str, arg: Any) -> bool:
        """Ask the thread for `op` (add, remove, revoke); False once it has stopped."""
        gate = self.gate
        with gate.cond:
            if self.closed:
                return False
            self.requests.append((op, arg))
        gate.alert()
        return True

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            # What it held stays un-acked on the broker, which redelivers it.
            self.ctx.fail(e, "consumer")
            self._close_requests()
            for r in [*self.receivers, *self.gate.routes.values()]:
                r.finished.set()
        finally:
            if self.fetcher is not None:
                self.fetcher.stop()

    def _loop(self) -> None:
        ctx, gate, adapter = self.ctx, self.gate, self.adapter
        failures = 0
        state = ""
        serviceable = True  # does the adapter want hold/idle calls? (it says so by returning True)
        while True:
            now = time.monotonic()
            self._serve(now)
            if gate.stopping:
                self._stop()
                return
            if not self.failed and ctx.failure() is not None:
                self._failed()
            fetcher = self.fetcher
            if fetcher is not None and fetcher.busy:
                outcome = fetcher.take()
                if outcome is not None:
                    failures = self._received(outcome[0], outcome[1], failures)
                    continue
            due = self._due()
            with gate.cond:
                if self._work_waiting():
                    continue
                want = 0
                if self.failed:
                    now_state = "wait"
                else:
                    want = gate.want()
                    now_state = "receive" if want > 0 else "hold" if want == 0 else "idle"
                if now_state != state:  # a new state: ask the adapter (again) whether it tends it
                    state, serviceable = now_state, True
                gate.idling = state != "receive"
                sleep = (
                    state == "wait"
                    or (state != "receive" and not serviceable)
                    or (fetcher is not None and fetcher.busy)
                )
                if sleep or (state == "receive" and not adapter.wakes):
                    if not sleep:
                        if self.fetcher is None:
                            self.fetcher = Fetcher(adapter, self.name, gate.alert)
                        self.fetcher.start(min(adapter.max_receive, want), self._wait(due))
                    gate.sleep(None if due is None else max(0.0, due - time.monotonic()))
                    continue
                gate.blocked, gate.alerted = "adapter", False
            wait = self._wait(due)
            if state != "receive":
                # Two different signals, never one: hold keeps what the adapter took
                # (the application is only slow); idle may give it back (nobody listens).
                tend = adapter.hold if state == "hold" else adapter.idle
                try:
                    serviceable = bool(tend(wait))
                except Exception as e:
                    ctx.report(e)
                    serviceable = False
                finally:
                    gate.blocked = None
                continue
            bags: Sequence[Bag] | None = None
            error: BaseException | None = None
            try:
                bags = adapter.receive(min(adapter.max_receive, want), wait)
            except Exception as e:
                error = e
            finally:
                gate.blocked = None
            failures = self._received(bags, error, failures)
            bags = None  # hold no message while receiving the next

    def _wait(self, due: float | None) -> float:
        """How long a broker call may wait: the poll wait, or less if a timer is due first."""
        if due is None:
            return self.poll_wait
        return max(0.0, min(self.poll_wait, due - time.monotonic()))

    def _received(
        self, bags: Sequence[Bag] | None, error: BaseException | None, failures: int
    ) -> int:
        """The outcome of one receive: route the bags, or back off after a failure; the
        count of failures in a row."""
        if error is None:
            if bags:
                self.gate.taken(len(bags))
                self._route(bags)
            return 0
        if not isinstance(error, Exception):
            raise error
        failures += 1
        ctx, gate = self.ctx, self.gate
        ctx.report(
            error
            if isinstance(error, ConnectionLost)
            else ConnectionLost(f"queue {ctx.name!r}: receive failed ({error!r}); retrying")
        )
        backoff = time.monotonic() + min(5.0, 0.05 * 2 ** min(failures, 7))
        # back off, but serve the application meanwhile and stop at once when asked
        while not gate.stopping:
            now = time.monotonic()
            self._serve(now)
            due = self._due()
            end = backoff if due is None else min(backoff, due)
            if now >= backoff:
                break
            with gate.cond:
                if self._work_waiting():
                    continue
                gate.sleep(max(0.0, end - now))
        return failures

    def _work_waiting(self) -> bool:
        """Whether something asks for this thread before it blocks (the caller holds the
        gate's lock, which every `Gate.alert` takes: none is missed)."""
        if self.gate.stopping or self.requests:
            return True
        fetcher = self.fetcher
        if fetcher is not None and fetcher.outcome is not None:
            return True
        return any(r.ack.buffer or r.ack.closed for r in self.acks_open)

    def _serve(self, now: float) -> None:
        """Requests, acks and timers."""
        requests = self.requests
        while requests:
            op, arg = requests.popleft()
            if op == "add":
                self._open(arg)
            elif op == "remove":
                self._finish(arg)
            else:  # revoke
                self._revoke(*arg)
        for r in self.acks_open:
            ack = r.ack
            if ack.buffer:
                for m in ack.recv_many(1 << 30):
                    self._on_ack(m, now)
            elif ack.closed:  # the application closed its ack channel
                self.acks_open = [a for a in self.acks_open if a is not r]
        self._timers(now)

    def _due(self) -> float | None:
        """When the next timer is due (None: nothing is timed)."""
        due = self.ack_due
        clock = self.clock.next_due()
        if clock is not None and (due is None or clock < due):
            due = clock
        if self.extend_every and self.clock.held and (due is None or self.next_beat < due):
            due = self.next_beat
        return due

    # -- routing -----------------------------------------------------------------------

    def _route(self, bags: Sequence[Bag]) -> None:
        stats = self.ctx.counters
        routes = self.gate.routes
        if not routes:
            # The last channel closed while this receive ran: give the bags back at
            # once rather than leave them to the broker's visibility timeout.
            self._release(list(bags))
            return
        stats.received += len(bags)
        now = time.monotonic()
        run: list[Msg[Any]] = []  # consecutive messages for one receiver
        last: Receiver | None = None
        name = self.ctx.name
        poison: list[tuple[Bag, MessageError]] = []
        for bag in bags:
            if bag.deliveries > 1:
                stats.redelivered += 1
            r = routes.get(bag.category) or routes.get(ANY)
            if r is None:
                poison.append(
                    (
                        bag,
                        UnroutableError(
                            f"queue {name!r}: no channel receives category "
                            f"{short(bag.category)} (message {short(bag.id)}); it goes back "
                            f"to the broker",
                            bag,
                        ),
                    )
                )
                continue
            try:
                obj = r.codec.decode(bag.body)
            except Exception as e:
                why = JSONCodec.explain(e)
                err = DecodeError(
                    f"queue {name!r}: cannot decode a {short(bag.category)} message "
                    f"({short(bag.id)}, {len(bag.body)} bytes) as {type_name(r.codec)}: "
                    f"{why[:500]}",
                    bag,
                )
                err.__cause__ = e
                poison.append((bag, err))
                continue
            if r is not last:
                if last is not None:
                    self._hand(last, run, now)
                run = []
                last = r
            run.append(received(obj, bag.category, bag.digest, bag.attributes, bag))
        if last is not None:
            self._hand(last, run, now)
        for bag, error in poison:
            self._poison(bag, error)

    def _hand(self, r: Receiver, msgs: list[Msg[Any]], now: float) -> None:
        """A run of messages for `r`: into its rcv, whole."""
        if r not in self.receivers:
            if self.gate.routes.get(r.category) is not r:
                # its channel closed while the messages were on their way
                self._release([m.bag for m in msgs if m.bag is not None])
                return
            # Routed by the new table before this thread served the channel's "add"
            # (the request came during the receive): open it now rather than release them.
            self._open(r)
        if self.failed:
            self._release([m.bag for m in msgs if m.bag is not None])
            return
        try:
            r.rcv.push(msgs)
        except (ChannelClosed, QueueFailed):  # the queue failed during the receive
            self._release([m.bag for m in msgs if m.bag is not None])
            return
        self.clock.handed(r, [m.bag for m in msgs if m.bag is not None], now)

    def _poison(self, bag: Bag, error: MessageError) -> None:
        self.ctx.counters.poison += 1
        if isinstance(error, UnroutableError):
            self._report_unroutable(bag, error)
        else:
            self.ctx.report(error)
        try:
            self.adapter.reject(bag, error)
        except Exception as e:
            self.ctx.report(e)
        self.gate.resolved(1)

    def _report_unroutable(self, bag: Bag, error: MessageError) -> None:
        """Say once per message id that it is unroutable (the broker will bring it back)."""
        key = bag.id or str(id(bag))
        if key in self._reported:
            return
        self._reported[key] = None
        if len(self._reported) > 10_000:
            self._reported.popitem(last=False)
        self.ctx.report(error)

    # -- receivers -----------------------------------------------------------------------

    def _open(self, r: Receiver) -> None:
        if r not in self.receivers:
            self.receivers.append(r)
            self.clock.open(r)
            if not self.failed:
                self.acks_open.append(r)

    def _finish(self, r: Receiver) -> None:
        """Close one receiver: apply its acks, release everything it still holds."""
        if r not in self.receivers:
            r.finished.set()
            return
        self.receivers.remove(r)
        self.acks_open = [a for a in self.acks_open if a is not r]
        r.rcv.close()
        r.rcv.recv_many(1 << 30)  # buffered, never received: the clock still holds them
        r.ack.close()
        now = time.monotonic()
        for m in r.ack.recv_many(1 << 30):  # acks the application sent before closing
            self._on_ack(m, now)
        self._flush_acks()
        self._release(self.clock.close(r))  # delivered or buffered, not acked
        r.finished.set()

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

    def _close_requests(self) -> None:
        """Take no more requests; answer those left (nothing to do for them now)."""
        with self.gate.cond:
            self.closed = True
            left, self.requests = list(self.requests), deque()
        for op, arg in left:
            if op == "remove":
                arg.finished.set()
            elif op == "revoke":
                arg[2].set()

    def _stop(self) -> None:
        while True:  # serve the requests that came before the close
            with self.gate.cond:
                if not self.requests:
                    self.closed = True
                    break
            self._serve(time.monotonic())
        for r in list(self.receivers):
            self._finish(r)
        for r in self.gate.routes.values():  # opened and never served
            r.finished.set()
        fetcher = self.fetcher
        if fetcher is not None and fetcher.busy:
            # A long poll in flight: what it brings was taken for nobody now. Given back
            # uncounted, it never moves toward the broker's dead-letter threshold.
            outcome = fetcher.wait(self.ctx.options.close_timeout)
            if outcome is not None and outcome[0]:
                self.gate.taken(len(outcome[0]))
                self._release(list(outcome[0]))

    # -- settling ------------------------------------------------------------------------

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

    def revoke(self, predicate: Callable[[Bag], bool]) -> int:
        """Forget messages the adapter lost (a rebalance): no release, no ack; a new owner
        redelivers them. Those waiting in rcv's buffer are taken out of it, so the
        application never handles them here; only the ones it holds already may be
        handled twice (their acks are ignored). On this thread only (the adapter calls
        it from inside `receive` or `hold`; `Listener.revoke` asks from any other)."""
        dropped = 0

        def lost(m: Msg[Any]) -> bool:
            return m.bag is not None and bool(predicate(m.bag))

        for r in self.receivers:
            withdrawn = r.rcv.withdraw(lost)
            self.clock.withdrawn(r, [m.bag for m in withdrawn if m.bag is not None])
            dropped += len(withdrawn)
        dropped += self.clock.forget(predicate)
        self.gate.resolved(dropped)
        return dropped

    def _revoke(self, predicate: Any, box: list[int], done: threading.Event) -> None:
        box.append(self.revoke(predicate))
        done.set()

    def _release(self, bags: list[Bag]) -> None:
        if not bags:
            return
        try:
            self.adapter.give_back(bags, counted=False)
        except Exception as e:
            self.ctx.report(e)
        self.gate.resolved(len(bags))
