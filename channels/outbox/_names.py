"""Names the outbox and its relay share: the attributes a row carries for the relay."""

from __future__ import annotations

from qchan.message import ATTR_ID

__all__ = ["CONTENT_TYPE_ATTRIBUTE", "ID_ATTRIBUTE", "KEY_ATTRIBUTE"]

#: The attribute that carries a message's id from the outbox to every transport: the
#: relay sends it as the message id (AMQP message_id, SQS FIFO deduplication id) and
#: keeps it as an attribute, so a resend after a crash carries the same id.
ID_ATTRIBUTE = ATTR_ID
#: The ordering key (`enqueue(..., key=)`) a row keeps for the relay (Kafka key, SQS group).
KEY_ATTRIBUTE = "qchan-key"
#: The codec's MIME type, for the relay (AMQP's content_type).
CONTENT_TYPE_ATTRIBUTE = "qchan-content-type"
