"""Which AWS service sent a Lambda event, and its records as qchan messages.

Detected from the event itself:

| event | source | partial failures |
|---|---|---|
| `Records[*].eventSource == "aws:sqs"` | SQS | by `messageId` |
| `Records[*].EventSource == "aws:sns"` | SNS | none: a failure raises |
| `Records[*].eventSource == "aws:s3"` | S3 | none |
| `Records[*].eventSource == "aws:dynamodb"` | DynamoDB Streams | by `dynamodb.SequenceNumber` |
| `detail-type` and `detail` at the top | EventBridge | none |

An SQS body that is an EventBridge event or an SNS notification (a queue fed by
a rule or a subscription) is read as the message inside (`qchan.envelopes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..envelopes import Unwrapped, from_eventbridge, from_sns, unwrap
from ..errors import DecodeError, QchanError
from ..message import ATTR_CATEGORY, Bag
from ..transfer import decode_body
from ._records import DynamoDBRecord, S3Record

__all__ = ["Batch", "Record", "UnknownEvent", "parse"]


class UnknownEvent(QchanError, ValueError):
    """The event is from no source qchan.aws knows (the message names its keys)."""


@attrs.frozen
class Record:
    """One record of an event, ready to route: a message, or an object qchan built."""

    #: What Lambda's partial batch response names the record by (None when the
    #: record carries none), also the id in the log.
    id: str | None
    #: The message, for the route of its category to decode; for S3 and
    #: DynamoDB records, the raw record as JSON (for the error a failure names).
    bag: Bag
    #: The S3Record or DynamoDBRecord qchan built; None for a message.
    built: S3Record | DynamoDBRecord | None = None
    #: Records of one group keep their order: once one fails, the later ones of
    #: its group are not started (SQS FIFO: the message group; DynamoDB: the shard).
    group: str | None = None
    #: Why the record could not be read at all (it is answered as failed).
    error: DecodeError | None = None


@attrs.frozen
class Batch:
    """The records of one event, and what the source expects back."""

    source: str  # "sqs", "sns", "s3", "dynamodb", "eventbridge"
    records: list[Record]
    #: True when failures are answered record by record ({"batchItemFailures": ...}),
    #: False when the whole event fails (the handler raises).
    partial: bool


def _raw(record: object) -> bytes:
    try:
        return json.dumps(record, default=repr).encode()
    except (TypeError, ValueError):
        return repr(record).encode()


def _unreadable(rid: str | None, source: str, record: object, why: Exception) -> Record:
    bag = Bag(category="", body=_raw(record), id=rid)
    error = DecodeError(f"cannot read {source} record {rid or '(no id)'}: {why}", bag)
    error.__cause__ = why
    return Record(rid, bag, error=error)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _sqs(record: Mapping[str, Any], envelopes: bool) -> Record:
    """An SQS record, decoded as the sqs:// adapter decodes a received message.

    With `envelopes`, a body that is an EventBridge event or SNS notification
    (by `qchan.envelopes.unwrap`'s rule) is the message inside.
    """
    rid = _optional_str(record.get("messageId"))
    system = record.get("attributes") or {}
    group = system.get("MessageGroupId") if isinstance(system, Mapping) else None
    try:
        attributes: dict[str, str] = {}
        for name, value in (record.get("messageAttributes") or {}).items():
            # Lambda sends binary values as base64 already: the text qchan's SQS
            # adapter also makes of them.
            text = value.get("stringValue", value.get("binaryValue"))
            if isinstance(text, str):
                attributes[name] = text
        text = record["body"]
        if not isinstance(text, str):
            raise ValueError(f"body is not a string: {type(text).__name__}")
        body, attributes = decode_body(text, attributes)
        deliveries = int(system.get("ApproximateReceiveCount", 1))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return attrs.evolve(_unreadable(rid, "sqs", record, e), group=group)
    inner = unwrap(body, attributes) if envelopes else None
    if inner is not None:
        body, attributes = inner.body, dict(inner.attributes)
    bag = Bag(
        category=attributes.get(ATTR_CATEGORY, ""),
        body=body,
        attributes=attributes,
        id=rid,
        key=group,
        digest=record.get("receiptHandle"),
        deliveries=deliveries,
    )
    return Record(rid, bag, group=group)


def _sns(record: Mapping[str, Any], envelopes: bool) -> Record:
    """An SNS record: the notification's message, routed by its `Category` attribute."""
    sns = record.get("Sns")
    rid = _optional_str(sns.get("MessageId")) if isinstance(sns, Mapping) else None
    try:
        if not isinstance(sns, Mapping):
            raise ValueError(f"'Sns' is not an object: {sns!r:.60}")
        inner = from_sns(sns)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return _unreadable(rid, "sns", record, e)
    return Record(rid, _bag(inner, rid))


def _bag(inner: Unwrapped, rid: str | None) -> Bag:
    return Bag(category=inner.category or "", body=inner.body, attributes=inner.attributes, id=rid)


def _eventbridge(event: Mapping[str, Any]) -> Record:
    """An EventBridge event: `detail-type` is the category, `detail` the object."""
    rid = _optional_str(event.get("id"))
    try:
        inner = from_eventbridge(event)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return _unreadable(rid, "eventbridge", event, e)
    return Record(rid, _bag(inner, rid))


def _s3(record: Mapping[str, Any], envelopes: bool) -> Record:
    obj = record.get("s3")
    key = obj.get("object") if isinstance(obj, Mapping) else None
    rid = (key.get("sequencer") if isinstance(key, Mapping) else None) or None
    try:
        built = S3Record.from_event(record)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return _unreadable(_optional_str(rid), "s3", record, e)
    rid = f"s3://{built.bucket}/{built.key}" + (f"@{built.sequencer}" if built.sequencer else "")
    return Record(rid, Bag(category="", body=b"", id=rid), built=built)


def _dynamodb(record: Mapping[str, Any], envelopes: bool) -> Record:
    ddb = record.get("dynamodb")
    rid = _optional_str(ddb.get("SequenceNumber")) if isinstance(ddb, Mapping) else None
    # A batch comes from one shard, in order: one group.
    try:
        built = DynamoDBRecord.from_event(record)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        return attrs.evolve(_unreadable(rid, "dynamodb", record, e), group="")
    return Record(rid, Bag(category="", body=b"", id=rid), built=built, group="")


#: eventSource (EventSource for SNS) -> (name, parser, partial failures?)
_RECORDS: dict[str, tuple[str, Callable[[Mapping[str, Any], bool], Record], bool]] = {
    "aws:sqs": ("sqs", _sqs, True),
    "aws:sns": ("sns", _sns, False),
    "aws:s3": ("s3", _s3, False),
    "aws:dynamodb": ("dynamodb", _dynamodb, True),
}


def _source_of(record: object) -> str | None:
    if not isinstance(record, Mapping):
        return None
    source = record.get("eventSource", record.get("EventSource"))
    return source if isinstance(source, str) else None


def parse(event: object, envelopes: bool = True) -> Batch:
    """The event's source and records; UnknownEvent if it is from no source qchan knows.

    `envelopes`: SQS bodies that are EventBridge events or SNS notifications are
    the message inside.
    """
    if not isinstance(event, Mapping):
        raise UnknownEvent(f"a Lambda event is a JSON object, not {type(event).__name__}")
    records = event.get("Records")
    if isinstance(records, list) and records:
        first = _source_of(records[0])
        if first not in _RECORDS:
            raise UnknownEvent(
                f"records from {first!r:.60}: qchan.aws handles "
                f"{', '.join(sorted(_RECORDS))} records and EventBridge events"
            )
        name, read, partial = _RECORDS[first]
        out = []
        for r in records:
            if _source_of(r) == first:
                out.append(read(r, envelopes))
            else:  # never seen from AWS; answered as a failure rather than dropped
                out.append(
                    _unreadable(None, name, r, ValueError(f"not an {first} record: {r!r:.60}"))
                )
        return Batch(name, out, partial)
    if "detail-type" in event and "detail" in event:
        return Batch("eventbridge", [_eventbridge(event)], False)
    keys = ", ".join(sorted(map(str, event))[:10])
    raise UnknownEvent(
        f"not an event qchan.aws knows (keys: {keys or 'none'}); it handles SQS, SNS, S3 and "
        f"DynamoDB Streams records and EventBridge events"
    )
