"""What every part of the Kafka adapter needs of the cluster: librdkafka clients
built without leaking secrets, their error callback, and topics that exist."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from qchan.errors import ConnectionLost, QchanError
from qchan.logs import Repeats

from ._config import KafkaOptions, admin_config, consumer_config, scrub
from ._wire import NO_TOPIC, UNREACHABLE, TopicNotFound

__all__ = ["GRACE", "Cluster"]

log = logging.getLogger("qchan.adapters.kafka")
_REPEATS = Repeats()
_C = TypeVar("_C")

#: Extra time a wait on librdkafka allows beyond its own timeout (`send_timeout`,
#: `admin_timeout`) for it to time requests out.
GRACE = 5.0


class Cluster:
    """One adapter's view of the cluster: it builds clients and checks (or creates) topics.

    `report` hands an error to the kernel (`Adapter.hooks.report`, read at call time).
    """

    def __init__(self, options: KafkaOptions, report: Callable[[BaseException], None]) -> None:
        self.options = options
        self.report = report
        self.topic = options.topic
        self._topics_ok: set[str] = set()

    def client(self, cls: Callable[[dict[str, Any]], _C], conf: dict[str, Any]) -> _C:
        """A librdkafka client; configuration errors come out without secret values."""
        try:
            return cls(conf)
        except (KafkaException, ValueError, TypeError) as e:
            raise QchanError(f"kafka client for {self.topic!r}: {scrub(str(e), conf)}") from None

    def client_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: it reconnects by itself; say so when nothing is reachable."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.report(
                ConnectionLost(
                    f"kafka brokers {self.options.bootstrap} all unreachable ({err.str()}); "
                    "reconnecting"
                )
            )
        elif err.fatal():
            self.report(QchanError(f"kafka client of {self.topic!r}: {err.str()}"))
        elif err.code() in UNREACHABLE:  # librdkafka retries by itself: say so, not per retry
            text = f"kafka client of {self.topic!r}: {err.str()}; reconnecting"
            show, held = _REPEATS.check(text)
            if show:
                more = f" ({held} more like it in the last {_REPEATS.every:.0f} s)" if held else ""
                self.report(ConnectionLost(text + more))
        else:
            _REPEATS.log(log, logging.WARNING, f"kafka client of {self.topic!r}: {err.str()}")

    def lag(self, skip: bool = False) -> int:
        """The group's lag on the topic: per partition, the end offset less the committed
        one (with none committed, `offset_reset` decides: earliest counts it all, latest
        nothing). With `skip`, commit the end offsets for the group first (a purge for
        this group only: the messages stay on the topic) and return how many were skipped.

        A consumer of the group's own, which never joins it (no subscribe); Kafka refuses
        its commit while members of the group are active (stop them first).
        """
        o = self.options
        conf = consumer_config(o, log, self.client_error, lambda *_: None)
        consumer = self.client(Consumer, conf)
        wait = o.admin_timeout
        try:
            self.ensure_topic(consumer, self.topic)
            meta = consumer.list_topics(self.topic, timeout=wait).topics[self.topic]
            tps = [TopicPartition(self.topic, p) for p in sorted(meta.partitions)]
            committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=wait)}
            ends: list[TopicPartition] = []
            lag = 0
            for tp in tps:
                low, high = consumer.get_watermark_offsets(tp, timeout=wait, cached=False)
                start = committed.get(tp.partition, -1)
                if start < 0:  # nothing committed yet
                    start = low if o.offset_reset == "earliest" else high
                lag += max(0, high - max(start, low))
                ends.append(TopicPartition(self.topic, tp.partition, high))
            if skip and lag:
                for tp in consumer.commit(offsets=ends, asynchronous=False) or []:
                    if tp.error is not None:
                        raise KafkaException(tp.error)
            return lag
        except KafkaException as e:
            err: KafkaError = e.args[0]
            text = err.str() if isinstance(err, KafkaError) else str(e)
            if isinstance(err, KafkaError) and err.code() in UNREACHABLE:
                raise ConnectionLost(f"kafka {o.bootstrap}, topic {self.topic!r}: {text}") from None
            raise QchanError(
                f"kafka group {o.group!r} on topic {self.topic!r}: "
                f"{'skipping to the end' if skip else 'reading its offsets'} failed: {text}"
                + ("; stop the group's consumers first" if skip else "")
            ) from None
        finally:
            consumer.close()

    def forget(self, topic: str) -> None:
        """`topic` went missing: check it again before the next use."""
        self._topics_ok.discard(topic)

    def ensure_topic(self, client: Producer | Consumer, topic: str) -> None:
        """Fail clearly if `topic` is missing, or create it when `partitions` says so."""
        if topic in self._topics_ok:
            return
        timeout = self.options.admin_timeout
        meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
        error = meta.error if meta is not None else None
        if meta is not None and error is None:
            self._topics_ok.add(topic)
            return
        if error is not None and error.code() not in NO_TOPIC:
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
        admin = self.client(AdminClient, admin_config(o, log))
        new = NewTopic(topic, num_partitions=o.partitions or -1, replication_factor=o.replication)
        future = admin.create_topics(
            [new], request_timeout=o.admin_timeout, operation_timeout=o.admin_timeout
        )[topic]
        try:
            future.result(timeout=o.admin_timeout + GRACE)
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
