"""What a kernel worker gets from its queue: the options it runs by and the queue's
services, never the `Queue` itself.

The emitter and the consumer import this module, and `queue.py`
imports them: the dependencies point one way (see ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import attrs

from ..adapter import Adapter
from ..errors import QueueFailed
from ..options import QueueOptions
from .stats import Counters

__all__ = ["Context", "resolved"]

T = TypeVar("T")


@attrs.frozen
class Context:
    """One queue's resolved options (see `Queue.options`), its counters, and three services
    its threads call.

    - `report(error)`: an error no channel owns (poison, connection trouble): the
      `errors` channel, or the log.
    - `fail(error, thread)`: a worker thread raised unexpectedly: the queue fails
      (see `Queue._fail`).
    - `failure()`: the queue's `QueueFailed`, or None while it runs.
    """

    name: str
    adapter: Adapter
    options: QueueOptions
    counters: Counters
    report: Callable[[BaseException], None]
    fail: Callable[[BaseException, str], None]
    failure: Callable[[], QueueFailed | None]


def resolved(value: T | None) -> T:
    """An option `Queue` resolved against its adapter (agent, system, batch_size, retry,
    poll_wait): never None in a `Context`."""
    assert value is not None, "Queue resolves it"
    return value
