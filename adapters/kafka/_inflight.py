"""Kafka deliveries in flight: which offsets may be committed, local redeliveries, and
the delivery counts that outlive the process.

Kafka has one cursor per partition (the committed offset), but the kernel acks
out of order from application threads. Committing the offset of the latest ack
would skip every earlier message still being processed, so each partition keeps
the offsets it delivered and not yet settled; its commit position is the
lowest of them (or one past the highest delivered offset when none is left).

Every commit carries a metadata string (`encode_metadata`, version 2) for the
partition's next owner:

* the unsettled offsets above the position, so the next owner skips those settled
  already (`Partition.skip`) and a second consumer of the group receives exactly
  the messages nobody acked;
* the deliveries used so far by each unsettled offset (`c`), so a count survives a
  restart, a rebalance and a crash;
* whether an owner is live (`o`: 1 from its first commit, 0 in the final commit of a
  clean revoke or close) and its frontier (`f`: it may have handed to its kernel
  unsettled offsets below it).

An owner that finds `o=1` knows the previous one died (or lost the partition
without a revoke) and counts that death on every unsettled offset it may have
handed out (`inherit`): a message that kills its consumer every time is
dead-lettered on arrival once it used up `max_deliveries`, without reaching the
kernel. Every owner is careful (`to_secure`) until the committed position passes
its first hand-out of a partition, and those suspects: it commits its frontier
before handing out anything above it, so each of its own deaths counts exactly
what it handed out, and nothing of a partition it handed nothing out of.

A nack does not seek: the bag is redelivered from memory (`schedule`/`due`)
and its offset stays uncommitted, so a crash before the redelivery still
redelivers it from the broker. Everything is guarded by one lock: the kernel
calls receiving (deliver, due, revoke) and settling (settle, schedule) on one
thread, but the adapter's `close` and its tests may come from another.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import itertools
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import attrs

from qchan.message import Bag

__all__ = [
    "METADATA_LIMIT",
    "InFlight",
    "Metadata",
    "Partition",
    "Receipt",
    "decode_metadata",
    "encode_metadata",
    "inherit",
    "redelivery",
]

TP = tuple[str, int]

_V1 = "qchan:1:"
_V2 = "qchan:2:"
#: Brokers keep at most `offset.metadata.max.bytes` (4096 by default) per commit.
METADATA_LIMIT = 3000
#: Most bytes a metadata string may decompress to (a guard against hostile metadata).
_INFLATED_LIMIT = 1 << 20
#: Most offsets one death of an owner counts (a guard against hostile metadata; an
#: owner hands out at most its kernel's `in_flight`).
_MAX_SUSPECTS = 100_000
_NO_COUNTS: Mapping[int, int] = MappingProxyType({})


class Receipt(NamedTuple):
    """A Kafka delivery's digest: where the message lives."""

    topic: str
    partition: int
    offset: int


@attrs.frozen
class Metadata:
    """What a commit's metadata says about its partition, above the committed position.

    Foreign, unreadable or missing metadata reads as `Metadata()`: nothing settled
    above the position, no counts, no live owner. Version 1 (`qchan:1:`) carries
    only `high` and `unsettled`.
    """

    #: Offsets below `high` and not in `unsettled` were settled (-1: none above the position).
    high: int = -1
    #: The unsettled offsets below `high`, the position included.
    unsettled: frozenset[int] = frozenset()
    #: offset -> deliveries it used so far (only unsettled offsets, only counts > 0).
    counts: Mapping[int, int] = _NO_COUNTS
    #: The owner that wrote it was live (o=1): it had not revoked or closed cleanly.
    live: bool = False
    #: That owner's frontier (f): it may have handed out unsettled offsets below it.
    frontier: int = -1

    def settled(self, offset: int) -> bool:
        return offset < self.high and offset not in self.unsettled


def encode_metadata(
    position: int,
    high: int,
    unsettled: Iterable[int],
    *,
    counts: Mapping[int, int] = _NO_COUNTS,
    live: bool,
    frontier: int,
) -> str:
    """Commit metadata (version 2) for a commit at `position`.

    `high` and `unsettled` (ascending, all above `position`) are the skip
    information: offsets in (position, high) not in `unsettled` were settled
    (`high` <= position + 1: none). `counts` maps unsettled offsets to the
    deliveries they used; `live` and `frontier` are `o` and `f` (see the module
    docstring). Offsets are written as gaps from the previous one, so runs
    compress to almost nothing.

    Returns "" when it would not fit the broker's limit; the next owner then
    redelivers everything from the position on (duplicates, never a loss) and
    starts every count again at 1.
    """
    fields: list[str] = []
    above = list(unsettled)
    if high > position + 1 + len(above):  # some offset above the position was settled
        fields.append(f"h={high - position}")
        if above:
            fields.append("u=" + ",".join(_gaps(position, above)))
    mine = sorted(o for o, n in counts.items() if o >= position and n > 0)
    if mine:
        gaps = _gaps(position, mine)
        fields.append("c=" + ",".join(f"{g}*{counts[o]}" for g, o in zip(gaps, mine, strict=True)))
    fields.append("o=1" if live else "o=0")
    fields.append(f"f={max(frontier, position) - position}")
    packed = base64.b64encode(zlib.compress(";".join(fields).encode("ascii"))).decode("ascii")
    encoded = _V2 + packed
    return encoded if len(encoded) <= METADATA_LIMIT else ""


def _gaps(start: int, offsets: list[int]) -> list[str]:
    out: list[str] = []
    previous = start
    for o in offsets:
        out.append(str(o - previous))
        previous = o
    return out


def _offsets(start: int, gaps: str, first_may_be_zero: bool) -> list[int]:
    out: list[int] = []
    at = start
    for i, g in enumerate(gaps.split(",")):
        step = int(g)
        if step < (0 if i == 0 and first_may_be_zero else 1):
            raise ValueError(f"gap {step}")
        at += step
        out.append(at)
    return out


def _inflate(packed: str) -> str:
    inflater = zlib.decompressobj()
    text = inflater.decompress(base64.b64decode(packed, validate=True), _INFLATED_LIMIT)
    if inflater.unconsumed_tail:
        raise ValueError("metadata too large")
    return text.decode("ascii")


def decode_metadata(position: int, metadata: str | None) -> Metadata:
    """What a commit at `position` made by `encode_metadata` (v2, or v1) says; anything
    else (another client's metadata, a damaged string) reads as `Metadata()`."""
    if not metadata or position < 0:
        return Metadata()
    try:
        if metadata.startswith(_V2):
            return _decode_v2(position, _inflate(metadata[len(_V2) :]))
        if metadata.startswith(_V1):
            high, _, rest = _inflate(metadata[len(_V1) :]).partition(":")
            unsettled = {position} | {position + int(d) for d in rest.split(",") if d}
            if int(high) < 1 or min(unsettled) < position:
                return Metadata()
            return Metadata(position + int(high), frozenset(unsettled))
    except (ValueError, KeyError, zlib.error):  # binascii.Error, UnicodeError: ValueErrors
        pass
    return Metadata()


def _decode_v2(position: int, text: str) -> Metadata:
    fields = dict(f.split("=", 1) for f in text.split(";"))
    high = -1
    unsettled = frozenset({position})
    if "h" in fields:
        h = int(fields["h"])
        if h < 2:
            raise ValueError(f"h={h}")
        high = position + h
        u = fields.get("u", "")
        unsettled = frozenset({position, *(_offsets(position, u, False) if u else ())})
    counts: dict[int, int] = {}
    if fields.get("c"):
        at = position
        for entry in fields["c"].split(","):
            gap, _, n = entry.partition("*")
            step, count = int(gap), int(n)
            if step < (1 if counts else 0) or count < 1:
                raise ValueError(f"c entry {entry!r}")
            at += step
            counts[at] = count
    live = fields["o"] == "1"
    if not live and fields["o"] != "0":
        raise ValueError(f"o={fields['o']}")
    f = int(fields["f"])
    if f < 0:
        raise ValueError(f"f={f}")
    return Metadata(high, unsettled, MappingProxyType(counts), live, position + f)


def inherit(position: int, found: Metadata) -> tuple[dict[int, int], int]:
    """(the counts, the end of the suspects) a new owner takes over from `found`.

    When the previous owner was live (it died, or lost the partition without a
    revoke), every unsettled offset in [position, f) may have been handed to its
    application and never settled: a delivery that counts. An owner commits f past
    its first hand-out of a partition before it makes it (`InFlight.assign` makes it
    careful), so a partition it never handed anything out of has f at the position:
    nothing counts there. The end of that range is where careful mode ends (-1: no
    suspects).
    """
    counts = {o: n for o, n in found.counts.items() if o >= position}
    if not found.live or found.frontier <= position:
        return counts, -1
    end = min(found.frontier, position + _MAX_SUSPECTS)
    if found.high < 0:
        suspects: Iterable[int] = range(position, end)
    else:
        below = sorted(o for o in found.unsettled if position <= o < min(end, found.high))
        suspects = itertools.chain(below, range(max(found.high, position), end))
    for o in suspects:
        counts[o] = counts.get(o, 0) + 1
    return counts, end


class Partition:
    """One assigned partition's offsets in flight (only used under `InFlight`'s lock)."""

    __slots__ = (
        "base",
        "careful_until",
        "counts",
        "dirty",
        "durable",
        "frontier",
        "high",
        "inflight",
        "left",
        "live",
        "repeated",
        "securing",
        "skip",
        "skip_below",
        "watch",
    )

    def __init__(self) -> None:
        #: offset -> the current delivery of that offset; insertion order is offset order
        #: because Kafka hands out a partition's offsets in increasing order.
        self.inflight: dict[int, Bag] = {}
        #: One past the highest offset delivered; -1 before the first delivery.
        self.high = -1
        #: The committed position found at assignment (-1: unknown).
        self.base = -1
        #: Offsets below `skip_below` and not in `skip` were settled by a previous owner.
        self.skip: frozenset[int] = frozenset()
        self.skip_below = -1
        #: `skip`, ascending: the unsettled ones at or above `high` are still to come.
        self.left: list[int] = []
        #: Deliveries used by offsets not delivered yet (from the previous owner's commit).
        self.counts: dict[int, int] = {}
        #: Offsets in flight whose current delivery is not the first (their count is > 0).
        self.repeated: set[int] = set()
        #: Settled something (or counted a failure) since the last commit.
        self.dirty = False
        #: The last metadata written or found for it said o=1: the final commit says o=0.
        self.live = False
        #: Careful while the committed position is below this (the suspects' end).
        self.careful_until = -1
        #: The position of the last commit the broker confirmed (-1: none yet).
        self.durable = -1
        #: The frontier of the last synchronous commit the broker confirmed.
        self.frontier = -1
        #: The frontier of the synchronous commit in progress.
        self.securing = -1
        #: Deliveries need the slow path: counts to apply, or careful mode.
        self.watch = False

    def position(self) -> int:
        """The offset to commit: the first unsettled one (-1: nothing known yet)."""
        for offset in self.inflight:
            return offset
        upcoming = self.high if self.high >= 0 else self.base
        if 0 <= upcoming < self.skip_below:
            i = bisect.bisect_left(self.left, upcoming)
            return self.left[i] if i < len(self.left) else self.skip_below
        return upcoming

    def metadata(self, position: int, live: bool) -> str:
        """The metadata of a commit at `position` (see `encode_metadata`)."""
        upcoming = self.high if self.high >= 0 else self.base
        above = [o for o in self.inflight if o > position]
        high = self.high
        if upcoming < self.skip_below:
            i = bisect.bisect_left(self.left, upcoming)
            above += [o for o in self.left[i:] if o > position]
            high = self.skip_below
        counts: Mapping[int, int] = self.counts
        if self.repeated:
            counts = {**counts, **{o: self.inflight[o].deliveries - 1 for o in self.repeated}}
        front = max(self.high, position, self.frontier)
        return encode_metadata(position, high, above, counts=counts, live=live, frontier=front)


class InFlight:
    """Thread-safe per-partition bookkeeping of delivered, settled and redelivered bags.

    `max_deliveries`: a fresh delivery whose count (from the previous owner's commit)
    reaches it is not handed out but kept aside for the dead-letter topic
    (`take_doomed`); None: never.
    """

    def __init__(self, max_deliveries: int | None = None) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TP, Partition] = {}
        self._retries: list[tuple[float, int, Bag]] = []
        self._seq = itertools.count()
        self._max_deliveries = max_deliveries
        #: Fresh deliveries that used up `max_deliveries` already (see `take_doomed`).
        self._doomed: list[Bag] = []
        #: A careful partition delivered above its frontier: `to_secure` has work.
        self.unsecured = False

    # -- assignment (inside the consumer's rebalance callbacks) --

    def assign(
        self, tps: Iterable[TP], committed: Mapping[TP, tuple[int, str | None]]
    ) -> dict[TP, tuple[int, str]]:
        """Start tracking `tps`; `committed` holds their committed (offset, metadata).

        Returns what to commit for them, synchronously, before anything of them is
        handed out: the position and skip information as found, the counts with the
        previous owner's death counted (`inherit`), o=1 and f=position. A partition
        without a known position (nothing committed and no reset offset) gets none.
        """
        writes: dict[TP, tuple[int, str]] = {}
        with self._lock:
            for tp in tps:
                part = self._parts[tp] = Partition()
                offset, metadata = committed.get(tp, (-1, None))
                if offset < 0:
                    continue
                found = decode_metadata(offset, metadata)
                part.base = offset
                part.skip_below, part.skip = found.high, found.unsettled
                if found.high >= 0:
                    part.left = sorted(o for o in found.unsettled if o < found.high)
                part.counts, part.careful_until = inherit(offset, found)
                # Careful for the first hand-out too: f goes past it, synchronously,
                # before it goes out, so a death of this owner counts exactly what it
                # handed out, and nothing of a partition it never handed out of.
                part.careful_until = max(part.careful_until, offset + 1)
                part.watch = True
                part.live = True
                writes[tp] = (offset, part.metadata(offset, live=True))
        return writes

    def revoke(self, tps: Iterable[TP]) -> dict[TP, tuple[int, str]]:
        """Stop tracking `tps`; returns what to commit for them before they go (o=0)."""
        tps = set(tps)
        final: dict[TP, tuple[int, str]] = {}
        with self._lock:
            for tp in tps:
                part = self._parts.pop(tp, None)
                if part is not None:
                    self._final(tp, part, final)
            self._retries = [r for r in self._retries if _tp(r[2]) not in tps]
            heapq.heapify(self._retries)
            self._doomed = [b for b in self._doomed if _tp(b) not in tps]
        return final

    def finish(self) -> dict[TP, tuple[int, str]]:
        """The final commit (o=0) of every partition, at close; they stay tracked, clean."""
        final: dict[TP, tuple[int, str]] = {}
        with self._lock:
            for tp, part in self._parts.items():
                self._final(tp, part, final)
        return final

    @staticmethod
    def _final(tp: TP, part: Partition, out: dict[TP, tuple[int, str]]) -> None:
        position = part.position()
        if (part.dirty or part.live) and position >= 0:
            out[tp] = (position, part.metadata(position, live=False))
        part.dirty = part.live = False

    def assigned(self) -> list[TP]:
        with self._lock:
            return list(self._parts)

    # -- delivery (receive) --

    def deliver(self, bag: Bag) -> bool:
        """Track a bag fresh from the broker; False if it must not reach the kernel.

        Dropped: partitions not assigned (any more), offsets already delivered
        (a fetch position that moved back), offsets settled by a previous owner,
        and offsets whose deliveries are used up (`take_doomed`).
        """
        return bool(self.deliver_all([bag]))

    def deliver_all(self, bags: list[Bag]) -> list[Bag]:
        """`deliver` for a batch under one lock: the bags that may reach the kernel.

        A bag's `deliveries` is one more than the count its offset used so far.
        """
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
                if part.watch and self._watched(part, bag, offset):
                    continue
                out.append(bag)
        return out

    def _watched(self, part: Partition, bag: Bag, offset: int) -> bool:
        """The slow path of a delivery after a previous owner died: apply its count; True
        if the bag is doomed (kept in flight, not handed out)."""
        used = part.counts.pop(offset, 0) if part.counts else 0
        if used:
            bag.deliveries = used + 1  # a bag fresh from the broker, not handed out yet
            part.repeated.add(offset)
            if self._max_deliveries is not None and used >= self._max_deliveries:
                self._doomed.append(bag)
                return True
        if part.durable < part.careful_until:
            if offset >= part.frontier:
                self.unsecured = True
        elif not part.counts:
            part.watch = False
        return False

    def take_doomed(self) -> list[Bag]:
        """Fresh deliveries that used up `max_deliveries` while consumers died on them:
        for the dead-letter topic, never for the kernel (they stay in flight until
        settled)."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
            return doomed

    @property
    def doomed(self) -> bool:
        return bool(self._doomed)

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

    # -- settlement --

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
                    if part.repeated:
                        part.repeated.discard(receipt.offset)
                    part.dirty = True
                    n += 1
        return n

    def schedule(self, bag: Bag, at: float, make: Callable[[Bag], Bag]) -> Bag | None:
        """Redeliver `bag` locally at monotonic time `at` as `make(bag)`; None if not current.

        A redelivery that counts one more delivery is committed with the next commit.
        """
        receipt: Receipt = bag.digest
        with self._lock:
            part = self._parts.get((receipt.topic, receipt.partition))
            if part is None or part.inflight.get(receipt.offset) is not bag:
                return None
            again = make(bag)
            part.inflight[receipt.offset] = again  # same key: keeps its place in offset order
            if again.deliveries > 1:
                part.repeated.add(receipt.offset)
            if again.deliveries != bag.deliveries:
                part.dirty = True
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
                if part.dirty:
                    position = part.position()
                    if position >= 0:
                        out[tp] = (position, part.metadata(position, live=True))
                        part.live = True
                        part.dirty = False
        return out

    def to_secure(self) -> dict[TP, tuple[int, str]]:
        """What to commit synchronously before handing out what was just delivered: the
        careful partitions (committed position still below their suspects' end) that
        delivered at or above their frontier; the frontier moves past it (`secured`)."""
        out: dict[TP, tuple[int, str]] = {}
        with self._lock:
            self.unsecured = False
            for tp, part in self._parts.items():
                if part.durable < part.careful_until and part.high > part.frontier:
                    position = part.position()
                    if position >= 0:
                        part.securing = max(part.high, position)
                        out[tp] = (position, part.metadata(position, live=True))
                        part.live = True
                        part.dirty = False
        return out

    def secured(self, done: Mapping[TP, int]) -> None:
        """Synchronous commits (`assign`, `to_secure`) the broker confirmed, by position."""
        with self._lock:
            for tp, position in done.items():
                part = self._parts.get(tp)
                if part is not None:
                    part.durable = max(part.durable, position)
                    part.frontier = max(part.frontier, part.securing, position)
                    part.securing = -1

    def confirmed(self, done: Iterable[tuple[TP, int]]) -> None:
        """Commits the broker confirmed: (partition, position).

        A confirmation below one confirmed before is an older commit that the group
        applied last: librdkafka sends a commit again when its connection dropped,
        after the newer ones went out on the new connection. The group's offset went
        back, so the partition is committed again (dirty), or a restart would deliver
        again everything between the two.
        """
        with self._lock:
            for tp, position in done:
                part = self._parts.get(tp)
                if part is None:
                    continue
                if position > part.durable:
                    part.durable = position
                elif position < part.durable:
                    part.dirty = True

    def commit_failed(self, tps: Iterable[TP]) -> None:
        """A commit did not stick: try these partitions again next time."""
        with self._lock:
            for tp in tps:
                part = self._parts.get(tp)
                if part is not None:
                    part.dirty = True
                    part.securing = -1

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
