"""EventBridge and SNS envelopes: the message inside, its category and the envelope's fields.

An SQS queue fed by an EventBridge rule, or by an SNS subscription without raw
message delivery, receives every message wrapped in JSON that AWS adds. `unwrap`
finds the message inside so it is routed by its own category and decoded from
its own body; the Lambda handler uses `from_eventbridge` and `from_sns` on the
events AWS invokes it with.

Detection rule (`unwrap`): a body is an envelope only when all of these hold:

- the message carries no `Category` attribute (qchan and swarm producers always
  send one, so their messages are never unwrapped, whatever their body holds);
- the body is a JSON object (its first non-blank byte is `{`);
- it is an **EventBridge event**: `version`, `id`, `detail-type`, `source`,
  `time`, `region` are strings, `resources` is a list of strings and `detail` an
  object (AWS always sends all of them), and `account`, which AWS sends and moto
  leaves out, is a string if present;
- or it is an **SNS notification**: `Type` is `"Notification"`, `MessageId`,
  `Timestamp` and `Message` are strings, `TopicArn` is a string starting with
  `arn:`, `Subject` (if present) a string or null, and `MessageAttributes` (if
  present) an object of `{"Type": string, "Value": string or number}`.

Anything else, including a body that has most of these keys but one of the wrong
type, is not an envelope and is delivered as it is.

Attributes of an unwrapped message (`msg.attributes`): what the SQS message
carried, then the SNS message attributes as they are (`Category`, `Source`,
`System`, `Queue` of a qchan or swarm publisher among them; a Number by its text,
Binary by its base64 text), then the envelope's own fields, which win a clash:

| attribute | EventBridge | SNS |
|---|---|---|
| `Envelope` | `eventbridge` | `sns` |
| `Category` | `detail-type` | the `Category` message attribute |
| `Source` | `source` | the `Source` message attribute |
| `EventId` | `id` | |
| `EventTime` | `time` | |
| `EventAccount` | `account`, when given | |
| `EventRegion` | `region` | |
| `EventResources` | `resources` as a JSON array, when not empty | |
| `SnsMessageId` | | `MessageId` |
| `SnsTopicArn` | | `TopicArn` |
| `SnsTimestamp` | | `Timestamp` |
| `SnsSubject` | | `Subject`, when given |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from .message import ATTR_CATEGORY, ATTR_SOURCE
from .transfer import decode_body

__all__ = [
    "ATTR_ENVELOPE",
    "EVENTBRIDGE",
    "SNS",
    "Unwrapped",
    "from_eventbridge",
    "from_sns",
    "unwrap",
]

#: The attribute naming the envelope a message arrived in, and its values.
ATTR_ENVELOPE = "Envelope"
EVENTBRIDGE = "eventbridge"
SNS = "sns"

# EventBridge event fields AWS always delivers (`account` too, but moto leaves it out).
_EVENTBRIDGE_STRINGS = ("version", "id", "detail-type", "source", "time", "region")
_EVENTBRIDGE_ATTRS = {
    "id": "EventId",
    "time": "EventTime",
    "account": "EventAccount",
    "region": "EventRegion",
}
# SNS notification fields present in an SQS body and in a Lambda record's `Sns`.
_SNS_STRINGS = ("MessageId", "TopicArn", "Message", "Timestamp")
_SNS_ATTRS = {"MessageId": "SnsMessageId", "TopicArn": "SnsTopicArn", "Timestamp": "SnsTimestamp"}


@attrs.frozen
class Unwrapped:
    """The message inside an envelope: its category, body and attributes."""

    #: The inner category (None when the envelope names none).
    category: str | None
    #: The inner body, ready for the codec (EventBridge's `detail` as compact JSON).
    body: bytes
    #: What the message carried plus the envelope's fields (the module's table).
    attributes: Mapping[str, str]


def unwrap(body: bytes, attributes: Mapping[str, str]) -> Unwrapped | None:
    """The message inside an EventBridge or SNS envelope; None when `body` is no envelope.

    Never raises: a body that is not valid UTF-8, not JSON, too deeply nested or
    not of an envelope's shape is simply not an envelope (the module's docstring
    has the rule).
    """
    if ATTR_CATEGORY in attributes or body.lstrip()[:1] != b"{":
        return None
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    try:
        if _is_eventbridge(document):
            inner = from_eventbridge(document)
        elif _is_sns(document):
            inner = from_sns(document)
        else:
            return None
    except (ValueError, RecursionError):
        # Shape checked above; this is a detail that cannot be re-encoded.
        return None
    return attrs.evolve(inner, attributes={**attributes, **inner.attributes})


def from_eventbridge(event: Mapping[str, Any]) -> Unwrapped:
    """An EventBridge event (a rule's SQS target body, or the event Lambda is invoked with).

    `detail-type` is the category, `source` the `Source` attribute, `detail` the
    body. ValueError, naming the field, if `event` is not an EventBridge event.
    """
    for key in _EVENTBRIDGE_STRINGS:
        _expect_str(event, key, "EventBridge event")
    if "account" in event:
        _expect_str(event, "account", "EventBridge event")
    resources = event.get("resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise ValueError("EventBridge event: 'resources' must be a list of strings")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise ValueError(
            f"EventBridge event: 'detail' must be a JSON object, not {type(detail).__name__}"
        )
    body = json.dumps(detail, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    category = event["detail-type"] or None
    attributes = {ATTR_ENVELOPE: EVENTBRIDGE, ATTR_SOURCE: event["source"]}
    if category is not None:
        attributes[ATTR_CATEGORY] = category
    for key, name in _EVENTBRIDGE_ATTRS.items():
        if key in event:
            attributes[name] = event[key]
    if resources:
        attributes["EventResources"] = json.dumps(resources, separators=(",", ":"))
    return Unwrapped(category=category, body=body.encode("utf-8"), attributes=attributes)


def from_sns(notification: Mapping[str, Any]) -> Unwrapped:
    """An SNS notification (an SQS body without raw delivery, or a Lambda record's `Sns`
    object; both carry `MessageAttributes` as {"Type": ..., "Value": ...}).

    The `Category` message attribute is the category, `Message` the body (decoded
    from base64 when the `ContentTransferEncoding` attribute says `base64`).
    ValueError, naming the field, if `notification` is not an SNS notification.
    """
    if notification.get("Type") != "Notification":
        raise ValueError(
            f"SNS notification: 'Type' must be 'Notification', not {notification.get('Type')!r}"
        )
    for key in _SNS_STRINGS:
        _expect_str(notification, key, "SNS notification")
    subject = notification.get("Subject")
    if subject is not None and not isinstance(subject, str):
        raise ValueError(
            f"SNS notification: 'Subject' must be a string or null, not {type(subject).__name__}"
        )
    body, attributes = decode_body(
        notification["Message"], _sns_attributes(notification.get("MessageAttributes"))
    )
    attributes[ATTR_ENVELOPE] = SNS
    for key, name in _SNS_ATTRS.items():
        attributes[name] = notification[key]
    if subject:
        attributes["SnsSubject"] = subject
    category = attributes.get(ATTR_CATEGORY) or None
    return Unwrapped(category=category, body=body, attributes=attributes)


def _sns_attributes(raw: Any) -> dict[str, str]:
    """SNS `MessageAttributes` ({name: {"Type": ..., "Value": ...}}) as name -> text."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"SNS notification: 'MessageAttributes' must be an object, not {type(raw).__name__}"
        )
    out: dict[str, str] = {}
    for name, attribute in raw.items():
        if not isinstance(attribute, dict) or not isinstance(attribute.get("Type"), str):
            raise ValueError(
                f'SNS notification: message attribute {name!r} is not {{"Type": ..., "Value": ...}}'
            )
        value = attribute.get("Value")
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = str(value)
        else:
            raise ValueError(
                f"SNS notification: message attribute {name!r} has no string or number 'Value'"
            )
    return out


def _is_eventbridge(document: Mapping[str, Any]) -> bool:
    return (
        all(isinstance(document.get(k), str) for k in _EVENTBRIDGE_STRINGS)
        and isinstance(document.get("account", ""), str)
        and isinstance(document.get("resources"), list)
        and all(isinstance(r, str) for r in document["resources"])
        and isinstance(document.get("detail"), dict)
    )


def _is_sns(document: Mapping[str, Any]) -> bool:
    if document.get("Type") != "Notification":
        return False
    if not all(isinstance(document.get(k), str) for k in _SNS_STRINGS):
        return False
    if not document["TopicArn"].startswith("arn:"):
        return False
    subject = document.get("Subject")
    if subject is not None and not isinstance(subject, str):
        return False
    try:
        _sns_attributes(document.get("MessageAttributes"))
    except ValueError:
        return False
    return True


def _expect_str(document: Mapping[str, Any], key: str, what: str) -> None:
    value = document.get(key)
    if not isinstance(value, str):
        found = "missing" if key not in document else f"a {type(value).__name__}"
        raise ValueError(f"{what}: {key!r} must be a string, not {found}")


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; a body holding them is no envelope.
    raise ValueError(f"{name} is not JSON")
