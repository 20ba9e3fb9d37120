"""Kafka adapter (confluent-kafka): `kafka://host:9092[,host:9092]/topic?group=billing`.

One `Producer` owned by the emitter thread (`send_batch`), one `Consumer` in a
consumer group owned by the poller thread (`receive`), and, only when a poison
message shows up, a second producer owned by the acker thread for the
dead-letter topic. docs/kafka.md is the user-facing reference; the points a
maintainer must not break:

* Commits cover only the contiguous acked prefix of each partition
  (`_kafka_inflight.InFlight`): a later ack never commits past an earlier
  message that is still in flight or failed.
* Who commits: confluent-kafka >= 2.16 serialises calls on one Consumer
  (a "reentrancy gate"), so a commit from the acker thread while the poller
  sits in `poll()` blocks until that poll returns (measured: 2.7 s of a 3 s
  poll). So the acker commits only when it can take the consumer lock without
  waiting; otherwise the poller commits between its short polls
  (`_SLICE`, 50 ms). Commits are asynchronous except on revocation and close.
* A nack is redelivered from memory and its offset stays uncommitted (no
  seek). After `max_deliveries` deliveries the message goes to the dead-letter
  topic, and only once the broker confirmed that copy does its offset count
  as settled, so the partition moves on and nothing is ever skipped.
* Rebalances: revoked partitions commit what is settled, drop their state and
  tell the kernel (`hooks.revoke`) to drop their undelivered bags.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from qchan.adapter import Adapter, Sending
from qchan.errors import (
    ConnectionLost,
    MessageError,
    MessageTooLarge,
    QchanError,
    RejectedError,
    UnroutableError,
    describe,
)
from qchan.logs import Repeats
from qchan.message import ATTR_CATEGORY, Bag
from qchan.options import renamed

from ._kafka_config import (
    KafkaOptions,
    admin_config,
    consumer_config,
    parse_url,
    producer_config,
    scrub,
)
from ._kafka_inflight import TP, InFlight, Receipt, redelivery

if TYPE_CHECKING:
    from confluent_kafka._types import HeadersType

__all__ = ["KafkaAdapter", "KafkaSendError", "TopicNotFound", "from_url"]

log = logging.getLogger("qchan.adapters.kafka")
_REPEATS = Repeats()
# librdkafka errors that mean "cannot reach the cluster now" (it reconnects by itself).
_UNREACHABLE = frozenset({
    KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._TIMED_OUT, KafkaError._SSL,
    KafkaError._AUTHENTICATION,
})

#: Longest single poll while `receive` waits, so commits, redeliveries and
#: `wakeup` are served promptly (a poll cannot be interrupted).
_SLICE = 0.05
#: Extra time `send_batch` waits beyond `send_timeout` for librdkafka to time messages out.
_GRACE = 5.0
#: Headers the dead-letter copy adds (an earlier copy's are replaced).
DLQ_HEADERS = ("Error", "Deliveries", "OriginTopic", "OriginPartition", "OriginOffset")

_TOO_LARGE = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
}
_REFUSED = {
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,
    KafkaError.POLICY_VIOLATION,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError.INVALID_REQUIRED_ACKS,
}
_NO_TOPIC = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}


class TopicNotFound(QchanError):
    """The topic does not exist and the adapter was not asked to create it."""


class KafkaSendError(QchanError):
    """The broker did not confirm a message; the kernel retries it."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        #: The producer hit a fatal error (idempotence state lost) and is replaced.
        self.fatal = fatal


class _Pending:
    """Outcome placeholder until a delivery report arrives."""


_PENDING = _Pending()
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})
_ATTRIBUTES_CACHE = 1024
# Receipt(...) runs NamedTuple's Python-level __new__; this is the same tuple, 2x faster.
_tuple_new = tuple.__new__
_C = TypeVar("_C")


class _Produced(Sending):
    """A produced batch: delivery reports fill in its outcomes as the broker confirms.

    One callback serves the whole batch (a callable per message costs an
    object that lives until its report). A report does not say which produce
    call it answers, so a failure is matched to its bag by content: value,
    key and headers. Bags alike in all three are interchangeable on the wire;
    the first one not yet failed takes the error. A report without its
    headers (librdkafka drops them from messages it timed out) is matched
    by value and key.
    """

    __slots__ = (
        "adapter", "bags", "deadline", "failed", "left", "outcomes", "producer", "unmatched",
    )

    def __init__(self, adapter: KafkaAdapter, producer: Producer, bags: Sequence[Bag]) -> None:
        super().__init__()
        self.adapter = adapter
        self.producer = producer
        self.bags = bags
        self.outcomes: list[BaseException | _Pending | None] = [_PENDING] * len(bags)
        self.left = len(bags)  # no delivery report yet
        self.failed = 0  # outcomes set to an error (by a report, or by submit)
        self.unmatched = 0  # failures that matched no bag (never expected)
        self.deadline = time.monotonic() + adapter.options.send_timeout

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.left -= 1
        if err is None:
            return
        self.failed += 1
        error = self.adapter._send_error(err)
        value, key, raw = msg.value() or b"", msg.key(), msg.headers()
        # librdkafka drops the headers of a message it timed out locally (measured,
        # confluent-kafka 2.16: headers() is None): then value and key must do.
        headers = None if raw is None and any(b.attributes for b in self.bags) else (
            _attributes(raw or [])
        )
        alike = [
            i for i, bag in enumerate(self.bags)
            if self.outcomes[i] is _PENDING and bag.body == value
            and _key_bytes(self.adapter._key(bag)) == key
            and (headers is None or dict(bag.attributes) == headers)
        ]
        if not alike:
            self.unmatched += 1
            log.error("kafka delivery report for %r matches no message of its batch: %s",
                      self.adapter.topic, error)
            return
        first = dict(self.bags[alike[0]].attributes)
        if headers is None and any(dict(self.bags[i].attributes) != first for i in alike):
            # Alike in value and key only: which one failed is unknown, so every one
            # fails (a retry may duplicate, never lose).
            for i in alike:
                self.outcomes[i] = error
            self.failed += len(alike) - 1
            return
        self.outcomes[alike[0]] = error  # alike in all the report shows: interchangeable

    def result(self, wait: float | None) -> Sequence[BaseException | None] | None:
        producer = self.producer
        if self.left:
            producer.poll(0)  # serve the delivery reports that are in
        if self.left and wait is not None:
            if wait > 0:
                producer.poll(wait)
            if self.left:
                return None
        while self.left and time.monotonic() < self.deadline + _GRACE:
            left = max(0.0, self.deadline + _GRACE - time.monotonic())
            if self.adapter._newest is self:
                # Nothing produced after this batch: flush, which also sends at once
                # what linger.ms would hold back.
                producer.flush(left)
            else:  # later batches are on the wire: serve reports until ours are in
                producer.poll(min(0.1, left))
        if self.left:
            # Not yet sent: drop them so a retry by the kernel cannot duplicate them.
            producer.purge(in_queue=True, in_flight=False)
            producer.poll(0)
        topic = self.adapter.topic
        missing: BaseException | None = None
        if self.left:
            missing = KafkaSendError(f"no delivery report for {topic!r} in time")
        elif self.unmatched:
            missing = KafkaSendError(f"a delivery report for {topic!r} matched no message")
        elif not self.failed:  # every report is in, none failed: the common case
            return [None] * len(self.outcomes)
        # else every report is in, and every failure matched its bag: the rest succeeded
        result = [missing if isinstance(o, _Pending) else o for o in self.outcomes]
        if any(isinstance(o, KafkaSendError) and o.fatal for o in result):
            self.adapter._drop_producer()
        return result


class KafkaAdapter(Adapter):
    """One Kafka topic: produce to it, consume it in a consumer group.

    `KafkaAdapter("orders", bootstrap="h1:9092,h2:9092", group="billing")`;
    every option is described in docs/kafka.md. librdkafka properties pass
    through `config` (both clients), `producer_config` and `consumer_config`.
    """

    scheme = "kafka"
    # Batch size, measured on the mock cluster with 1 KiB messages (send_batch
    # alone, one batch at a time, pre-encoded, median of 5): 100: 106k msg/s, 250: 109-119k,
    # 500: 122k, 1000: 99-104k.
    max_batch = 500
    max_receive = 500
    # submit returns at once: the emitter keeps this many batches on the wire.
    pipeline = 4
    poll_wait = 1.0

    def __init__(self, topic: str, *, bootstrap: str, **options: Any) -> None:
        renamed(f"kafka topic {topic!r}", options, "max_attempts", "max_deliveries")
        try:
            self.options = KafkaOptions(topic=topic, bootstrap=bootstrap, **options)
        except TypeError as e:
            raise TypeError(f"unknown kafka adapter option: {e}") from None
        super().__init__(self.options.name)
        self.topic = topic
        self._inflight = InFlight()
        self._producer: Producer | None = None
        self._newest: _Produced | None = None  # the batch produced last
        self._dlq_producer: Producer | None = None
        self._topics_ok: set[str] = set()
        self._consumer: Consumer | None = None
        # Held around every consumer call; the acker only ever try-acquires it.
        self._consumer_lock = threading.Lock()
        self._wake = threading.Event()
        #: Partitions paused by `hold`; the next `receive` resumes them.
        self._paused: list[TopicPartition] = []
        #: When the consumer last polled, and how long the group lets it go without.
        self._polled = 0.0
        self._poll_interval = 300.0
        self._closing = False
        self._fatal: KafkaError | None = None
        self._commit_failing = False
        # Raw headers -> decoded attributes: most messages repeat the same four.
        self._attributes: dict[tuple[Any, ...], Mapping[str, str]] = {}

    def __repr__(self) -> str:
        return f"<KafkaAdapter {self.options.url()}>"

    # ------------------------------------------------------------------ produce

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        """Produce every bag and wait for the broker's confirmation of each (bounded)."""
        outcomes = self.submit(bags).result(None)
        assert outcomes is not None
        return outcomes

    def submit(self, bags: Sequence[Bag]) -> _Produced:
        """Produce every bag; the broker's confirmations are collected by `result`."""
        producer = self._producer or self._open_producer()
        sending = self._newest = _Produced(self, producer, bags)
        delivered = sending.delivered
        topic = self.topic
        produce = producer.produce
        default_key = None if self.options.key == "none" else self._default_key
        # The kernel shares one attributes mapping per channel: build its headers once.
        last: Mapping[str, str] | None = None
        headers: list[tuple[str, str | bytes | None]] = []
        for i, bag in enumerate(bags):
            if bag.attributes is not last:
                last = bag.attributes
                headers = list(last.items())
            key: str | bytes | None = bag.key
            if key is None and default_key is not None:
                key = default_key(bag)
            try:
                produce(topic, bag.body, key, on_delivery=delivered, headers=headers)
            except BufferError:
                outcome = self._produce_when_room(
                    producer, (topic, bag.body, key), headers, delivered, sending.deadline
                )
                if outcome is not _PENDING:
                    sending.outcomes[i] = outcome
                    sending.left -= 1
                    sending.failed += 1
            except KafkaException as e:
                sending.outcomes[i] = self._send_error(e.args[0])
                sending.left -= 1
                sending.failed += 1
        return sending

    def _produce_when_room(
        self,
        producer: Producer,
        record: tuple[str, bytes, str | bytes | None],
        headers: list[tuple[str, str | bytes | None]],
        callback: Callable[[KafkaError | None, Message], None],
        deadline: float,
    ) -> BaseException | _Pending:
        """librdkafka's local queue is full (backpressure): serve reports until there is room."""
        topic, body, key = record
        while time.monotonic() < deadline:
            producer.poll(0.05)
            try:
                producer.produce(topic, body, key, on_delivery=callback, headers=headers)
                return _PENDING
            except BufferError:
                continue
            except KafkaException as e:
                return self._send_error(e.args[0])
        return KafkaSendError(
            f"kafka producer queue for {topic!r} stayed full for "
            f"{self.options.send_timeout} s; the broker is not keeping up"
        )

    def _key(self, bag: Bag) -> str | bytes | None:
        """The message key `bag` is produced with."""
        if bag.key is not None or self.options.key == "none":
            return bag.key
        return self._default_key(bag)

    def _default_key(self, bag: Bag) -> str | bytes | None:
        policy = self.options.key
        if policy == "none":
            return None
        if policy == "category":
            return bag.category or None
        assert callable(policy)
        return policy(bag)

    def _send_error(self, err: KafkaError) -> BaseException:
        code = err.code()
        text = f"kafka rejected a message for {self.topic!r}: {err.str()}"
        if code in _TOO_LARGE:
            return MessageTooLarge(
                f"{text} (raise message.max.bytes on the producer and the topic, "
                "or send smaller objects)"
            )
        if code in _REFUSED:
            return RejectedError(text)
        if code in _NO_TOPIC:
            self._topics_ok.discard(self.topic)
            return TopicNotFound(f"{text}; create the topic or pass partitions=N")
        return KafkaSendError(
            f"kafka did not confirm a message for {self.topic!r}: {err.str()}", fatal=err.fatal()
        )

    def _open_producer(self) -> Producer:
        producer = self._client(Producer, producer_config(self.options, log, self._client_error))
        try:
            self._ensure_topic(producer, self.topic)
        except BaseException:
            producer.flush(0)
            raise
        self._producer = producer
        return producer

    def _drop_producer(self) -> None:
        """After a fatal error (idempotence broken) the producer is unusable: start over."""
        producer, self._producer = self._producer, None
        if producer is not None:
            log.warning("kafka producer for %r hit a fatal error; creating a new one", self.topic)
            producer.purge()
            producer.flush(0)

    # ------------------------------------------------------------------ topics

    def _ensure_topic(self, client: Producer | Consumer, topic: str) -> None:
        """Fail clearly if `topic` is missing, or create it when `partitions` says so."""
        if topic in self._topics_ok:
            return
        timeout = self.options.admin_timeout
        meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
        error = meta.error if meta is not None else None
        if meta is not None and error is None:
            self._topics_ok.add(topic)
            return
        if error is not None and error.code() not in _NO_TOPIC:
            raise QchanError(f"kafka metadata for topic {topic!r} failed: {error.str()}")
        if self.options.partitions is None:
            raise TopicNotFound(
                f"kafka topic {topic!r} does not exist on {self.options.bootstrap}; "
                f"create it (kafka-topics.sh --create --topic {topic}) or pass "
                "partitions=N to let qchan create it"
            )
        self._create_topic(topic)
        self._topics_ok.add(topic)

    def _create_topic(self, topic: str) -> None:
        """Create through the Admin API; fall back to the broker's auto-creation.

        Brokers without the CreateTopics API (librdkafka's mock cluster times
        out or answers "unsupported") still create topics on a metadata
        request that allows it, with their default partition count.
        """
        o = self.options
        admin = self._client(AdminClient, admin_config(o, log))
        new = NewTopic(topic, num_partitions=o.partitions or -1, replication_factor=o.replication)
        future = admin.create_topics(
            [new], request_timeout=o.admin_timeout, operation_timeout=o.admin_timeout
        )[topic]
        try:
            future.result(timeout=o.admin_timeout + _GRACE)
            log.info("created kafka topic %r with %s partitions", topic, o.partitions)
            return
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            reason = err.str()
        log.warning(
            "could not create kafka topic %r through the Admin API (%s); "
            "asking the broker to auto-create it",
            topic,
            reason,
        )
        meta = admin.list_topics(topic, timeout=o.admin_timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise TopicNotFound(
                f"kafka topic {topic!r} could not be created ({reason}) and the broker "
                "does not auto-create it; create it with your Kafka tools"
            )
        if len(meta.partitions) != o.partitions:
            log.warning(
                "kafka topic %r was auto-created with %d partitions, not %s",
                topic,
                len(meta.partitions),
                o.partitions,
            )

    # ------------------------------------------------------------------ consume

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        """Redeliveries that are due, then fresh messages; waits at most `wait` s for the first."""
        consumer = self._consumer or self._open_consumer()
        if self._paused:
            self._resume(consumer)
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            out = self._inflight.due(now, max_items)
            room = max_items - len(out)
            msgs: list[Message] = []
            with self._consumer_lock:
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
            if self._fatal is not None:
                self._reset_consumer()
                return []
            if out:
                return out
            if self._wake.is_set():
                self._wake.clear()
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
        consumer = self._consumer
        if consumer is None:
            return False  # not consuming yet: no membership to keep
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if now >= deadline:
                return True
            due = self._polled + self._poll_interval / 3
            if now < due:
                if self._wake.wait(min(deadline, due) - now):
                    self._wake.clear()
                    return True
                continue
            with self._consumer_lock:
                self._commit_pending(consumer)
                try:
                    self._pause(consumer)
                    m = consumer.poll(self._slice(now, deadline))
                    self._polled = time.monotonic()
                    if m is not None and m.error() is not None:
                        log.debug("kafka consumer of %r while holding: %s", self.topic, m.error())
                    elif m is not None:
                        # From a partition assigned after the pause: give it back, unread.
                        consumer.seek(TopicPartition(
                            m.topic() or self.topic, m.partition() or 0, m.offset() or 0
                        ))
                        self._pause(consumer)
                except KafkaException as e:
                    if e.args[0].fatal():
                        self._fatal = e.args[0]
                    else:
                        log.warning("kafka consumer of %r while holding: %s", self.topic, e)
            if self._fatal is not None:
                self._reset_consumer()
                return False
            if self._wake.is_set():
                self._wake.clear()
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
        with self._consumer_lock:
            mine = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            paused, self._paused = self._paused, []
            again = [tp for tp in paused if (tp.topic, tp.partition) in mine]
            if again:
                try:
                    consumer.resume(again)
                except KafkaException as e:
                    log.warning("kafka consumer of %r: resume failed: %s", self.topic, e)

    def _slice(self, now: float, deadline: float) -> float:
        timeout = min(_SLICE, max(0.0, deadline - now))
        due = self._inflight.next_due()
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
        attributes: Mapping[str, str] = _NO_ATTRIBUTES
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
                attributes = _NO_ATTRIBUTES
                if headers:
                    try:  # a list of (str, bytes), seen before
                        signature = tuple(cast(list[tuple[str, bytes]], headers))
                        attributes = cache[signature]
                    except KeyError:
                        attributes = self._remember(signature, headers)
                    except TypeError:  # unhashable: a dict, say
                        attributes = MappingProxyType(_attributes(headers))
                category = attributes.get(ATTR_CATEGORY, "")
            key = m.key()
            # Positional (category, body, attributes, id, key, content_type, digest):
            # half the cost of keywords, once per message.
            out.append(Bag(
                category, m.value() or b"", attributes, f"{topic}/{partition}/{offset}",
                None if key is None else key.decode("utf-8", "surrogateescape"), None,
                _tuple_new(Receipt, (topic, partition, offset)),
            ))
        out = self._inflight.deliver_all(out)
        if errors:
            self._consume_errors(errors, raise_first=can_raise and not out)
        return out

    def _remember(self, signature: tuple[Any, ...], headers: HeadersType) -> Mapping[str, str]:
        """Decoded headers, shared read-only by every message with the same headers."""
        attributes = MappingProxyType(_attributes(headers))
        if len(self._attributes) >= _ATTRIBUTES_CACHE:
            self._attributes.clear()  # per-message headers (trace ids): start over
        self._attributes[signature] = attributes
        return attributes

    def _consume_errors(self, errors: list[KafkaError], raise_first: bool) -> None:
        for err in errors:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.fatal():
                self._fatal = err
                continue
            if err.code() in _NO_TOPIC:
                self._topics_ok.discard(self.topic)
                error: QchanError = TopicNotFound(
                    f"kafka topic {self.topic!r} is not available to group "
                    f"{self.options.group!r}: {err.str()}"
                )
            else:
                error = QchanError(f"kafka consumer of {self.topic!r}: {err.str()}")
            if raise_first:
                raise error
            self.hooks.report(error)

    def _open_consumer(self) -> Consumer:
        conf = consumer_config(self.options, log, self._client_error, self._on_commit)
        self._poll_interval = int(conf.get("max.poll.interval.ms", 300_000)) / 1000
        consumer = self._client(Consumer, conf)
        try:
            with self._consumer_lock:
                self._ensure_topic(consumer, self.topic)
                consumer.subscribe(
                    [self.topic],
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        log.info("kafka consumer for %r joined group %r", self.topic, self.options.group)
        return consumer

    def _reset_consumer(self) -> None:
        """After a fatal consumer error: forget everything, join as a new member next time.

        What was received and not committed is redelivered (to us or another member).
        """
        err, self._fatal = self._fatal, None
        consumer, self._consumer = self._consumer, None
        self._paused = []
        if consumer is not None:
            with self._consumer_lock:
                self._revoke(None, self._inflight.assigned())
                try:
                    consumer.close()
                except KafkaException as e:
                    log.debug("closing failed kafka consumer of %r: %s", self.topic, e)
        self.hooks.report(ConnectionLost(f"kafka consumer of {self.topic!r} failed: {err}"))

    # ------------------------------------------------------------- rebalances
    # These run inside poll()/consume()/close() on the thread holding the consumer.

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed: dict[TP, tuple[int, str | None]] = {}
        try:
            for tp in consumer.committed(partitions, timeout=self.options.admin_timeout):
                committed[(tp.topic, tp.partition)] = (tp.offset, tp.metadata)
        except KafkaException as e:
            # Without it the new owner redelivers settled messages above the committed offset.
            log.warning("kafka: reading committed offsets of %r failed: %s", self.topic, e)
        self._inflight.assign([(p.topic, p.partition) for p in partitions], committed)
        parts = sorted(p.partition for p in partitions)
        log.info("kafka group %r assigned %s of %r", self.options.group, parts, self.topic)

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
        final = self._inflight.revoke(tps)
        if consumer is not None and final:
            self._commit(consumer, final, asynchronous=False)
        parts = sorted(p for _, p in tps)
        log.info("kafka group %r revoked %s of %r", self.options.group, parts, self.topic)
        if not self._closing:
            gone = set(tps)
            self.hooks.revoke(
                lambda bag: (
                    isinstance(bag.digest, Receipt)
                    and (bag.digest.topic, bag.digest.partition) in gone
                )
            )

    # ---------------------------------------------------------------- commits

    def _commit_pending(self, consumer: Consumer) -> None:
        todo = self._inflight.to_commit()
        if todo:
            self._commit(consumer, todo, asynchronous=True)

    def _commit(
        self, consumer: Consumer, todo: dict[TP, tuple[int, str]], asynchronous: bool
    ) -> None:
        offsets = [
            TopicPartition(t, p, pos, meta) if meta else TopicPartition(t, p, pos)
            for (t, p), (pos, meta) in todo.items()
        ]
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._committed(None, consumer.commit(offsets=offsets, asynchronous=False))
        except KafkaException as e:
            self._inflight.commit_failed(todo)
            self._commit_error(e.args[0], list(todo))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self._committed(err, partitions)

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [(p.topic, p.partition) for p in partitions if p.error is not None]
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            failed = [(p.topic, p.partition) for p in partitions]
        if failed:
            self._inflight.commit_failed(failed)
            self._commit_error(err or partitions[0].error, failed)
        elif self._commit_failing:
            self._commit_failing = False
            log.info("kafka commits for %r succeed again", self.topic)

    def _commit_error(self, err: KafkaError | None, tps: list[TP]) -> None:
        # Retried at the next poll; report once per failing streak, not every 50 ms.
        if self._commit_failing:
            log.debug("kafka commit of %s still failing: %s", tps, err)
            return
        self._commit_failing = True
        self.hooks.report(
            QchanError(
                f"kafka commit for {self.topic!r} partitions {sorted(p for _, p in tps)} "
                f"failed: {err.str() if err is not None else 'unknown error'}; retrying "
                "(until it succeeds, a restart redelivers these messages)"
            )
        )

    def _try_commit(self) -> None:
        """Commit now if the consumer is free; otherwise the poller does within `_SLICE`."""
        consumer = self._consumer
        if consumer is not None and self._consumer_lock.acquire(blocking=False):
            try:
                self._commit_pending(consumer)
            finally:
                self._consumer_lock.release()

    # ------------------------------------------------------------ acker side

    def ack(self, bags: Sequence[Bag]) -> None:
        """Settle these deliveries; commit whatever prefix that completes."""
        if self._inflight.settle(bags):
            self._try_commit()

    def nack(self, bags: Sequence[Bag], delay: float = 0.0) -> None:
        """Redeliver from memory after `delay` s; dead-letter after `max_deliveries` deliveries."""
        self._redeliver(bags, delay, None)

    def nack_failed(
        self, bags: Sequence[Bag], errors: Sequence[BaseException], delay: float = 0.0
    ) -> None:
        """As `nack`; a dead letter's `Error` header also gives the application's last error."""
        self._redeliver(bags, delay, errors)

    def _redeliver(
        self, bags: Sequence[Bag], delay: float, errors: Sequence[BaseException] | None
    ) -> None:
        at = time.monotonic() + delay
        for i, bag in enumerate(bags):
            if bag.deliveries >= self.options.max_deliveries:
                why = f"failed {bag.deliveries} deliveries"
                if errors is not None:
                    why += f"; the last: {describe(errors[i])}"
                self._dead_letter(bag, why)
            else:
                self._inflight.schedule(bag, at, redelivery)

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """The application gave up: copy each to the dead-letter topic now (as poison)."""
        for bag, error in zip(bags, errors, strict=True):
            self._dead_letter(bag, f"given up after {bag.deliveries} deliveries: "
                                   f"{describe(error)}")

    def release(self, bags: Sequence[Bag]) -> None:
        """Deliveries the application never processed: offered again at once.

        They do not count as attempts (`deliveries` stays), so a release never
        leads to the dead-letter topic. At close the redelivery never happens:
        the offsets stay uncommitted and the partition's next owner receives them.
        """
        now = time.monotonic()
        for bag in bags:
            self._inflight.schedule(bag, now, attrs.evolve)

    def reject(self, bag: Bag, error: MessageError) -> None:
        """Poison policy: undecodable -> dead letter; unroutable -> per the `unroutable` option."""
        if not isinstance(error, UnroutableError):
            self._dead_letter(bag, str(error))
            return
        policy = self.options.unroutable
        if policy == "skip":
            self.ack([bag])
        elif policy == "dlq" or bag.deliveries >= self.options.max_deliveries:
            self._dead_letter(bag, str(error))
        else:
            self._inflight.schedule(bag, time.monotonic() + self.options.retry_delay, redelivery)

    def _dead_letter(self, bag: Bag, reason: str) -> None:
        """Copy `bag` to the dead-letter topic; settle it once the broker confirmed the copy."""
        if not self._inflight.is_current(bag):
            return
        receipt: Receipt = bag.digest
        where = f"{receipt.topic}/{receipt.partition}@{receipt.offset}"
        dlq = self.options.dlq
        if dlq is None:
            self.hooks.report(
                QchanError(f"kafka message {where} dropped (no dead-letter topic): {reason}")
            )
            self.ack([bag])
            return
        try:
            error = self._produce_dead_letter(dlq, bag, reason)
        except (KafkaException, QchanError) as e:
            error = e if isinstance(e, QchanError) else QchanError(str(e.args[0]))
        if error is None:
            log.warning("kafka message %s moved to dead-letter topic %r: %s", where, dlq, reason)
            self.ack([bag])
            return
        self.hooks.report(
            QchanError(f"kafka message {where} could not be dead-lettered to {dlq!r}: {error}")
        )
        # Keep the offset uncommitted and try again later: never skip a message.
        self._inflight.schedule(bag, time.monotonic() + self.options.retry_delay, redelivery)

    def _produce_dead_letter(self, dlq: str, bag: Bag, reason: str) -> BaseException | None:
        producer = self._dlq_producer
        if producer is None:
            conf = producer_config(self.options, log, self._client_error)
            producer = self._dlq_producer = self._client(Producer, conf)
        self._ensure_topic(producer, dlq)
        receipt: Receipt = bag.digest
        headers: list[tuple[str, str | bytes | None]] = [
            (k, v.encode("utf-8", "surrogateescape"))
            for k, v in bag.attributes.items()
            if k not in DLQ_HEADERS
        ]
        headers += [
            ("Error", reason),
            ("Deliveries", str(bag.deliveries)),
            ("OriginTopic", receipt.topic),
            ("OriginPartition", str(receipt.partition)),
            ("OriginOffset", str(receipt.offset)),
        ]
        reports: list[KafkaError | None] = []
        key = None if bag.key is None else bag.key.encode("utf-8", "surrogateescape")
        producer.produce(
            dlq, bag.body, key, headers=headers, on_delivery=lambda err, _m: reports.append(err)
        )
        producer.flush(self.options.send_timeout + _GRACE)
        if not reports:
            return KafkaSendError("no delivery report in time")
        err = reports[0]
        return None if err is None else KafkaSendError(err.str())

    # ------------------------------------------------------------ lifecycle

    def _client(self, cls: Callable[[dict[str, Any]], _C], conf: dict[str, Any]) -> _C:
        """A librdkafka client; configuration errors come out without secret values."""
        try:
            return cls(conf)
        except (KafkaException, ValueError, TypeError) as e:
            raise QchanError(f"kafka client for {self.topic!r}: {scrub(str(e), conf)}") from None

    def _client_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: it reconnects by itself; say so when nothing is reachable."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.hooks.report(
                ConnectionLost(
                    f"kafka brokers {self.options.bootstrap} all unreachable ({err.str()}); "
                    "reconnecting"
                )
            )
        elif err.fatal():
            self.hooks.report(QchanError(f"kafka client of {self.topic!r}: {err.str()}"))
        elif err.code() in _UNREACHABLE:  # librdkafka retries by itself: say so, not per retry
            text = f"kafka client of {self.topic!r}: {err.str()}; reconnecting"
            show, held = _REPEATS.check(text)
            if show:
                more = f" ({held} more like it in the last {_REPEATS.every:.0f} s)" if held else ""
                self.hooks.report(ConnectionLost(text + more))
        else:
            _REPEATS.log(log, logging.WARNING, f"kafka client of {self.topic!r}: {err.str()}")

    def wakeup(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Commit what is settled, leave the group, flush producers."""
        self._closing = True
        self._wake.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with self._consumer_lock:
                todo = self._inflight.to_commit()
                if todo:
                    self._commit(consumer, todo, asynchronous=False)
                try:
                    consumer.close()  # runs on_revoke: the final commit
                except (KafkaException, RuntimeError) as e:
                    self.hooks.report(QchanError(f"closing kafka consumer of {self.topic!r}: {e}"))
        for producer in (self._producer, self._dlq_producer):
            if producer is not None:
                left = producer.flush(self.options.send_timeout)
                if left:
                    self.hooks.report(
                        QchanError(f"kafka producer for {self.topic!r} closed with {left} unsent")
                    )
        self._producer = self._dlq_producer = None


#: The keyword options of `from_url` (KafkaOptions, less what the URL itself names).
OPTIONS = (
    frozenset(a.name for a in attrs.fields(KafkaOptions)) - {"topic", "bootstrap"}
) | {"max_attempts"}  # deprecated: max_deliveries


def from_url(url: str, **options: Any) -> KafkaAdapter:
    """`kafka://host:9092[,host:9092]/topic?group=billing&dlq=orders.dead&partitions=4`."""
    parsed, config = parse_url(url)
    parsed["config"] = {**config, **(options.pop("config", None) or {})}
    parsed.update(options)
    return KafkaAdapter(parsed.pop("topic"), bootstrap=parsed.pop("bootstrap"), **parsed)


def _attributes(headers: HeadersType) -> dict[str, str]:
    """Headers as attributes, whatever their shape (None values, str, a dict)."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {k: _text(v) for k, v in pairs}


def _key_bytes(key: str | bytes | None) -> bytes | None:
    """A key as the broker reports it back."""
    return key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key


def _text(value: str | bytes | None) -> str:
    """A header value as text; bytes that are not UTF-8 survive as surrogate escapes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else value
