"""AMQP wire format: a `Bag` to message properties and back (DESIGN.md section 4).

Body = the encoded object, untouched. Every bag attribute (`Category`,
`Source`, `System`, `Queue`, and any other) is an AMQP header with a string
value; `content_type` and `message_id` are the native properties; messages are
persistent. On receive, headers whose names start with `x-` are the broker's
(`x-delivery-count`, `x-death`, ...) and stay out of `Bag.attributes`, as does
`qchan-deliveries` (below).

Delivery counting (docs/rabbitmq.md, "Delivery counts"): `Bag.deliveries` counts
deliveries to the application. RabbitMQ before 4.3 raises a quorum queue's
`x-delivery-count` for every return, a consumer closing with messages it never
handed out included, and a classic queue only says `redelivered`. So qchan never
returns a message with `basic.nack`/`reject` on purpose: it publishes a copy to
the queue (confirmed) carrying `qchan-deliveries`, the deliveries counted so far,
then acks the original. What the broker counts after that (`x-delivery-count`,
or `redelivered` on a classic queue) are the returns qchan did not choose: a
consumer that died or lost its connection.
"""

from __future__ import annotations

import datetime
import decimal
import logging
from typing import Any

import attrs

from qchan.message import ATTR_CATEGORY, Bag

from . import _pika as pk

__all__ = ["Receipt", "bag_from_delivery", "properties_for"]

log = logging.getLogger("qchan.adapters.rabbitmq")

DELIVERY_COUNT = "x-delivery-count"
#: The header of a copy qchan put back on the queue: deliveries counted before the copy.
DELIVERIES = "qchan-deliveries"


@attrs.frozen
class Receipt:
    """`Bag.digest` for RabbitMQ: a delivery tag, meaningful only on the channel that received it.

    `generation` names that channel's connection: after a reconnect the broker
    has already requeued every delivery of the old one, so acks carrying an
    old generation are dropped instead of being sent with a stale tag (which
    would make the broker close the new channel).
    """

    generation: int
    tag: int
    #: The delivery's properties, for a copy put back on the queue (not compared).
    props: pk.BasicProperties | None = attrs.field(default=None, eq=False, repr=False)


def properties_for(bag: Bag, message_id: str) -> pk.BasicProperties:
    return pk.properties(
        content_type=bag.content_type, message_id=message_id, headers=dict(bag.attributes)
    )


def _header_text(value: Any) -> str | None:
    """A header value as a string attribute, or None for tables and arrays (foreign producers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return None


def counted(headers: dict[str, Any]) -> int:
    """The deliveries a copy carries (`qchan-deliveries`; 0 on an original)."""
    value = headers.get(DELIVERIES)
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def returned(headers: dict[str, Any], redelivered: bool) -> int | None:
    """Returns the broker counted since the message (or its last copy) was published: a
    quorum queue's `x-delivery-count`; None where only `redelivered` says (a classic
    queue), at least one then."""
    count = headers.get(DELIVERY_COUNT)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    return None if redelivered else 0


def bag_from_delivery(
    generation: int, method: pk.Deliver, props: pk.BasicProperties, body: bytes, queue: str
) -> Bag:
    """One delivery as a Bag; `deliveries` = the copies' count + the broker's returns + 1."""
    headers = props.headers or {}
    attributes: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith("x-") or name == DELIVERIES:
            continue
        text = _header_text(value)
        if text is None:
            log.debug("queue %s: header %r is not a string attribute; skipped", queue, name)
            continue
        attributes[name] = text
    if DELIVERY_COUNT in headers or DELIVERIES in headers:
        back = returned(headers, method.redelivered)
        deliveries = counted(headers) + (1 if back is None else back) + 1
    else:  # a first delivery (or a classic queue's redelivery) of an original
        deliveries = 2 if method.redelivered else 1
    return Bag(
        category=attributes.get(ATTR_CATEGORY, ""),
        body=body,
        attributes=attributes,
        id=props.message_id,
        content_type=props.content_type,
        digest=Receipt(generation, method.delivery_tag, props),
        deliveries=deliveries,
    )
