"""The embedded broker: in-process queues with SQS-like semantics (`mem://name`).

A queue named `orders` is the same queue for every connection in the process
and lives until the process exits. Delivery works like SQS: a received
message is invisible for `visibility_timeout` seconds (default 30) and comes
back if it is not deleted (acked) by then; a nack makes it visible again at
once or after a delay; a release (a receiver closing) makes it visible again
without counting a delivery. With `max_deliveries`, a message delivered that many
times without an ack moves to the queue's dead letters (like an SQS redrive
policy's maxReceiveCount). Fault injection (`fail_sends`, `fail_receives`) lets tests exercise
retries and dead letters without a network.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from qchan.adapter import Bags, Depth, Errors, Operations, ReceivingAdapter
from qchan.errors import ConnectionLost, MessageTooLarge, QchanError
from qchan.message import Bag
from qchan.options import (
    QUEUE_URL_OPTIONS,
    URLOptionError,
    check_count,
    check_keywords,
    check_seconds,
    renamed,
    unknown,
)
from qchan.urls import URLError

__all__ = ["Broker", "EmbeddedAdapter", "QueueFull", "Wake", "broker", "from_url"]

DEFAULT_VISIBILITY = 30.0
DEFAULT_MAX_SIZE = 256 * 1024


class QueueFull(QchanError):
    """The queue holds `max_depth` messages: the send is refused for now (retryable)."""


class _Stored:
    __slots__ = ("bag", "receives", "seq")

    def __init__(self, bag: Bag, seq: int) -> None:
        self.bag = bag
        self.seq = seq
        self.receives = 0


class Wake:
    """One receiver's wakeup flag (see `Broker.wakeup`)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = False


class Broker:
    """One named in-process queue. Get it with `qchan.adapters.embedded.broker(name)`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.visibility_timeout = DEFAULT_VISIBILITY
        self.max_deliveries: int | None = None
        self.max_message_size = DEFAULT_MAX_SIZE
        self.max_depth: int | None = None
        self._cond = threading.Condition()
        self._ready: deque[_Stored] = deque()
        # receipt -> (message, visible-again time), and the same times in a FIFO: the
        # visibility timeout is one value, so later receipts expire later (an extend
        # also lands at the back). Stale entries are skipped, and compacted away.
        self._invisible: dict[int, tuple[_Stored, float]] = {}
        self._expiry: deque[tuple[float, int]] = deque()
        self._attr_size: tuple[Any, int] = (None, 0)  # (attributes, their size), last seen
        self._delayed: list[tuple[float, int, _Stored]] = []  # nacked with a delay
        self._receipts = itertools.count(1)
        self._seq = itertools.count()
        self.dead_letters: list[Bag] = []
        self._fail_sends: list[BaseException] = []
        self._fail_receives: list[BaseException] = []

    # -- inspection and fault injection (for tests) -----------------------------

    @property
    def depth(self) -> int:
        """Messages visible now (ready to be received)."""
        with self._cond:
            self._expire(time.monotonic())
            return len(self._ready)

    @property
    def in_flight(self) -> int:
        """Messages received and neither deleted nor visible again yet."""
        with self._cond:
            self._expire(time.monotonic())
            return len(self._invisible) + len(self._delayed)

    @property
    def pending(self) -> int:
        """Messages neither deleted nor dead-lettered: `depth` plus `in_flight`, read at once
        (two reads could miss a message nacked between them)."""
        with self._cond:
            return len(self._ready) + len(self._invisible) + len(self._delayed)

    def fail_sends(self, n: int, error: BaseException | None = None) -> None:
        """Make the next `n` messages sent fail with `error` (default: ConnectionLost)."""
        err = error or ConnectionLost(f"mem://{self.name}: injected send failure")
        with self._cond:
            self._fail_sends.extend([err] * n)

    def fail_receives(self, n: int, error: BaseException | None = None) -> None:
        """Make the next `n` receive calls raise `error` (default: ConnectionLost)."""
        err = error or ConnectionLost(f"mem://{self.name}: injected receive failure")
        with self._cond:
            self._fail_receives.extend([err] * n)

    def purge(self, dead_letters: bool = True) -> int:
        """Drop every message, visible or not (and the dead letters, unless told not to);
        returns how many messages it dropped, not counting dead letters."""
        with self._cond:
            self._expire(time.monotonic())
            dropped = len(self._ready) + len(self._invisible) + len(self._delayed)
            self._ready.clear()
            self._invisible.clear()
            self._expiry.clear()
            self._delayed.clear()
            if dead_letters:
                self.dead_letters.clear()
            return dropped

    # -- operations -------------------------------------------------------------

    def send(self, bags: Sequence[Bag]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        with self._cond:
            for bag in bags:
                if self._fail_sends:
                    outcomes.append(self._fail_sends.pop(0))
                    continue
                a = bag.attributes
                if a is not self._attr_size[0]:  # a sender's bags share one mapping
                    self._attr_size = (a, sum(map(len, a.keys())) + sum(map(len, a.values())))
                size = len(bag.body) + self._attr_size[1]
                if size > self.max_message_size:
                    outcomes.append(
                        MessageTooLarge(
                            f"mem://{self.name}: message of {size} bytes is over the "
                            f"{self.max_message_size}-byte limit"
                        )
                    )
                    continue
                if self.max_depth is not None and len(self._ready) >= self.max_depth:
                    outcomes.append(
                        QueueFull(
                            f"mem://{self.name}: {len(self._ready)} messages waiting, the "
                            f"max_depth; retry later"
                        )
                    )
                    continue
                # Bags are immutable (frozen, bytes body, read-only attributes): store as is.
                self._ready.append(_Stored(bag, next(self._seq)))
                outcomes.append(None)
            self._cond.notify_all()
        return outcomes

    def receive(self, max_items: int, wait: float, wake: Wake | None = None) -> list[Bag]:
        """Up to `max_items` messages, waiting at most `wait` s for the first; at once
        when `wake` is woken (before or during the wait): what is ready, or []."""
        deadline = time.monotonic() + wait
        with self._cond:
            if self._fail_receives:
                raise self._fail_receives.pop(0)
            while True:
                now = time.monotonic()
                self._expire(now)
                if wake is not None and wake.pending:
                    wake.pending = False
                    if not self._ready:
                        return []
                if self._ready:
                    break
                if now >= deadline:
                    return []
                due = [deadline]
                if self._expiry:
                    due.append(self._expiry[0][0])
                if self._delayed:
                    due.append(self._delayed[0][0])
                self._cond.wait(max(0.0, min(due) - now))
            out: list[Bag] = []
            visible_again = time.monotonic() + self.visibility_timeout
            while self._ready and len(out) < max_items:
                s = self._ready.popleft()
                s.receives += 1
                if self.max_deliveries is not None and s.receives > self.max_deliveries:
                    self.dead_letters.append(s.bag)
                    continue
                receipt = next(self._receipts)
                self._invisible[receipt] = (s, visible_again)
                self._expiry.append((visible_again, receipt))
                if len(self._expiry) > 4 * len(self._invisible) + 8192:
                    self._compact()
                b = s.bag
                # Positional (category, body, attributes, id, key, content_type, digest,
                # deliveries): half the cost of keywords, once per message.
                out.append(
                    Bag(
                        b.category,
                        b.body,
                        b.attributes,
                        b.id,
                        b.key,
                        b.content_type,
                        receipt,
                        s.receives,
                    )
                )
            return out

    @property
    def max_receives(self) -> int | None:
        """The former name of `max_deliveries`."""
        return self.max_deliveries

    @max_receives.setter
    def max_receives(self, value: int | None) -> None:
        self.max_deliveries = value

    def dead_letter(self, receipts: Sequence[int]) -> None:
        """Move these received messages to `dead_letters` now (the application gave up)."""
        with self._cond:
            for r in receipts:
                entry = self._invisible.pop(r, None)
                if entry is not None:
                    self.dead_letters.append(entry[0].bag)

    def delete(self, receipts: Sequence[int]) -> None:
        with self._cond:
            for r in receipts:
                self._invisible.pop(r, None)  # a stale receipt deletes nothing, as in SQS

    def change_visibility(self, receipts: Sequence[int], delay: float) -> None:
        """Visible again after `delay` seconds (0: now), as SQS ChangeMessageVisibility."""
        with self._cond:
            now = time.monotonic()
            for r in receipts:
                entry = self._invisible.pop(r, None)
                if entry is None:
                    continue
                if delay <= 0:
                    self._requeue(entry[0])
                else:
                    heapq.heappush(self._delayed, (now + delay, entry[0].seq, entry[0]))
            self._cond.notify_all()

    def release(self, receipts: Sequence[int]) -> None:
        """Visible again now, and not a delivery: the receiver gave them back unhandled
        (closing), so they do not count toward `max_deliveries`."""
        with self._cond:
            for r in receipts:
                entry = self._invisible.pop(r, None)
                if entry is not None:
                    entry[0].receives -= 1
                    self._requeue(entry[0])
            self._cond.notify_all()

    def extend(self, receipts: Sequence[int]) -> None:
        with self._cond:
            until = time.monotonic() + self.visibility_timeout
            for r in receipts:
                entry = self._invisible.get(r)
                if entry is not None:
                    self._invisible[r] = (entry[0], until)
                    self._expiry.append((until, r))

    def wakeup(self, wake: Wake) -> None:
        """Make the receive waiting with `wake` return at once (what is ready, or []); if
        none is waiting, the next one. Sticky, so that a wakeup just before a receive
        starts is not lost (the kernel's consumer thread asks for one when work comes
        for it while it decides to call the adapter)."""
        with self._cond:
            wake.pending = True
            self._cond.notify_all()

    # -- internals (the caller holds the condition) -----------------------------

    def _requeue(self, s: _Stored) -> None:
        # Back in sequence order among the ready messages, so a redelivered message
        # is not overtaken by the ones sent after it.
        if not self._ready or self._ready[0].seq > s.seq:
            self._ready.appendleft(s)
            return
        for i, other in enumerate(self._ready):
            if other.seq > s.seq:
                self._ready.insert(i, s)
                return
        self._ready.append(s)

    def _compact(self) -> None:
        """Drop expiry entries of deleted or re-timed receipts (they pile up at high rates)."""
        self._expiry = deque(sorted((at, r) for r, (_, at) in self._invisible.items()))

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            at, receipt = self._expiry.popleft()
            entry = self._invisible.get(receipt)
            if entry is not None and entry[1] == at:
                del self._invisible[receipt]
                self._requeue(entry[0])
        while self._delayed and self._delayed[0][0] <= now:
            _, _, s = heapq.heappop(self._delayed)
            self._requeue(s)


_BROKERS: dict[str, Broker] = {}
_BROKERS_LOCK = threading.Lock()


def broker(name: str) -> Broker:
    """The in-process queue called `name`, created on first use."""
    with _BROKERS_LOCK:
        b = _BROKERS.get(name)
        if b is None:
            b = _BROKERS[name] = Broker(name)
        return b


class EmbeddedAdapter(ReceivingAdapter, Operations):
    """The adapter for `mem://name` queues (nothing to install, nothing leaves the process).

    Options: visibility_timeout (s, default 30), max_deliveries (redrive to
    `broker(name).dead_letters` after that many deliveries without an ack;
    default: never; `max_receives` is its deprecated name), max_message_size
    (bytes, default 256 KiB), max_depth (refuse sends, retryably, while that
    many messages wait: backpressure all the way to the producer; default:
    unbounded, like SQS). Options given here reconfigure the named queue.
    """

    scheme = "mem"
    max_batch = 256
    max_receive = 256
    poll_wait = 1.0
    wakes = True

    def __init__(
        self,
        name: str,
        *,
        visibility_timeout: float | None = None,
        max_deliveries: int | None = None,
        max_message_size: int | None = None,
        max_depth: int | None = None,
        max_receives: int | None = None,
    ) -> None:
        if not name:
            raise ValueError("an embedded queue needs a name: mem://orders")
        if max_receives is not None:
            moved: dict[str, Any] = {"max_receives": max_receives}
            if max_deliveries is not None:
                moved["max_deliveries"] = max_deliveries
            renamed(f"mem://{name}", moved, "max_receives", "max_deliveries")
            max_deliveries = moved["max_deliveries"]
        super().__init__(name)
        self.broker = broker(name)
        self._wake = Wake()
        where = f"mem://{name}"
        check_seconds(
            "visibility_timeout", visibility_timeout, positive=True, optional=True, where=where
        )
        check_count("max_deliveries", max_deliveries, optional=True, where=where)
        check_count("max_message_size", max_message_size, optional=True, where=where)
        check_count("max_depth", max_depth, optional=True, where=where)
        if visibility_timeout is not None:
            self.broker.visibility_timeout = visibility_timeout
        if max_deliveries is not None:
            self.broker.max_deliveries = max_deliveries
        if max_message_size is not None:
            self.broker.max_message_size = max_message_size
        if max_depth is not None:
            self.broker.max_depth = max_depth

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        return self.broker.send(bags)

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        return self.broker.receive(max_items, wait, self._wake)

    def ack(self, bags: Sequence[Bag]) -> None:
        self.broker.delete([b.digest for b in bags])

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        self.broker.dead_letter([b.digest for b in bags])

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        """A failure: visible again after `delay`, this delivery counted; a release: back
        at once, uncounted."""
        if counted:
            self.broker.change_visibility([b.digest for b in bags], delay)
        else:
            self.broker.release([b.digest for b in bags])

    @property
    def visibility(self) -> float:
        """The queue's visibility timeout: the kernel extends what it holds before it ends."""
        return self.broker.visibility_timeout

    def extend(self, bags: Sequence[Bag]) -> None:
        self.broker.extend([b.digest for b in bags])

    def wakeup(self) -> None:
        self.broker.wakeup(self._wake)

    def depth(self) -> Depth:
        """Ready and in flight (received, or nacked with a delay and not visible yet)."""
        with self.broker._cond:  # one moment for both counts
            return Depth(ready=self.broker.depth, in_flight=self.broker.in_flight)

    def purge(self) -> int:
        """Every message, ready or in flight; the dead letters stay (an SQS purge leaves
        the dead-letter queue alone too)."""
        return self.broker.purge(dead_letters=False)


_QUERY: dict[str, Any] = {
    "visibility_timeout": float,
    "max_deliveries": int,
    "max_message_size": int,
    "max_depth": int,
    "max_receives": int,  # deprecated: max_deliveries
}
#: The keyword options of `from_url` (the same names as the URL query keys).
OPTIONS = frozenset(_QUERY)


def from_url(url: str, **options: Any) -> EmbeddedAdapter:
    """`mem://name[?visibility_timeout=5&max_deliveries=3&max_message_size=1024]`."""
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    check_keywords(f"mem://{name}", options, OPTIONS)
    for k, v in query.items():
        if k not in _QUERY:
            raise unknown(f"mem:// URL {url!r}", [k], {*_QUERY, *QUEUE_URL_OPTIONS}, URLOptionError)
        try:
            options.setdefault(k, _QUERY[k](v))
        except ValueError:
            raise URLError(f"bad value {v!r} for {k}= in {url!r}: a number is needed") from None
    return EmbeddedAdapter(name, **options)
