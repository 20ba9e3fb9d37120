"""Kafka adapter (confluent-kafka): `kafka://host:9092[,host:9092]/topic?group=billing`.

The adapter is split by what it does (`wakes`: the kernel calls the receive side on
its one consumer thread, and settles there between broker calls):

| module | part | called on |
|---|---|---|
| `_producer.py` | `Producing`: the `Producer` (`send_batch`, `submit`) | emitter |
| `_consumer.py` | `Consuming`: the group member, rebalances, commits | consumer |
| `_settle.py` | `Settling`: acks, redeliveries, dead letters (some on arrival) | consumer |
| `_cluster.py` | `Cluster`: clients, their error callback, topics | any |
| `_inflight.py` | `InFlight`: delivered and settled offsets; commit metadata | consumer, locked |

`_wire.py` holds headers, dead-letter headers and error codes; `_config.py`
the options and librdkafka's configuration. docs/kafka.md is the user-facing
reference; the points a maintainer must not break:

* Commits cover only the contiguous acked prefix of each partition
  (`_inflight.InFlight`): a later ack never commits past an earlier
  message that is still in flight or failed.
* Who commits: only the thread holding the consumer lock; a settlement only
  try-acquires it (see `_consumer.py`).
* A nack is redelivered from memory and its offset stays uncommitted (no
  seek). After `max_deliveries` deliveries the message goes to the dead-letter
  topic, and only once the broker confirmed that copy does its offset count
  as settled, so the partition moves on and nothing is ever skipped.
* Delivery counts outlive the process in the commit metadata (`qchan:2:`,
  `_inflight.encode_metadata`): per un-acked offset its count (`c`), and whether
  an owner is live (`o`) up to which frontier (`f`). Every commit carries them,
  and a nack that raises a count makes the next commit happen.
* Assignment commits synchronously before anything is handed out: o=1, f at the
  position, and the counts taken over, with the death of a previous owner that
  left o=1 counted on its suspects (`_inflight.inherit`). Never hand out a bag
  of a partition before that commit was attempted.
* Careful mode (a previous owner died, until the committed position passes its
  suspects): `receive` commits f past the bags it returns, synchronously, before
  returning them (`Consuming._secure`). Outside it, no commit per receive.
* A fresh bag whose count reached `max_deliveries` never reaches the kernel: it is
  copied to the dead-letter topic from `receive` (`Settling.dead_on_arrival`)
  and settled once the copy is confirmed.
* Rebalances: revoked partitions commit what is settled with o=0 (always, even
  with nothing new settled, or the next owner counts a death), drop their state
  and tell the kernel (`hooks.revoke`) to drop their undelivered bags; `close`
  writes the same o=0 commit first. A lost partition commits nothing (o=1 stays:
  the next owner counts it as a death).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from qchan.adapter import Bags, Depth, Errors, Operations, ReceivingAdapter
from qchan.errors import MessageError, QchanError
from qchan.message import Bag
from qchan.options import renamed

from ._cluster import Cluster
from ._config import KafkaOptions, parse_url
from ._consumer import Consuming
from ._inflight import InFlight
from ._producer import Produced, Producing
from ._settle import Settling
from ._wire import DLQ_HEADERS, DeadLettered, KafkaSendError, TopicNotFound

__all__ = [
    "DLQ_HEADERS",
    "DeadLettered",
    "KafkaAdapter",
    "KafkaSendError",
    "TopicNotFound",
    "from_url",
]


class KafkaAdapter(ReceivingAdapter, Operations):
    """One Kafka topic: produce to it, consume it in a consumer group.

    `KafkaAdapter("orders", bootstrap="h1:9092,h2:9092", group="billing")`;
    every option is described in docs/kafka.md. librdkafka properties pass
    through `config` (both clients), `producer_config` and `consumer_config`.
    """

    scheme = "kafka"
    # 500 per batch was the fastest measured (docs/kafka.md, "Throughput").
    max_batch = 500
    max_receive = 500
    # submit returns at once: the emitter keeps this many batches on the wire.
    pipeline = 4
    poll_wait = 1.0
    wakes = True

    def __init__(self, topic: str, *, bootstrap: str, **options: Any) -> None:
        renamed(f"kafka topic {topic!r}", options, "max_attempts", "max_deliveries")
        renamed(
            f"kafka topic {topic!r}",
            options,
            "retry_delay",
            "redelivery_delay",
            "retry_delay meant a connection retry elsewhere",
        )
        try:
            self.options = KafkaOptions(topic=topic, bootstrap=bootstrap, **options)
        except TypeError as e:
            raise TypeError(f"unknown kafka adapter option: {e}") from None
        super().__init__(self.options.name)
        self.topic = topic
        cluster = self._cluster = Cluster(self.options, self._report)
        inflight = self._inflight = InFlight(self.options.max_deliveries)
        self._producing = Producing(self.options, cluster)
        self._consuming = Consuming(self.options, cluster, inflight, self._report, self._revoke)
        self._settling = Settling(self._consuming)

    def __repr__(self) -> str:
        return f"<KafkaAdapter {self.options.url()}>"

    def _report(self, error: BaseException) -> None:
        self.hooks.report(error)  # hooks are bound after __init__: look them up each time

    def _revoke(self, predicate: Callable[[Bag], bool]) -> int:
        return self.hooks.revoke(predicate)

    # -- the emitter thread

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        """Produce every bag and wait for the broker's confirmation of each (bounded)."""
        outcomes = self.submit(bags).result(None)
        assert outcomes is not None
        return outcomes

    def submit(self, bags: Sequence[Bag]) -> Produced:
        """Produce every bag; the broker's confirmations are collected by `result`."""
        return self._producing.submit(bags)

    # -- receiving (the consumer thread)

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        """Redeliveries that are due, then fresh messages; waits at most `wait` s for the first.

        A message whose deliveries consumers that died on it used up goes to the
        dead-letter topic here instead (`Settling.dead_on_arrival`)."""
        bags = self._consuming.receive(max_items, wait)
        if self._inflight.doomed or self._settling.retrying:
            self._settling.dead_on_arrival(self._inflight.take_doomed())
        return bags

    def hold(self, wait: float) -> bool:
        """Take nothing and keep the group's trust (see `Consuming.hold`)."""
        return self._consuming.hold(wait)

    # -- settling (the consumer thread, between broker calls)

    def ack(self, bags: Sequence[Bag]) -> None:
        """Settle these deliveries; commit whatever prefix that completes."""
        self._settling.ack(bags)

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        """A failure: redelivered from memory after `delay` s, dead-lettered after
        `max_deliveries` deliveries (its `Error` header gives the application's last
        error). A release (deliveries the application never processed): offered again
        at once, not an attempt (`deliveries` stays), so it never leads to the
        dead-letter topic; at close the redelivery never happens: the offsets stay
        uncommitted and the partition's next owner receives them."""
        if counted:
            self._settling.redeliver(bags, delay, errors or None)
        else:
            self._settling.release(bags)

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """The application gave up: copy each to the dead-letter topic now (as poison)."""
        self._settling.give_up(bags, errors)

    def reject(self, bag: Bag, error: MessageError) -> None:
        """Poison policy: undecodable -> dead letter; unroutable -> per the `unroutable` option."""
        self._settling.reject(bag, error)

    # -- operations (any thread: a consumer of their own that never joins the group)

    def depth(self) -> Depth:
        """The group's lag (ready): end offsets less committed ones. Kafka does not tell
        what a member holds un-committed, so in_flight is None."""
        return Depth(ready=self._cluster.lag(), in_flight=None)

    def purge(self) -> int:
        """Skip: commit the end offsets for the group, so it never receives what is on the
        topic now. The messages stay (retention decides; other groups still read them).
        Kafka refuses while the group has active members. Returns how many were skipped."""
        return self._cluster.lag(skip=True)

    # -- any thread, and close

    def wakeup(self) -> None:
        self._consuming.wake.set()

    def close(self) -> None:
        """Commit what is settled, leave the group, flush producers."""
        self._consuming.close()
        left = self._producing.close() + self._settling.close()
        if left:
            self.hooks.report(
                QchanError(f"kafka producer for {self.topic!r} closed with {left} unsent")
            )


#: The keyword options of `from_url` (KafkaOptions, less what the URL itself names).
OPTIONS = (frozenset(a.name for a in attrs.fields(KafkaOptions)) - {"topic", "bootstrap"}) | {
    "max_attempts",
    "retry_delay",
}  # deprecated: max_deliveries, redelivery_delay


def from_url(url: str, **options: Any) -> KafkaAdapter:
    """`kafka://host:9092[,host:9092]/topic?group=billing&dlq=orders.dead&partitions=4`."""
    parsed, config = parse_url(url)
    parsed["config"] = {**config, **(options.pop("config", None) or {})}
    parsed.update(options)
    return KafkaAdapter(parsed.pop("topic"), bootstrap=parsed.pop("bootstrap"), **parsed)
