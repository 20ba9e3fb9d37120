"""The consumer side: one pika BlockingConnection, created and driven only by the thread
that calls `receive`, `hold` and `idle` (the kernel's consumer thread).

pika connections are not thread-safe, so the settling calls never touch this
one, whichever thread makes them. They append settlements (ack, requeue,
release, dead-letter) to a deque and ask the connection, through
`add_callback_threadsafe` (pika's only thread-safe method), to run `_apply` on
the consumer thread. That callback also makes a `process_data_events` blocked
in `receive` return at once, so an ack from another thread reaches the broker
promptly even while the consumer thread waits for messages.

Acks are fire-and-forget: the settling call does not wait for the callback to run.
Waiting would add a thread round trip per ack batch, and an ack that never
reaches the broker (the connection died first) cannot be retried anyway: the
broker has requeued that delivery already. The at-least-once contract covers
it: the message comes back, a duplicate.

Flow control: credit lines. RabbitMQ pushes to a consumer up to its `basic.qos`
prefetch, whether or not anyone polls, and a quorum queue consumer's prefetch is
fixed when it subscribes. So the consumer subscribes several times on its
channel ("lines"), each with a credit of its own, and what it takes from the
broker follows what the kernel asks for (`receive(max_items)`: the consumers'
demand, see qchan.kernel.routes.Gate): a line is added when the kernel wants
more than has arrived plus what the lines may still push, sized to that deficit
(at least a quarter of the credit so far, so a fast consumer needs few lines),
within `prefetch`. While the kernel holds (no demand, or its in-flight limit),
a line is cancelled once it is full and the other lines still cover twice what
the kernel holds: nothing is ever in flight to a full line, so the cancel
returns nothing. A slow consumer's credit is thus its buffer plus what its
workers hold; other consumers of the queue get the rest of the backlog.

Returns are copies (see _wire.py): a nack (a failure: counted), a release (not
a delivery: uncounted) and what is given back when nobody listens are published
back to the queue on a confirmed channel with `qchan-deliveries`, then acked; a
copy that fails is requeued with `basic_nack` (counted by the broker, never
dropped). A delayed nack (RabbitMQ has no per-message delay without plugins) is
held here, un-acked, until due; if the process or the connection dies
meanwhile, the broker requeues it at once.

What the broker counts itself are the returns qchan did not choose: a consumer
that died or lost its connection, or a delivery in flight at the moment a line
is cancelled while nobody listens (pika rejects it). A delivery that arrives
with more than `max_deliveries` is dead-lettered without reaching the
application (consumers die on it). On a classic queue, which says only
`redelivered`, such a delivery is copied back with one more delivery counted
before it is handed out, so a message that kills its consumer every time is
still stopped after `max_deliveries`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs

from qchan.errors import ConnectionLost, MessageError
from qchan.message import Bag

from . import _pika as pk
from ._config import Settings
from ._topology import connect_blocking, declare
from ._wire import DELIVERIES, DELIVERY_COUNT, Receipt, bag_from_delivery, counted

__all__ = ["Consumer", "DeadLettered", "Settle"]

log = logging.getLogger("qchan.adapters.rabbitmq")

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0
#: Seconds a pause waits for deliveries still on their way before it cancels the lines.
_DRAIN = 0.05


class DeadLettered(MessageError):
    """A delivery was sent to the queue's dead-letter exchange (max_deliveries reached)."""


@attrs.frozen
class Settle:
    """One settlement for the consumer thread to send.

    `ack`; `requeue` (a failure: back on the queue, maybe after `due`, one more
    delivery counted); `release` (given back unhandled: not a delivery); `dead`
    (to the dead-letter queue). All but `ack` carry the bag.
    """

    kind: Literal["ack", "requeue", "release", "dead"]
    receipt: Receipt
    due: float = 0.0
    bag: Bag | None = None


class _Line:
    """One subscription (`basic.consume`) of the consumer's channel, with its own credit."""

    __slots__ = ("cancelled", "credit", "out", "tag")

    def __init__(self, tag: str, credit: int) -> None:
        self.tag = tag
        self.credit = credit
        self.out = 0  # delivered to us on this line and not settled yet
        self.cancelled = False


class Consumer:
    """Receives from one queue; settles deliveries that any thread hands it."""

    def __init__(self, settings: Settings, report: Callable[[BaseException], None]) -> None:
        self._s = settings
        self._report = report
        self._adopted = False  # the queue exists with other arguments: see declare()
        self._copy_ch: pk.BlockingChannel | None = None  # confirmed copies (back, or to the DLQ)
        self._conn: pk.BlockingConnection | None = None
        self._ch: pk.BlockingChannel | None = None
        #: Incremented per connection; receipts of older ones are stale.
        self._generation = 0
        self._ready: deque[Bag] = deque()
        self._ops: deque[Settle] = deque()
        #: Releases wait here for the consumer thread's next call, which first decides the lines: a
        #: release while the kernel stops receiving must not make the broker push more.
        self._releases: deque[Settle] = deque()
        self._held: list[tuple[float, int, Settle]] = []
        #: Delivery tags of the current channel not settled yet, in delivery (= tag) order,
        #: with their line.
        self._open: dict[int, _Line] = {}
        #: Lines by consumer tag: the active ones, and cancelled ones with deliveries out.
        self._lines: dict[str, _Line] = {}
        #: Deliveries the broker counted past the limit, or classic redeliveries to count:
        #: settled after the pump (never inside pika's callback).
        self._later: list[tuple[Bag, pk.BasicProperties]] = []
        self._seq = itertools.count()
        self._woken = threading.Event()
        self._kick_pending = False
        #: Held by whoever drives the connection: the consumer thread in receive, or close.
        self._driving = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.0
        self._cancelled = False
        #: The most credit the lines may have together (`prefetch`, at most the kernel's
        #: in-flight limit: see bind).
        self.prefetch = settings.prefetch

    # ---- any thread -------------------------------------------------------

    def settle(self, ops: Iterable[Settle]) -> None:
        """Acks, failures and dead letters: the consumer thread sends them soon."""
        self._ops.extend(ops)
        self._kick()

    def give_back(self, ops: Iterable[Settle]) -> None:
        """Releases: the consumer thread's next call applies them, after its line decisions."""
        self._releases.extend(ops)
        self.wakeup()

    def wakeup(self) -> None:
        self._woken.set()
        self._kick()

    def _kick(self) -> None:
        """Have the consumer thread run `_apply` soon (and leave process_data_events)."""
        if self._kick_pending:
            return
        conn = self._conn
        if conn is None:
            return  # not connected: the next receive drains the deque
        self._kick_pending = True
        try:
            conn.add_callback_threadsafe(self._on_kick)
        except pk.AMQPError:
            self._kick_pending = False  # closing: the consumer thread reconnects and drains

    # ---- consumer thread --------------------------------------------------

    def receive(self, max_items: int, wait: float) -> list[Bag]:
        """Up to max_items bags, waiting at most `wait` s for the first (or for a wakeup)."""
        return self._drive(max_items, wait, "receive")

    def hold(self, wait: float) -> None:
        """Service the connection for up to `wait` s; take nothing new, give nothing back
        (lines that are full and not needed are cancelled)."""
        self._drive(0, wait, "hold")

    def pause(self, wait: float) -> None:
        """Nobody receives: cancel every line, give back what arrived ahead, then service
        the connection (settlements, heartbeats) for up to `wait` s."""
        self._drive(0, wait, "pause")

    def _drive(self, want: int, wait: float, mode: str) -> list[Bag]:
        deadline = time.monotonic() + max(0.0, wait)
        with self._driving:
            if self._ch is None and not self._connect(deadline):
                self._woken.clear()
                return []
            try:
                if mode == "pause":
                    self._pause()
                elif mode == "hold":
                    self._trim()
                else:
                    self._grow(want)
                self._apply(releases=True)
                self._pump(deadline, want > 0)
                n = min(max(0, want), len(self._ready))
                got = [self._ready.popleft() for _ in range(n)]
                # Cleared only once the call returns: a later wakeup is never lost.
                self._woken.clear()
            except pk.AMQPError as e:
                self._lost(e)
                return []
            return got

    def _pump(self, deadline: float, want: bool) -> None:
        """Service the connection until `deadline`, a wakeup, or (`want`) deliveries; the
        caller has just applied the settlements."""
        conn = self._conn
        assert conn is not None
        if want and self._ready:
            conn.process_data_events(0)  # also take whatever else has arrived
            self._admit()
            self._apply()
            return
        while not self._woken.is_set():
            if self._cancelled:
                raise pk.AMQPChannelError(f"the broker cancelled our consumer on {self._s.queue}")
            now = time.monotonic()
            limit = deadline - now
            if limit <= 0:
                break
            if self._held:
                limit = min(limit, max(0.0, self._held[0][0] - now))
            conn.process_data_events(time_limit=limit)
            self._admit()
            self._apply()
            if want and self._ready:
                break

    # -- lines ----------------------------------------------------------------

    def _grow(self, want: int) -> None:
        """Add a line when the kernel wants more than arrived plus what the lines may push."""
        ch = self._ch
        assert ch is not None
        credit = room = 0
        for line in self._lines.values():
            if not line.cancelled:
                credit += line.credit
                room += line.credit - line.out
        deficit = want - len(self._ready) - room
        space = self.prefetch - credit
        if deficit <= 0 or space <= 0:
            return
        size = min(space, max(deficit, credit // 4))
        ch.basic_qos(prefetch_count=size)
        tag = ch.basic_consume(self._s.queue, self._on_message, auto_ack=False)
        self._lines[tag] = _Line(tag, size)
        log.debug("queue %s: line %s with credit %d (%d in all)", self._s.queue, tag, size, credit)

    def _trim(self) -> None:
        """The kernel holds: cancel full lines while the others still cover twice what it
        holds (what it holds swings with every batch of acks: a margin, not a churn of
        subscriptions)."""
        ch = self._ch
        assert ch is not None
        active = [line for line in self._lines.values() if not line.cancelled]
        credit = sum(line.credit for line in active)
        holds = len(self._open) - len(self._ready)  # handed to the kernel, not settled
        for line in sorted(active, key=lambda x: -x.credit):
            if line.out >= line.credit and credit - line.credit >= 2 * holds:
                self._cancel(ch, line)  # full: nothing is in flight to it
                credit -= line.credit

    def _cancel(self, ch: pk.BlockingChannel, line: _Line) -> None:
        line.cancelled = True
        ch.basic_cancel(line.tag)  # pika rejects what reached it undispatched: nothing, if full
        if line.out <= 0:
            self._lines.pop(line.tag, None)

    def _pause(self) -> None:
        """Stop the broker's push and give back every delivery not handed to the kernel."""
        ch, conn = self._ch, self._conn
        if ch is None or conn is None:
            return
        if any(not line.cancelled for line in self._lines.values()):
            self._settle_in_flight(conn)
            for line in list(self._lines.values()):
                if not line.cancelled:
                    self._cancel(ch, line)
        self._apply(flush=True, releases=True)  # delayed nacks and releases go back now
        returned_ = 0
        while self._ready:
            bag = self._ready.popleft()
            receipt: Receipt = bag.digest
            self._copy_back(receipt.tag, bag, counted=False)
            returned_ += 1
        if returned_:
            log.debug("queue %s: paused; %d message(s) given back", self._s.queue, returned_)

    def _settle_in_flight(self, conn: pk.BlockingConnection) -> None:
        """Before cancelling lines that are not full: take what the broker is still pushing
        to them (refills of recent acks), for up to `_DRAIN` s or until every line is full.

        pika rejects, with a requeue, a delivery that reaches a cancelled subscription,
        and RabbitMQ before 4.3 counts that return: a message this consumer never handed
        out would move toward max_deliveries. What arrives here goes back uncounted.
        Only a message published to an empty queue in the instant of the cancel can
        still slip through (docs/rabbitmq.md)."""
        deadline = time.monotonic() + _DRAIN
        while True:
            conn.process_data_events(0)
            self._admit()
            self._apply()
            left = deadline - time.monotonic()
            if left <= 0 or all(
                line.cancelled or line.out >= line.credit for line in self._lines.values()
            ):
                return
            conn.process_data_events(time_limit=min(left, 0.005))

    # -- settling ---------------------------------------------------------------

    def _on_kick(self) -> None:
        self._kick_pending = False
        self._apply()

    def _apply(self, flush: bool = False, releases: bool = False) -> None:
        """Send queued settlements of the current connection; hold delayed ones until due.
        Releases only when the caller says (see `_releases`)."""
        ch = self._ch
        now = float("inf") if flush else time.monotonic()
        acks: list[int] = []
        if releases:
            while self._releases:
                self._ops.append(self._releases.popleft())
        while self._ops:
            op = self._ops.popleft()
            if ch is None or op.receipt.generation != self._generation:
                continue  # that connection is gone and the broker requeued the delivery
            if op.kind == "ack":
                acks.append(op.receipt.tag)
            elif op.due > now:
                heapq.heappush(self._held, (op.due, next(self._seq), op))
            else:
                self._settle_one(ch, op)
        while self._held and self._held[0][0] <= now:
            op = heapq.heappop(self._held)[2]
            if ch is not None and op.receipt.generation == self._generation:
                self._settle_one(ch, op)
        if acks and ch is not None:
            self._ack(ch, acks)

    def _settled(self, tag: int) -> bool:
        """Forget delivery `tag` (it is being settled); False if it was settled already."""
        line = self._open.pop(tag, None)
        if line is None:
            return False
        line.out -= 1
        if line.cancelled and line.out <= 0:
            self._lines.pop(line.tag, None)
        return True

    def _ack(self, ch: pk.BlockingChannel, tags: list[int]) -> None:
        """Ack with as few frames as possible: one `multiple=True` ack covers the longest run
        of oldest unsettled deliveries that are all being acked now; the rest go one by one.

        Each basic_ack costs pika a full output flush, so this is what keeps a
        consumer's acks as cheap as raw pika's. Tags settled already (a repeated
        ack) are skipped: acking one twice would make the broker close the channel.
        """
        want = set(tags)
        opened = self._open
        prefix: list[int] = []
        for tag in opened:
            if tag not in want:
                break
            prefix.append(tag)
        if len(prefix) > 1:
            ch.basic_ack(prefix[-1], multiple=True)
            for tag in prefix:  # `_settled`, inline: once per message
                opened.pop(tag).out -= 1
            want.difference_update(prefix)
            for line in [x for x in self._lines.values() if x.cancelled and x.out <= 0]:
                del self._lines[line.tag]
        for tag in sorted(want):
            if self._settled(tag):
                ch.basic_ack(tag)

    def _settle_one(self, ch: pk.BlockingChannel, op: Settle) -> None:
        tag = op.receipt.tag
        if tag not in self._open:
            return
        bag = op.bag
        if op.kind == "dead":
            if self._adopted:
                body = bag.body if bag is not None else b""
                if self._copy_dead(body, _props(op.receipt)):
                    self._settled(tag)
                    ch.basic_ack(tag)
                else:
                    self._settled(tag)
                    ch.basic_nack(tag, requeue=True)  # never dropped
                return
            self._settled(tag)
            ch.basic_nack(tag, requeue=False)
            return
        assert bag is not None
        self._copy_back(tag, bag, counted=op.kind == "requeue")

    def _copy_back(self, tag: int, bag: Bag, counted: bool) -> None:
        """Put delivery `tag` back on the queue as a copy that carries its delivery count
        (this delivery included when `counted`), then ack it; if the copy fails, requeue it
        (the broker counts that; never dropped)."""
        ch = self._ch
        if ch is None or tag not in self._open:
            return
        props = _props(bag.digest)
        headers = {k: v for k, v in (props.headers or {}).items() if k != DELIVERY_COUNT}
        headers[DELIVERIES] = bag.deliveries if counted else bag.deliveries - 1
        if self._publish_copy(self._s.queue, bag.body, pk.copied(props, headers), "back"):
            self._settled(tag)
            ch.basic_ack(tag)
        else:
            self._settled(tag)
            ch.basic_nack(tag, requeue=True)

    def _copy_dead(self, body: bytes, props: pk.BasicProperties) -> bool:
        """Dead-letter on an adopted queue (whose own dead-letter exchange qchan cannot see):
        publish a copy to our dead-letter queue and wait for the broker's confirm."""
        target = self._s.dead_letter
        headers = {k: v for k, v in (props.headers or {}).items() if k != DELIVERY_COUNT}
        props = pk.copied(props, headers)
        if target is None or self._conn is None:
            self._report(
                ConnectionLost(
                    f"queue {self._s.queue!r}: no dead_letter= queue for a message given up on; "
                    f"requeued (never dropped)"
                )
            )
            return False
        return self._publish_copy(target, body, props, "to the dead-letter queue")

    def _publish_copy(self, queue: str, body: bytes, props: pk.BasicProperties, what: str) -> bool:
        """Publish to `queue` through the default exchange; True once the broker confirmed."""
        if self._conn is None:
            return False
        try:
            if self._copy_ch is None or not self._copy_ch.is_open:
                self._copy_ch = self._conn.channel()
                self._copy_ch.confirm_delivery()
            self._copy_ch.basic_publish("", queue, body, props, mandatory=True)
        except pk.AMQPError as e:
            self._copy_ch = None
            self._report(
                ConnectionLost(
                    f"queue {self._s.queue!r}: copying a message {what} ({queue!r}) failed "
                    f"({type(e).__name__}: {self._s.scrub(str(e))}); requeued"
                )
            )
            return False
        return True

    # -- arrivals ---------------------------------------------------------------

    def _on_message(
        self, ch: Any, method: pk.Deliver, props: pk.BasicProperties, body: bytes
    ) -> None:
        line = self._lines.get(method.consumer_tag)
        if line is None:  # not one of ours (cannot happen): leave it to the broker
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        bag = bag_from_delivery(self._generation, method, props, body, self._s.queue)
        line.out += 1
        self._open[method.delivery_tag] = line
        if bag.deliveries > 1:  # a first delivery needs none of this
            limit = self._s.max_deliveries
            if (limit is not None and bag.deliveries > limit) or (
                method.redelivered and DELIVERY_COUNT not in (props.headers or {})
            ):
                self._later.append((bag, props))
                return
        self._ready.append(bag)

    def _admit(self) -> None:
        """Deliveries the broker returned by itself (a consumer died with them): past the
        limit, dead-letter them unseen; on a classic queue, count the return first."""
        later, self._later = self._later, []
        ch = self._ch
        for bag, props in later:
            receipt: Receipt = bag.digest
            if ch is None or receipt.tag not in self._open:
                continue
            limit = self._s.max_deliveries
            if limit is not None and bag.deliveries > limit:
                self._dead_on_arrival(ch, bag, props)
                continue
            # A classic queue says only "redelivered": count that return (the delivery a
            # consumer died with) on a copy, which comes back as the next delivery.
            log.info(
                "queue %s: message %r came back without an ack (a consumer died or lost its "
                "connection); counted as delivery %d",
                self._s.queue,
                bag.id,
                counted(props.headers or {}) + 1,
            )
            self._copy_back(receipt.tag, bag, counted=False)

    def _dead_on_arrival(self, ch: pk.BlockingChannel, bag: Bag, props: pk.BasicProperties) -> None:
        """Delivered max_deliveries times already and never settled: the consumer process
        probably dies on it. Do not hand it out once more."""
        receipt: Receipt = bag.digest
        tag = receipt.tag
        self._settled(tag)
        if not self._adopted:
            ch.basic_nack(tag, requeue=False)
        elif self._copy_dead(bag.body, props):
            ch.basic_ack(tag)
        else:
            ch.basic_nack(tag, requeue=True)
        self.dead_lettered(bag, f"delivered {bag.deliveries - 1} times without an ack")

    def dead_lettered(self, bag: Bag, why: str) -> None:
        where = self._s.dead_letter or "its dead-letter exchange"
        err = DeadLettered(
            f"queue {self._s.queue!r}: message {bag.id!r} (category {bag.category!r}) "
            f"dead-lettered to {where}: {why} (max_deliveries={self._s.max_deliveries})",
            bag,
        )
        self._report(err)  # logged by the kernel unless the application takes its errors

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled = True

    # -- connection -------------------------------------------------------------

    def _connect(self, deadline: float) -> bool:
        now = time.monotonic()
        if now < self._retry_at:
            self._woken.wait(min(deadline, self._retry_at) - now)
            if time.monotonic() < self._retry_at:
                return False
        try:
            conn = connect_blocking(self._s, "consumer")
        except ConnectionLost:
            self._schedule_retry()
            raise
        try:
            ch, self._adopted = declare(conn, self._s)
            self._copy_ch = None
            self._generation += 1
            self._open.clear()
            self._lines.clear()
            ch.add_on_cancel_callback(self._on_cancel)
        except BaseException as e:
            self._schedule_retry()
            _close_quietly(conn)
            if isinstance(e, pk.AMQPError):
                raise ConnectionLost(
                    f"consuming from queue {self._s.queue!r} at {self._s.display_url} failed: "
                    + self._s.scrub(f"{type(e).__name__}: {e}")
                ) from None
            raise
        self._conn, self._ch = conn, ch
        self._backoff = 0.0
        self._kick_pending = False
        self._cancelled = False
        log.info("queue %s: connected (credit up to %d)", self._s.queue, self.prefetch)
        return True

    def _schedule_retry(self) -> None:
        self._backoff = min(max(self._backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff

    def _lost(self, e: BaseException) -> None:
        conn = self._conn
        # Paused with nothing outstanding (no channel was receiving, e.g. the broker
        # dropped the idle connection for missed heartbeats): nothing was lost.
        idle = not self._lines and not (self._open or self._held or self._ops or self._releases)
        self._conn = self._ch = self._copy_ch = None
        self._lines.clear()
        self._ready.clear()  # the broker requeues them with everything else un-acked
        self._later.clear()
        self._held.clear()
        self._open.clear()
        if conn is not None:
            _close_quietly(conn)
        self._retry_at = 0.0  # first reconnect at once, then back off
        if idle:
            log.info(
                "queue %s: idle consumer connection closed (%s); reconnecting",
                self._s.queue,
                self._s.scrub(str(e)),
            )
            return
        err = ConnectionLost(
            f"consumer connection for queue {self._s.queue!r} at {self._s.display_url} lost ("
            + self._s.scrub(f"{type(e).__name__}: {e}")
            + "); reconnecting, un-acked deliveries will be redelivered"
        )
        self._report(err)  # logged by the kernel unless the application takes its errors

    # ---- closing thread ---------------------------------------------------

    def close(self) -> None:
        """Stop the lines, send the last settlements, then close (the broker requeues
        anything un-acked)."""
        if not self._driving.acquire(timeout=5.0):
            log.warning("queue %s: still receiving at close; not closing", self._s.queue)
            return
        try:
            conn = self._conn
            if conn is None:
                return
            try:
                self._pause()
            except pk.AMQPError as e:
                log.info("queue %s: last settlements not sent (%s)", self._s.queue, e)
            self._conn = None
            self._ch = None
            _close_quietly(conn)
        finally:
            self._driving.release()


def _props(receipt: Receipt) -> pk.BasicProperties:
    props = receipt.props
    assert props is not None, "a receipt made by bag_from_delivery carries its properties"
    return props


def _close_quietly(conn: pk.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except pk.AMQPError as e:
        log.debug("closing a RabbitMQ connection: %s", e)
