"""The billing worker's handler: bill each placed order exactly once.

    qchan worker billing:bill 'amqp://guest:guest@127.0.0.1:5672/%2F?queue=orders'

(run from this folder: `qchan worker` imports `billing` from the current directory.)
Importing this module sets Django up with shop_site.settings.

The bill and the message's "handled" record are written in ONE transaction
(`PostgresStore.record`): a second delivery of the same message (a redelivery after a
lost ack or a crash, or the relay's resend after it died mid-batch, which keeps the
message's `qchan-id`) finds the record and skips, and a crash before the commit leaves
neither, so the redelivery bills. Returning acks the message; raising nacks it (it
comes back).
"""

from __future__ import annotations

import logging
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")
django.setup()

from django.conf import settings  # noqa: E402 - after django.setup()
from django.db import close_old_connections, connection, transaction  # noqa: E402
from shop.messages import OrderPlaced  # noqa: E402
from shop.models import Bill  # noqa: E402

from qchan import Msg, PostgresStore, message_key  # noqa: E402

log = logging.getLogger("billing")

#: Keeps this handler's records apart from other handlers of the same messages.
NAMESPACE = "shop.billing"
#: Records older than this may run again: longer than any copy can arrive (docs/idempotency.md).
TTL = 14 * 86400.0

# Its own connection is used only to create the table, once; `record` writes on ours.
store = PostgresStore(settings.DATABASE_URL, table=settings.QCHAN_HANDLED_TABLE)


def bill(msg: Msg[OrderPlaced]) -> None:
    """Write the order's Bill, unless this message was handled before."""
    placed = msg.object
    key = message_key(msg)  # the outbox's message id (qchan-id): the same on every copy
    close_old_connections()  # a worker thread outlives CONN_MAX_AGE and server restarts
    with transaction.atomic():
        if not store.record(connection, NAMESPACE, key, ttl=TTL):
            log.info("order %s: message %s handled before; skipped", placed.order_id, key)
            return
        Bill.objects.create(order_id=placed.order_id, amount=placed.amount, message_id=key)
    log.info("order %s billed: %s for %s", placed.order_id, placed.amount, placed.customer)
