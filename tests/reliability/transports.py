"""One small factory per transport: the reliability scenarios are parametrized over these.

A `Transport` opens `Queue`s on fresh, uniquely named queues (optionally
behind a fault `Link`), tells how many messages the broker still holds for a
queue, and deletes it afterwards. Scenario sizes live here too: a 200 ms link
costs a round trip per batch, so the latency scenario sends fewer messages to
brokers whose protocol waits for each batch (SQS is HTTP request/response).
"""

from __future__ import annotations

import abc
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from qchan import Adapter, Queue, connect
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.retry import Exponential

from .links import InjectedLink, Link
from .proxy import TcpProxy

__all__ = [
    "PATIENT",
    "EmbeddedTransport",
    "KafkaTransport",
    "PostgresTransport",
    "RabbitTransport",
    "RedisTransport",
    "SQSTransport",
    "Transport",
]

#: A retry policy that outlasts the longest cut (10 s): a try at least every second, for 60 s.
PATIENT = Exponential(base=0.05, cap=1.0, max_attempts=None, max_elapsed=60.0)


class Transport(abc.ABC):
    """A broker the scenarios run against."""

    #: The parametrization id, and the Report's transport column.
    name: ClassVar[str]
    #: Messages per scenario (the issue asks for 5,000 through the cuts).
    sizes: ClassVar[dict[str, int]] = {
        "baseline": 2000,
        "cut": 5000,
        "stall": 2500,
        "unreachable": 1000,
        "latency": 500,
        "drop": 2000,
        "restart": 3000,
        "producer": 2000,
    }
    #: Seconds the broker takes to redeliver a message whose ack was lost.
    redelivery: ClassVar[float] = 2.0
    #: The broker survives the test process (crash-safety scenarios need that).
    external: ClassVar[bool] = True
    #: Producer options that make sends fail (not wait) while the link is cut, so the
    #: kernel's retry policy is what decides.
    fail_fast: ClassVar[dict[str, Any]] = {}
    #: Seconds a cut lasts that outlasts two failed attempts with `fail_fast`.
    long_cut: ClassVar[float] = 2.0
    #: Seconds of silence after which the broker fences a consumer (Kafka's group
    #: session on the scenario's cluster); None: no such thing.
    session: float | None = None
    #: Seconds a fresh consumer may need to get a killed consumer's messages back.
    crash_patience: ClassVar[float] = 30.0
    #: Seconds before a fresh consumer is given what a killed one held (Kafka: the dead
    #: member's group session, and the classic protocol's join delay); 0: at once.
    takeover: float = 0.0
    #: The largest message (body bytes) the transport accepts with `size_options`.
    max_message_size: ClassVar[int] = 256 * 1024
    size_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self._names: list[str] = []
        self._links: list[Link] = []
        #: `connect()` options a child process adds to `url(name)`.
        self.child_options: dict[str, Any] = {}

    def new_name(self) -> str:
        name = f"qchan-rel-{uuid.uuid4().hex[:10]}"
        self._names.append(name)
        self.prepare(name)
        return name

    def prepare(self, name: str) -> None:  # noqa: B027 - optional hook
        """Create what the queue needs before the first Queue opens on it."""

    @abc.abstractmethod
    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        """A kernel `Queue` on `name`, through `link` when given."""

    @abc.abstractmethod
    def new_link(self) -> Link:
        """A fault link between this transport's clients and its broker."""

    def link(self) -> Link:
        link = self.new_link()
        self._links.append(link)
        return link

    def isolate(self) -> None:  # noqa: B027 - optional hook
        """Give this test a broker of its own where the transport can (Kafka: a private
        mock cluster with a short group session, so a dead member's partitions move fast)."""

    def url(self, name: str) -> str:
        """A `connect()` URL for `name` (for subprocesses), without a link."""
        raise NotImplementedError(f"{self.name} has no URL a subprocess can open")

    def leftover(self, name: str) -> int | None:
        """Messages the broker holds for `name` (visible or in flight); None if it cannot tell."""
        return None

    def limit(self, name: str, max_deliveries: int) -> dict[str, Any]:
        """Make the broker (or the adapter) dead-letter a message of `name` after
        `max_deliveries` deliveries; the `open` options that do it."""
        return {"max_deliveries": max_deliveries}

    def dead_letters(self, name: str) -> int:
        """Messages of `name` in its dead-letter queue or topic."""
        raise NotImplementedError(f"{self.name} cannot count dead letters")

    def written(self, name: str) -> int | None:
        """Records the broker has stored for `name` since it was created (a log's length:
        what the producer wrote, its resends included); None where consuming removes them."""
        return None

    def cleanup(self, name: str) -> None:  # noqa: B027 - optional hook
        """Delete the queue (after the test)."""

    def close(self) -> None:
        for link in self._links:
            link.close()
        for name in self._names:
            try:
                self.cleanup(name)
            except Exception:
                pass


class EmbeddedTransport(Transport):
    """`mem://`: in-process, so faults are injected at the adapter boundary."""

    name = "mem"
    external = False
    redelivery = 2.0

    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        limit = options.pop("max_deliveries", None)
        adapter: Adapter = EmbeddedAdapter(
            name, visibility_timeout=self.redelivery, max_deliveries=limit
        )
        if link is not None:
            assert isinstance(link, InjectedLink)
            adapter = link.wrap(adapter)
        return Queue(adapter, **{"poll_wait": 0.2, **options})

    def new_link(self) -> Link:
        return InjectedLink()

    def url(self, name: str) -> str:
        return f"mem://{name}"

    def leftover(self, name: str) -> int:
        b = broker(name)
        return b.depth + b.in_flight

    def dead_letters(self, name: str) -> int:
        return len(broker(name).dead_letters)

    def cleanup(self, name: str) -> None:
        broker(name).purge()


class RabbitTransport(Transport):
    """`amqp://` on the real broker (127.0.0.1:5672, guest/guest); faults through `TcpProxy`.

    Quorum queues (the adapter's default). The consumer's `prefetch` follows
    its `in_flight`, as docs/rabbitmq.md advises. `leftover` counts ready
    messages (a closed consumer's un-acked deliveries are requeued, so after
    close that is everything the broker holds).
    """

    name = "amqp"
    host, port = "127.0.0.1", 5672
    max_message_size = 1024 * 1024  # the adapter's check, set below RabbitMQ's 128 MiB
    size_options: ClassVar[dict[str, Any]] = {"max_message_size": max_message_size}

    def __init__(self) -> None:
        super().__init__()
        self._admin: Any = None

    def url(self, name: str, port: int | None = None) -> str:
        return f"amqp://guest:guest@{self.host}:{port or self.port}/%2F?queue={name}"

    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        port = None
        if link is not None:
            assert isinstance(link, TcpProxy)
            port = link.port
        options.setdefault("prefetch", options.get("in_flight", 500))
        options.setdefault("poll_wait", 0.2)
        return connect(self.url(name, port), **options)

    def new_link(self) -> Link:
        return TcpProxy((self.host, self.port))

    def _channel(self) -> Any:
        import pika

        if self._admin is None or self._admin.is_closed:
            self._admin = pika.BlockingConnection(pika.ConnectionParameters(self.host, self.port))
        return self._admin.channel()

    def leftover(self, name: str) -> int | None:
        import pika

        try:
            ch = self._channel()
            try:
                return int(ch.queue_declare(name, passive=True).method.message_count)
            finally:
                if ch.is_open:
                    ch.close()
        except (pika.exceptions.AMQPError, OSError):
            self._admin = None
            return None

    def dead_letters(self, name: str) -> int:
        return self.leftover(f"{name}.dlq") or 0

    def cleanup(self, name: str) -> None:
        import pika

        for attempt in range(2):
            try:
                ch = self._channel()
                ch.queue_delete(name)
                ch.queue_delete(f"{name}.dlq")
                ch.close()
                return
            except (pika.exceptions.AMQPError, OSError):
                self._admin = None  # a connection from before a broker restart: reopen
                if attempt:
                    raise

    def close(self) -> None:
        super().close()
        if self._admin is not None and self._admin.is_open:
            self._admin.close()


class RedisTransport(Transport):
    """`redis://` on the real Redis (127.0.0.1:6379); faults through `TcpProxy`.

    A 2 s visibility timeout, so a delivery whose ack was lost is claimed again
    quickly. A stream keeps what the group acked (as a Kafka topic does): `leftover`
    is the group's lag plus its pending entries, `written` the stream's length.
    """

    name = "redis"
    host, port = "127.0.0.1", 6379
    max_message_size = 1024 * 1024  # the adapter's default max_message_size
    #: Fail a send within a second or two while the link is cut.
    fail_fast: ClassVar[dict[str, Any]] = {"connect_timeout": 1.0, "socket_timeout": 1.0}

    def __init__(self, port: int = 6379) -> None:
        super().__init__()
        import redis

        self.port = port
        self.client = redis.Redis(self.host, self.port)

    def url(self, name: str, port: int | None = None) -> str:
        return (
            f"redis://{self.host}:{port or self.port}/0?stream={name}"
            f"&visibility_timeout={self.redelivery}&wait=0.2"
        )

    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        port = None
        if link is not None:
            assert isinstance(link, TcpProxy)
            port = link.port
        options.setdefault("poll_wait", 0.2)
        return connect(self.url(name, port), **options)

    def new_link(self) -> Link:
        return TcpProxy((self.host, self.port))

    def leftover(self, name: str) -> int | None:
        import redis

        try:
            for g in self.client.xinfo_groups(name):
                if g["name"] == b"qchan":
                    return int(g["lag"] or 0) + int(g["pending"])
            return int(self.client.xlen(name))
        except redis.ResponseError:
            return 0  # no stream: nothing was ever sent
        except redis.RedisError:
            return None

    def dead_letters(self, name: str) -> int:
        return int(self.client.xlen(f"{name}.dlq"))

    def written(self, name: str) -> int | None:
        return int(self.client.xlen(name))

    def cleanup(self, name: str) -> None:
        self.client.delete(name, f"{name}.dlq")

    def close(self) -> None:
        super().close()
        self.client.close()


class PostgresTransport(Transport):
    """`postgresql://` on the real PostgreSQL (127.0.0.1:5432, database `test`); faults
    through `TcpProxy`. A 2 s lease, so a delivery whose ack was lost is taken again
    quickly; `leftover` counts the queue table's rows (acked rows are deleted)."""

    name = "postgres"
    host, port, db = "127.0.0.1", 5432, "test"
    max_message_size = 1024 * 1024  # the adapter's default max_message_size
    fail_fast: ClassVar[dict[str, Any]] = {}

    def url(self, name: str, port: int | None = None) -> str:
        return (
            f"postgresql://postgres@{self.host}:{port or self.port}/{self.db}?queue={name}"
            f"&visibility_timeout={self.redelivery}&wait=0.2&connect_timeout=2"
        )

    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        port = None
        if link is not None:
            assert isinstance(link, TcpProxy)
            port = link.port
        options.setdefault("poll_wait", 0.2)
        return connect(self.url(name, port), **options)

    def new_link(self) -> Link:
        return TcpProxy((self.host, self.port))

    def _count(self, table: str) -> int | None:
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(self.url("x").split("?")[0], autocommit=True) as c:
                if c.execute("SELECT to_regclass(%s)", (f'"qchan"."{table}"',)).fetchone() == (
                    None,
                ):
                    return 0
                row = c.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("qchan", table))
                ).fetchone()
                return int(row[0]) if row else None
        except psycopg.Error:
            return None

    def leftover(self, name: str) -> int | None:
        return self._count(name)

    def dead_letters(self, name: str) -> int:
        return self._count(f"{name}_dlq") or 0

    def cleanup(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("x").split("?")[0], autocommit=True) as c:
            for table in (name, f"{name}_dlq"):
                c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table)))


class SQSTransport(Transport):
    """`sqs://` on moto's server (the session's `sqs_endpoint`); faults through `TcpProxy`.

    Standard queues with a 2 s visibility timeout, so a message whose ack was
    lost comes back quickly. Each request is an HTTP round trip, so the 200 ms
    latency scenario sends fewer messages. `leftover` is SQS's own estimate
    (visible + in flight + delayed), exact enough on moto.
    """

    name = "sqs"
    max_message_size = 1024 * 1024  # moto's default MaximumMessageSize, as AWS's since 2025
    sizes: ClassVar[dict[str, int]] = {
        **Transport.sizes,
        "latency": 100,
        "stall": 1000,
        "drop": 1000,
        "unreachable": 500,
        "producer": 1000,
    }

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        split = urlsplit(endpoint)
        self.target = (split.hostname or "127.0.0.1", split.port or 80)
        import boto3

        self.client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")

    def url(self, name: str, endpoint: str | None = None) -> str:
        return (
            f"sqs://{name}?endpoint={endpoint or self.endpoint}&region=us-east-1"
            f"&visibility_timeout={int(self.redelivery)}&wait=1"
        )

    def prepare(self, name: str) -> None:
        self.client.create_queue(
            QueueName=name, Attributes={"VisibilityTimeout": str(int(self.redelivery))}
        )

    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        endpoint = None
        if link is not None:
            assert isinstance(link, TcpProxy)
            endpoint = f"http://127.0.0.1:{link.port}"
        options.setdefault("poll_wait", 1.0)
        # Fail fast on a cut link and leave the retries to the kernel (as in production).
        options.setdefault("connect_timeout", 1.0)
        options.setdefault("read_timeout", 5.0)
        return connect(self.url(name, endpoint), **options)

    def new_link(self) -> Link:
        return TcpProxy(self.target)

    def limit(self, name: str, max_deliveries: int) -> dict[str, Any]:
        """A redrive policy to `<name>-dlq` (created here) with maxReceiveCount."""
        import json

        dlq = self.client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        arn = self.client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        url = self.client.get_queue_url(QueueName=name)["QueueUrl"]
        policy = {"deadLetterTargetArn": arn, "maxReceiveCount": str(max_deliveries)}
        self.client.set_queue_attributes(
            QueueUrl=url, Attributes={"RedrivePolicy": json.dumps(policy)}
        )
        return {}

    def dead_letters(self, name: str) -> int:
        return self.leftover(f"{name}-dlq") or 0

    def leftover(self, name: str) -> int | None:
        try:
            url = self.client.get_queue_url(QueueName=name)["QueueUrl"]
            a = self.client.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]
        except Exception:
            return None
        return sum(int(v) for v in a.values())

    def cleanup(self, name: str) -> None:
        for queue in (name, f"{name}-dlq"):
            try:
                url = self.client.get_queue_url(QueueName=queue)["QueueUrl"]
            except self.client.exceptions.QueueDoesNotExist:
                continue
            self.client.delete_queue(QueueUrl=url)


class ControlledCluster:
    """A private mock Kafka cluster (tests/reliability/kafka_mock.py) a scenario may break."""

    LAUNCHER = Path(__file__).with_name("kafka_mock.py")

    def __init__(self, log: Path, brokers: int = 1) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, str(self.LAUNCHER), "--brokers", str(brokers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        assert self.proc.stdout is not None
        self.bootstrap = self.proc.stdout.readline().strip()
        if not self.bootstrap:
            self.stop()
            raise RuntimeError(f"the mock Kafka cluster did not start; see {log}")

    def command(self, line: str) -> None:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"mock cluster command {line!r}: {answer}")

    def create_topic(self, topic: str, partitions: int = 4) -> None:
        self.command(f"create {topic} {partitions}")

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class KafkaMockLink:
    """Faults from inside the mock cluster: brokers down (cut), response delay (latency),
    brokers down and straight up again (every connection dropped)."""

    def __init__(self, cluster: ControlledCluster) -> None:
        self.cluster = cluster
        self._closed = False

    def cut(self) -> None:
        self.cluster.command("alldown")

    def restore(self) -> None:
        if not self._closed:
            self.cluster.command("allup")

    def latency(self, seconds: float) -> None:
        self.cluster.command(f"rtt 1 {int(seconds * 1000)}")

    def stall(self) -> None:
        # The mock's rtt delays responses already queued too, so a stall could not be
        # lifted on time; and down brokers are a cut, not a black hole.
        raise NotImplementedError("the mock Kafka cluster cannot black-hole a connection")

    def drop_connections(self) -> int:
        self.cluster.command("alldown")
        self.cluster.command("allup")
        return 1

    def close(self) -> None:
        self._closed = True


class KafkaTransport(Transport):
    """`kafka://` on librdkafka's mock cluster. Scenarios without a fault share the session's
    cluster; a scenario that takes a link gets a private one-broker cluster to break.

    `leftover` is the consumer group's lag: end offsets minus committed offsets.
    """

    name = "kafka"
    max_message_size = 1_000_000  # librdkafka's message.max.bytes
    crash_patience = 60.0  # the killed member's partitions move after its session times out
    #: librdkafka retries inside `send_timeout` (30 s) on its own: shorten it so a cut
    #: reaches the kernel's policy.
    fail_fast: ClassVar[dict[str, Any]] = {"send_timeout": 0.5}
    #: An attempt lasts up to `send_timeout` + 5 s (docs/kafka.md, "Producing"):
    #: librdkafka times messages out on a 1 s scan (librdkafka PR #2471), and does
    #: not time out those already queued for a broker whose connection is down; the
    #: adapter purges those 5 s after `send_timeout` (measured here: most attempts
    #: 0.5 to 1.0 s, some 5.5 s). Two attempts and the retry pause fit in 12 s.
    long_cut: ClassVar[float] = 12.0
    #: The group session on private clusters (KIP-848, broker side), and its heartbeat.
    session_ms, heartbeat_ms = 3000, 500

    def __init__(self, cluster: Any, workdir: Path, group_config: dict[str, Any]) -> None:
        super().__init__()
        self.cluster = cluster
        self.workdir = workdir
        self.group_config = group_config
        self.child_options = {"consumer_config": group_config}
        self._private: list[ControlledCluster] = []
        self._lag: dict[str, Any] = {}

    def isolate(self) -> None:
        self.session = self.session_ms / 1000
        classic = self.group_config.get("session.timeout.ms")
        # The classic protocol's session is the client's; the mock also delays a join 3 s.
        self.takeover = classic / 1000 + 3.0 if classic else self.session
        c = ControlledCluster(self.workdir / f"kafka-{len(self._private)}.log")
        c.command(f"session {self.session_ms} {self.heartbeat_ms}")
        self._private.append(c)
        self.cluster = c  # the scenario's queues live on the cluster it may break

    def new_link(self) -> Link:
        self.isolate()
        return KafkaMockLink(self._private[-1])

    def prepare(self, name: str) -> None:
        self.cluster.create_topic(name, 4)
        self.cluster.create_topic(f"{name}.dlq", 4)

    def url(self, name: str) -> str:
        return f"kafka://{self.cluster.bootstrap}/{name}?group=g-{name}"

    def open(self, name: str, link: Link | None = None, **options: Any) -> Queue:
        options.setdefault("consumer_config", self.group_config)
        options.setdefault("poll_wait", 0.2)
        options.setdefault("admin_timeout", 2.0)
        return connect(self.url(name), **options)

    def _inspector(self, name: str) -> Any:
        """A consumer in the scenario's group that only reads offsets (never subscribes)."""
        from confluent_kafka import Consumer

        c = self._lag.get(name)
        if c is None:
            c = self._lag[name] = Consumer(
                {
                    "bootstrap.servers": self.cluster.bootstrap,
                    "group.id": f"g-{name}",
                    "enable.auto.commit": False,
                }
            )
        return c

    def written(self, name: str) -> int | None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            c = self._inspector(name)
            meta = c.list_topics(name, timeout=2)
            total = 0
            for p in meta.topics[name].partitions:
                low, high = c.get_watermark_offsets(TopicPartition(name, p), timeout=2)
                total += high - low
            return total
        except (KafkaException, KeyError):
            return None

    def leftover(self, name: str) -> int | None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            c = self._inspector(name)
            meta = c.list_topics(name, timeout=2)
            parts = [TopicPartition(name, p) for p in meta.topics[name].partitions]
            lag = 0
            for tp in c.committed(parts, timeout=2):
                low, high = c.get_watermark_offsets(tp, timeout=2)
                lag += high - (tp.offset if tp.offset >= 0 else low)
            return lag
        except (KafkaException, KeyError):
            return None

    def dead_letters(self, name: str) -> int:
        return self.written(f"{name}.dlq") or 0

    def cleanup(self, name: str) -> None:
        c = self._lag.pop(name, None)
        if c is not None:
            c.close()

    def close(self) -> None:
        super().close()
        for c in self._private:
            c.stop()
