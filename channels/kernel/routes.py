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
    """The routing table and the in-flight count of one queue.

    Shared by the application's threads (a `dequeue` opens and closes a route), the
    poller (it waits here for a route and for room, and counts what it takes) and the
    dispatcher (it counts what is settled). `routes` is replaced, never mutated, so the
    poller reads it without the lock.
    """

    def __init__(self, adapter: Adapter, limit: int) -> None:
        self.adapter = adapter
        self.limit = limit
        self.routes: dict[str, Receiver] = {}
        self.cond = threading.Condition()
        self.count = 0  # in flight: received and not yet acked, nacked, released or rejected
        self.idling = False  # the poller is in adapter.hold or adapter.idle, not receive
        self.stopping = False

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
        self.adapter.wakeup()

    def is_stopping(self) -> bool:
        return self.stopping

    def state(self) -> str:
        """What the poller may do now (the caller holds `cond`): "receive", "hold" (the
        in-flight limit is reached) or "idle" (no channel to receive for)."""
        if not self.routes:
            return "idle"
        return "hold" if self.count >= self.limit else "receive"

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
