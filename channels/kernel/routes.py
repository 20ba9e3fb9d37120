"""What the consumer thread shares with the application's threads: the receivers (one
per `dequeue`d category) and the routing table with the in-flight count and the
demand (`Gate`)."""

from __future__ import annotations

import functools
import reprlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ..adapter import ReceivingAdapter
from ..chan import Chan, Pipe
from ..codec import Codec
from ..errors import ChannelClosed
from ..message import Msg

__all__ = ["ANY", "Gate", "Receiver"]

#: The category of a channel that receives every message no other channel takes.
ANY = "*"
#: Seconds of the application's own settle rate a buffer may hold beyond its capacity
#: (see `Gate.want`; docs/measurements.md).
RATE_WINDOW = 0.05


class Receiver:
    """One `dequeue`d category: its channels and codec."""

    __slots__ = ("ack", "allowed", "category", "codec", "finished", "rcv", "watch")

    def __init__(self, category: str, codec: Codec[Any], rcv: Pipe[Msg[Any]], ack: Pipe[Msg[Any]]):
        self.category = category
        self.codec = codec
        self.rcv = rcv
        self.ack = ack
        self.finished = threading.Event()
        #: What its buffer may hold now; the consumer sets it (Gate.want).
        self.allowed = 0
        #: Its rcv's watch while the consumer waits for demand (Gate.open sets it).
        self.watch: Callable[[Chan[Any]], None] | None = None


class Gate:
    """The routing table, the in-flight count and the demand of one queue.

    Shared by the application's threads (a `dequeue` opens and closes a route; a
    receive on a watched `rcv` pokes it; an ack or a request alerts it) and the
    consumer thread (it waits here for a route, for room, for demand and for work,
    and counts what it takes and settles). `routes` is replaced, never mutated, so
    the consumer reads it without the lock.

    Demand (DESIGN.md section 9): what the consumers can use soon, the receivers
    waiting on every open `rcv` plus its buffer. The consumer takes from the broker
    only while the messages received and not yet handed to the application are
    fewer; the in-flight limit caps everything the queue holds, the application's
    part included.

    The buffer starts empty and grows by one message per message the application
    settles (acks or fails), up to its capacity: a slow start. A consumer that
    dies on its first message (a poison message that kills the process) has taken
    nothing else from the broker, so the broker's count of that death, where it
    keeps one (RabbitMQ's x-delivery-count, SQS's receive count), falls on the
    messages its application had received, never on ones waiting unseen.
    """

    def __init__(self, adapter: ReceivingAdapter, limit: int) -> None:
        self.adapter = adapter
        self.limit = limit
        self.routes: dict[str, Receiver] = {}
        self.cond = threading.Condition()
        #: In flight: received and not yet acked, nacked, released or rejected (the
        #: consumer thread writes it; others only read it).
        self.count = 0
        self.idling = False  # the consumer's broker call is adapter.hold or idle, not receive
        #: Where the consumer thread blocks now: "adapter" (in a broker call), "cond" (on
        #: `cond`), or None (it works, and looks for work before it blocks again).
        self.blocked: str | None = None
        self.alerted = False  # woken since it last blocked: one wakeup is enough
        self.stopping = False
        #: Messages the application settled: how much buffer it has earned.
        self.earned = 0
        # The rate the application settles at (messages/s, smoothed), from `earned`.
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._rate_from = 0
        self.watching = False  # the rcv channels' watches are set (see want)

    def open(self, r: Receiver, queue: str) -> None:
        """Route `r`'s category to it (the caller then asks the consumer to open it)."""
        with self.cond:
            if self.stopping:
                raise ChannelClosed(f"queue {queue!r} is closed")
            r.watch = functools.partial(self.poke, r)
            r.ack.notify(self.alert)
            self.routes = {**self.routes, r.category: r}

    def close(self, r: Receiver) -> None:
        r.rcv.watch(None)
        with self.cond:
            if self.routes.get(r.category) is r:
                self.routes = {k: v for k, v in self.routes.items() if v is not r}
            idle = not self.routes
        if idle:  # nobody receives now: cut a waiting receive short
            self.adapter.wakeup()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            self._unwatch()
        self.adapter.wakeup()

    def alert(self, _: object = None) -> None:
        """Work for the consumer thread (a request, the first ack of a batch, a receive's
        outcome): wake it if it blocks, once until it blocks again."""
        with self.cond:
            blocked = self.blocked
            if blocked is None or self.alerted:
                return
            self.alerted = True
            self.cond.notify_all()
        if blocked == "adapter":
            self.adapter.wakeup()

    def sleep(self, timeout: float | None) -> None:
        """Block the consumer thread on `cond` (it holds it) until an alert, a demand
        change or the queue's stop wakes it, or `timeout` s pass."""
        self.blocked, self.alerted = "cond", False
        self.cond.wait(timeout)
        self.blocked = None

    def want(self) -> int:
        """How many messages the consumer may take now (the caller holds `cond`): 0 while
        the in-flight limit is reached or the consumers have all they can use soon,
        -1 while no channel is open. At 0 it sets a watch on every `rcv`, so that the
        next receive (or a receiver that starts waiting) pokes the consumer."""
        routes = self.routes
        if not routes:
            return -1
        room = self.limit - self.count
        if room <= 0:
            if self.watching:
                self._unwatch()  # acks free room, not receives: they alert the consumer
            return 0
        # Watch every rcv before looking at them: a receive from now on pokes (it waits
        # for `cond`, which the caller holds), so none slips in unseen.
        for r in routes.values():
            rcv = r.rcv
            # A take pokes once the buffer is down to half of what it may hold (less what
            # waits in its overflow), not at every message.
            rcv.watch(r.watch, max(0, r.allowed // 2 - len(rcv.overflow)))
        self.watching = True
        # Each category's own deficit: messages piling up for one nobody reads never
        # hold back the others (no head-of-line blocking; the in-flight limit caps them).
        earned = self.earned
        # A buffer holds what its capacity says, or what the application settles in
        # RATE_WINDOW seconds if that is more: an application that keeps up at 10,000
        # messages a second drains 200 in 20 ms, and a deeper buffer then costs nobody
        # anything (it takes fewer, larger receives); a slow one never gets past its
        # capacity. Either way no more than it has earned (the slow start).
        ahead = int(self._settle_rate() * RATE_WINDOW)
        deficit = waiting = buffers = 0
        for r in routes.values():
            rcv = r.rcv
            parked = rcv.waiting
            waiting += parked
            r.allowed = allowed = min(max(rcv.capacity, ahead), earned)
            over = len(rcv.overflow)
            rcv.watch(r.watch, max(0, allowed // 2 - over))
            buffers += allowed
            d = parked + allowed - len(rcv.buffer) - over
            if d > 0:
                deficit += d
        # Refill buffers in batches: at once for a waiting receiver, else once half of
        # them is free (one receive, one wakeup per batch instead of per message).
        if deficit > 0 and (waiting or deficit >= max(1, buffers // 2)):
            self._unwatch()
            return min(room, deficit)
        return 0

    def _settle_rate(self) -> float:
        """The application's settle rate, smoothed (updated at most every 10 ms)."""
        now = time.monotonic()
        elapsed = now - self._rate_at
        if elapsed >= 0.01:
            rate = (self.earned - self._rate_from) / elapsed
            self._rate = rate if elapsed > 1.0 else (self._rate + rate) / 2
            self._rate_at, self._rate_from = now, self.earned
        return self._rate

    def _unwatch(self) -> None:
        self.watching = False
        for r in self.routes.values():
            r.rcv.watch(None)

    def poke(self, r: Receiver, _: Chan[Any]) -> None:
        """A receiver took a message from `r`'s rcv or started waiting (its watch fired):
        the consumer looks at the demand again, cutting an adapter.hold short; not while
        `r` holds more than half of what it may and nobody waits (see `want`)."""
        if not self.watching:
            return
        rcv = r.rcv
        if not rcv.waiting and len(rcv.buffer) + len(rcv.overflow) > r.allowed // 2:
            return
        self.wake()

    def wake(self) -> None:
        """Have the consumer look at the demand again (if it waits for some)."""
        with self.cond:
            if not self.watching:
                return
            self._unwatch()
            self.cond.notify_all()
            wake = self.idling and self.blocked == "adapter"
        if wake:
            self.adapter.wakeup()

    def taken(self, n: int) -> None:
        """`n` messages came in from the broker (the consumer thread only)."""
        self.count += n

    def resolved(self, n: int) -> None:
        """`n` messages left the in-flight count, acked, nacked, released or rejected (the
        consumer thread only)."""
        self.count -= n


_repr = reprlib.Repr()
_repr.maxstring = 80


def short(value: object) -> str:
    """repr() cut to a readable length: the text comes from the message, maybe hostile."""
    return _repr.repr(value)


def type_name(codec: Codec[Any]) -> str:
    t = getattr(codec, "type", None)
    return getattr(t, "__name__", None) or repr(t) if t is not None else type(codec).__name__
