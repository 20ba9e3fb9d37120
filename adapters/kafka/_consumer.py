"""The consume side of the Kafka adapter: one `Consumer` in a consumer group, driven by
`receive` and `hold` on the kernel's consumer thread, with its rebalances and commits.

Who commits: confluent-kafka >= 2.16 serialises calls on one Consumer (a
"reentrancy gate"), so a commit from another thread while a `poll()` runs blocks
until that poll returns (measured: 2.7 s of a 3 s poll). The kernel settles on
the thread that polls, between polls, so a settlement's commit finds the consumer
free; it still only takes the consumer lock without waiting (`try_commit`), and
otherwise the next `receive` or `hold` commits between its short polls (`SLICE`,
50 ms). Commits are asynchronous except these, which are synchronous:

* on assignment (`_on_assign`): the new owner's first commit, o=1 and the counts it
  inherits (see `_inflight`), before it hands out anything;
* in careful mode (`_secure`): before `receive` returns messages above the frontier
  of a partition whose previous owner died, until its position passes the suspects;
* on revocation and close: the final commit, o=0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from qchan.errors import ConnectionLost, QchanError
from qchan.message import ATTR_CATEGORY, Bag

from ._cluster import Cluster
from ._config import KafkaOptions, consumer_config
from ._inflight import TP, InFlight, Receipt
from ._wire import NO_ATTRIBUTES, NO_TOPIC, TopicNotFound, attributes

if TYPE_CHECKING:
    from confluent_kafka._types import HeadersType

__all__ = ["SLICE", "Consuming"]

log = logging.getLogger("qchan.adapters.kafka")

#: Longest single poll while `receive` waits, so commits, redeliveries and
#: `wakeup` are served promptly (a poll cannot be interrupted).
SLICE = 0.05
_ATTRIBUTES_CACHE = 1024
# librdkafka's names for auto.offset.reset ("error" and anything else: no reset offset).
_RESET = {
    "earliest": "earliest",
    "smallest": "earliest",
    "beginning": "earliest",
    "latest": "latest",
    "largest": "latest",
    "end": "latest",
}
# Receipt(...) runs NamedTuple's Python-level __new__; this is the same tuple, 2x faster.
_tuple_new = tuple.__new__


class Consuming:
    """The consumer of one topic in one group, and what it has delivered (`inflight`)."""

    def __init__(
        self,
        options: KafkaOptions,
        cluster: Cluster,
        inflight: InFlight,
        report: Callable[[BaseException], None],
        revoke: Callable[[Callable[[Bag], bool]], int],
    ) -> None:
        self.options = options
        self.cluster = cluster
        self.inflight = inflight
        self.report = report
        self.revoke_held = revoke
        self.topic = options.topic
        self.consumer: Consumer | None = None
        # Held around every consumer call; a settlement only ever try-acquires it.
        self.lock = threading.Lock()
        self.wake = threading.Event()
        #: Partitions paused by `hold`; the next `receive` resumes them.
        self._paused: list[TopicPartition] = []
        #: When the consumer last polled, and how long the group lets it go without.
        self._polled = 0.0
        self._poll_interval = 300.0
        #: librdkafka's auto.offset.reset as configured (the option, or consumer_config's).
        self._offset_reset: str = options.offset_reset
        self.closing = False
        self._fatal: KafkaError | None = None
        self._commit_failing = False
        #: Asynchronous commits whose outcome (on_commit) has not come yet.
        self._commits_out = 0
        # Raw headers -> decoded attributes: most messages repeat the same four.
        self._attributes: dict[tuple[Any, ...], Mapping[str, str]] = {}

    # ------------------------------------------------------------------ poll

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        """Redeliveries that are due, then fresh messages; waits at most `wait` s for the first."""
        consumer = self.consumer or self._open()
        if self._paused:
            self._resume(consumer)
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            out = self.inflight.due(now, max_items)
            room = max_items - len(out)
            msgs: list[Message] = []
            with self.lock:
                self._commit_pending(consumer)
                try:
                    if room > 0 and out:
                        msgs = consumer.consume(room, 0)
                    elif room > 0:
                        first = consumer.poll(self._slice(now, deadline))
                        if first is not None:
                            msgs = [first]
                            if room > 1:
                                msgs += consumer.consume(room - 1, 0)
                except KafkaException as e:
                    if not e.args[0].fatal():
                        raise
                    self._fatal = e.args[0]
            self._polled = now
            if msgs:
                out += self._accept(msgs, can_raise=not out)
                if self.inflight.unsecured:
                    self._secure(consumer)
            if self._fatal is not None:
                self._reset()
                return []
            if out or self.inflight.doomed:
                return out
            if self.wake.is_set():
                self.wake.clear()
                return out
            if time.monotonic() >= deadline:
                return out

    def hold(self, wait: float) -> bool:
        """The kernel's in-flight limit is reached: take nothing, keep the group's trust.

        A consumer that does not poll within `max.poll.interval.ms` (5 min by
        default) is evicted: its partitions go to another member, which redelivers
        what this one holds, although the application was only slow. A short
        hold just waits (for up to `wait` s, or a wakeup); once a third of that
        interval has passed without a poll, it polls with every assigned
        partition paused (nothing is fetched; rebalance callbacks and commits
        run), and the next `receive` resumes them. Pausing drops librdkafka's
        prefetched messages, so it is kept for holds that need it.
        """
        consumer = self.consumer
        if consumer is None:
            return False  # not consuming yet: no membership to keep
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if now >= deadline:
                return True
            due = self._polled + self._poll_interval / 3
            if now < due:
                if self.wake.wait(min(deadline, due) - now):
                    self.wake.clear()
                    return True
                continue
            with self.lock:
                self._commit_pending(consumer)
                try:
                    self._pause(consumer)
                    m = consumer.poll(self._slice(now, deadline))
                    self._polled = time.monotonic()
                    if m is not None and m.error() is not None:
                        log.debug("kafka consumer of %r while holding: %s", self.topic, m.error())
                    elif m is not None:
                        # From a partition assigned after the pause: give it back, unread.
                        consumer.seek(
                            TopicPartition(
                                m.topic() or self.topic, m.partition() or 0, m.offset() or 0
                            )
                        )
                        self._pause(consumer)
                except KafkaException as e:
                    if e.args[0].fatal():
                        self._fatal = e.args[0]
                    else:
                        log.warning("kafka consumer of %r while holding: %s", self.topic, e)
            if self._fatal is not None:
                self._reset()
                return False
            if self.wake.is_set():
                self.wake.clear()
                return True

    def _pause(self, consumer: Consumer) -> None:
        """Pause every assigned partition not paused yet (the caller holds the lock)."""
        paused = {(tp.topic, tp.partition) for tp in self._paused}
        new = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in paused]
        if new:
            consumer.pause(new)
            self._paused.extend(new)

    def _resume(self, consumer: Consumer) -> None:
        """Resume what `hold` paused and is still ours."""
        with self.lock:
            mine = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            paused, self._paused = self._paused, []
            again = [tp for tp in paused if (tp.topic, tp.partition) in mine]
            if again:
                try:
                    consumer.resume(again)
                except KafkaException as e:
                    log.warning("kafka consumer of %r: resume failed: %s", self.topic, e)

    def _slice(self, now: float, deadline: float) -> float:
        timeout = min(SLICE, max(0.0, deadline - now))
        due = self.inflight.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        return timeout

    def _accept(self, msgs: list[Message], can_raise: bool) -> list[Bag]:
        """Bags for the kernel from fetched messages.

        An error is raised (the kernel reports it and backs off) only when
        there is no bag to return with it (`can_raise`); otherwise reported.
        """
        out: list[Bag] = []
        errors: list[KafkaError] = []
        cache = self._attributes
        last_headers: Any = None
        attrs_now: Mapping[str, str] = NO_ATTRIBUTES
        category = ""
        for m in msgs:
            err = m.error()
            if err is not None:
                errors.append(err)
                continue
            topic = m.topic()
            partition = m.partition()
            offset = m.offset()
            assert topic is not None
            assert partition is not None
            assert offset is not None
            headers = m.headers()
            # Most messages repeat the previous one's headers: comparing the lists is
            # cheaper than hashing them for the cache.
            if headers != last_headers:
                last_headers = headers
                attrs_now = NO_ATTRIBUTES
                if headers:
                    try:  # a list of (str, bytes), seen before
                        signature = tuple(cast(list[tuple[str, bytes]], headers))
                        attrs_now = cache[signature]
                    except KeyError:
                        attrs_now = self._remember(signature, headers)
                    except TypeError:  # unhashable: a dict, say
                        attrs_now = MappingProxyType(attributes(headers))
                category = attrs_now.get(ATTR_CATEGORY, "")
            key = m.key()
            # Positional (category, body, attributes, id, key, content_type, digest):
            # half the cost of keywords, once per message.
            out.append(
                Bag(
                    category,
                    m.value() or b"",
                    attrs_now,
                    f"{topic}/{partition}/{offset}",
                    None if key is None else key.decode("utf-8", "surrogateescape"),
                    None,
                    _tuple_new(Receipt, (topic, partition, offset)),
                )
            )
        out = self.inflight.deliver_all(out)
        if errors:
            self._consume_errors(errors, raise_first=can_raise and not out)
        return out

    def _remember(self, signature: tuple[Any, ...], headers: HeadersType) -> Mapping[str, str]:
        """Decoded headers, shared read-only by every message with the same headers."""
        decoded = MappingProxyType(attributes(headers))
        if len(self._attributes) >= _ATTRIBUTES_CACHE:
            self._attributes.clear()  # per-message headers (trace ids): start over
        self._attributes[signature] = decoded
        return decoded

    def _consume_errors(self, errors: list[KafkaError], raise_first: bool) -> None:
        for err in errors:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal():
                self._fatal = err
                continue
            if err.code() in NO_TOPIC:
                self.cluster.forget(self.topic)
                error: QchanError = TopicNotFound(
                    f"kafka topic {self.topic!r} is not available to group "
                    f"{self.options.group!r}: {err.str()}"
                )
            else:
                error = QchanError(f"kafka consumer of {self.topic!r}: {err.str()}")
            if raise_first:
                raise error
            self.report(error)

    def _open(self) -> Consumer:
        cluster = self.cluster
        conf = consumer_config(self.options, log, cluster.client_error, self._committed)
        self._poll_interval = int(conf.get("max.poll.interval.ms", 300_000)) / 1000
        self._offset_reset = str(conf.get("auto.offset.reset", "latest")).lower()
        consumer = cluster.client(Consumer, conf)
        try:
            with self.lock:
                cluster.ensure_topic(consumer, self.topic)
                consumer.subscribe(
                    [self.topic],
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
        except BaseException:
            consumer.close()
            raise
        self.consumer = consumer
        log.info("kafka consumer for %r joined group %r", self.topic, self.options.group)
        return consumer

    def _reset(self) -> None:
        """After a fatal consumer error: forget everything, join as a new member next time.

        What was received and not committed is redelivered (to us or another member).
        """
        err, self._fatal = self._fatal, None
        consumer, self.consumer = self.consumer, None
        self._paused = []
        self._commits_out = 0  # a closed consumer answers none
        if consumer is not None:
            with self.lock:
                self._revoke(None, self.inflight.assigned())
                try:
                    consumer.close()
                except KafkaException as e:
                    log.debug("closing failed kafka consumer of %r: %s", self.topic, e)
        self.report(ConnectionLost(f"kafka consumer of {self.topic!r} failed: {err}"))

    # ------------------------------------------------------------- rebalances
    # These run inside poll()/consume()/close() on the thread holding the consumer.

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed: dict[TP, tuple[int, str | None]] = {}
        try:
            for tp in consumer.committed(partitions, timeout=self.options.admin_timeout):
                offset = tp.offset if tp.offset >= 0 else self._reset_offset(consumer, tp)
                committed[(tp.topic, tp.partition)] = (offset, tp.metadata)
        except KafkaException as e:
            # Without it the new owner redelivers settled messages above the committed
            # offset, and counts nothing (a death of the previous owner goes unnoticed).
            log.warning("kafka: reading committed offsets of %r failed: %s", self.topic, e)
        writes = self.inflight.assign([(p.topic, p.partition) for p in partitions], committed)
        if writes:  # before anything is handed out: o=1, f=position, the inherited counts
            failed = self._commit(consumer, writes, asynchronous=False)
            self.inflight.secured({tp: w[0] for tp, w in writes.items() if tp not in failed})
        parts = sorted(p.partition for p in partitions)
        log.info("kafka group %r assigned %s of %r", self.options.group, parts, self.topic)

    def _reset_offset(self, consumer: Consumer, tp: TopicPartition) -> int:
        """Where a partition without a committed offset starts (`auto.offset.reset`): its
        first offset (earliest) or its end (latest); -1 for `error` or when the broker
        does not answer. The assignment commits it, so the first owner's death counts."""
        reset = _RESET.get(self._offset_reset)
        if reset is None:
            return -1
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition),
                timeout=self.options.admin_timeout,
                cached=False,
            )
        except KafkaException as e:
            log.warning("kafka: reading the offsets of %r failed: %s", self.topic, e)
            return -1
        return int(low if reset == "earliest" else high)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoke(consumer, [(p.topic, p.partition) for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The group moved on without us: a commit would be refused.
        self._revoke(None, [(p.topic, p.partition) for p in partitions])

    def _revoke(self, consumer: Consumer | None, tps: list[TP]) -> None:
        """Commit what is settled (when `consumer` is given), forget `tps`, tell the kernel."""
        if self._paused:  # a partition assigned again later starts unpaused
            gone_now = set(tps)
            self._paused = [tp for tp in self._paused if (tp.topic, tp.partition) not in gone_now]
        final = self.inflight.revoke(tps)
        if consumer is not None and final:
            self._commit(consumer, final, asynchronous=False)
        parts = sorted(p for _, p in tps)
        log.info("kafka group %r revoked %s of %r", self.options.group, parts, self.topic)
        if not self.closing:
            gone = set(tps)
            self.revoke_held(
                lambda bag: (
                    isinstance(bag.digest, Receipt)
                    and (bag.digest.topic, bag.digest.partition) in gone
                )
            )

    # ---------------------------------------------------------------- commits

    def _commit_pending(self, consumer: Consumer) -> None:
        todo = self.inflight.to_commit()
        if todo:
            self._commit(consumer, todo, asynchronous=True)

    def _secure(self, consumer: Consumer) -> None:
        """Careful mode: commit the frontier past what `receive` is about to hand out."""
        todo = self.inflight.to_secure()
        if todo:
            with self.lock:
                failed = self._commit(consumer, todo, asynchronous=False)
            self.inflight.secured({tp: w[0] for tp, w in todo.items() if tp not in failed})

    def _commit(
        self, consumer: Consumer, todo: dict[TP, tuple[int, str]], asynchronous: bool
    ) -> set[TP]:
        """Commit `todo`; the partitions a synchronous commit failed for."""
        offsets = [
            TopicPartition(t, p, pos, meta) if meta else TopicPartition(t, p, pos)
            for (t, p), (pos, meta) in todo.items()
        ]
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
                self._commits_out += 1
                return set()
            return self._outcome(None, consumer.commit(offsets=offsets, asynchronous=False))
        except KafkaException as e:
            self.inflight.commit_failed(todo)
            self._commit_error(e.args[0], list(todo))
            return set(todo)

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's on_commit: an asynchronous commit's outcome."""
        self._commits_out = max(0, self._commits_out - 1)
        self._outcome(err, partitions)

    def _outcome(self, err: KafkaError | None, partitions: list[TopicPartition]) -> set[TP]:
        """A commit's outcome (on_commit's, or a synchronous commit's result); returns the
        partitions it failed for."""
        failed = {(p.topic, p.partition) for p in partitions if p.error is not None}
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            failed = {(p.topic, p.partition) for p in partitions}
        self.inflight.confirmed(
            ((p.topic, p.partition), p.offset)
            for p in partitions
            if (p.topic, p.partition) not in failed
        )
        if failed:
            self.inflight.commit_failed(failed)
            self._commit_error(err or partitions[0].error, sorted(failed))
        elif self._commit_failing:
            self._commit_failing = False
            log.info("kafka commits for %r succeed again", self.topic)
        return failed

    def _commit_error(self, err: KafkaError | None, tps: list[TP]) -> None:
        # Retried at the next poll; report once per failing streak, not every 50 ms.
        if self._commit_failing:
            log.debug("kafka commit of %s still failing: %s", tps, err)
            return
        self._commit_failing = True
        self.report(
            QchanError(
                f"kafka commit for {self.topic!r} partitions {sorted(p for _, p in tps)} "
                f"failed: {err.str() if err is not None else 'unknown error'}; retrying "
                "(until it succeeds, a restart redelivers these messages)"
            )
        )

    def try_commit(self) -> None:
        """Commit now if the consumer is free; otherwise the next receive or hold does, within
        `SLICE`."""
        consumer = self.consumer
        if consumer is not None and self.lock.acquire(blocking=False):
            try:
                self._commit_pending(consumer)
            finally:
                self.lock.release()

    def _await_commits(self, consumer: Consumer) -> None:
        """Before the final commit: wait (at most `admin_timeout`) for the outcomes of the
        asynchronous commits still out, so that the final one is the last the group
        applies. One sent again after a dropped connection would otherwise land after
        it and put the group's offset back (measured: 1,100 of 2,000 acked messages
        delivered again after a clean close). Polls with every partition paused: a
        message it still returns is left unread and uncommitted, for the next owner."""
        deadline = time.monotonic() + self.options.admin_timeout
        while self._commits_out and time.monotonic() < deadline:
            try:
                self._pause(consumer)
                consumer.poll(SLICE)  # serves on_commit
            except KafkaException as e:
                log.debug("kafka consumer of %r while closing: %s", self.topic, e)
                return
        if self._commits_out:
            log.warning(
                "kafka consumer of %r closing with %d commit(s) unanswered after %s s",
                self.topic,
                self._commits_out,
                self.options.admin_timeout,
            )

    def close(self) -> None:
        """Commit what is settled, with o=0 (a clean end, not a death), and leave the group."""
        self.closing = True
        self.wake.set()
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        with self.lock:
            self._await_commits(consumer)
            todo = self.inflight.finish()
            if todo:
                self._commit(consumer, todo, asynchronous=False)
            try:
                consumer.close()  # runs on_revoke: the final commit
            except (KafkaException, RuntimeError) as e:
                self.report(QchanError(f"closing kafka consumer of {self.topic!r}: {e}"))
