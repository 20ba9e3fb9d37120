"""The EventBridge wire format: bag -> PutEvents entry, and EventBridge's limits.

Pure functions, no I/O. The format is fogfish/swarm's EventBridge broker's:

- `Source` is the sending agent (the bag's `Source` attribute: the queue's `agent=`);
- `DetailType` is the category;
- `Detail` is the body as it is, which must be a JSON object (EventBridge takes
  nothing else);
- `EventBusName` is the bus (name or ARN).

An event carries no other attributes: `System`, `Queue` and a `traceparent` are
not sent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from qchan.errors import MessageTooLarge, RejectedError
from qchan.message import ATTR_SOURCE, Bag

if TYPE_CHECKING:
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

#: PutEvents limits (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-putevent-size.html):
#: 10 entries a request, and 256 KiB for one entry and for the request.
MAX_BATCH_ENTRIES = 10
MAX_REQUEST_BYTES = 262_144


def entry_size(source: str, detail_type: str, detail: str) -> int:
    """Bytes EventBridge counts for an entry: Source, DetailType and Detail in UTF-8."""
    return sum(len(s.encode("utf-8")) for s in (source, detail_type, detail))


def entry(bag: Bag, bus: str, *, limit: int) -> tuple[PutEventsRequestEntryTypeDef, int]:
    """The PutEvents entry for `bag` and its size; RejectedError if EventBridge would refuse it."""
    source = bag.attributes.get(ATTR_SOURCE, "")
    if not bag.category:
        raise RejectedError("EventBridge needs a DetailType: the message has no category")
    if not source:
        raise RejectedError("EventBridge needs a Source: the queue's agent= is empty")
    try:
        detail = bag.body.decode("utf-8")
        parsed = json.loads(detail)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RejectedError(
            f"EventBridge takes a JSON object as an event's Detail; this {bag.category!r} "
            f"message's body is not JSON (send an attrs class, a dataclass or a dict)"
        ) from None
    if not isinstance(parsed, dict):
        raise RejectedError(
            f"EventBridge takes a JSON object as an event's Detail; this {bag.category!r} "
            f"message's body is a JSON {type(parsed).__name__}"
        )
    size = entry_size(source, bag.category, detail)
    if size > limit:
        raise MessageTooLarge(
            f"event of {size} bytes (Source, DetailType and Detail) exceeds EventBridge's "
            f"{limit} bytes per entry; send a reference (e.g. an S3 key) instead of the payload"
        )
    out: PutEventsRequestEntryTypeDef = {
        "Source": source,
        "DetailType": bag.category,
        "Detail": detail,
        "EventBusName": bus,
    }
    return out, size
