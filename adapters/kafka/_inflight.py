"""Kafka deliveries in flight: which offsets may be committed, and local redeliveries.

Kafka has one cursor per partition (the committed offset), but the kernel acks
out of order from application threads. Committing the offset of the latest ack
would skip every earlier message still being processed, so each partition keeps
the offsets it delivered and not yet settled; its commit position is the
lowest of them (or one past the highest delivered offset when none is left).

Settled offsets above that position are not lost on a restart or rebalance:
the commit carries them in its metadata string (`encode_metadata`), and the
next owner of the partition skips them (`Partition.skip`), so a second
consumer of the group receives exactly the messages nobody acked.

A nack does not seek: the bag is redelivered from memory (`schedule`/`due`)
and its offset stays uncommitted, so a crash before the redelivery still
redelivers it from the broker. Everything is guarded by one lock because the
poller thread (deliver, due, revoke) and the dispatcher thread (settle, schedule)
touch it at the same time.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import NamedTuple

import attrs

from qchan.message import Bag

__all__ = ["METADATA_LIMIT", "InFlight", "Partition", "Receipt", "decode_metadata", "redelivery"]

TP = tuple[str, int]

_METADATA_PREFIX = "qchan:1:"
#: Brokers keep at most `offset.metadata.max.bytes` (4096 by default) per commit.
METADATA_LIMIT = 3000


class Receipt(NamedTuple):
    """A Kafka delivery's digest: where the message lives."""

    topic: str
    partition: int
    offset: int


class Partition:
    """One assigned partition's offsets in flight (only used under `InFlight`'s lock)."""

    __slots__ = ("dirty", "high", "inflight", "skip", "skip_below")

    def __init__(self) -> None:
        #: offset -> the current delivery of that offset; insertion order is offset order
        #: because Kafka hands out a partition's offsets in increasing order.
        self.inflight: dict[int, Bag] = {}
        #: One past the highest offset delivered; -1 before the first delivery.
        self.high = -1
        #: Offsets below `skip_below` and not in `skip` were settled by a previous owner.
        self.skip: frozenset[int] = frozenset()
        self.skip_below = -1
        #: Settled something since the last commit.
        self.dirty = False

    def position(self) -> int:
        """The offset to commit: the first unsettled one (-1: nothing delivered yet)."""
        for offset in self.inflight:
            return offset
        return self.high

    def metadata(self) -> str:
        """The unsettled offsets above the position, for the next owner (may be "")."""
        unsettled = list(self.inflight)
        if not unsettled or self.high <= unsettled[0] + 1:
            return ""
        return encode_metadata(self.high, unsettled)


def encode_metadata(high: int, unsettled: list[int]) -> str:
    """Commit metadata: `high` and the unsettled offsets, deltas from the first one.

    Returns "" when it would not fit the broker's limit; the next owner then
    redelivers everything from the position on (duplicates, never a loss).
    """
    base = unsettled[0]
    text = f"{high - base}:" + ",".join(str(o - base) for o in unsettled[1:])
    packed = base64.b64encode(zlib.compress(text.encode("ascii"))).decode("ascii")
    encoded = _METADATA_PREFIX + packed
    return encoded if len(encoded) <= METADATA_LIMIT else ""


def decode_metadata(position: int, metadata: str | None) -> tuple[int, frozenset[int]]:
    """(high, unsettled offsets) from a commit made by `encode_metadata`, or (-1, {}) if foreign."""
    if not metadata or not metadata.startswith(_METADATA_PREFIX) or position < 0:
        return -1, frozenset()
    try:
        text = zlib.decompress(base64.b64decode(metadata[len(_METADATA_PREFIX) :])).decode()
        high, _, rest = text.partition(":")
        unsettled = {position} | {position + int(d) for d in rest.split(",") if d}
        return position + int(high), frozenset(unsettled)
    except (ValueError, zlib.error):
        return -1, frozenset()


class InFlight:
    """Thread-safe per-partition bookkeeping of delivered, settled and redelivered bags."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TP, Partition] = {}
        self._retries: list[tuple[float, int, Bag]] = []
        self._seq = itertools.count()

    # -- assignment (poller thread, inside the consumer's rebalance callbacks) --

    def assign(self, tps: Iterable[TP], committed: dict[TP, tuple[int, str | None]]) -> None:
        """Start tracking `tps`; `committed` holds their committed (offset, metadata)."""
        with self._lock:
            for tp in tps:
                part = self._parts[tp] = Partition()
                offset, metadata = committed.get(tp, (-1, None))
                part.skip_below, part.skip = decode_metadata(offset, metadata)

    def revoke(self, tps: Iterable[TP]) -> dict[TP, tuple[int, str]]:
        """Stop tracking `tps`; returns what to commit for them before they go."""
        tps = set(tps)
        final: dict[TP, tuple[int, str]] = {}
        with self._lock:
            for tp in tps:
                part = self._parts.pop(tp, None)
                if part is not None and part.dirty and part.position() >= 0:
                    final[tp] = (part.position(), part.metadata())
            self._retries = [r for r in self._retries if _tp(r[2]) not in tps]
            heapq.heapify(self._retries)
        return final

    def assigned(self) -> list[TP]:
        with self._lock:
            return list(self._parts)

    # -- delivery (poller thread) --

    def deliver(self, bag: Bag) -> bool:
        """Track a bag fresh from the broker; False if it must not reach the kernel.

        Dropped: partitions not assigned (any more), offsets already delivered
        (a fetch position that moved back), offsets settled by a previous owner.
        """
        return bool(self.deliver_all([bag]))

    def deliver_all(self, bags: list[Bag]) -> list[Bag]:
        """`deliver` for a batch under one lock: the bags that may reach the kernel."""
        out: list[Bag] = []
        with self._lock:
            parts = self._parts
            for bag in bags:
                receipt: Receipt = bag.digest
                part = parts.get((receipt.topic, receipt.partition))
                offset = receipt.offset
                if part is None or offset < part.high:
                    continue
                part.high = offset + 1
                if offset < part.skip_below and offset not in part.skip:
                    part.dirty = True
                    continue
                part.inflight[offset] = bag
                out.append(bag)
        return out

    def due(self, now: float, limit: int) -> list[Bag]:
        """Scheduled redeliveries whose time has come (still current), at most `limit`."""
        out: list[Bag] = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now and len(out) < limit:
                bag = heapq.heappop(self._retries)[2]
                if self._current(bag):
                    out.append(bag)
        return out

    def next_due(self) -> float | None:
        with self._lock:
            return self._retries[0][0] if self._retries else None

    # -- settlement (dispatcher thread) --

    def settle(self, bags: Iterable[Bag]) -> int:
        """Mark these deliveries done (acked or dead-lettered); returns how many counted.

        A bag that is not the current delivery of its offset (its partition was
        revoked, or it was nacked and redelivered since) is ignored: its offset
        will be delivered again, which is Kafka's at-least-once.
        """
        n = 0
        with self._lock:
            for bag in bags:
                receipt: Receipt = bag.digest
                part = self._parts.get((receipt.topic, receipt.partition))
                if part is not None and part.inflight.get(receipt.offset) is bag:
                    del part.inflight[receipt.offset]
                    part.dirty = True
                    n += 1
        return n

    def schedule(self, bag: Bag, at: float, make: Callable[[Bag], Bag]) -> Bag | None:
        """Redeliver `bag` locally at monotonic time `at` as `make(bag)`; None if not current."""
        receipt: Receipt = bag.digest
        with self._lock:
            part = self._parts.get((receipt.topic, receipt.partition))
            if part is None or part.inflight.get(receipt.offset) is not bag:
                return None
            again = make(bag)
            part.inflight[receipt.offset] = again  # same key: keeps its place in offset order
            heapq.heappush(self._retries, (at, next(self._seq), again))
            return again

    def is_current(self, bag: Bag) -> bool:
        with self._lock:
            return self._current(bag)

    # -- commits (whichever thread holds the consumer) --

    def to_commit(self) -> dict[TP, tuple[int, str]]:
        """(position, metadata) of every partition settled since its last commit; clears dirty."""
        out: dict[TP, tuple[int, str]] = {}
        with self._lock:
            for tp, part in self._parts.items():
                if part.dirty and part.position() >= 0:
                    out[tp] = (part.position(), part.metadata())
                    part.dirty = False
        return out

    def commit_failed(self, tps: Iterable[TP]) -> None:
        """A commit did not stick: try these partitions again next time."""
        with self._lock:
            for tp in tps:
                part = self._parts.get(tp)
                if part is not None:
                    part.dirty = True

    def stats(self) -> dict[TP, tuple[int, int]]:
        """(position, in flight) per partition, for logs and tests."""
        with self._lock:
            return {tp: (p.position(), len(p.inflight)) for tp, p in self._parts.items()}

    def _current(self, bag: Bag) -> bool:
        receipt: Receipt = bag.digest
        part = self._parts.get((receipt.topic, receipt.partition))
        return part is not None and part.inflight.get(receipt.offset) is bag


def _tp(bag: Bag) -> TP:
    receipt: Receipt = bag.digest
    return receipt.topic, receipt.partition


def redelivery(bag: Bag) -> Bag:
    """The next delivery of `bag` (one more delivery counted)."""
    return attrs.evolve(bag, deliveries=bag.deliveries + 1)
