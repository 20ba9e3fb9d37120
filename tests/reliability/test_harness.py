"""The accounting harness can fail: it sees losses, duplicates and dead letters."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import pytest

from qchan import Bag, Constant, Queue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Faulty, Wrapped

from .harness import account


class Lossy(Wrapped):
    """Says every 10th message was sent, and drops it: the bug the harness exists to catch."""

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        kept = [b for b in bags if _number(b) % 10]
        self.inner.send_batch(kept)
        return [None] * len(bags)


class Doubling(Wrapped):
    """Sends every message twice (a broker that duplicates)."""

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        self.inner.send_batch(bags)
        return self.inner.send_batch(bags)


def _number(bag: Bag) -> int:
    return int(json.loads(bag.body)["n"])


def queues(wrap: type[Wrapped] | None = None, **options: object) -> tuple[Queue, Queue, str]:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    adapter = EmbeddedAdapter(name, visibility_timeout=2)
    producer = Queue(wrap(adapter) if wrap else adapter, poll_wait=0.1, **options)  # type: ignore[arg-type]
    consumer = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    return producer, consumer, name


def leftover(name: str) -> int:
    return broker(name).depth + broker(name).in_flight


def test_a_lost_message_is_counted_and_fails_the_check() -> None:
    producer, consumer, name = queues(Lossy)
    r = account(
        producer,
        consumer,
        200,
        transport="mem",
        scenario="lossy",
        settle=0.5,
        timeout=3,
        leftover=lambda: leftover(name),
    )
    assert r.lost == 20 and r.received == 180
    assert r.missing[:3] == [0, 10, 20]
    with pytest.raises(AssertionError, match="20 message"):
        r.check()


def test_duplicates_are_counted_and_bounded() -> None:
    producer, consumer, name = queues(Doubling)
    r = account(
        producer,
        consumer,
        100,
        transport="mem",
        scenario="doubling",
        leftover=lambda: leftover(name),
    )
    assert (r.received, r.duplicates, r.lost) == (100, 100, 0)
    r.check(max_duplicates=100)
    with pytest.raises(AssertionError, match="duplicates"):
        r.check(max_duplicates=10)


def test_dead_letters_count_as_accounted_for_not_lost() -> None:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    producer = Queue(
        Faulty(EmbeddedAdapter(name), fail=50), retry=Constant(0.0, max_attempts=1), poll_wait=0.1
    )
    consumer = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    r = account(
        producer,
        consumer,
        100,
        transport="mem",
        scenario="dead letters",
        leftover=lambda: leftover(name),
    )
    assert (r.received, r.dead_lettered, r.lost) == (50, 50, 0)
    r.check()
    with pytest.raises(AssertionError, match="dead letters"):
        r.check(dead_letters=False)
