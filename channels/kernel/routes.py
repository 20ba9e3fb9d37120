"""What the poller and the dispatcher share: the receivers (one per `dequeue`d
category), the routing table with the in-flight count (`Gate`), and what the
poller hands the dispatcher (`Handoff`)."""

from __future__ import annotations

import reprlib
import threading
from collections import deque
from typing import Any

from ..adapter import Adapter
from ..chan import Chan
from ..codec import Codec
from ..errors import ChannelClosed, MessageError
from ..message import Bag, Msg

__all__ = ["ANY", "Gate", "Handoff", "Poison", "Receiver", "Stray"]

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

    Demand (DESIGN.md section 9): what the consumers can use soon, the free
    buffer of every open `rcv` plus the receivers waiting on it. The poller takes
    from the broker only while the messages received and not yet handed to the
    application (`unhanded`) are fewer; the in-flight limit caps everything the
    queue holds, the application's part included.
    """

    def __init__(self, adapter: Adapter, limit: int) -> None:
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
        self.watching = False  # the rcv channels' watches are set (see want)

    def open(self, r: Receiver, queue: str) -> bool:
        """Route `r`'s category to it; whether the poller sits in adapter.idle or hold
        (the caller wakes it once the dispatcher knows `r`)."""
        with self.cond:
            if self.stopping:
                raise ChannelClosed(f"queue {queue!r} is closed")
            self.routes = {**self.routes, r.category: r}
            self.cond.notify_all()
            return self.idling

    def close(self, r: Receiver) -> None:
        r.rcv._watch = None
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
            return 0
        demand = 0
        unhanded = self.sent - self.arrived
        for r in routes.values():
            rcv = r.rcv
            demand += rcv._capacity + len(rcv._recvq)
            unhanded += len(r.pending) + len(rcv._buf)
        want = min(room, demand - unhanded)
        if want > 0:
            if self.watching:
                self._unwatch()
            return want
        if not self.watching:
            self.watching = True
            for r in routes.values():
                r.rcv._watch = self.poke
            return self.want()  # a receive may have slipped in before the watch was set
        return 0

    def _unwatch(self) -> None:
        self.watching = False
        for r in self.routes.values():
            r.rcv._watch = None

    def poke(self) -> None:
        """A receiver took a message from its `rcv` or started waiting (a watch fired): the
        poller looks at the demand again, cutting an adapter.hold short."""
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
