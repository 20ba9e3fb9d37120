"""Counters and gauges of one queue (`q.stats()`)."""

from __future__ import annotations

import attrs

__all__ = ["Stats"]


@attrs.frozen
class Stats:
    """A snapshot of a queue's counters since it opened, and its in-flight gauge.

    sent: accepted by the broker. retried: send attempts repeated after a
    failure. dead_lettered: handed back on a dlq (or raised). received: taken
    from the broker. redelivered: received although the broker had delivered it
    before. acked / nacked: acknowledgements applied. expired: not acked within
    `time_to_flight`, so released. poison: undecodable or unroutable. in_flight:
    received and not yet acked, nacked or released.
    """

    sent: int = 0
    retried: int = 0
    dead_lettered: int = 0
    received: int = 0
    redelivered: int = 0
    acked: int = 0
    nacked: int = 0
    expired: int = 0
    poison: int = 0
    in_flight: int = 0


class Counters:
    """The live counters. Each is written by one worker thread only, so no lock is needed."""

    __slots__ = (
        "acked", "dead_lettered", "expired", "nacked", "poison", "received", "redelivered",
        "retried", "sent",
    )

    def __init__(self) -> None:
        self.sent = self.retried = self.dead_lettered = 0  # emitter thread
        self.received = self.redelivered = self.poison = 0  # poller thread
        self.acked = self.nacked = self.expired = 0  # dispatcher thread

    def snapshot(self, in_flight: int) -> Stats:
        return Stats(
            sent=self.sent, retried=self.retried, dead_lettered=self.dead_lettered,
            received=self.received, redelivered=self.redelivered, acked=self.acked,
            nacked=self.nacked, expired=self.expired, poison=self.poison, in_flight=in_flight,
        )
