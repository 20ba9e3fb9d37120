"""The business logic, with no idea how it is deployed: `worker.py` runs it under `serve`
on an SQS queue, `lambda_function.py` as an AWS Lambda function fed by the same queue."""

from __future__ import annotations

import logging
import threading

import attrs

log = logging.getLogger("billing")


@attrs.frozen
class Order:
    """An order to bill; sent with `enqueue(Order, q)`, so its category is "Order"."""

    id: str
    amount: float


class BadOrder(ValueError):
    """An order that can never be billed: raising fails the message (it is not acked)."""


_lock = threading.Lock()  # serve runs `handle` in several threads at once
handled: list[str] = []  # the ids billed, in this process (what the example's test reads)


def handle(order: Order) -> None:
    """Bill one order: return when done, raise when it failed."""
    if order.amount <= 0:
        raise BadOrder(f"order {order.id}: amount must be positive, not {order.amount}")
    with _lock:
        handled.append(order.id)
    log.info("billed order %s: %.2f", order.id, order.amount)
