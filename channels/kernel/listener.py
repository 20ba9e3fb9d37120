"""The receive side of one queue: the consumer thread (consumer.py), and the calls the
application's threads make on it.

`Queue` creates a `Listener` on the first `dequeue`; `add` and `remove` open and
close a category, `stop` winds the thread down at close.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..adapter import ReceivingAdapter
from ..errors import ChannelClosed
from .consumer import Consumer
from .context import Context
from .routes import ANY, Gate, Receiver

__all__ = ["ANY", "Listener", "Receiver"]

log = logging.getLogger("qchan.listener")


class Listener:
    """The consumer thread of one queue."""

    def __init__(self, ctx: Context, adapter: ReceivingAdapter) -> None:
        self.ctx = ctx
        self.adapter = adapter
        self.log = logging.LoggerAdapter(log, {"queue": ctx.name})
        self.gate = Gate(adapter, ctx.options.in_flight)
        self.consumer = Consumer(ctx, self.gate)
        # A daemon: losing it loses nothing, the broker redelivers what was not acked.
        self.consumer.thread.start()

    @property
    def in_flight(self) -> int:
        return self.gate.count

    def add(self, r: Receiver) -> None:
        self.gate.open(r, self.ctx.name)
        if not self.consumer.request("add", r):
            self.gate.close(r)
            raise ChannelClosed(f"queue {self.ctx.name!r} is closed")

    def remove(self, r: Receiver, timeout: float | None = None) -> None:
        """Stop routing to `r`, apply its pending acks, release what it still holds."""
        self.gate.close(r)
        if self.consumer.request("remove", r):
            r.finished.wait(timeout)

    def stop(self, timeout: float) -> None:
        self.gate.stop()
        thread = self.consumer.thread
        thread.join(timeout)
        if thread.is_alive():
            self.log.warning(
                "queue %s: consumer did not stop within %.1f s (in a broker call)",
                self.ctx.name,
                timeout,
            )

    def revoke(self, predicate: Any, timeout: float = 10.0) -> int:
        """Drop held messages the adapter no longer owns (see `Hooks.revoke`); how many."""
        consumer = self.consumer
        if threading.current_thread() is consumer.thread:
            # From inside a broker call of the consumer thread (a rebalance callback).
            return consumer.revoke(predicate)
        box: list[int] = []
        done = threading.Event()
        if not consumer.request("revoke", (predicate, box, done)):
            return 0
        done.wait(timeout)
        return box[0] if box else 0
