"""Test doubles for adapters: `Wrapped` delegates every call (pipelining included) to
another adapter; `Spy` records what it sends and receives; `Faulty` fails sends.
`WrappedSender`, `SendSpy` and `SendFaulty` are the same for a send-only adapter (they
have the send side alone, as it does); `spy_on` and `faulty` pick the right one."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..adapter import (
    Adapter,
    Bags,
    Depth,
    Errors,
    Hooks,
    Operations,
    ReceivingAdapter,
    Sending,
)
from ..errors import ConnectionLost, MessageError, NotSupported
from ..message import Bag

__all__ = [
    "Faulty",
    "SendFaulty",
    "SendSpy",
    "Spy",
    "Wrapped",
    "WrappedSender",
    "faulty",
    "spy_on",
]


class WrappedSender(Adapter):
    """A send-only adapter that delegates everything to another."""

    def __init__(self, inner: Adapter) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.scheme = inner.scheme
        self.max_batch = inner.max_batch
        # Pipelining too: a wrapped Kafka adapter keeps the path it runs on unwrapped
        # (a subclass that sets its own `pipeline` keeps that).
        if type(self).pipeline == Adapter.pipeline:
            self.pipeline = inner.pipeline

    def bind(self, hooks: Hooks) -> None:
        super().bind(hooks)
        self.inner.bind(hooks)

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        return self.inner.send_batch(bags)

    def submit(self, bags: Sequence[Bag]) -> Sending:
        return self.inner.submit(bags)

    def close(self) -> None:
        self.inner.close()


class Wrapped(WrappedSender, ReceivingAdapter, Operations):
    """An adapter that delegates everything to another (one qchan receives from): subclass
    it to spy or inject faults. `depth` and `purge` raise NotSupported where the inner
    adapter has no operator's side."""

    inner: ReceivingAdapter

    def __init__(self, inner: ReceivingAdapter) -> None:
        super().__init__(inner)
        self.max_receive = inner.max_receive
        self.poll_wait = inner.poll_wait
        self.wakes = inner.wakes

    @property
    def visibility(self) -> float | None:
        return self.inner.visibility

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        return self.inner.receive(max_items, wait)

    def ack(self, bags: Sequence[Bag]) -> None:
        self.inner.ack(bags)

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        self.inner.give_back(bags, counted=counted, delay=delay, errors=errors)

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        self.inner.dead_letter(bags, errors)

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

    def depth(self) -> Depth:
        return self._operations("queue depth").depth()

    def purge(self) -> int | None:
        return self._operations("purge").purge()

    def _operations(self, what: str) -> Operations:
        if not isinstance(self.inner, Operations):
            raise NotSupported(f"{what} is not supported by {self.scheme}://")
        return self.inner


class SendSpy(WrappedSender):
    """Records every `send_batch` size and how often each message id was sent."""

    def __init__(self, inner: Adapter) -> None:
        super().__init__(inner)
        self.batches: list[int] = []
        self.attempts: dict[str | None, int] = {}
        self.receives = 0
        self._lock = threading.Lock()

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


class Spy(SendSpy, Wrapped):
    """`SendSpy` for an adapter qchan receives from; also counts `receive` calls."""

    inner: ReceivingAdapter

    def __init__(self, inner: ReceivingAdapter) -> None:
        super().__init__(inner)

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        self.receives += 1
        return super().receive(max_items, wait)


def spy_on(inner: Adapter) -> SendSpy:
    """A `Spy` on an adapter qchan receives from, a `SendSpy` on a send-only one."""
    return Spy(inner) if isinstance(inner, ReceivingAdapter) else SendSpy(inner)


class SendFaulty(SendSpy):
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


class Faulty(SendFaulty, Spy):
    """`SendFaulty` for an adapter qchan receives from."""

    inner: ReceivingAdapter

    def __init__(self, inner: ReceivingAdapter, fail: int = -1) -> None:
        super().__init__(inner, fail)


def faulty(inner: Adapter, fail: int = -1) -> SendFaulty:
    """A `Faulty` on an adapter qchan receives from, a `SendFaulty` on a send-only one."""
    return Faulty(inner, fail) if isinstance(inner, ReceivingAdapter) else SendFaulty(inner, fail)
