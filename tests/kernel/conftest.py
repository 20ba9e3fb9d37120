"""Fixtures of the kernel tests."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def name() -> str:
    """A fresh embedded broker name (a queue of its own)."""
    return f"k-{uuid.uuid4().hex[:10]}"
