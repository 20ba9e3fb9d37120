"""The SQS wire format: bag <-> SendMessageBatch entry / received message, and SQS's limits.

Pure functions, no I/O, so the format can be read (and tested) in one place.

- Body: the bag's bytes as text, unchanged, whenever they are valid UTF-8 made
  only of the characters SQS accepts (#x9, #xA, #xD, #x20-#xD7FF,
  #xE000-#xFFFD, #x10000-#x10FFFF). Anything else (binary payloads on bytes
  channels, text with NUL or other control characters) is sent base64-encoded
  with the String attribute `ContentTransferEncoding=base64` and decoded back
  on receive, where the marker is removed from the attributes again.
- Attributes: every bag attribute is a String MessageAttribute. SQS refuses
  empty attribute values, so an attribute whose value is "" is not sent (a
  missing attribute reads back as "" anyway: `Bag.category` of a message
  without `Category` is "").
- Size: SQS counts the body plus, per attribute, its name, data type and
  value, all in UTF-8 bytes; that is what `message_size` returns.
- Envelopes: a message an EventBridge rule or an SNS subscription (raw delivery
  off) put on the queue is received as the message inside (`unwrapped`, by the
  rule of `qchan.envelopes`), with the SQS message's id, receipt and counts.
- Copies: SQS counts every receive (ApproximateReceiveCount), so a message given
  back unhandled (a consumer closing) goes back as a copy, then the original is
  deleted: the copy carries `qchan-deliveries` (the deliveries counted so far) and
  `qchan-id` (the original's id), which `bag_from_message` folds back into
  `Bag.deliveries` and `Bag.id` and removes from the attributes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from qchan.envelopes import unwrap
from qchan.errors import MessageTooLarge, RejectedError
from qchan.message import ATTR_CATEGORY, ATTR_ID, Bag
from qchan.transfer import BASE64, ENCODING_ATTR, decode_body

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

#: SQS limits (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html).
MAX_ATTRIBUTES = 10
MAX_BATCH_ENTRIES = 10
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_SECONDS = 43_200
#: SendMessageBatch total payload qchan keeps to by default: the classic
#: 256 KiB, which every SQS endpoint accepts (AWS raised its own limit to
#: 1 MiB in 2025; pass max_request_bytes=1048576 to use it).
DEFAULT_MAX_REQUEST_BYTES = 262_144

# Characters SQS accepts in a message body or String attribute value.
_INVALID_CHARS = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Attribute names: alphanumerics, '-', '_', '.'; no leading/trailing or
# doubled '.', not starting with AWS. or Amazon. (any case); 1-256 chars.
_ATTR_NAME = re.compile(r"(?!(?i:aws\.|amazon\.))(?!\.)(?!.*\.\.)[A-Za-z0-9_.-]{1,256}(?<!\.)")
# MessageGroupId / MessageDeduplicationId: 1-128 alphanumerics and punctuation.
_TOKEN = re.compile(r"[!-~]{1,128}")


def encode_body(body: bytes) -> tuple[str, bool]:
    """The SQS message body for `body`, and whether it had to be base64-encoded."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True
    if _INVALID_CHARS.search(text):
        return base64.b64encode(body).decode("ascii"), True
    return text, False


def token(value: str, fallback: str) -> str:
    """`value` as a valid MessageGroupId/MessageDeduplicationId.

    Valid values pass unchanged (so Go producers using the category as the
    group id share groups with qchan); others are replaced by their SHA-256,
    which keeps equal values equal, so grouping and de-duplication still hold.
    """
    if not value:
        return fallback
    if _TOKEN.fullmatch(value):
        return value
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def string_attributes(attributes: Mapping[str, str]) -> dict[str, MessageAttributeValueTypeDef]:
    """Bag attributes as SQS String MessageAttributes (empty values left out)."""
    out: dict[str, MessageAttributeValueTypeDef] = {}
    for name, value in attributes.items():
        if value == "":
            continue
        if not _ATTR_NAME.fullmatch(name):
            raise RejectedError(
                f"attribute name {name!r} is not valid on SQS (letters, digits, '-', '_', '.'; "
                f"at most 256; not starting with 'AWS.' or 'Amazon.')"
            )
        if _INVALID_CHARS.search(value):
            raise RejectedError(f"attribute {name!r} holds characters SQS does not accept")
        out[name] = {"DataType": "String", "StringValue": value}
    if len(out) > MAX_ATTRIBUTES:
        raise RejectedError(
            f"{len(out)} attributes, SQS accepts at most {MAX_ATTRIBUTES} per message "
            f"(the base64 marker of a binary body counts too)"
        )
    return out


def message_size(body: str, attributes: Mapping[str, MessageAttributeValueTypeDef]) -> int:
    """Bytes SQS counts against its message size limit: body plus attribute names, types, values."""
    size = len(body.encode("utf-8"))
    for name, value in attributes.items():
        size += len(name.encode("utf-8")) + len(value["DataType"].encode("utf-8"))
        size += len(value.get("StringValue", "").encode("utf-8"))
    return size


def entry(
    bag: Bag,
    entry_id: str,
    *,
    limit: int,
    fifo: bool,
    group: str | None,
    dedup: str | None,
    limit_name: str = "the queue's MaximumMessageSize",
) -> tuple[SendMessageBatchRequestEntryTypeDef, int]:
    """The SendMessageBatch entry for `bag` and its size; RejectedError if SQS would refuse it.

    `group` and `dedup` are the FIFO MessageGroupId and MessageDeduplicationId
    (dedup None: none is sent, and the broker hashes the body); `limit_name` says
    what `limit` is in the MessageTooLarge error.
    """
    body, encoded = encode_body(bag.body)
    attrs = dict(bag.attributes)
    if encoded:
        attrs[ENCODING_ATTR] = BASE64
    elif attrs.get(ENCODING_ATTR) == BASE64:
        # A text body must not be taken for base64 by the receiver.
        del attrs[ENCODING_ATTR]
    message_attributes = string_attributes(attrs)
    size = message_size(body, message_attributes)
    if size > limit:
        raise MessageTooLarge(
            f"message of {size} bytes (body{' as base64' if encoded else ''} plus attributes) "
            f"exceeds {limit_name} of {limit} bytes; send a reference "
            f"(e.g. an S3 key) instead of the payload"
        )
    out: SendMessageBatchRequestEntryTypeDef = {"Id": entry_id, "MessageBody": body}
    if message_attributes:
        out["MessageAttributes"] = message_attributes
    if fifo:
        out["MessageGroupId"] = token(group or "", "default")
        if dedup is not None:
            out["MessageDeduplicationId"] = token(dedup, "default")
    return out, size


def group_id(bag: Bag, function: Callable[[Bag], str] | None) -> str:
    """The FIFO message group of `bag`: its key, else `function(bag)`, else its category."""
    if bag.key is not None:
        return bag.key
    if function is not None:
        try:
            return function(bag)
        except Exception as e:
            raise RejectedError(
                f"group_id function failed for a {bag.category!r} message: {e!r}"
            ) from e
    return bag.category


def dedup_id(bag: Bag, content: bool) -> str | None:
    """The FIFO MessageDeduplicationId of `bag`: its id; None only when `content` (the
    explicit `content_dedup=True`), which leaves the broker to hash the body.

    The kernel's id is stable across its retries, so a resend after a lost reply
    is dropped by the broker within its 5-minute window, and distinct messages
    never are, even with equal bodies on a queue or topic with
    ContentBasedDeduplication (an explicit id overrides the hash). Hashing drops
    any message whose body equals one sent in the last 5 minutes.
    """
    if content:
        return None
    return bag.id or uuid.uuid4().hex


#: Attributes of a copy qchan put back on a queue instead of a release (see `give_back`):
#: the deliveries counted before the copy, and the id of the message it copies.
DELIVERIES_ATTR = "qchan-deliveries"
ID_ATTR = ATTR_ID


def bag_from_message(message: MessageTypeDef) -> Bag:
    """The Bag for a received SQS message (digest = ReceiptHandle, id = MessageId, or the
    original's for a copy; deliveries = ApproximateReceiveCount, plus a copy's count)."""
    attrs: dict[str, str] = {}
    for name, value in message.get("MessageAttributes", {}).items():
        if "StringValue" in value:
            attrs[name] = value["StringValue"]
        elif "BinaryValue" in value:
            # qchan never sends these; foreign producers may. Keep them readable.
            attrs[name] = base64.b64encode(value["BinaryValue"]).decode("ascii")
    body, attrs = decode_body(message.get("Body", ""), attrs)
    system = message.get("Attributes", {})
    before = attrs.pop(DELIVERIES_ATTR, "0")
    original = attrs.pop(ID_ATTR, None)
    return Bag(
        category=attrs.get(ATTR_CATEGORY, ""),
        body=body,
        attributes=attrs,
        id=original or message.get("MessageId"),
        key=system.get("MessageGroupId"),
        digest=message.get("ReceiptHandle"),
        deliveries=int(system.get("ApproximateReceiveCount", 1))
        + (int(before) if before.isdigit() else 0),
    )


def give_back(bag: Bag, counted: int) -> Bag:
    """`bag` as a copy to send back to its queue: its body and attributes, the id of the
    message it copies and `counted`, the deliveries to carry on (`bag_from_message`)."""
    attributes = {**bag.attributes, DELIVERIES_ATTR: str(counted)}
    if bag.id:
        attributes[ID_ATTR] = bag.id
    return Bag(
        category=bag.category,
        body=bag.body,
        attributes=attributes,
        id=bag.id,
        key=bag.key,
        content_type=bag.content_type,
    )


def unwrapped(bag: Bag) -> Bag | None:
    """The received `bag` as the message inside its EventBridge or SNS envelope; None if
    it is none. Id, key, receipt and delivery count stay the SQS message's."""
    inner = unwrap(bag.body, bag.attributes)
    if inner is None:
        return None
    return Bag(
        category=inner.category or "",
        body=inner.body,
        attributes=inner.attributes,
        id=bag.id,
        key=bag.key,
        digest=bag.digest,
        deliveries=bag.deliveries,
    )
