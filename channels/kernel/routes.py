"""What the poller and the dispatcher share: the receivers (one per `dequeue`d
category), the routing table with the in-flight count (`Gate`), and what the
poller hands the dispatcher (`Handoff`)."""

from __future__ import annotations

import functools
import reprlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..adapter import ReceivingAdapter
from ..chan import Chan, Pipe
from ..codec import Codec
from ..errors import ChannelClosed, MessageError
from ..message import Bag, Msg

__all__ = ["ANY", "Gate", "Handoff", "Poison", "Receiver", "Stray"]

#: The category of a channel that receives every message no other channel takes.
ANY = "*"
#: Seconds of the application's own settle rate a buffer may hold beyond its capacity
#: (see `Gate.want`; docs/measurements.md).
RATE_WINDOW = 0.05


class Receiver:
    """One `dequeue`d category: its channels, codec and undelivered messages."""

    __slots__ = ("ack", "allowed", "category", "codec", "finished", "pending", "rcv", "watch")

    def __init__(self, category: str, codec: Codec[Any], rcv: Pipe[Msg[Any]], ack: Pipe[Msg[Any]]):
        self.category = category
        self.codec = codec
        self.rcv = rcv
        self.ack = ack
        self.pending: deque[Msg[Any]] = deque()
        self.finished = threading.Event()
        #: What its buffer may hold now (pending included); the poller sets it (Gate.want).
        self.allowed = 0
        #: Its rcv's watch while the poller waits for demand (Gate.open sets it).
        self.watch: Callable[[Chan[Any]], None] | None = None


class Poison:
    """A bag the poller could not decode or route, with the error that says why."""

    __slots__ = ("bag", "error")

    def __init__(self, bag: Bag, error: MessageError) -> None:
        self.bag = bag
        self.error = error


class Stray:
    """A bag received when no channel was open any more: released at once."""

    __slots__ = ("bag",)

    def __init__(self, bag: Bag) -> None:
        self.bag = bag


#: What the poller hands the dispatcher in one go: runs of messages routed to one
#: receiver, poison, and strays.
Handoff = list[tuple[Receiver, list[Msg[Any]]] | Poison | Stray]


class Gate:
    """The routing table, the in-flight count and the demand of one queue.

    Shared by the application's threads (a `dequeue` opens and closes a route; a
    receive on a watched `rcv` pokes it), the poller (it waits here for a route,
    for room and for demand, and counts what it takes) and the dispatcher (it
    counts what is settled, and what it takes from the poller). `routes` is
    replaced, never mutated, so the poller reads it without the lock.

    Demand (DESIGN.md section 9): what the consumers can use soon, the receivers
    waiting on every open `rcv` plus its buffer. The poller takes from the broker
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
        self.count = 0  # in flight: received and not yet acked, nacked, released or rejected
        self.idling = False  # the poller is in adapter.hold or adapter.idle, not receive
        self.stopping = False
        # Routed messages the poller has handed over / the dispatcher has taken in: each
        # written by one thread only, so no lock; their difference is what is in transit.
        self.sent = 0
        self.arrived = 0
        #: Messages the application settled: how much buffer it has earned (the dispatcher
        #: writes it, the poller reads it).
        self.earned = 0
        # The rate the application settles at (messages/s, smoothed), from `earned`.
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._rate_from = 0
        self.watching = False  # the rcv channels' watches are set (see want)

    def open(self, r: Receiver, queue: str) -> bool:
        """Route `r`'s category to it; whether the poller sits in adapter.idle or hold
        (the caller wakes it once the dispatcher knows `r`)."""
        with self.cond:
            if self.stopping:
                raise ChannelClosed(f"queue {queue!r} is closed")
            r.watch = functools.partial(self.poke, r)
            self.routes = {**self.routes, r.category: r}
            self.cond.notify_all()
            return self.idling

    def close(self, r: Receiver) -> None:
        r.rcv.watch(None)
        with self.cond:
            if self.routes.get(r.category) is r:
                self.routes = {k: v for k, v in self.routes.items() if v is not r}
                self.cond.notify_all()
            idle = not self.routes
        if idle:  # nobody receives now: cut a waiting receive short
            self.adapter.wakeup()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            self._unwatch()
        self.adapter.wakeup()

    def is_stopping(self) -> bool:
        return self.stopping

    def want(self) -> int:
        """How many messages the poller may take now (the caller holds `cond`): 0 while
        the in-flight limit is reached or the consumers have all they can use soon,
        -1 while no channel is open. At 0 it sets a watch on every `rcv`, so that the
        next receive (or a receiver that starts waiting) pokes the poller."""
        routes = self.routes
        if not routes:
            return -1
        room = self.limit - self.count
        if room <= 0:
            if self.watching:
                self._unwatch()  # acks free room, not receives: resolved() wakes the poller
            return 0
        # Watch every rcv before looking at them: a receive from now on pokes (it waits
        # for `cond`, which the caller holds), so none slips in unseen.
        for r in routes.values():
            rcv = r.rcv
            # A take pokes once the buffer is down to half of what it may hold (less
            # what waits in pending), not at every message.
            rcv.watch(r.watch, max(0, r.allowed // 2 - len(r.pending)))
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
        deficit = self.arrived - self.sent  # in transit: not routed yet, counted against all
        waiting = buffers = 0
        for r in routes.values():
            rcv = r.rcv
            parked = rcv.waiting
            waiting += parked
            r.allowed = allowed = min(max(rcv.capacity, ahead), earned)
            rcv.watch(r.watch, max(0, allowed // 2 - len(r.pending)))
            buffers += allowed
            d = parked + allowed - len(r.pending) - len(rcv)
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
        the poller looks at the demand again, cutting an adapter.hold short; not while
        `r` holds more than half of what it may and nobody waits (see `want`)."""
        if not self.watching:
            return
        rcv = r.rcv
        if not rcv.waiting and len(r.pending) + len(rcv) > r.allowed // 2:
            return
        self.wake()

    def wake(self) -> None:
        """Have the poller look at the demand again (if it waits for some)."""
        with self.cond:
            if not self.watching:
                return
            self._unwatch()
            self.cond.notify_all()
            wake = self.idling
        if wake:
            self.adapter.wakeup()

    def taken(self, n: int) -> None:
        with self.cond:
            self.count += n

    def resolved(self, n: int) -> None:
        """`n` messages left the in-flight count (acked, nacked, released, rejected)."""
        if n:
            with self.cond:
                was_full = self.count >= self.limit
                self.count -= n
                self.cond.notify_all()
                wake = was_full and self.idling and self.routes
            if wake:  # the poller sits in adapter.hold: room again, let it receive now
                self.adapter.wakeup()


_repr = reprlib.Repr()
_repr.maxstring = 80


def short(value: object) -> str:
    """repr() cut to a readable length: the text comes from the message, maybe hostile."""
    return _repr.repr(value)


def type_name(codec: Codec[Any]) -> str:
    t = getattr(codec, "type", None)
    return getattr(t, "__name__", None) or repr(t) if t is not None else type(codec).__name__
