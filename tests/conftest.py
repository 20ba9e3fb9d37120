"""Shared pytest configuration and fixtures.

The broker fixtures live in tests/support/ and are registered here as plugins, so
that each session-scoped one (the moto server, the Kafka mock cluster, the RabbitMQ
check) starts once per test session, whichever modules use it. Test modules take
them by name and import only plain helpers from support/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qchan import EnqueueError, Queue

# pytester: tests/plugin runs users' test modules against the installed qchan plugin.
pytest_plugins = ["support.sqs", "support.aws", "support.kafka", "support.rabbitmq", "pytester"]


@pytest.fixture
def queues() -> Iterator[list[Queue]]:
    """Queues a test opens; closed at the end whatever happens."""
    opened: list[Queue] = []
    yield opened
    for q in opened:
        try:
            q.close(timeout=2)
        except EnqueueError:
            pass
