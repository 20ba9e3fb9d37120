"""The records qchan builds itself from an event: S3 notifications and DynamoDB stream records."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

import attrs

from ._dynamodb import from_item

__all__ = ["DynamoDBRecord", "S3Record"]


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} is not an object: {value!r:.60}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string: {value!r:.60}")
    return value


def _optional_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _optional_int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} is not an integer: {value!r:.60}")
    return value


@attrs.frozen
class S3Record:
    """One S3 event notification: what happened to which object.

    `key` is the object's key as stored (the notification URL-encodes it, a
    space as `+`; qchan decodes it). `size` and `etag` are None for deletions.
    """

    event_name: str  # "ObjectCreated:Put", "ObjectRemoved:Delete", ...
    bucket: str
    key: str
    time: datetime.datetime
    region: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None

    @classmethod
    def from_event(cls, record: Mapping[str, Any]) -> S3Record:
        """The record for one element of an S3 event's `Records`; ValueError if malformed."""
        s3 = _mapping(record.get("s3"), "s3")
        bucket = _mapping(s3.get("bucket"), "s3.bucket")
        obj = _mapping(s3.get("object"), "s3.object")
        when = _text(record.get("eventTime"), "eventTime")
        return cls(
            event_name=_text(record.get("eventName"), "eventName"),
            bucket=_text(bucket.get("name"), "s3.bucket.name"),
            key=unquote_plus(_text(obj.get("key"), "s3.object.key")),
            time=datetime.datetime.fromisoformat(when),
            region=_text(record.get("awsRegion"), "awsRegion"),
            size=_optional_int(obj.get("size"), "s3.object.size"),
            etag=_optional_text(obj.get("eTag"), "s3.object.eTag"),
            version_id=_optional_text(obj.get("versionId"), "s3.object.versionId"),
            sequencer=_optional_text(obj.get("sequencer"), "s3.object.sequencer"),
        )


@attrs.frozen
class DynamoDBRecord:
    """One DynamoDB Streams record: a change to one item, with plain Python values.

    `keys`, `new_image` and `old_image` hold the item's attributes converted
    from DynamoDB's attribute-value JSON (numbers as int or Decimal, sets as
    frozensets: see the qchan.aws docs). Which images are there depends on
    the stream's view type: `new_image` is None for a REMOVE, `old_image` for
    an INSERT. `user_identity` is set for deletions made by TTL
    (`{"type": "Service", "principalId": "dynamodb.amazonaws.com"}`).
    """

    event_id: str
    event_name: str  # "INSERT", "MODIFY" or "REMOVE"
    sequence_number: str
    keys: Mapping[str, Any]
    new_image: Mapping[str, Any] | None = None
    old_image: Mapping[str, Any] | None = None
    view_type: str | None = None
    size_bytes: int | None = None
    created: datetime.datetime | None = None
    region: str | None = None
    source_arn: str | None = None
    user_identity: Mapping[str, str] | None = None

    @classmethod
    def from_event(cls, record: Mapping[str, Any]) -> DynamoDBRecord:
        """The record for one element of a DynamoDB Streams event's `Records`; ValueError if
        malformed (a field missing or of the wrong type, an attribute value qchan cannot read)."""
        ddb = _mapping(record.get("dynamodb"), "dynamodb")
        created = ddb.get("ApproximateCreationDateTime")
        if created is not None and (
            not isinstance(created, int | float) or isinstance(created, bool)
        ):
            raise ValueError(f"dynamodb.ApproximateCreationDateTime is not a number: {created!r}")
        identity = record.get("userIdentity")
        return cls(
            event_id=_text(record.get("eventID"), "eventID"),
            event_name=_text(record.get("eventName"), "eventName"),
            sequence_number=_text(ddb.get("SequenceNumber"), "dynamodb.SequenceNumber"),
            keys=from_item(ddb.get("Keys")),
            new_image=None if ddb.get("NewImage") is None else from_item(ddb["NewImage"]),
            old_image=None if ddb.get("OldImage") is None else from_item(ddb["OldImage"]),
            view_type=_optional_text(ddb.get("StreamViewType"), "dynamodb.StreamViewType"),
            size_bytes=_optional_int(ddb.get("SizeBytes"), "dynamodb.SizeBytes"),
            created=None
            if created is None
            else datetime.datetime.fromtimestamp(created, datetime.UTC),
            region=_optional_text(record.get("awsRegion"), "awsRegion"),
            source_arn=_optional_text(record.get("eventSourceARN"), "eventSourceARN"),
            user_identity=None
            if identity is None
            else {str(k): str(v) for k, v in _mapping(identity, "userIdentity").items()},
        )
