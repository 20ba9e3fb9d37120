"""Redis Streams adapter (redis-py): a queue is a stream read by one consumer group.

    q = qchan.connect("redis://127.0.0.1:6379/0?stream=orders")
    q = qchan.connect("rediss://user:secret@cache.example.com:6380/0?stream=orders&group=billing")

The wire format, so that a plain redis-py client can take part: each message is one
stream entry (`XADD`) whose field `body` holds the encoded object and whose other
fields are its attributes (`Category`, `Source`, `System`, `Queue`, and the
application's own), as UTF-8 strings. Every consumer of the queue reads through the
consumer group `group` (`XREADGROUP`) under a consumer name of its own, and an ack is
an `XACK`.

What the broker does not do, the adapter does with the group's pending entries list
(PEL), which holds every delivery not acked yet with its delivery count:

* redelivery: a delivery pending longer than `visibility_timeout` (its consumer died,
  or was cut off) is claimed by whichever consumer looks next (`XPENDING ... IDLE`,
  then `XCLAIM`, which counts the delivery); a nack sets the entry's idle time so that
  it comes due after its delay (`XCLAIM ... IDLE ... RETRYCOUNT ... JUSTID`), and a
  release sets its count back so that it is not counted;
* visibility: the kernel keeps what it holds from other consumers with `extend`
  (`XCLAIM ... JUSTID`, which resets the idle time);
* dead letters: after `max_deliveries` deliveries, or when the application gives up,
  the entry is copied to the stream `dlq` (with `Error`, `Deliveries` and the
  original `Id` as fields) and acked, in one transaction.

The stream and the group are created on first use (`XGROUP CREATE ... 0 MKSTREAM`:
the group reads what was sent before it existed), and adopted when they exist.
docs/redis.md has every option and what qchan's guarantees mean here.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from qchan.adapter import Bags, Depth, Errors, Operations, ReceivingAdapter
from qchan.errors import ConnectionLost, MessageTooLarge, QchanError, RejectedError, describe
from qchan.message import ATTR_CATEGORY, Bag
from qchan.options import OptionError, unknown

from ._config import OPTIONS, RedisOptions, parse_url

__all__ = ["OPTIONS", "RedisAdapter", "from_url"]

log = logging.getLogger("qchan.adapters.redis")

#: The stream field that holds the body; every other field is an attribute.
BODY = "body"
_BODY = BODY.encode()
#: Most pending entries `depth` looks at to tell which are due (an operator's command).
_DEPTH_SCAN = 100_000
#: Fields the adapter adds to a dead letter.
DLQ_FIELDS = ("Error", "Deliveries", "Id", "Stream")


class RedisAdapter(ReceivingAdapter, Operations):
    """One Redis stream read by one consumer group. Use `from_url` to build one."""

    scheme = "redis"
    max_batch = 100
    max_receive = 100

    def __init__(self, stream: str, **options: Any) -> None:
        try:
            self.options = RedisOptions(stream=stream, **options)
        except TypeError as e:
            raise OptionError(f"unknown redis adapter option: {e}") from None
        super().__init__(self.options.name)
        o = self.options
        self.stream = o.stream
        self.group = o.group
        self.me = o.consumer
        self.poll_wait = o.wait
        self._client: redis.Redis = redis.Redis(**o.client_options())
        self._vis_ms = max(1, int(o.visibility_timeout * 1000))
        self._group_ready = False
        # When to look for deliveries that came due (a consumer's timed out, or a nack's
        # delay ran out): at least every `_scan_every` s, and at each local nack's due time.
        self._scan_every = min(1.0, max(0.05, o.visibility_timeout / 4))
        self._next_scan = 0.0
        self._due: list[float] = []  # due times of our own nacks and releases (a heap)
        self._lock = threading.Lock()  # guards _due (settling and receiving threads)

    def __repr__(self) -> str:
        return f"<RedisAdapter {self.options.url()} group={self.group}>"

    # -- sending (the emitter thread) -----------------------------------------------------

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        """`XADD` every bag in one pipeline (not a transaction: each succeeds alone)."""
        outcomes: list[BaseException | None] = [None] * len(bags)
        sent: list[int] = []
        pipe = self._client.pipeline(transaction=False)
        maxlen = self.options.maxlen
        for i, bag in enumerate(bags):
            refused = self._refused(bag)
            if refused is not None:
                outcomes[i] = refused
                continue
            fields: dict[Any, Any] = {BODY: bag.body, **bag.attributes}
            pipe.xadd(self.stream, fields, maxlen=maxlen, approximate=True)
            sent.append(i)
        if sent:
            try:
                results = pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError) as e:
                raise ConnectionLost(f"redis stream {self.stream!r}: {e}") from None
            for i, result in zip(sent, results, strict=True):
                if isinstance(result, Exception):
                    outcomes[i] = self._send_error(result)
        return outcomes

    def _refused(self, bag: Bag) -> BaseException | None:
        if BODY in bag.attributes:
            return RejectedError(
                f"redis stream {self.stream!r}: attribute {BODY!r} is the field that holds "
                "the body; rename it"
            )
        size = len(bag.body) + sum(len(k) + len(v) for k, v in bag.attributes.items())
        if size > self.options.max_message_size:
            return MessageTooLarge(
                f"redis stream {self.stream!r}: message of {size} bytes (body and "
                f"attributes) is over max_message_size={self.options.max_message_size}"
            )
        return None

    def _send_error(self, error: Exception) -> BaseException:
        text = str(error)
        if text.startswith("WRONGTYPE"):
            return RejectedError(f"redis key {self.stream!r} is not a stream: {text}")
        return QchanError(f"redis XADD to {self.stream!r} failed: {text}")

    # -- receiving (a helper thread: `wakes` is False, a blocking read cannot be cut short)

    @property
    def visibility(self) -> float:
        return self.options.visibility_timeout

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        """Deliveries that came due again (claimed from the PEL), then new entries."""
        self._ensure_group()
        try:
            return self._receive(max_items, wait)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # The stream (or its group) was deleted meanwhile: made again next time.
            self._group_ready = False
            return []

    def _receive(self, max_items: int, wait: float) -> list[Bag]:
        now = time.monotonic()
        out: list[Bag] = []
        if now >= self._scan_at():
            with self._lock:
                while self._due and self._due[0] <= now:
                    heapq.heappop(self._due)
            out, more = self._claim_due(max_items)
            # A full scan may have left more due: look again at the next receive.
            self._next_scan = now if more else now + self._scan_every
        room = max_items - len(out)
        if room <= 0:
            return out
        block: int | None = None
        if not out:
            until = min(wait, max(0.0, self._scan_at() - time.monotonic()))
            block = int(until * 1000) or None  # BLOCK 0 would wait forever
        try:
            got: Any = self._client.xreadgroup(
                self.group, self.me, {self.stream: ">"}, count=room, block=block
            )
        except (RedisConnectionError, RedisTimeoutError) as e:
            if out:
                return out
            raise ConnectionLost(f"redis stream {self.stream!r}: {e}") from None
        for _, entries in got or ():
            for entry_id, fields in entries:
                out.append(self._bag(entry_id, fields, 1))
        return out

    def _scan_at(self) -> float:
        with self._lock:
            due = self._due[0] if self._due else self._next_scan
        return min(due, self._next_scan)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("redis: created consumer group %r of stream %r", self.group, self.stream)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def _claim_due(self, limit: int) -> tuple[list[Bag], bool]:
        """Claim the deliveries idle for `visibility_timeout` or more (any consumer's), at
        most `limit`; and whether there may be more."""
        pending: Any = self._client.xpending_range(
            self.stream, self.group, min="-", max="+", count=limit, idle=self._vis_ms
        )
        if not pending:
            return [], False
        counts = {p["message_id"]: int(p["times_delivered"]) + 1 for p in pending}
        claimed: Any = self._client.xclaim(
            self.stream, self.group, self.me, self._vis_ms, list(counts)
        )
        out: list[Bag] = []
        doomed: list[Bag] = []
        for entry_id, fields in claimed:
            if fields is None:  # deleted from the stream (trimmed, purged): nothing to deliver
                self._client.xack(self.stream, self.group, entry_id)
                continue
            bag = self._bag(entry_id, fields, counts.get(entry_id, 2))
            (doomed if bag.deliveries > self.options.max_deliveries else out).append(bag)
        for bag in doomed:
            used = bag.deliveries - 1
            self._dead_letter(
                bag,
                f"delivered {used} times without an ack (max_deliveries="
                f"{self.options.max_deliveries})",
                used,
            )
        return out, len(pending) >= limit

    def _bag(self, entry_id: bytes, fields: Mapping[bytes, bytes], deliveries: int) -> Bag:
        body = b""
        attributes: dict[str, str] = {}
        for key, value in fields.items():
            if key == _BODY:
                body = value
            else:
                attributes[key.decode("utf-8", "surrogateescape")] = value.decode(
                    "utf-8", "surrogateescape"
                )
        rid = entry_id.decode()
        return Bag(
            attributes.get(ATTR_CATEGORY, ""), body, attributes, rid, None, None, rid, deliveries
        )

    # -- settling (the consumer thread) ---------------------------------------------------

    def ack(self, bags: Sequence[Bag]) -> None:
        """`XACK`: the deliveries leave the PEL (acking one twice is harmless)."""
        if bags:
            self._client.xack(self.stream, self.group, *[b.digest for b in bags])

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        """Due again after `delay` s: its idle time set to `visibility_timeout - delay`.

        A failure (`counted`) at `max_deliveries` goes to the dead-letter stream now;
        otherwise the entry keeps its count (the next claim adds the delivery). A
        release sets it one back, so that the claim leaves it where it was."""
        now = time.monotonic()
        idle = max(0, self._vis_ms - int(delay * 1000))
        pipe = self._client.pipeline(transaction=False)
        for i, bag in enumerate(bags):
            if counted and bag.deliveries >= self.options.max_deliveries:
                why = f"failed {bag.deliveries} deliveries"
                if errors:
                    why += f"; the last: {describe(errors[i])}"
                self._dead_letter(bag, why)
                continue
            count = bag.deliveries if counted else bag.deliveries - 1
            pipe.xclaim(
                self.stream,
                self.group,
                self.me,
                0,
                [bag.digest],
                idle=idle,
                retrycount=max(0, count),
                justid=True,
            )
        pipe.execute()
        with self._lock:
            heapq.heappush(self._due, now + delay)

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """The application gave up: copy each to the dead-letter stream and ack it."""
        for bag, error in zip(bags, errors, strict=True):
            self._dead_letter(bag, f"given up after {bag.deliveries} deliveries: {describe(error)}")

    def _dead_letter(self, bag: Bag, why: str, deliveries: int | None = None) -> None:
        dlq = self.options.dlq
        if dlq is None:
            self.hooks.report(
                QchanError(f"redis message {bag.id} of {self.stream!r} dropped (no dlq): {why}")
            )
            self._client.xack(self.stream, self.group, bag.digest)
            return
        fields: dict[Any, Any] = {
            BODY: bag.body,
            **bag.attributes,
            "Error": why[:1000],
            "Deliveries": str(bag.deliveries if deliveries is None else deliveries),
            "Id": str(bag.id),
            "Stream": self.stream,
        }
        pipe = self._client.pipeline(transaction=True)
        pipe.xadd(dlq, fields)
        pipe.xack(self.stream, self.group, bag.digest)
        pipe.execute()
        log.warning("redis message %s moved to dead-letter stream %r: %s", bag.id, dlq, why)

    def extend(self, bags: Sequence[Bag]) -> None:
        """Reset the idle time of what the kernel holds (`XCLAIM ... JUSTID`)."""
        if bags:
            self._client.xclaim(
                self.stream, self.group, self.me, 0, [b.digest for b in bags], justid=True
            )

    # -- operations -----------------------------------------------------------------------

    def depth(self) -> Depth:
        """ready: what the group would hand out now (entries it has not read, its lag,
        and pending ones idle past the visibility timeout, as a given-back message is);
        in_flight: the rest of its pending entries. A group not created yet would read
        the whole stream."""
        try:
            groups: Any = self._client.xinfo_groups(self.stream)
        except ResponseError:  # no such stream yet
            return Depth(ready=0, in_flight=0)
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name != self.group:
                continue
            pending = int(g["pending"])
            due: Any = self._client.xpending_range(
                self.stream, self.group, min="-", max="+", count=_DEPTH_SCAN, idle=self._vis_ms
            )
            lag = g.get("lag")
            ready = None if lag is None else int(lag) + len(due)
            return Depth(ready=ready, in_flight=pending - len(due))
        return Depth(ready=int(self._client.xlen(self.stream)), in_flight=0)

    def purge(self) -> int:
        """Delete every entry of the stream (`XTRIM MAXLEN 0`); the group stays."""
        return int(self._client.xtrim(self.stream, maxlen=0, approximate=False))

    # -- close ---------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the group when this consumer holds nothing, and close the connections."""
        try:
            if self._group_ready:
                mine = self._client.xpending_range(
                    self.stream, self.group, min="-", max="+", count=1, consumername=self.me
                )
                if not mine:  # never while it holds entries: they would be lost to the group
                    self._client.xgroup_delconsumer(self.stream, self.group, self.me)
        except (ResponseError, RedisConnectionError, RedisTimeoutError) as e:
            log.debug("redis: leaving group %r of %r: %s", self.group, self.stream, e)
        finally:
            self._client.close()


def from_url(url: str, **options: Any) -> RedisAdapter:
    """`redis://host:6379/0?stream=orders[&group=billing&dlq=orders.dead&...]`."""
    parsed = parse_url(url)
    wrong = set(options) - OPTIONS
    if wrong:
        raise unknown("redis adapter", wrong, OPTIONS)
    parsed.update(options)
    return RedisAdapter(parsed.pop("stream"), **parsed)
