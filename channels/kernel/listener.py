"""The receive side of one queue: the poller and the dispatcher threads (poller.py,
dispatcher.py), and the calls the application's threads make on them.

`Queue` creates a `Listener` on the first `dequeue`; `add` and `remove` open and
close a category, `stop` winds both threads down at close.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..adapter import ReceivingAdapter
from ..chan import Chan
from ..errors import ChannelClosed
from .context import Context
from .dispatcher import Dispatcher
from .poller import Poller
from .routes import ANY, Gate, Handoff, Receiver

__all__ = ["ANY", "Listener", "Receiver"]

log = logging.getLogger("qchan.listener")


class Listener:
    """The poller and dispatcher threads of one queue."""

    def __init__(self, ctx: Context, adapter: ReceivingAdapter) -> None:
        self.ctx = ctx
        self.adapter = adapter
        self.log = logging.LoggerAdapter(log, {"queue": ctx.name})
        self.gate = Gate(adapter, ctx.options.in_flight)
        self.ctl: Chan[tuple[str, Any]] = Chan(16, name=f"{ctx.name}.listener.ctl")
        self.inbox: Chan[Handoff] = Chan(2, name=f"{ctx.name}.inbox")
        self.dispatcher = Dispatcher(ctx, self.gate, self.ctl, self.inbox)
        self.poller = Poller(ctx, self.gate, self.inbox)
        # Daemons: losing them loses nothing, the broker redelivers what was not acked.
        self.dispatcher.thread.start()
        self.poller.thread.start()

    @property
    def in_flight(self) -> int:
        return self.gate.count

    def add(self, r: Receiver) -> None:
        idling = self.gate.open(r, self.ctx.name)
        self.ctl.send(("add", r))
        if idling:  # the poller sits in adapter.idle or hold: look at the state again
            self.adapter.wakeup()

    def remove(self, r: Receiver, timeout: float | None = None) -> None:
        """Stop routing to `r`, apply its pending acks, release what it still holds."""
        self.gate.close(r)
        try:
            self.ctl.send(("remove", r))
        except ChannelClosed:
            return  # the listener stopped, and finished every receiver
        r.finished.wait(timeout)

    def stop(self, timeout: float) -> None:
        self.gate.stop()
        deadline = time.monotonic() + timeout
        poller, dispatcher = self.poller.thread, self.dispatcher.thread
        poller.join(timeout)
        if poller.is_alive():
            self.log.warning(
                "queue %s: poller still in receive after %.1f s", self.ctx.name, timeout
            )
        try:
            self.ctl.send(("stop", None), timeout=max(0.0, deadline - time.monotonic()))
        except (ChannelClosed, TimeoutError):
            pass  # the dispatcher has stopped (it closes ctl), or is stuck: joined below
        dispatcher.join(max(0.0, deadline - time.monotonic()))
        if dispatcher.is_alive():
            self.log.warning(
                "queue %s: dispatcher did not stop within %.1f s", self.ctx.name, timeout
            )

    def revoke(self, predicate: Any, timeout: float = 10.0) -> int:
        """Drop held messages the adapter no longer owns (see `Hooks.revoke`); how many."""
        box: list[int] = []
        done = threading.Event()
        try:
            self.ctl.send(("revoke", (predicate, box, done)))
        except ChannelClosed:
            return 0
        done.wait(timeout)
        return box[0] if box else 0
