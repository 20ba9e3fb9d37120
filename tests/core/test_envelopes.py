"""EventBridge and SNS envelopes: the message inside, and the look-alikes that stay as they are."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qchan.envelopes import Unwrapped, from_eventbridge, from_sns, unwrap

# An EventBridge rule's SQS target body, as AWS documents it.
AWS_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "User",
    "source": "com.example.signup",
    "account": "111122223333",
    "time": "2017-12-22T18:43:48Z",
    "region": "us-west-1",
    "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
    "detail": {"id": "u-1", "name": "Ann", "tags": ["a", "é"]},
}

# What moto 5.2's EventBridge puts on the queue (seen on its server): no account.
MOTO_EVENT = {
    "id": "20b5b96f-c371-4821-862f-160930c7dc38",
    "time": "2026-12-03T07:39:35Z",
    "version": "0",
    "detail-type": "User",
    "source": "signup",
    "region": "us-east-1",
    "resources": [],
    "detail": {"id": "u-2", "name": "Bob"},
}

# An SNS notification as an SQS body (raw delivery off), as AWS sends it.
AWS_SNS: dict[str, Any] = {
    "Type": "Notification",
    "MessageId": "a1b2c3d4-5e6f-7a8b-9c0d-e1f2a3b4c5d6",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:users",
    "Subject": "signup",
    "Message": '{"id": "u-3", "name": "Cy"}',
    "Timestamp": "2026-12-03T07:40:00.000Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLEpH+..",
    "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0.pem",
    "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    "MessageAttributes": {
        "Category": {"Type": "String", "Value": "User"},
        "Source": {"Type": "String", "Value": "signup-service"},
        "System": {"Type": "String", "Value": "sns"},
        "Queue": {"Type": "String", "Value": "users"},
        "Priority": {"Type": "Number", "Value": "5"},
    },
}

# The `Sns` object of a Lambda SNS event record: other casing, Subject null.
LAMBDA_SNS: dict[str, Any] = {
    "SignatureVersion": "1",
    "Timestamp": "2019-01-02T12:45:07.000Z",
    "Signature": "tcc6faL2yUC6dgZdmrwh1Y4cGa/ebXEkAi6RibDsvpi+tE/1+82j...65r==",
    "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-ac5.pem",
    "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
    "Message": '{"id": "u-4", "name": "Di"}',
    "MessageAttributes": {"Category": {"Type": "String", "Value": "User"}},
    "Type": "Notification",
    "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:sns-lambda",
    "Subject": None,
}


def body(document: Any, indent: int | None = None) -> bytes:
    return json.dumps(document, indent=indent).encode()


def test_an_eventbridge_event_is_its_detail_routed_by_its_detail_type() -> None:
    inner = unwrap(body(AWS_EVENT), {})
    assert inner is not None
    assert inner.category == "User"
    assert json.loads(inner.body) == AWS_EVENT["detail"]
    assert inner.body == '{"id":"u-1","name":"Ann","tags":["a","é"]}'.encode()  # compact, UTF-8
    assert inner.attributes == {
        "Envelope": "eventbridge",
        "Category": "User",
        "Source": "com.example.signup",
        "EventId": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "EventTime": "2017-12-22T18:43:48Z",
        "EventAccount": "111122223333",
        "EventRegion": "us-west-1",
        "EventResources": ('["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"]'),
    }


def test_moto_shape_without_account_and_resources_is_an_envelope() -> None:
    inner = unwrap(b"  \n" + body({**MOTO_EVENT, "extra": 1}, indent=2), {"SenderTag": "x"})
    assert inner is not None
    assert inner.category == "User"
    assert json.loads(inner.body) == {"id": "u-2", "name": "Bob"}
    assert "EventResources" not in inner.attributes
    assert "EventAccount" not in inner.attributes
    assert inner.attributes["SenderTag"] == "x"  # what the SQS message carried is kept
    assert inner.attributes["EventTime"] == "2026-12-03T07:39:35Z"


def test_the_event_lambda_is_invoked_with_reads_the_same() -> None:
    assert from_eventbridge(AWS_EVENT) == unwrap(body(AWS_EVENT), {})


def test_an_event_without_a_detail_type_names_no_category() -> None:
    inner = unwrap(body({**AWS_EVENT, "detail-type": ""}), {})
    assert inner is not None
    assert inner.category is None
    assert "Category" not in inner.attributes


def test_an_sns_notification_is_its_message_with_its_string_attributes() -> None:
    inner = unwrap(body(AWS_SNS), {})
    assert inner == Unwrapped(
        category="User",
        body=b'{"id": "u-3", "name": "Cy"}',
        attributes={
            "Category": "User",
            "Source": "signup-service",
            "System": "sns",
            "Queue": "users",
            "Priority": "5",
            "Envelope": "sns",
            "SnsMessageId": "a1b2c3d4-5e6f-7a8b-9c0d-e1f2a3b4c5d6",
            "SnsTopicArn": "arn:aws:sns:us-east-1:123456789012:users",
            "SnsTimestamp": "2026-12-03T07:40:00.000Z",
            "SnsSubject": "signup",
        },
    )


def test_moto_sns_body_pretty_printed_with_a_number_value() -> None:
    notification = {
        **AWS_SNS,
        "MessageAttributes": {
            "Category": {"Type": "String", "Value": "User"},
            "N": {"Type": "Number", "Value": 7},
        },
    }
    del notification["Subject"]
    inner = unwrap(json.dumps(notification, sort_keys=True, indent=2).encode(), {})
    assert inner is not None
    assert inner.attributes["N"] == "7"
    assert "SnsSubject" not in inner.attributes


def test_a_lambda_sns_record_reads_the_same() -> None:
    inner = from_sns(LAMBDA_SNS)
    assert inner.category == "User"
    assert inner.body == b'{"id": "u-4", "name": "Di"}'
    assert inner.attributes["SnsTopicArn"] == "arn:aws:sns:us-east-1:123456789012:sns-lambda"
    assert "SnsSubject" not in inner.attributes  # null subject


def test_an_sns_notification_without_category_names_none() -> None:
    notification = {k: v for k, v in AWS_SNS.items() if k != "MessageAttributes"}
    inner = unwrap(body(notification), {})
    assert inner is not None
    assert inner.category is None
    assert inner.attributes["Envelope"] == "sns"


def test_envelope_fields_win_over_what_the_message_carried() -> None:
    notification = {
        **AWS_SNS,
        "MessageAttributes": {
            "Envelope": {"Type": "String", "Value": "forged"},
            "SnsTopicArn": {"Type": "String", "Value": "arn:forged"},
        },
    }
    inner = unwrap(body(notification), {"Envelope": "carried", "Other": "kept"})
    assert inner is not None
    assert inner.attributes["Envelope"] == "sns"
    assert inner.attributes["SnsTopicArn"] == AWS_SNS["TopicArn"]
    assert inner.attributes["Other"] == "kept"


def test_a_base64_sns_message_is_decoded_and_its_marker_dropped() -> None:
    raw = b"\x00\xffbinary"
    notification = {
        **AWS_SNS,
        "Message": base64.b64encode(raw).decode(),
        "MessageAttributes": {
            "Category": {"Type": "String", "Value": "blob"},
            "ContentTransferEncoding": {"Type": "String", "Value": "base64"},
        },
    }
    inner = from_sns(notification)
    assert inner.body == raw
    assert "ContentTransferEncoding" not in inner.attributes
    broken = from_sns({**notification, "Message": "not base64!"})
    assert broken.body == b"not base64!"  # left for the codec to report, marker kept
    assert broken.attributes["ContentTransferEncoding"] == "base64"


def without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


LOOK_ALIKES = {
    "user object with a detail field": body({"id": "1", "detail": {"a": 1}}),
    "user object with detail-type, source and detail": body(
        {"detail-type": "User", "source": "me", "detail": {"a": 1}}
    ),
    "event missing its region": body(without(AWS_EVENT, "region")),
    "event missing its version": body(without(MOTO_EVENT, "version")),
    "event whose account is a number": body({**AWS_EVENT, "account": 111122223333}),
    "event whose detail is a string": body({**AWS_EVENT, "detail": '{"a": 1}'}),
    "event whose resources hold a number": body({**AWS_EVENT, "resources": [1]}),
    "event whose time is a number": body({**AWS_EVENT, "time": 1796283600}),
    "event whose detail holds a number JSON cannot carry": body(AWS_EVENT).replace(
        b'"detail": {', b'"detail": {"big": 1e400, '
    ),
    "notification whose Message is an object": body({**AWS_SNS, "Message": {"id": "u"}}),
    "notification without a TopicArn": body(without(AWS_SNS, "TopicArn")),
    "notification whose TopicArn is no ARN": body({**AWS_SNS, "TopicArn": "users"}),
    "notification with a numeric Subject": body({**AWS_SNS, "Subject": 3}),
    "notification with attributes as a list": body({**AWS_SNS, "MessageAttributes": []}),
    "notification with an attribute without Value": body(
        {**AWS_SNS, "MessageAttributes": {"Category": {"Type": "String"}}}
    ),
    "notification whose Message is not Unicode": body({**AWS_SNS, "Message": "x"}).replace(
        b'"Message": "x"', b'"Message": "\\ud800"'
    ),
    "subscription confirmation": body({**AWS_SNS, "Type": "SubscriptionConfirmation"}),
    "JSON array": body([AWS_EVENT]),
    "JSON string": body(json.dumps(AWS_EVENT)),
    "not JSON": b"{not json",
    "not UTF-8": b"{\xff\xfe}",
    "empty": b"",
    "NaN in the body": body(AWS_EVENT).replace(b'"version": "0"', b'"version": NaN'),
    "nested too deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
}


@pytest.mark.parametrize("payload", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
def test_look_alikes_and_malformed_envelopes_are_delivered_as_they_are(payload: bytes) -> None:
    assert unwrap(payload, {}) is None


@pytest.mark.parametrize("document", [AWS_EVENT, AWS_SNS], ids=["eventbridge", "sns"])
def test_a_message_with_a_category_attribute_is_never_unwrapped(document: Any) -> None:
    """qchan and swarm producers always send Category: the body is the user's, whatever it holds."""
    assert unwrap(body(document), {"Category": "Audit"}) is None
    assert unwrap(body(document), {"Category": ""}) is None


@pytest.mark.parametrize(
    ("call", "document", "message"),
    [
        (from_eventbridge, without(AWS_EVENT, "source"), "'source' must be a string, not missing"),
        (from_eventbridge, {**AWS_EVENT, "id": 7}, "'id' must be a string, not a int"),
        (from_eventbridge, {**AWS_EVENT, "account": 1}, "'account' must be a string"),
        (from_eventbridge, {**AWS_EVENT, "detail": []}, "'detail' must be a JSON object"),
        (from_eventbridge, {**AWS_EVENT, "resources": "arn"}, "'resources' must be a list"),
        (from_sns, {**AWS_SNS, "Type": "Other"}, "'Type' must be 'Notification'"),
        (from_sns, {**AWS_SNS, "Message": {"id": "u"}}, "'Message' must be a string, not a dict"),
        (from_sns, {**AWS_SNS, "Subject": 1}, "'Subject' must be a string or null"),
        (from_sns, {**AWS_SNS, "MessageAttributes": {"A": "x"}}, "attribute 'A' is not"),
        (
            from_sns,
            {**AWS_SNS, "MessageAttributes": {"A": {"Type": "String", "Value": None}}},
            "attribute 'A' has no string or number 'Value'",
        ),
    ],
)
def test_malformed_envelopes_given_directly_raise_naming_the_field(
    call: Any, document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"^(EventBridge event|SNS notification): ") as info:
        call(document)
    assert message in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_unwrap_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    assert unwrap(b"{" + payload, {}) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            **{k: json_values | st.just(v) for k, v in AWS_EVENT.items()},
            **{k: json_values | st.just(v) for k, v in AWS_SNS.items()},
        },
    )
)
def test_unwrap_never_raises_on_envelope_shaped_objects(document: dict[str, Any]) -> None:
    inner = unwrap(body(document), {})
    if inner is not None:
        assert inner.attributes["Envelope"] in ("eventbridge", "sns")
        assert all(isinstance(v, str) for v in inner.attributes.values())
