"""What a kernel worker gets from its queue: the options it runs by and the queue's
services, never the `Queue` itself.

The emitter, the poller and the dispatcher import this module, and `queue.py`
imports them: the dependencies point one way (see ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..adapter import Adapter
from ..errors import QueueFailed
from ..retry import Backoff
from .stats import Counters

__all__ = ["Context"]


@attrs.frozen
class Context:
    """One queue's options, resolved (no None left where the adapter gives a default),
    its counters, and three services its threads call.

    - `report(error)`: an error no channel owns (poison, connection trouble): the
      `errors` channel, or the log.
    - `fail(error, thread)`: a worker thread raised unexpectedly: the queue fails
      (see `Queue._fail`).
    - `failure()`: the queue's `QueueFailed`, or None while it runs.
    """

    name: str
    adapter: Adapter
    agent: str
    batch_size: int
    linger: float
    retry: Backoff
    poll_wait: float
    in_flight: int
    time_to_flight: float
    ack_linger: float
    heartbeat: float | None
    counters: Counters
    report: Callable[[BaseException], None]
    fail: Callable[[BaseException, str], None]
    failure: Callable[[], QueueFailed | None]
