"""The billing worker's handler: bill each placed order exactly once.

    qchan -v worker billing:bill 'sqs://orders?endpoint=http://127.0.0.1:4566&region=us-east-1'

(run from this folder: `qchan worker` imports `billing` from the current directory.)
The bill and the message's "handled" record are written in ONE SQLAlchemy transaction
(`PostgresStore.record` on the session's connection): a second delivery of the same
message (SQS redelivers after a visibility timeout, or the relay resends after it died
mid-batch, with the same `qchan-id`) finds the record and skips; a crash before the
commit leaves neither, so the redelivery bills. Returning acks (deletes) the message;
raising nacks it (it comes back).
"""

from __future__ import annotations

import logging

from app import Bill, OrderPlaced, config_from_env, make_engine
from sqlalchemy.orm import sessionmaker

from qchan import Msg, PostgresStore, message_key

log = logging.getLogger("billing")

#: Keeps this handler's records apart from other handlers of the same messages.
NAMESPACE = "flask_shop.billing"
#: Records older than this may run again: longer than SQS keeps a message (14 days at most).
TTL = 15 * 86400.0

_config = config_from_env()
Session = sessionmaker(make_engine(_config["DATABASE_URL"], _config["SHOP_DB_SCHEMA"]))
# Its own connection is used only to create the table, once; `record` writes on ours.
store = PostgresStore(_config["DATABASE_URL"], table=_config["QCHAN_HANDLED_TABLE"])


def bill(msg: Msg[OrderPlaced]) -> None:
    """Write the order's Bill, unless this message was handled before."""
    placed = msg.object
    key = message_key(msg)  # the outbox's message id (qchan-id): the same on every copy
    with Session() as session, session.begin():
        # In the session's transaction: the record commits (or rolls back) with the bill.
        if not store.record(session, NAMESPACE, key, ttl=TTL):
            log.info("order %s: message %s handled before; skipped", placed.order_id, key)
            return
        session.add(Bill(order_id=placed.order_id, amount=placed.amount, message_id=key))
    log.info("order %s billed: %s for %s", placed.order_id, placed.amount, placed.customer)
