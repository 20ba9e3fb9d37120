"""Test doubles for adapters: `Wrapped` delegates every call (pipelining included) to
another adapter; `Spy` records what it sends and receives; `Faulty` fails sends."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..adapter import Adapter, Hooks, Sending
from ..errors import ConnectionLost, MessageError
from ..message import Bag

__all__ = ["Faulty", "Spy", "Wrapped"]


class Wrapped(Adapter):
    """An adapter that delegates everything to another: subclass it to spy or inject faults."""

    def __init__(self, inner: Adapter) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.scheme = inner.scheme
        self.max_batch = inner.max_batch
        self.max_receive = inner.max_receive
        self.poll_wait = inner.poll_wait
        self.send_only = inner.send_only
        # Pipelining too: a wrapped Kafka adapter keeps the path it runs on unwrapped
        # (a subclass that sets its own `pipeline` keeps that).
        if type(self).pipeline == Wrapped.pipeline:
            self.pipeline = inner.pipeline

    def bind(self, hooks: Hooks) -> None:
        super().bind(hooks)
        self.inner.bind(hooks)

    @property
    def visibility(self) -> float | None:
        return self.inner.visibility

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        return self.inner.send_batch(bags)

    def submit(self, bags: Sequence[Bag]) -> Sending:
        return self.inner.submit(bags)

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        return self.inner.receive(max_items, wait)

    def ack(self, bags: Sequence[Bag]) -> None:
        self.inner.ack(bags)

    def nack(self, bags: Sequence[Bag], delay: float = 0.0) -> None:
        self.inner.nack(bags, delay)

    def nack_failed(
        self, bags: Sequence[Bag], errors: Sequence[BaseException], delay: float = 0.0
    ) -> None:
        self.inner.nack_failed(bags, errors, delay)

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        self.inner.dead_letter(bags, errors)

    def release(self, bags: Sequence[Bag]) -> None:
        self.inner.release(bags)

    def reject(self, bag: Bag, error: MessageError) -> None:
        self.inner.reject(bag, error)

    def extend(self, bags: Sequence[Bag]) -> None:
        self.inner.extend(bags)

    def hold(self, wait: float) -> bool:
        return self.inner.hold(wait)

    def idle(self, wait: float) -> bool:
        return self.inner.idle(wait)

    def wakeup(self) -> None:
        self.inner.wakeup()

    def close(self) -> None:
        self.inner.close()


class Spy(Wrapped):
    """Records every `send_batch` size, how often each message id was sent, and receive calls."""

    def __init__(self, inner: Adapter) -> None:
        super().__init__(inner)
        self.batches: list[int] = []
        self.attempts: dict[str | None, int] = {}
        self.receives = 0
        self._lock = threading.Lock()

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        self.receives += 1
        return super().receive(max_items, wait)

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self._record(bags)
        return super().send_batch(bags)

    def submit(self, bags: Sequence[Bag]) -> Sending:
        self._record(bags)
        return super().submit(bags)

    def _record(self, bags: Sequence[Bag]) -> None:
        with self._lock:
            self.batches.append(len(bags))
            for b in bags:
                self.attempts[b.id] = self.attempts.get(b.id, 0) + 1


class Faulty(Spy):
    """Fails the first `fail` messages it is asked to send (or every one, with `fail=-1`)."""

    def __init__(self, inner: Adapter, fail: int = -1) -> None:
        super().__init__(inner)
        self.fail = fail

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self._record(bags)
        outcomes: list[BaseException | None] = []
        passing: list[int] = []
        for i in range(len(bags)):
            if self.fail != 0:
                if self.fail > 0:
                    self.fail -= 1
                outcomes.append(ConnectionLost(f"{self.name}: injected send failure"))
            else:
                outcomes.append(None)
                passing.append(i)
        if passing:
            results = self.inner.send_batch([bags[i] for i in passing])
            for i, r in zip(passing, results, strict=True):
                outcomes[i] = r
        return outcomes

    def submit(self, bags: Sequence[Bag]) -> Sending:
        return Sending(self.send_batch(bags))  # injected failures are known at once
