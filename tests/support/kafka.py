"""Fixtures for the Kafka tests: a mock Kafka cluster process, unique topics, group settings.

A plugin of tests/conftest.py. `kafka_cluster` starts
tests/support/kafka_mock_cluster.py once per session (librdkafka's
mock cluster, 3 brokers). Set QCHAN_KAFKA_BOOTSTRAP=host:9092 to run the same
tests against a real Kafka instead (the broker fault tests then skip).

Consumer groups: the mock assigns partitions to a classic-protocol group only
after 3 s, and a second member of a group waits for the previous member's
session timeout; with `group.protocol=consumer` (KIP-848) both take ~0.1 s.
QCHAN_KAFKA_GROUP_PROTOCOL=consumer (default) or classic picks one; `group_config`
gives the matching consumer settings (classic: a 6 s session, the smallest a
stock broker accepts; consumer: no session.timeout.ms, which that protocol
refuses). Every test waits with deadlines that tolerate both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LAUNCHER = Path(__file__).with_name("kafka_mock_cluster.py")
GROUP_PROTOCOL = os.environ.get("QCHAN_KAFKA_GROUP_PROTOCOL", "consumer")
PARTITIONS = 4


class MockCluster:
    """A running mock cluster: its bootstrap list, and commands for fault injection."""

    def __init__(self, log_path: Path, brokers: int = 3) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--brokers", str(brokers)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            self.stop()
            raise RuntimeError(f"kafka mock cluster did not start; see {log_path}")
        self.bootstrap = line
        self.brokers = list(range(1, brokers + 1))
        self.controllable = self.command("ping") == "ok"

    def command(self, line: str) -> str:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return self.proc.stdout.readline().strip()

    def _must(self, line: str) -> None:
        answer = self.command(line)
        if answer != "ok":
            raise RuntimeError(f"mock cluster command {line!r}: {answer}")

    def create_topic(self, topic: str, partitions: int = PARTITIONS) -> None:
        if self.controllable:
            self._must(f"create {topic} {partitions}")
            return
        # Without the C API: a metadata request that allows auto-creation (4 partitions).
        from confluent_kafka import Producer

        meta = Producer({"bootstrap.servers": self.bootstrap}).list_topics(topic, timeout=10)
        assert meta.topics[topic].error is None, meta.topics[topic].error

    def broker_down(self, broker: int) -> None:
        self._must(f"down {broker}")

    def broker_up(self, broker: int) -> None:
        self._must(f"up {broker}")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()


class RealCluster:
    """QCHAN_KAFKA_BOOTSTRAP: a real broker; topics through the Admin API, no fault injection."""

    controllable = False

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def create_topic(self, topic: str, partitions: int = PARTITIONS) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)

    def stop(self) -> None:
        pass


Cluster = MockCluster | RealCluster


def group_config() -> dict[str, Any]:
    """Consumer settings for QCHAN_KAFKA_GROUP_PROTOCOL (see the module docstring)."""
    if GROUP_PROTOCOL == "consumer":
        return {"group.protocol": "consumer"}
    return {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def new_topic(cluster: Cluster, partitions: int = PARTITIONS, dlq: bool = True) -> str:
    topic = f"qchan-test-{uuid.uuid4().hex[:12]}"
    cluster.create_topic(topic, partitions)
    if dlq:
        cluster.create_topic(f"{topic}.dlq", partitions)
    return topic


@pytest.fixture(scope="session", name="kafka_cluster")
def kafka_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    real = os.environ.get("QCHAN_KAFKA_BOOTSTRAP")
    cluster: Cluster
    if real:
        cluster = RealCluster(real)
    else:
        cluster = MockCluster(tmp_path_factory.mktemp("kafka") / "mock-cluster.log")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session", name="kafka_bootstrap")
def kafka_bootstrap_fixture(kafka_cluster: Cluster) -> str:
    return kafka_cluster.bootstrap


@pytest.fixture(name="own_cluster")
def own_cluster_fixture(tmp_path: Path) -> Iterator[MockCluster]:
    """A private mock cluster, for tests that take brokers down."""
    if os.environ.get("QCHAN_KAFKA_BOOTSTRAP"):
        pytest.skip("broker fault injection needs the mock cluster")
    cluster = MockCluster(tmp_path / "mock-cluster.log")
    if not cluster.controllable:
        cluster.stop()
        pytest.skip("this librdkafka exposes no mock cluster control API")
    yield cluster
    cluster.stop()


@pytest.fixture(name="topic")
def topic_fixture(kafka_cluster: Cluster) -> str:
    """A fresh topic with 4 partitions and its `.dlq` topic."""
    return new_topic(kafka_cluster)
