"""The produce side of the Kafka adapter: one `Producer`, owned by the emitter thread.

`submit` produces a batch and returns at once (the emitter keeps `pipeline`
batches on the wire); the batch's `Produced` collects the delivery reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from qchan.adapter import Sending
from qchan.message import Bag

from ._cluster import GRACE, Cluster
from ._config import KafkaOptions, producer_config
from ._wire import KafkaSendError, TopicNotFound, attributes, key_bytes, send_error

__all__ = ["Produced", "Producing"]

log = logging.getLogger("qchan.adapters.kafka")


class _Pending:
    """Outcome placeholder until a delivery report arrives."""


_PENDING = _Pending()


class Produced(Sending):
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
        "bags",
        "deadline",
        "failed",
        "left",
        "outcomes",
        "producer",
        "side",
        "unmatched",
    )

    def __init__(self, side: Producing, producer: Producer, bags: Sequence[Bag]) -> None:
        super().__init__()
        self.side = side
        self.producer = producer
        self.bags = bags
        self.outcomes: list[BaseException | _Pending | None] = [_PENDING] * len(bags)
        self.left = len(bags)  # no delivery report yet
        self.failed = 0  # outcomes set to an error (by a report, or by submit)
        self.unmatched = 0  # failures that matched no bag (never expected)
        self.deadline = time.monotonic() + side.options.send_timeout

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        self.left -= 1
        if err is None:
            return
        self.failed += 1
        error = self.side.send_error(err)
        value, key, raw = msg.value() or b"", msg.key(), msg.headers()
        # librdkafka drops the headers of a message it timed out locally (measured,
        # confluent-kafka 2.16: headers() is None): then value and key must do.
        headers = (
            None
            if raw is None and any(b.attributes for b in self.bags)
            else (attributes(raw or []))
        )
        alike = [
            i
            for i, bag in enumerate(self.bags)
            if self.outcomes[i] is _PENDING
            and bag.body == value
            and key_bytes(self.side.key(bag)) == key
            and (headers is None or dict(bag.attributes) == headers)
        ]
        if not alike:
            self.unmatched += 1
            log.error(
                "kafka delivery report for %r matches no message of its batch: %s",
                self.side.topic,
                error,
            )
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
        while self.left and time.monotonic() < self.deadline + GRACE:
            left = max(0.0, self.deadline + GRACE - time.monotonic())
            if self.side.newest is self:
                # Nothing produced after this batch: flush, which also sends at once
                # what linger.ms would hold back.
                producer.flush(left)
            else:  # later batches are on the wire: serve reports until ours are in
                producer.poll(min(0.1, left))
        if self.left:
            # Not yet sent: drop them so a retry by the kernel cannot duplicate them.
            producer.purge(in_queue=True, in_flight=False)
            producer.poll(0)
        topic = self.side.topic
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
            self.side.drop()
        return result


class Producing:
    """The producer of one topic and how its messages are keyed."""

    def __init__(self, options: KafkaOptions, cluster: Cluster) -> None:
        self.options = options
        self.cluster = cluster
        self.topic = options.topic
        self.producer: Producer | None = None
        self.newest: Produced | None = None  # the batch produced last

    def submit(self, bags: Sequence[Bag]) -> Produced:
        """Produce every bag; the broker's confirmations are collected by `result`."""
        producer = self.producer or self._open()
        sending = self.newest = Produced(self, producer, bags)
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
                sending.outcomes[i] = self.send_error(e.args[0])
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
                return self.send_error(e.args[0])
        return KafkaSendError(
            f"kafka producer queue for {topic!r} stayed full for "
            f"{self.options.send_timeout} s; the broker is not keeping up"
        )

    def key(self, bag: Bag) -> str | bytes | None:
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

    def send_error(self, err: KafkaError) -> BaseException:
        error = send_error(err, self.topic)
        if isinstance(error, TopicNotFound):
            self.cluster.forget(self.topic)
        return error

    def _open(self) -> Producer:
        cluster = self.cluster
        conf = producer_config(self.options, log, cluster.client_error)
        producer = cluster.client(Producer, conf)
        try:
            cluster.ensure_topic(producer, self.topic)
        except BaseException:
            producer.flush(0)
            raise
        self.producer = producer
        return producer

    def drop(self) -> None:
        """After a fatal error (idempotence broken) the producer is unusable: start over."""
        producer, self.producer = self.producer, None
        if producer is not None:
            log.warning("kafka producer for %r hit a fatal error; creating a new one", self.topic)
            producer.purge()
            producer.flush(0)

    def close(self) -> int:
        """Flush what is still on its way; how many messages were left unsent."""
        producer, self.producer = self.producer, None
        return producer.flush(self.options.send_timeout) if producer is not None else 0
