"""Counters and gauges of one queue (`q.stats()`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import attrs

__all__ = ["Stats", "observe"]

log = logging.getLogger("qchan.stats")


@attrs.frozen
class Stats:
    """A snapshot of a queue's counters since it opened, and its in-flight gauge.

    sent: accepted by the broker. retried: send attempts repeated after a
    failure. dead_lettered: handed back on a dlq (or raised). received: taken
    from the broker. redelivered: received although the broker had delivered it
    before. acked / nacked: acknowledgements applied. gave_up: received messages the
    application gave up on (`msg.dead_letter(err)`), sent to the dead-letter queue.
    expired: not acked within
    `time_to_flight`, so released. poison: undecodable or unroutable. in_flight:
    received and not yet acked, nacked or released. failed: a worker thread raised
    and the queue stopped (`Queue.failure` says why).
    """

    sent: int = 0
    retried: int = 0
    dead_lettered: int = 0
    received: int = 0
    redelivered: int = 0
    acked: int = 0
    nacked: int = 0
    gave_up: int = 0
    expired: int = 0
    poison: int = 0
    in_flight: int = 0
    failed: bool = False

    def as_dict(self) -> dict[str, int]:
        """The counters by name (for a metrics exporter)."""
        return attrs.asdict(self)


class Observable(Protocol):
    """What `observe` needs of a queue (a `qchan.Queue` is one)."""

    @property
    def name(self) -> str: ...

    def stats(self) -> Stats: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Counters:
    """The live counters. Each is written by one worker thread only, so no lock is needed."""

    __slots__ = (
        "acked",
        "dead_lettered",
        "expired",
        "gave_up",
        "nacked",
        "poison",
        "received",
        "redelivered",
        "retried",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = self.retried = self.dead_lettered = 0  # emitter thread
        self.received = self.redelivered = self.poison = 0  # consumer thread
        self.acked = self.nacked = self.expired = self.gave_up = 0  # consumer thread

    def snapshot(self, in_flight: int, failed: bool = False) -> Stats:
        # Every counter is a Stats field of the same name: a new one needs no edit here.
        counts: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        return Stats(**counts, in_flight=in_flight, failed=failed)


def observe(
    q: Observable, export: Callable[[str, Stats], Any], every: float = 10.0
) -> Callable[[], None]:
    """Call `export(queue_name, stats)` every `every` seconds, and once more when the
    queue closes; returns a function that stops it. Runs on a daemon thread of its own
    (`qchan-metrics-<queue>`): hand the numbers to Prometheus, StatsD, logs...

    An `export` that raises is logged (with its traceback the first time, then once
    per 100 failures) and called again at the next tick: the exporter holds no
    message, so its failure does not fail the queue.
    """
    if every <= 0:
        raise ValueError(f"every must be > 0 s, not {every}")
    stop = threading.Event()
    failures = 0

    def tick() -> None:
        nonlocal failures
        try:
            export(q.name, q.stats())
        except Exception as e:
            failures += 1
            if failures == 1 or failures % 100 == 0:
                log.error(
                    "queue %s: export %r raised (%d time(s) so far): %s",
                    q.name,
                    export,
                    failures,
                    e,
                    exc_info=e if failures == 1 else None,
                )

    def run() -> None:
        while not stop.is_set():
            closed = q.wait(every)  # wakes at once when the queue closes (or fails)
            tick()
            if closed:
                return

    threading.Thread(target=run, name=f"qchan-metrics-{q.name}", daemon=True).start()
    return stop.set
