"""Helpers of the kernel tests: a queue on the embedded broker, raw messages into it."""

from __future__ import annotations

from typing import Any

import attrs

from qchan import Bag, Queue
from qchan.adapters.embedded import EmbeddedAdapter, broker


@attrs.frozen
class User:
    name: str


def open_q(queues: list[Queue], name: str, adapter: Any = None, **options: Any) -> Queue:
    """A queue on the embedded broker `name` (or on `adapter`), closed by the `queues`
    fixture at the end of the test."""
    q = Queue(adapter or EmbeddedAdapter(name), poll_wait=0.2, **options)
    queues.append(q)
    return q


def put_raw(name: str, *bags: Bag) -> None:
    """Put bags on the embedded broker `name` as a foreign producer would."""
    assert broker(name).send(list(bags)) == [None] * len(bags)
