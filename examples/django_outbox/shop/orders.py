"""Placing an order: the Order row and its OrderPlaced message, in the caller's transaction.

The outbox writes the message as a row of `qchan.<QCHAN_OUTBOX>` on Django's own
connection, so it commits or rolls back with the order: `manage.py relay` (or `qchan
relay`) publishes it only once committed. One Outbox serves every request thread (Django
gives each thread its own connection, and the outbox writes on the calling thread's).
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from qchan import enqueue_sync
from qchan.outbox import Outbox

from .messages import NewOrder, OrderPlaced
from .models import Order

outbox = Outbox(connection, settings.QCHAN_OUTBOX, agent="shop")
order_placed = enqueue_sync(OrderPlaced, outbox)


def place_order(new: NewOrder) -> Order:
    """Save the order and write its OrderPlaced message; call it inside
    `transaction.atomic()` (outside one, the outbox raises `qchan.outbox.OutboxError`
    before anything is written)."""
    order = Order.objects.create(customer=new.customer, amount=new.amount)
    order_placed.put(OrderPlaced(order_id=order.pk, customer=order.customer, amount=new.amount))
    return order
