"""The settle side of the Kafka adapter, on the kernel's consumer thread: acks commit the
contiguous settled prefix of each partition, nacks are redelivered from memory, and
after `max_deliveries` a message is copied to the dead-letter topic (its own
producer, created on the first dead letter).

A nack is redelivered from memory and its offset stays uncommitted (no seek).
Only once the broker confirmed a dead-letter copy does its offset count as
settled, so the partition moves on and nothing is ever skipped.

One thing runs from `receive` instead: a message that arrives with its
deliveries used up (consumers died on it, see `_inflight`) is copied to the
dead-letter topic before the kernel ever sees it (`dead_on_arrival`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import attrs
from confluent_kafka import KafkaError, KafkaException, Producer

from qchan.errors import MessageError, QchanError, UnroutableError, describe
from qchan.message import Bag

from ._cluster import GRACE
from ._config import producer_config
from ._consumer import Consuming
from ._inflight import Receipt, redelivery
from ._wire import DeadLettered, KafkaSendError, dead_letter_headers

__all__ = ["Settling"]

log = logging.getLogger("qchan.adapters.kafka")


class Settling:
    """Acks, nacks, releases and dead letters of what `Consuming` delivered."""

    def __init__(self, consuming: Consuming) -> None:
        # The consumer's options and deliveries, by construction (kept at hand: used per message).
        self.consuming = consuming
        self.options = consuming.options
        self.inflight = consuming.inflight
        self._dlq_producer: Producer | None = None
        # Settling and (for dead_on_arrival) receiving share the producer (one thread
        # calls both now; the lock keeps it safe from any).
        self._dlq_lock = threading.Lock()
        #: Messages dead on arrival whose copy failed: (when to try again, bag); receive only.
        self._doomed: list[tuple[float, Bag]] = []

    def ack(self, bags: Sequence[Bag]) -> None:
        """Settle these deliveries; commit whatever prefix that completes."""
        if self.inflight.settle(bags):
            self.consuming.try_commit()

    def redeliver(
        self, bags: Sequence[Bag], delay: float, errors: Sequence[BaseException] | None
    ) -> None:
        """Redeliver from memory after `delay` s; dead-letter after `max_deliveries`."""
        at = time.monotonic() + delay
        for i, bag in enumerate(bags):
            if bag.deliveries >= self.options.max_deliveries:
                why = f"failed {bag.deliveries} deliveries"
                if errors is not None:
                    why += f"; the last: {describe(errors[i])}"
                self._dead_letter(bag, why)
            else:
                self.inflight.schedule(bag, at, redelivery)

    def give_up(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """The application gave up: copy each to the dead-letter topic now."""
        for bag, error in zip(bags, errors, strict=True):
            self._dead_letter(bag, f"given up after {bag.deliveries} deliveries: {describe(error)}")

    def release(self, bags: Sequence[Bag]) -> None:
        """Offered again at once, not counted as a delivery (see `KafkaAdapter.release`)."""
        now = time.monotonic()
        for bag in bags:
            self.inflight.schedule(bag, now, attrs.evolve)

    def reject(self, bag: Bag, error: MessageError) -> None:
        """Poison policy: undecodable -> dead letter; unroutable -> per the `unroutable` option."""
        if not isinstance(error, UnroutableError):
            self._dead_letter(bag, str(error))
            return
        policy = self.options.unroutable
        if policy == "skip":
            self.ack([bag])
        elif policy == "dlq" or bag.deliveries >= self.options.max_deliveries:
            self._dead_letter(bag, str(error))
        else:
            at = time.monotonic() + self.options.redelivery_delay
            self.inflight.schedule(bag, at, redelivery)

    @property
    def retrying(self) -> bool:
        """Copies of messages dead on arrival wait to be tried again."""
        return bool(self._doomed)

    def dead_on_arrival(self, bags: Sequence[Bag]) -> None:
        """From `receive`: messages whose deliveries were used up by consumers that
        died on them (`InFlight.take_doomed`), and earlier ones whose copy failed and is
        due again. Copied to the dead-letter topic without reaching the kernel, and
        reported (`DeadLettered`); a failed copy is tried again after `redelivery_delay`."""
        if self._doomed:
            now = time.monotonic()
            due = [b for at, b in self._doomed if at <= now]
            self._doomed = [(at, b) for at, b in self._doomed if at > now]
            bags = [*bags, *due]
        for bag in bags:
            used = bag.deliveries - 1
            self._dead_letter(
                bag,
                f"delivered {used} times without an ack: consumers died on it "
                f"(max_deliveries={self.options.max_deliveries})",
                deliveries=used,
                doomed=True,
            )

    def _dead_letter(
        self, bag: Bag, why: str, deliveries: int | None = None, doomed: bool = False
    ) -> None:
        """Copy `bag` to the dead-letter topic; settle it once the broker confirmed the copy.

        `deliveries` replaces `bag.deliveries` in the copy's headers; `doomed`: the bag
        never reached the kernel (`dead_on_arrival`), so the dead letter is reported and
        a failed copy is tried again without handing the bag out."""
        if not self.inflight.is_current(bag):
            return
        receipt: Receipt = bag.digest
        where = f"{receipt.topic}/{receipt.partition}@{receipt.offset}"
        dlq = self.options.dlq
        if dlq is None:
            self.consuming.report(
                QchanError(f"kafka message {where} dropped (no dead-letter topic): {why}")
            )
            self.ack([bag])
            return
        try:
            error = self._produce_dead_letter(dlq, bag, why, deliveries)
        except (KafkaException, QchanError) as e:
            error = e if isinstance(e, QchanError) else QchanError(str(e.args[0]))
        if error is None:
            if doomed:  # the application never saw it: tell it (the kernel logs it otherwise)
                self.consuming.report(
                    DeadLettered(
                        f"kafka message {where} (category {bag.category!r}) moved to "
                        f"dead-letter topic {dlq!r}: {why}",
                        bag,
                    )
                )
            else:
                log.warning("kafka message %s moved to dead-letter topic %r: %s", where, dlq, why)
            self.ack([bag])
            return
        self.consuming.report(
            QchanError(f"kafka message {where} could not be dead-lettered to {dlq!r}: {error}")
        )
        # Keep the offset uncommitted and try again later: never skip a message.
        at = time.monotonic() + self.options.redelivery_delay
        if doomed:
            self._doomed.append((at, bag))
        else:
            self.inflight.schedule(bag, at, redelivery)

    def _produce_dead_letter(
        self, dlq: str, bag: Bag, reason: str, deliveries: int | None
    ) -> BaseException | None:
        with self._dlq_lock:
            producer = self._dlq_producer
            if producer is None:
                cluster = self.consuming.cluster
                conf = producer_config(self.options, log, cluster.client_error)
                producer = self._dlq_producer = cluster.client(Producer, conf)
        self.consuming.cluster.ensure_topic(producer, dlq)
        reports: list[KafkaError | None] = []
        key = None if bag.key is None else bag.key.encode("utf-8", "surrogateescape")
        producer.produce(
            dlq,
            bag.body,
            key,
            headers=dead_letter_headers(bag, reason, deliveries),
            on_delivery=lambda err, _m: reports.append(err),
        )
        producer.flush(self.options.send_timeout + GRACE)
        if not reports:
            return KafkaSendError("no delivery report in time")
        err = reports[0]
        return None if err is None else KafkaSendError(err.str())

    def close(self) -> int:
        """Flush the dead-letter producer; how many copies were left unsent."""
        producer, self._dlq_producer = self._dlq_producer, None
        return producer.flush(self.options.send_timeout) if producer is not None else 0
