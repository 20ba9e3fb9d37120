"""qchan.aws's record classes: DynamoDB attribute values to Python, S3 and DynamoDB records."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pytest
from support.lambda_events import dynamodb_record, s3_record

from qchan.aws import DynamoDBRecord, S3Record
from qchan.aws._dynamodb import from_item, from_value


@pytest.mark.parametrize(
    ("av", "expected"),
    [
        ({"S": "ann"}, "ann"),
        ({"N": "42"}, 42),
        ({"N": "-7"}, -7),
        ({"N": "1E+3"}, 1000),
        ({"N": "2.50"}, Decimal("2.50")),
        ({"N": "0.1"}, Decimal("0.1")),
        ({"N": "12345678901234567890123456789012345678"}, 12345678901234567890123456789012345678),
        ({"B": "3q2+7w=="}, b"\xde\xad\xbe\xef"),
        ({"BOOL": False}, False),
        ({"NULL": True}, None),
        ({"L": [{"S": "a"}, {"N": "1"}, {"NULL": True}]}, ["a", 1, None]),
        (
            {"M": {"n": {"N": "1.5"}, "m": {"M": {"s": {"S": "x"}}}}},
            {"n": Decimal("1.5"), "m": {"s": "x"}},
        ),
        ({"SS": ["a", "b", "a"]}, frozenset({"a", "b"})),
        ({"NS": ["1", "2.5"]}, frozenset({1, Decimal("2.5")})),
        ({"BS": ["AQ==", "Ag=="]}, frozenset({b"\x01", b"\x02"})),
    ],
)
def test_attribute_values_become_plain_python_values(av: Any, expected: Any) -> None:
    got = from_value(av)
    assert got == expected
    assert type(got) is type(expected)


def test_an_integral_number_is_an_int_and_a_fraction_an_exact_decimal() -> None:
    """A float would turn 0.1 into 0.1000000000000000055... and drop digits past 17."""
    assert from_value({"N": "0.1"}) + from_value({"N": "0.2"}) == Decimal("0.3")
    assert type(from_value({"N": "100"})) is int


@pytest.mark.parametrize(
    ("av", "why"),
    [
        ({"X": "1"}, "unknown DynamoDB type tag"),
        ({"S": "a", "N": "1"}, "one type tag"),
        ("S", "one type tag"),
        ({"N": "abc"}, "not a DynamoDB number"),
        ({"N": 5}, "is a string"),
        ({"N": "NaN"}, "out of DynamoDB's range"),
        ({"N": "1E+1000000"}, "out of DynamoDB's range"),
        ({"B": "not base64!"}, "not valid base64"),
        ({"BOOL": "true"}, "true or false"),
        ({"NULL": False}, "NULL is true"),
        ({"L": {"S": "a"}}, "is an array"),
        ({"M": ["a"]}, "is an object"),
        ({"SS": "a"}, "is an array"),
    ],
)
def test_malformed_attribute_values_raise_a_value_error_saying_why(av: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        from_value(av)


def test_an_item_is_a_dict_of_its_attributes() -> None:
    assert from_item({"Id": {"N": "101"}, "Tags": {"SS": ["x"]}}) == {
        "Id": 101,
        "Tags": frozenset({"x"}),
    }


def test_dynamodb_record_from_an_event_record() -> None:
    new = {"Id": {"N": "101"}, "Message": {"S": "This item has changed"}}
    old = {"Id": {"N": "101"}, "Message": {"S": "New item!"}}
    record = DynamoDBRecord.from_event(dynamodb_record("222", new=new, old=old, name="MODIFY"))
    assert record.event_name == "MODIFY" and record.sequence_number == "222"
    assert record.keys == {"Id": 101}
    assert record.new_image == {"Id": 101, "Message": "This item has changed"}
    assert record.old_image == {"Id": 101, "Message": "New item!"}
    assert record.view_type == "NEW_AND_OLD_IMAGES" and record.size_bytes == 26
    assert record.created == datetime.datetime(2023, 9, 6, 10, 45, 55, tzinfo=datetime.UTC)
    assert record.region == "us-west-2" and record.source_arn is not None
    assert record.user_identity is None


def test_dynamodb_record_of_a_ttl_deletion_names_the_service() -> None:
    raw = dynamodb_record("333", new=None, old={"Id": {"N": "1"}}, name="REMOVE")
    raw["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    record = DynamoDBRecord.from_event(raw)
    assert record.new_image is None
    assert record.user_identity == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}


@pytest.mark.parametrize("field", ["eventID", "eventName", "dynamodb"])
def test_dynamodb_record_without_a_required_field_raises(field: str) -> None:
    raw = dynamodb_record("1", new=None, old=None)
    del raw[field]
    with pytest.raises(ValueError, match=field):
        DynamoDBRecord.from_event(raw)


def test_s3_record_from_an_event_record() -> None:
    record = S3Record.from_event(s3_record("a+b%2Bc.txt"))
    assert record.key == "a b+c.txt"  # '+' is a space; a plus sign arrives as %2B
    assert record.etag == "b21b84d653bb07b05b1e6b33684dc11b"
    assert record.sequencer == "0C0F6F405D6ED209E1"
    assert record.region == "us-east-2" and record.version_id is None
    assert record.time == datetime.datetime(2019, 9, 3, 19, 37, 27, 192000, tzinfo=datetime.UTC)


def test_s3_record_with_a_malformed_object_raises() -> None:
    raw = s3_record("a.txt")
    raw["s3"]["object"]["size"] = "big"
    with pytest.raises(ValueError, match=r"s3\.object\.size"):
        S3Record.from_event(raw)
