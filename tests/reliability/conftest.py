"""Fixtures of the reliability suite: `transport` (one parametrization per broker) and reports.

Every scenario that takes the `transport` fixture runs once per transport.
Real brokers come from the same session fixtures as their adapter tests
(RabbitMQ on 127.0.0.1:5672, moto's SQS server, librdkafka's mock cluster);
a broker that is not there skips its parametrization outside CI, as those
fixtures do.

Long variants (10 s cuts) carry `harness.LONG`: marked `slow`, and run only
with QCHAN_SLOW=1 (`make test-reliability`), keeping `make test` inside its
time budget.

At the end of the session every `Report` a scenario recorded is printed as
one markdown table (the figures docs/reliability.md quotes); set
QCHAN_RELIABILITY_REPORT=path to also write it to a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kafka import MockCluster, group_config

from .harness import Report
from .transports import (
    EmbeddedTransport,
    KafkaTransport,
    PostgresTransport,
    RabbitTransport,
    RedisTransport,
    SQSTransport,
    Transport,
)

_REPORTS: list[Report] = []

TRANSPORTS = [
    pytest.param("mem", id="mem"),
    pytest.param("amqp", id="amqp", marks=pytest.mark.integration),
    pytest.param("sqs", id="sqs", marks=pytest.mark.integration),
    pytest.param("kafka", id="kafka", marks=pytest.mark.integration),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
    pytest.param("postgres", id="postgres", marks=pytest.mark.integration),
]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    t = _make(request.param, request)
    try:
        yield t
    finally:
        t.close()


def _make(name: str, request: pytest.FixtureRequest) -> Transport:
    if name == "mem":
        return EmbeddedTransport()
    if name == "amqp":
        request.getfixturevalue("rabbit")  # skips (or fails in CI) when no broker answers
        return RabbitTransport()
    if name == "sqs":
        return SQSTransport(request.getfixturevalue("sqs_endpoint"))
    if name == "kafka":
        cluster = request.getfixturevalue("kafka_cluster")
        if not isinstance(cluster, MockCluster):
            pytest.skip("the Kafka scenarios break brokers: they need the mock cluster")
        workdir = request.getfixturevalue("tmp_path")
        return KafkaTransport(cluster, workdir, group_config())
    if name == "redis":
        return RedisTransport()
    if name == "postgres":
        return PostgresTransport()
    raise ValueError(f"unknown transport {name!r}")


@pytest.fixture
def record() -> Iterator[list[Report]]:
    """Append a scenario's Report here: it is printed with the session summary."""
    mine: list[Report] = []
    yield mine
    _REPORTS.extend(mine)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTS:
        return
    lines = [Report.HEADER, *(r.row() for r in _REPORTS)]
    terminalreporter.section("reliability: zero-loss accounting")
    for line in lines:
        terminalreporter.write_line(line)
    target = os.environ.get("QCHAN_RELIABILITY_REPORT")
    if target:
        Path(target).write_text("\n".join(lines) + "\n")
