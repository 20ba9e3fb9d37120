"""Fault links: what a scenario cuts, slows down or drops, whatever the transport.

A `Link` sits between one `Queue` and its broker. Network transports use the
TCP proxy (`TcpProxy` has exactly these methods); the embedded broker has no
network, so `InjectedLink` wraps its adapter and injects the same faults at
the adapter boundary:

- cut: every call fails with `ConnectionLost` (as when connections are
  refused) until `restore()`;
- latency: every call waits that long before it reaches the broker;
- stall: every call waits until `restore()` (a black hole: nothing fails, nothing
  gets through);
- drop_connections: the deliveries this link holds un-acked go back to the
  broker at once and their receipts go stale, as a broker does when a
  consumer's connection dies (RabbitMQ requeues, then ignores old tags).

`KafkaMockLink` drives librdkafka's mock cluster instead (broker down/up and
round-trip time), because Kafka clients connect to the brokers the metadata
names, not to a proxy in front of the bootstrap address.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from qchan import Adapter, Bag, ConnectionLost, ReceivingAdapter
from qchan.adapter import Bags, Errors
from qchan.errors import MessageError
from qchan.testing import Wrapped

__all__ = ["InjectedLink", "Link"]


class Link(Protocol):
    def cut(self) -> None: ...

    def restore(self) -> None: ...

    def latency(self, seconds: float) -> None: ...

    def stall(self) -> None: ...

    def drop_connections(self) -> int: ...

    def close(self) -> None: ...


class InjectedLink:
    """Faults at the adapter boundary of in-process adapters (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cut = False
        self._latency = 0.0
        self._pause = threading.Event()  # never set: waits are for the latency only
        self._flowing = threading.Event()
        self._flowing.set()
        self._adapters: list[_Linked] = []
        #: Calls that failed because the link was cut.
        self.refused = 0

    def wrap(self, adapter: Adapter) -> Adapter:
        assert isinstance(adapter, ReceivingAdapter), "a link carries a two-way transport"
        linked = _Linked(adapter, self)
        with self._lock:
            self._adapters.append(linked)
        return linked

    def cut(self) -> None:
        with self._lock:
            self._cut = True
        self.drop_connections()

    def restore(self) -> None:
        with self._lock:
            self._cut = False
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def latency(self, seconds: float) -> None:
        self._latency = seconds

    def drop_connections(self) -> int:
        with self._lock:
            adapters = list(self._adapters)
        return sum(a.drop() for a in adapters)

    def close(self) -> None:
        self.restore()

    def _gate(self, what: str) -> None:
        self._flowing.wait()
        if self._latency:
            self._pause.wait(self._latency)
        if self._cut:
            with self._lock:
                self.refused += 1
            raise ConnectionLost(f"injected: link cut during {what}")


class _Linked(Wrapped):
    """The adapter behind an `InjectedLink`: gates every call, tracks held deliveries."""

    def __init__(self, inner: ReceivingAdapter, link: InjectedLink) -> None:
        super().__init__(inner)
        self.link = link
        self._lock = threading.Lock()
        self._held: dict[object, Bag] = {}  # digest -> delivery not yet settled
        self._stale: set[object] = set()

    def drop(self) -> int:
        """The broker's side of a dead connection: requeue what it delivered, forget the tags."""
        with self._lock:
            held, self._held = list(self._held.values()), {}
            self._stale.update(b.digest for b in held)
        if held:
            self.inner.give_back(held, counted=True)
        return len(held)

    def _settle(self, bags: Sequence[Bag]) -> list[Bag]:
        with self._lock:
            live = [b for b in bags if b.digest not in self._stale]
            for b in live:
                self._held.pop(b.digest, None)
        return live

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self.link._gate("send")
        return super().send_batch(bags)

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        self.link._gate("receive")
        bags = super().receive(max_items, wait)
        with self._lock:
            for b in bags:
                self._held[b.digest] = b
        return bags

    def ack(self, bags: Sequence[Bag]) -> None:
        self.link._gate("ack")
        live = self._settle(bags)
        if live:
            super().ack(live)

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        self.link._gate("nack" if counted else "release")
        live = set(map(id, self._settle(bags)))
        if not live:
            return
        keep = [i for i, b in enumerate(bags) if id(b) in live]
        super().give_back(
            [bags[i] for i in keep],
            counted=counted,
            delay=delay,
            errors=[errors[i] for i in keep] if errors else (),
        )

    def reject(self, bag: Bag, error: MessageError) -> None:
        self.link._gate("reject")
        if self._settle([bag]):
            super().reject(bag, error)

    def extend(self, bags: Sequence[Bag]) -> None:
        self.link._gate("extend")
        super().extend(bags)
