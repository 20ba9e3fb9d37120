"""RabbitMQ transport (pika): `amqp://user:pass@host:5672/%2F?queue=orders`, and `amqps://`.

Two connections, each confined to the kernel thread that uses it (pika
connections are not thread-safe):

- the publisher's `SelectConnection` belongs to the emitter thread and is
  opened lazily in `send_batch`, which publishes the whole batch and then
  waits for its publisher confirms together (pipelined, not one round trip
  per message);
- the consumer's `BlockingConnection` belongs to the kernel's consumer thread and is
  opened lazily in `receive`; `ack`, `give_back`, `dead_letter` and `reject` (called
  on that thread between broker calls, and safe from any) reach it only through
  `add_callback_threadsafe`, without waiting.

Poison policy: deliveries are counted by the broker (`x-delivery-count` on
quorum queues, the default queue type); a delivery that has used up
`max_deliveries` is dead-lettered (`basic_nack(requeue=False)`) to the queue's
dead-letter queue, `<queue>.dlq` unless configured otherwise. Everything is
documented in docs/rabbitmq.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from qchan.adapter import Bags, Depth, Errors, Hooks, Operations, ReceivingAdapter
from qchan.errors import MessageError, QchanError, describe
from qchan.message import Bag

from . import _config
from ._config import Settings, settings_from_url
from ._consumer import Consumer, DeadLettered, Settle
from ._publisher import BrokerNack, Publisher
from ._topology import MissingQueue, TopologyError, count
from ._wire import Receipt

__all__ = [
    "BrokerNack",
    "DeadLettered",
    "MissingQueue",
    "RabbitMQAdapter",
    "Settings",
    "TopologyError",
    "from_url",
]

log = logging.getLogger("qchan.adapters.rabbitmq")


class RabbitMQAdapter(ReceivingAdapter, Operations):
    """One RabbitMQ queue. Build it with `from_url` (or `qchan.connect`)."""

    scheme = "amqp"
    max_batch = 500
    max_receive = 250
    poll_wait = 1.0
    wakes = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.queue)
        self.settings = settings
        self.max_batch = settings.max_batch
        self.max_receive = min(settings.prefetch, type(self).max_receive)
        self._publisher = Publisher(settings, self._report)
        self._consumer = Consumer(settings, self._report)

    def bind(self, hooks: Hooks) -> None:
        super().bind(hooks)
        # The credit of the consumer's lines (what the broker may push ahead of acks) never
        # exceeds the kernel's in-flight limit: it follows the kernel's demand below that.
        limit = min(self.settings.prefetch, max(1, hooks.in_flight))
        self._consumer.prefetch = limit
        self.max_receive = min(limit, type(self).max_receive)

    def _report(self, error: BaseException) -> None:
        self.hooks.report(error)

    # emitter thread
    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        return self._publisher.send(bags)

    # receiving (the consumer thread)
    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        return self._consumer.receive(max_items, wait)

    def hold(self, wait: float) -> bool:
        """No demand, or the in-flight limit reached: keep the consumer connection's I/O
        going (acks reach the broker, heartbeats are answered) and every delivery; full
        credit lines the kernel does not need are cancelled, so the broker pushes no more
        than the consumers can use."""
        self._consumer.hold(wait)
        return True

    def idle(self, wait: float) -> bool:
        """No channel open: give back what the broker pushed ahead, then keep the
        connection's I/O going (releases reach the broker, heartbeats are answered)."""
        self._consumer.pause(wait)
        return True

    # settling: hand-offs to the connection's next broker call, none of them waits
    def ack(self, bags: Sequence[Bag]) -> None:
        self._consumer.settle([Settle("ack", _receipt(b)) for b in bags])

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        """A failure: back on the queue now, or after `delay` s (held un-acked meanwhile),
        one delivery more counted, dead-lettered once `max_deliveries` is reached (the
        `DeadLettered` report gives the application's last error). A release: back at
        once, not counted, never dead-lettered (the application did not refuse them): a
        copy with the same count, then an ack."""
        if not counted:
            self._consumer.give_back([Settle("release", _receipt(b), bag=b) for b in bags])
            return
        self._requeue_or_dead_letter(bags, delay, "failed", errors or None)

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """The application gave up: to the dead-letter exchange now (`basic_nack`, no
        requeue); without one RabbitMQ drops the message, so then it is requeued."""
        if self.settings.dead_letter is None:
            self.hooks.report(
                QchanError(
                    f"queue {self.settings.queue!r} has no dead-letter exchange: {len(bags)} "
                    f"message(s) given up on are requeued, not dropped"
                )
            )
            self._consumer.settle([Settle("requeue", _receipt(b), bag=b) for b in bags])
            return
        for bag, error in zip(bags, errors, strict=True):
            self._consumer.dead_lettered(
                bag, f"given up on delivery {bag.deliveries}: {describe(error)}"
            )
        self._consumer.settle([Settle("dead", _receipt(b), bag=b) for b in bags])

    def reject(self, bag: Bag, error: MessageError) -> None:
        """Undecodable or unroutable: requeue after `reject_delay` s; counts as a delivery.

        The delay keeps a message that no consumer here can handle (a category
        nobody listens to) from looping hot between the broker and us, while
        another consumer of the same queue may still take it meanwhile.
        """
        self._requeue_or_dead_letter([bag], self.settings.reject_delay, type(error).__name__)

    def _requeue_or_dead_letter(
        self,
        bags: Sequence[Bag],
        delay: float,
        why: str,
        errors: Sequence[BaseException] | None = None,
    ) -> None:
        """Requeue each bag (after `delay` s), or dead-letter it once it reached
        `max_deliveries`; `why` (and `errors[i]`) say why, in the `DeadLettered` report."""
        limit = self.settings.max_deliveries
        due = time.monotonic() + delay if delay > 0 else 0.0
        ops = []
        for i, bag in enumerate(bags):
            receipt = _receipt(bag)
            if limit is not None and bag.deliveries >= limit:
                ops.append(Settle("dead", receipt, bag=bag))
                reason = why if errors is None else f"{why} ({describe(errors[i])})"
                self._consumer.dead_lettered(bag, f"{reason} on delivery {bag.deliveries}")
            else:
                ops.append(Settle("requeue", receipt, due, bag))
        self._consumer.settle(ops)

    def wakeup(self) -> None:
        self._consumer.wakeup()

    # operations (any thread: a connection of their own)
    def depth(self) -> Depth:
        """Ready messages (a passive declare's message_count); RabbitMQ does not tell the
        un-acked ones through AMQP (its management API does), so in_flight is None."""
        return Depth(ready=count(self.settings), in_flight=None)

    def purge(self) -> int:
        """`queue.purge`: deletes the ready messages; un-acked deliveries stay (RabbitMQ's
        rule) and come back if their consumer does not ack them. Returns how many went."""
        return count(self.settings, purge=True)

    def close(self) -> None:
        try:
            self._publisher.close()
        finally:
            self._consumer.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.settings.display_url}>"


def _receipt(bag: Bag) -> Receipt:
    digest = bag.digest
    if not isinstance(digest, Receipt):
        raise TypeError(f"not a RabbitMQ delivery (digest {digest!r}); was it received here?")
    return digest


#: The keyword options of `from_url`, and the URL query keys pika owns (see connect).
OPTIONS = _config.OPTIONS
QUERY_KEYS = _config.QUERY_KEYS


def from_url(url: str, **options: Any) -> RabbitMQAdapter:
    """The adapter for `amqp[s]://user:pass@host:port/vhost?queue=NAME[&option=value...]`.

    Options (keyword or query string; keywords win): queue, queue_type
    ("quorum" | "classic"), declare ("declare" | "passive" | "none"), exchange,
    exchange_type, routing_key, bindings, dead_letter, max_deliveries, prefetch,
    reject_delay, confirm_timeout, max_batch, max_message_size,
    connection_name, cafile, certfile, keyfile, server_hostname; keyword only:
    queue_arguments (extra x-arguments), ssl_context. pika's own query keys
    (heartbeat, socket_timeout, ssl_options, ...) pass through to pika. An
    unknown keyword raises TypeError.
    """
    return RabbitMQAdapter(settings_from_url(url, options))
