"""What the worker does with an order: here, log it and count it.

A handler that returns normally acks the message; one that raises nacks it
(qchan.serve logs the exception and the broker redelivers the order).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from .messages import Order

log = logging.getLogger("orders.handlers")


class OrderHandler:
    """Counts orders and units per item; called from several worker threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.orders = 0
        self.units: Counter[str] = Counter()

    def __call__(self, order: Order) -> None:
        log.info("order %s: %d x %s for %s", order.id, order.quantity, order.item, order.customer)
        with self._lock:
            self.orders += 1
            self.units[order.item] += order.quantity
