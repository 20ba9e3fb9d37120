"""The consumer side: one pika BlockingConnection, created and driven only by the poller thread.

pika connections are not thread-safe, so the dispatcher thread never touches this
one. It appends settlements (ack, requeue, dead-letter) to a deque and asks
the connection, through `add_callback_threadsafe` (pika's only thread-safe
method), to run `_apply` on the poller thread. That callback also makes a
`process_data_events` blocked in `receive` return at once, so an ack reaches
the broker promptly even while the poller waits for messages.

Acks are fire-and-forget: the dispatcher does not wait for the callback to run.
Waiting would add a thread round trip per ack batch and could deadlock a
kernel whose poller stops calling `receive` until acks free in-flight room;
and an ack that never reaches the broker (the connection died first) cannot be
retried anyway, because the broker has requeued that delivery already. The
at-least-once contract covers it: the message comes back, a duplicate.

A delayed nack (RabbitMQ has no per-message delay without plugins) is held
here, un-acked, and requeued by the poller thread when due. If the process or
the connection dies meanwhile, the broker requeues it at once.

RabbitMQ pushes up to `prefetch` messages to a consumer whether or not anyone
polls, so the broker's `basic.qos` is the flow control: the prefetch is at
most the kernel's in-flight limit, and while the kernel holds (the limit is
reached, the application is only slow) the broker has nothing more to push.
`hold` keeps the subscription and every delivery: a requeue would count as a
delivery on a quorum queue (`x-delivery-count`) and, after `max_deliveries`,
dead-letter messages the application never saw. Only `pause` (the kernel's
`idle`: no channel receives from the queue any more) cancels the subscription
and hands back what the broker pushed ahead (and what delayed nacks hold), so
other consumers get those messages instead of this idle one; the next receive
subscribes again. A `wakeup` only cuts the current call short.
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
from ._wire import Receipt, bag_from_delivery, properties_for

__all__ = ["Consumer", "DeadLettered", "Settle"]

log = logging.getLogger("qchan.adapters.rabbitmq")

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0


class DeadLettered(MessageError):
    """A delivery was sent to the queue's dead-letter exchange (max_deliveries reached)."""


@attrs.frozen
class Settle:
    """One settlement for the poller thread to send: ack, requeue (maybe later), or dead-letter."""

    kind: Literal["ack", "requeue", "dead"]
    receipt: Receipt
    due: float = 0.0
    #: For "dead" on an adopted queue: the message, copied to the dead-letter queue.
    bag: Bag | None = None


class Consumer:
    """Receives from one queue; settles deliveries that any thread hands it."""

    def __init__(self, settings: Settings, report: Callable[[BaseException], None]) -> None:
        self._s = settings
        self._report = report
        self._adopted = False  # the queue exists with other arguments: see declare()
        self._dead_ch: pk.BlockingChannel | None = None  # confirmed copies to the DLQ
        self._conn: pk.BlockingConnection | None = None
        self._ch: pk.BlockingChannel | None = None
        #: Incremented per connection; receipts of older ones are stale.
        self._generation = 0
        self._ready: deque[Bag] = deque()
        self._ops: deque[Settle] = deque()
        self._held: list[tuple[float, int, Settle]] = []
        #: Delivery tags of the current channel not settled yet, in delivery (= tag) order.
        self._open: dict[int, None] = {}
        self._seq = itertools.count()
        self._woken = threading.Event()
        self._kick_pending = False
        #: Held by whoever drives the connection: the poller in receive, or close.
        self._driving = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.0
        self._cancelled = False
        #: The broker's name for our subscription; None while paused.
        self._consumer_tag: str | None = None
        #: `basic.qos` prefetch: the setting, at most the kernel's in-flight limit (see bind).
        self.prefetch = settings.prefetch

    # ---- any thread -------------------------------------------------------

    def settle(self, ops: Iterable[Settle]) -> None:
        self._ops.extend(ops)
        self._kick()

    def wakeup(self) -> None:
        self._woken.set()
        self._kick()

    def _kick(self) -> None:
        """Have the poller thread run `_apply` soon (and leave process_data_events)."""
        if self._kick_pending:
            return
        conn = self._conn
        if conn is None:
            return  # not connected: the next receive drains the deque
        self._kick_pending = True
        try:
            conn.add_callback_threadsafe(self._on_kick)
        except pk.AMQPError:
            self._kick_pending = False  # closing: the poller reconnects and drains

    # ---- poller thread ----------------------------------------------------

    def receive(self, max_items: int, wait: float) -> list[Bag]:
        """Up to max_items bags, waiting at most `wait` s for the first (or for a wakeup)."""
        return self._drive(max_items, wait, pause=False)

    def hold(self, wait: float) -> None:
        """Service the connection for up to `wait` s; keep the subscription and every delivery."""
        self._drive(0, wait, pause=False)

    def pause(self, wait: float) -> None:
        """Nobody receives: cancel the subscription, give back what is prefetched, then
        service the connection (settlements, heartbeats) for up to `wait` s."""
        self._drive(0, wait, pause=True)

    def _drive(self, max_items: int, wait: float, pause: bool) -> list[Bag]:
        deadline = time.monotonic() + max(0.0, wait)
        with self._driving:
            if self._ch is None and not self._connect(deadline):
                self._woken.clear()
                return []
            try:
                if pause:
                    self._pause()
                elif max_items > 0:
                    self._subscribe()
                self._pump(deadline, want=max_items > 0)
                n = min(max(0, max_items), len(self._ready))
                got = [self._ready.popleft() for _ in range(n)]
                # Cleared only once the call returns: a later wakeup is never lost.
                self._woken.clear()
            except pk.AMQPError as e:
                self._lost(e)
                return []
            return got

    def _pump(self, deadline: float, want: bool) -> None:
        conn = self._conn
        assert conn is not None
        self._apply()
        if want and self._ready:
            conn.process_data_events(0)  # also take whatever else has arrived
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
            self._apply()
            if want and self._ready:
                break

    def _subscribe(self) -> None:
        ch = self._ch
        if ch is not None and self._consumer_tag is None:
            self._consumer_tag = ch.basic_consume(self._s.queue, self._on_message, auto_ack=False)

    def _pause(self) -> None:
        """Stop the broker's push and give back every delivery not handed to the kernel."""
        ch, tag = self._ch, self._consumer_tag
        if ch is None or tag is None:
            return
        self._consumer_tag = None
        ch.basic_cancel(tag)  # pika requeues deliveries it had not dispatched yet
        self._apply(flush=True)  # delayed nacks go back now
        returned = 0
        while self._ready:
            receipt: Receipt = self._ready.popleft().digest
            if self._open.pop(receipt.tag, False) is None:
                ch.basic_nack(receipt.tag, requeue=True)
                returned += 1
        log.debug("queue %s: paused; %d prefetched message(s) returned", self._s.queue, returned)

    def _on_kick(self) -> None:
        self._kick_pending = False
        self._apply()

    def _apply(self, flush: bool = False) -> None:
        """Send queued settlements of the current connection; hold delayed ones until due."""
        ch = self._ch
        now = float("inf") if flush else time.monotonic()
        acks: list[int] = []
        while self._ops:
            op = self._ops.popleft()
            if ch is None or op.receipt.generation != self._generation:
                continue  # that connection is gone and the broker requeued the delivery
            if op.kind == "ack":
                acks.append(op.receipt.tag)
            elif op.due > now:
                heapq.heappush(self._held, (op.due, next(self._seq), op))
            else:
                self._nack(ch, op)
        while self._held and self._held[0][0] <= now:
            op = heapq.heappop(self._held)[2]
            if ch is not None and op.receipt.generation == self._generation:
                self._nack(ch, op)
        if acks and ch is not None:
            self._ack(ch, acks)

    def _ack(self, ch: pk.BlockingChannel, tags: list[int]) -> None:
        """Ack with as few frames as possible: one `multiple=True` ack covers the longest run
        of oldest unsettled deliveries that are all being acked now; the rest go one by one.

        Each basic_ack costs pika a full output flush, so this is what keeps a
        consumer's acks as cheap as raw pika's. Tags settled already (a repeated
        ack) are skipped: acking one twice would make the broker close the channel.
        """
        want = set(tags)
        prefix: list[int] = []
        for tag in self._open:
            if tag not in want:
                break
            prefix.append(tag)
        if len(prefix) > 1:
            ch.basic_ack(prefix[-1], multiple=True)
            for tag in prefix:
                del self._open[tag]
                want.discard(tag)
        for tag in sorted(want):
            if self._open.pop(tag, False) is None:
                ch.basic_ack(tag)

    def _nack(self, ch: pk.BlockingChannel, op: Settle) -> None:
        if op.receipt.tag not in self._open:
            return
        if op.kind == "dead" and self._adopted:
            if op.bag is None or not self._copy_dead(
                op.bag.body, properties_for(op.bag, op.bag.id or "")
            ):
                ch.basic_nack(op.receipt.tag, requeue=True)  # never dropped
            else:
                ch.basic_ack(op.receipt.tag)
            del self._open[op.receipt.tag]
            return
        del self._open[op.receipt.tag]
        ch.basic_nack(op.receipt.tag, requeue=op.kind == "requeue")

    def _copy_dead(self, body: bytes, props: pk.BasicProperties) -> bool:
        """Dead-letter on an adopted queue (whose own dead-letter exchange qchan cannot see):
        publish a copy to our dead-letter queue and wait for the broker's confirm."""
        target = self._s.dead_letter
        if target is None or self._conn is None:
            self._report(
                ConnectionLost(
                    f"queue {self._s.queue!r}: no dead_letter= queue for a message given up on; "
                    f"requeued (never dropped)"
                )
            )
            return False
        try:
            if self._dead_ch is None or not self._dead_ch.is_open:
                self._dead_ch = self._conn.channel()
                self._dead_ch.confirm_delivery()
            self._dead_ch.basic_publish("", target, body, props, mandatory=True)
        except pk.AMQPError as e:
            self._dead_ch = None
            self._report(
                ConnectionLost(
                    f"queue {self._s.queue!r}: copying a dead letter to {target!r} failed "
                    f"({type(e).__name__}: {self._s.scrub(str(e))}); requeued"
                )
            )
            return False
        return True

    def _on_message(
        self, ch: Any, method: pk.Deliver, props: pk.BasicProperties, body: bytes
    ) -> None:
        bag = bag_from_delivery(self._generation, method, props, body, self._s.queue)
        limit = self._s.max_deliveries
        if limit is not None and bag.deliveries > limit:
            # Delivered max_deliveries times already and never settled: the consumer
            # process probably dies on it. Do not hand it out once more.
            if not self._adopted:
                ch.basic_nack(method.delivery_tag, requeue=False)
            elif self._copy_dead(body, props):
                ch.basic_ack(method.delivery_tag)
            else:
                ch.basic_nack(method.delivery_tag, requeue=True)
            self.dead_lettered(bag, f"delivered {bag.deliveries - 1} times without an ack")
            return
        self._open[method.delivery_tag] = None
        self._ready.append(bag)

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
            self._dead_ch = None
            ch.basic_qos(prefetch_count=self.prefetch)
            self._generation += 1
            self._open.clear()
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
        self._consumer_tag = None
        self._backoff = 0.0
        self._kick_pending = False
        self._cancelled = False
        log.info("queue %s: connected (prefetch %d)", self._s.queue, self.prefetch)
        return True

    def _schedule_retry(self) -> None:
        self._backoff = min(max(self._backoff * 2, _BACKOFF_FIRST), _BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff

    def _lost(self, e: BaseException) -> None:
        conn = self._conn
        # Paused with nothing outstanding (no channel was receiving, e.g. the broker
        # dropped the idle connection for missed heartbeats): nothing was lost.
        idle = self._consumer_tag is None and not (self._open or self._held or self._ops)
        self._conn = self._ch = self._dead_ch = None
        self._consumer_tag = None
        self._ready.clear()  # the broker requeues them with everything else un-acked
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
        """Send the last settlements, then close (the broker requeues anything un-acked)."""
        if not self._driving.acquire(timeout=5.0):
            log.warning("queue %s: poller still receiving at close; not closing", self._s.queue)
            return
        try:
            conn = self._conn
            self._conn = None
            if conn is None:
                return
            try:
                self._apply(flush=True)
            except pk.AMQPError as e:
                log.info("queue %s: last acks not sent (%s)", self._s.queue, e)
            self._ch = None
            _close_quietly(conn)
        finally:
            self._driving.release()


def _close_quietly(conn: pk.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except pk.AMQPError as e:
        log.debug("closing a RabbitMQ connection: %s", e)
