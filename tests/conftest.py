"""Shared pytest configuration and fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qchan import EnqueueError, Queue


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
