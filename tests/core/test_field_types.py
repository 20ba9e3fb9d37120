"""Field types beyond JSON's own on the cattrs path (issue 18): Decimal, UUID, datetime,
enums, NamedTuple; and the error for a type qchan cannot (de)serialize, at the call."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import attrs
import cattrs
import pytest
from support.field_types import Color, Level, Point

from qchan import Event, JSONCodec, Meta, Queue, dequeue, enqueue
from qchan.adapters.embedded import EmbeddedAdapter
from qchan.codec import parse_datetime

UTC = datetime.UTC


@attrs.frozen
class Payment:
    id: uuid.UUID
    amount: decimal.Decimal
    at: datetime.datetime
    color: Color
    level: Level
    where: Point


PAYMENT = Payment(
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("10.10"),
    datetime.datetime(2026, 12, 3, 8, 9, 10, 123000, tzinfo=UTC),
    Color.BLUE,
    Level.HIGH,
    Point(3, "a"),
)
WIRE = {
    "id": "12345678-1234-5678-1234-567812345678",
    "amount": "10.10",
    "at": "2026-12-03T08:09:10.123000+00:00",
    "color": "blue",
    "level": 2,
    "where": [3, "a"],
}


def test_each_field_type_has_its_json_form_and_comes_back_equal() -> None:
    c: JSONCodec[Payment] = JSONCodec(Payment)
    data = c.encode(PAYMENT)
    assert json.loads(data) == WIRE
    assert c.decode(data) == PAYMENT


def test_a_decimal_keeps_its_digits_as_a_string_and_takes_a_json_number_too() -> None:
    c: JSONCodec[Payment] = JSONCodec(Payment)
    big = decimal.Decimal("12345678901234567890.000000000001")
    assert json.loads(c.encode(attrs.evolve(PAYMENT, amount=big)))["amount"] == str(big)
    for number, value in ((10.5, "10.5"), (7, "7"), (0.1, "0.1")):
        got = c.decode(json.dumps({**WIRE, "amount": number}).encode())
        assert got.amount == decimal.Decimal(value)


def test_a_named_tuple_may_leave_out_trailing_fields_with_defaults() -> None:
    c: JSONCodec[Payment] = JSONCodec(Payment)
    assert c.decode(json.dumps({**WIRE, "where": [5]}).encode()).where == Point(5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "{12345678-1234-5678-1234-567812345678}"),  # uuid.UUID takes braces
        ("id", "urn:uuid:12345678-1234-5678-1234-567812345678"),
        ("id", "1234-5678123456781234-567812345678"),  # hyphens anywhere
        ("id", 5),
        ("amount", "ten"),
        ("amount", ""),
        ("amount", True),
        ("amount", [1]),
        ("at", "2026-12-03"),  # a date is not a date-time
        ("at", "20261203T080910Z"),  # ISO 8601's basic format
        ("at", "2026-12-03T08:09Z"),  # no seconds
        ("at", "2026-12-03T24:00:00Z"),
        ("at", 1764749350),
        ("color", "BLUE"),  # by value, not by name
        ("color", 1),
        ("level", 2.0),  # Level(2.0) is Level.HIGH in Python
        ("level", True),  # and Level(True) is Level.LOW
        ("level", "2"),
        ("level", 3),
        ("where", "ab"),
        ("where", {"x": 1}),
        ("where", []),
        ("where", [1, "a", 2]),
    ],
)
def test_a_value_of_the_wrong_form_is_refused_naming_the_field(field: str, value: Any) -> None:
    c: JSONCodec[Payment] = JSONCodec(Payment)
    with pytest.raises(Exception) as info:
        c.decode(json.dumps({**WIRE, field: value}).encode())
    assert JSONCodec.explain(info.value).endswith(f"@ $.{field}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-03T08:09:10Z", datetime.datetime(2026, 12, 3, 8, 9, 10, tzinfo=UTC)),
        ("2026-12-03t08:09:10z", datetime.datetime(2026, 12, 3, 8, 9, 10, tzinfo=UTC)),
        ("2026-12-03 08:09:10+00:00", datetime.datetime(2026, 12, 3, 8, 9, 10, tzinfo=UTC)),
        (
            "2026-12-03T08:09:10-0130",
            datetime.datetime(
                2026, 12, 3, 8, 9, 10, tzinfo=datetime.timezone(-datetime.timedelta(minutes=90))
            ),
        ),
        ("2026-12-03T08:09:10", datetime.datetime(2026, 12, 3, 8, 9, 10)),  # naive stays naive
        ("2026-12-03T08:09:10.1234565Z", datetime.datetime(2026, 12, 3, 8, 9, 10, 123457, UTC)),
        ("2026-12-03T08:09:10.9999996Z", datetime.datetime(2026, 12, 3, 8, 9, 11, tzinfo=UTC)),
    ],
)
def test_rfc3339_date_times(text: str, expected: datetime.datetime) -> None:
    got = parse_datetime(text)
    assert got == expected and got.tzinfo == expected.tzinfo


@pytest.mark.parametrize(
    "text",
    ["2026-12-03T08:09:10+24:00", "2026-12-03T08:09:10+01:60", "2026-02-30T00:00:00Z", "x"],
)
def test_not_rfc3339_date_times(text: str) -> None:
    with pytest.raises(ValueError):
        parse_datetime(text)


class Money:
    """A class of the application's own, which cattrs cannot structure alone."""

    def __init__(self, cents: int) -> None:
        self.cents = cents


@attrs.frozen
class Invoice:
    lines: list[Line] | None


@attrs.frozen
class Line:
    price: Money


def test_an_unsupported_field_type_is_a_type_error_at_the_call_saying_what_to_do() -> None:
    with pytest.raises(TypeError) as info:
        JSONCodec(Invoice)
    text = str(info.value)
    assert "$.lines[...].price has type Money" in text
    assert "converter=" in text and "codec=" in text
    with pytest.raises(TypeError, match=r"\$\.data\.price has type Money"):
        JSONCodec(Event[Meta, Line])
    q = Queue(EmbeddedAdapter("unsupported-field"))
    try:
        with pytest.raises(TypeError, match="has type Money"):
            enqueue(Invoice, q)
        with pytest.raises(TypeError, match="has type Money"):
            dequeue(Invoice, q)
    finally:
        q.close()


def test_a_converter_of_the_users_own_makes_it_supported() -> None:
    conv = cattrs.Converter()
    conv.register_structure_hook(Money, lambda v, _: Money(v))
    conv.register_unstructure_hook(Money, lambda m: m.cents)
    c: JSONCodec[Invoice] = JSONCodec(Invoice, conv)
    got = c.decode(c.encode(Invoice([Line(Money(250))])))
    assert got.lines is not None and got.lines[0].price.cents == 250


class Size(str, enum.Enum):  # noqa: UP042 - the spelling from before StrEnum
    """A str mixin enum: cattrs hands it to the str hook, which must still go by value."""

    S = "s"
    M = "m"


@attrs.frozen
class Shirt:
    size: Size


def test_a_str_mixin_enum_goes_by_value() -> None:
    c: JSONCodec[Shirt] = JSONCodec(Shirt)
    assert c.decode(c.encode(Shirt(Size.M))).size is Size.M
    assert json.loads(c.encode(Shirt(Size.M))) == {"size": "m"}
    with pytest.raises(Exception) as info:
        c.decode(b'{"size": "xl"}')
    assert JSONCodec.explain(info.value).endswith("@ $.size")
