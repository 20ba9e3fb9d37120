"""MsgspecCodec (issue 18): the same bytes, the same refusals and the same error text as
the cattrs path (JSONCodec), for the types users send."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import attrs
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.field_types import Color, Level, Point
from support.helpers import wait_for

from qchan import (
    Bag,
    Chan,
    DecodeError,
    Event,
    JSONCodec,
    Meta,
    MsgspecCodec,
    Queue,
    dequeue,
    enqueue,
)
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Order

UTC = datetime.UTC


@attrs.frozen
class Line:
    sku: str
    quantity: int
    price: decimal.Decimal = decimal.Decimal(0)


@attrs.frozen
class Invoice:
    id: uuid.UUID
    lines: list[Line]
    issued: datetime.datetime
    color: Color
    level: Level
    where: Point
    totals: dict[str, float] = attrs.Factory(dict)
    note: str | None = None
    paid: bool = False


@dataclasses.dataclass(frozen=True)
class Reading:
    sensor: str
    values: list[float]
    at: datetime.datetime | None = None


INVOICE = Invoice(
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    [Line("a", 2, decimal.Decimal("9.90")), Line("b", 1)],
    datetime.datetime(2026, 12, 3, 8, 9, 10, 5, tzinfo=UTC),
    Color.RED,
    Level.LOW,
    Point(1),
    {"net": 1e16, "tax": 0.1, "small": 1e-7},
    "ünïcode ✓",
)

SAMPLES: list[tuple[Any, Any]] = [
    (Line, Line("s", 1)),
    (Invoice, INVOICE),
    (Invoice, attrs.evolve(INVOICE, lines=[], note=None, totals={}, paid=True)),
    (Reading, Reading("t1", [1.5, -2.0, 3e-9], datetime.datetime(2026, 1, 1))),
    (Reading, Reading("t1", [])),
    (Event[Meta, Line], Event(Meta(id="e1", type="Line"), Line("s", 1))),
    (
        Event[Meta, Invoice],
        Event(
            Meta(
                id="e2",
                type="Invoice",
                agent="billing",
                realm="eu",
                created=datetime.datetime(2026, 12, 3, 7, 40, tzinfo=UTC),
            ),
            INVOICE,
        ),
    ),
    (Event[Meta, Line], Event(None, None)),
    (Order, Order("o-1", 9.5, ["x"])),
]


@pytest.mark.parametrize(("type_", "obj"), SAMPLES, ids=lambda v: getattr(v, "__name__", ""))
def test_both_codecs_write_the_same_bytes_and_read_them_back_equal(type_: Any, obj: Any) -> None:
    slow, fast = JSONCodec(type_), MsgspecCodec(type_)
    data = slow.encode(obj)
    assert fast.encode(obj) == data
    assert fast.decode(data) == obj == slow.decode(data)


# Payloads for Line ({"sku": str, "quantity": int, "price": Decimal}) and Invoice.
LINE = {"sku": "s", "quantity": 1}
BAD_LINES: list[Any] = [
    b"",
    b"null",
    b"[1, 2]",
    b'"s"',
    b"\xff\xfe",
    b'{"sku": "s", "quantity": 1',
    b'{"sku": "s", "quantity": 1} trailing',
    b'{"sku": "s", "quantity": NaN}',
    b'{"sku": "s", "quantity": 1e999}',
    b'{"sku": "\\ud800", "quantity": 1}',
    b"[" * 5_000 + b"]" * 5_000,
    b'{"a":' * 2_000 + b"1" + b"}" * 2_000,
    {"sku": "s"},
    {"quantity": 1},
    {"sku": "s", "quantity": "1"},
    {"sku": "s", "quantity": 1.0},
    {"sku": "s", "quantity": 1.5},
    {"sku": "s", "quantity": True},
    {"sku": "s", "quantity": None},
    {"sku": "s", "quantity": [1]},
    {"sku": 7, "quantity": 1},
    {"sku": {"a": 1}, "quantity": 1},
    {"sku": ["s"], "quantity": 1},
    {"sku": None, "quantity": 1},
    {**LINE, "price": "ten"},
    {**LINE, "price": ""},
    {**LINE, "price": "1 000"},
    {**LINE, "price": True},
    {**LINE, "price": None},
    {**LINE, "price": [1]},
]
GOOD_LINES: list[Any] = [
    LINE,
    {**LINE, "unknown": [1, {"x": None}]},
    {**LINE, "price": "1.10"},
    {**LINE, "price": " 2.5 "},
    {**LINE, "price": "NaN"},
    {**LINE, "price": 3},
    {**LINE, "price": 2.25},
    {"sku": "", "quantity": -(2**63)},
    {"sku": "\u0000\u2028", "quantity": 0},
    b'{"sku": "a", "sku": "b", "quantity": 1}',
]

WIRE = json.loads(JSONCodec(Invoice).encode(INVOICE))
BAD_INVOICES: list[Any] = [
    {**WIRE, "id": "{12345678-1234-5678-1234-567812345678}"},
    {**WIRE, "id": "urn:uuid:12345678-1234-5678-1234-567812345678"},
    {**WIRE, "id": "1234-5678123456781234-567812345678"},
    {**WIRE, "id": 5},
    {**WIRE, "lines": "ab"},
    {**WIRE, "lines": {"sku": "s"}},
    {**WIRE, "lines": [1]},
    {**WIRE, "lines": [{"sku": "s"}]},
    {**WIRE, "issued": "2026-12-03"},
    {**WIRE, "issued": "2026-12-03T08:09Z"},
    {**WIRE, "issued": "20261203T080910Z"},
    {**WIRE, "issued": "2026-12-03T08:09:10,5Z"},
    {**WIRE, "issued": "2026-12-03T24:00:00Z"},
    {**WIRE, "issued": "2026-12-03T08:09:60Z"},
    {**WIRE, "issued": "2026-02-30T08:09:10Z"},
    {**WIRE, "issued": "2026-12-03T08:09:10+24:00"},
    {**WIRE, "issued": "2026-12-03T08:09:10+01:60"},
    {**WIRE, "issued": "2026-12-03T08:09:10Z "},
    {**WIRE, "issued": "0000-12-03T08:09:10Z"},
    {**WIRE, "issued": 1764749350},
    {**WIRE, "color": "RED"},
    {**WIRE, "color": 1},
    {**WIRE, "level": 1.0},
    {**WIRE, "level": True},
    {**WIRE, "level": "1"},
    {**WIRE, "level": 3},
    {**WIRE, "where": "ab"},
    {**WIRE, "where": {"x": 1}},
    {**WIRE, "where": []},
    {**WIRE, "where": [1, "a", 2]},
    {**WIRE, "where": ["1"]},
    {**WIRE, "totals": [1]},
    {**WIRE, "totals": {"net": "1"}},
    {**WIRE, "note": 1},
    {**WIRE, "paid": 0},
]
GOOD_INVOICES: list[Any] = [
    WIRE,
    {**WIRE, "id": "12345678123456781234567812345678"},
    {**WIRE, "id": "12345678-1234-5678-1234-56781234567A"},
    {**WIRE, "issued": "2026-12-03T08:09:10Z"},
    {**WIRE, "issued": "2026-12-03t08:09:10z"},
    {**WIRE, "issued": "2026-12-03 08:09:10-01:30"},
    {**WIRE, "issued": "2026-12-03T08:09:10+0130"},
    {**WIRE, "issued": "2026-12-03T08:09:10-00:00"},
    {**WIRE, "issued": "2026-12-03T08:09:10"},
    {**WIRE, "issued": "2026-12-03T08:09:10.1234565Z"},
    {**WIRE, "issued": "2026-12-03T08:09:10.9999995+02:00"},
    {**WIRE, "issued": "2026-12-03T08:09:10.1Z"},
    {**WIRE, "level": 2},
    {**WIRE, "where": [2, "b"]},
    {**WIRE, "totals": {"net": 1}},
    {**WIRE, "note": None},
]


def _body(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def _outcome(codec: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", codec.decode(body)
    except Exception as e:  # what the poller catches
        return "refused", e


def _agree(type_: Any, payload: Any) -> tuple[str, Any]:
    body = _body(payload)
    slow, fast = _outcome(JSONCodec(type_), body), _outcome(MsgspecCodec(type_), body)
    assert slow[0] == fast[0], f"cattrs {slow}, msgspec {fast}"
    if slow[0] == "ok":  # (repr: Decimal("NaN") is not equal to itself)
        assert slow[1] == fast[1] or repr(slow[1]) == repr(fast[1])
    return slow


@pytest.mark.parametrize(("type_", "payload"), [(Line, p) for p in BAD_LINES + GOOD_LINES])
def test_line_payloads_accepted_or_refused_alike(type_: Any, payload: Any) -> None:
    verdict, _ = _agree(type_, payload)
    assert verdict == ("ok" if any(payload is g for g in GOOD_LINES) else "refused")


@pytest.mark.parametrize("payload", BAD_INVOICES + GOOD_INVOICES)
def test_invoice_payloads_accepted_or_refused_alike(payload: Any) -> None:
    verdict, _ = _agree(Invoice, payload)
    assert verdict == ("ok" if any(payload is g for g in GOOD_INVOICES) else "refused")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    # floats beyond 2**53 would differ in the last digit only through the parsers
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(max_size=5),
        "amount": json_values,
        "tags": json_values | st.lists(st.text(max_size=3) | json_values, max_size=3),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=fields | json_values)
def test_arbitrary_json_is_accepted_or_refused_alike(payload: Any) -> None:
    _agree(Order, payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"sku": "s", "quantity": "many"}, "invalid value for type, expected int @ $.quantity"),
        ({"sku": "s"}, "required field missing @ $.quantity"),
        ({"sku": None, "quantity": 1}, "invalid value for type, expected str @ $.sku"),
        ({**LINE, "quantity": 1.5}, "invalid value for type, expected int @ $.quantity"),
    ],
)
def test_errors_read_as_on_the_cattrs_path(payload: Any, reason: str) -> None:
    for codec in (JSONCodec(Line), MsgspecCodec(Line)):
        with pytest.raises(Exception) as info:
            codec.decode(_body(payload))
        assert JSONCodec.explain(info.value) == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({**WIRE, "lines": [{"sku": "s"}]}, "required field missing @ $.lines[0].quantity"),
        (
            {**WIRE, "lines": [{"sku": "s", "quantity": "x"}]},
            "invalid value for type, expected int @ $.lines[0].quantity",
        ),
        ({**WIRE, "lines": "x"}, "invalid value for type, expected list @ $.lines"),
        ({**WIRE, "totals": [1]}, "expected a mapping @ $.totals"),
        ({**WIRE, "note": 1}, "invalid value for type, expected str | None @ $.note"),
    ],
)
def test_nested_errors_read_as_on_the_cattrs_path(payload: Any, reason: str) -> None:
    for codec in (JSONCodec(Invoice), MsgspecCodec(Invoice)):
        with pytest.raises(Exception) as info:
            codec.decode(_body(payload))
        assert JSONCodec.explain(info.value) == reason


def test_malformed_json_is_explained_as_such() -> None:
    with pytest.raises(Exception) as info:
        MsgspecCodec(Line).decode(b'{"sku": ')
    assert JSONCodec.explain(info.value).startswith("JSONDecodeError: ")


class Reading2(msgspec.Struct):
    sensor: str
    at: datetime.datetime


def test_a_struct_is_read_and_written_by_msgspec() -> None:
    c: MsgspecCodec[Reading2] = MsgspecCodec(Reading2)
    r = Reading2("t", datetime.datetime(2026, 1, 1, tzinfo=UTC))
    assert c.decode(c.encode(r)) == r
    with pytest.raises(Exception) as info:
        c.decode(b'{"sensor": 1, "at": "2026-01-01T00:00:00Z"}')
    assert JSONCodec.explain(info.value) == "invalid value for type, expected str @ $.sensor"


class Mixed(enum.Enum):
    ONE = 1
    TWO = "two"


@attrs.frozen
class HasMixed:
    m: Mixed


@attrs.frozen
class Converted:
    ids: tuple[int, ...] = attrs.field(converter=tuple)


@attrs.frozen
class HoldsConverted:
    inner: list[Converted]


def test_types_msgspec_would_read_differently_are_refused_at_the_call() -> None:
    assert JSONCodec(HasMixed).decode(b'{"m": "two"}') == HasMixed(Mixed.TWO)
    with pytest.raises(TypeError, match="all str or all int"):
        MsgspecCodec(HasMixed)
    with pytest.raises(TypeError, match=r"Converted \(at \$\.inner\[\.\.\.\]\).*converters"):
        MsgspecCodec(HoldsConverted)


def test_a_bad_payload_through_the_queue_is_a_decode_error_in_cattrs_words() -> None:
    name = "msgspec-codec-listener"
    errors: Chan[Exception] = Chan(8)
    q = Queue(EmbeddedAdapter(name), errors=errors)
    try:
        codec = MsgspecCodec(Line)
        with enqueue(Line, q, codec=codec) as (out, _):
            out.send(Line("good", 1))
        bad = Bag(category="Line", body=b'{"sku": "bad", "quantity": "x"}')
        assert broker(name).send([bad]) == [None]
        with dequeue(Line, q, codec=codec) as (rcv, ack):
            msg = rcv.recv(timeout=5)
            assert msg.object == Line("good", 1)
            ack.send(msg)
            err = errors.recv(timeout=5)
        assert isinstance(err, DecodeError)
        assert "invalid value for type, expected int @ $.quantity" in str(err)
        wait_for(lambda: q.stats().acked == 1, what="the good message acked")
    finally:
        q.close()


@attrs.frozen
class Exact:
    n: int
    d: decimal.Decimal = decimal.Decimal(0)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"n": 18446744073709551616}',  # 2**64: orjson reads it as a float
        b'{"n": -9223372036854775809}',  # -2**63 - 1
        b'{"n": 1, "d": 1e999}',  # orjson refuses a number beyond a double
    ],
)
def test_known_difference_msgspec_reads_numbers_orjson_cannot(payload: bytes) -> None:
    """Documented in the README: msgspec takes integers beyond 64 bits and Decimal
    numbers beyond a double exactly; JSONCodec on orjson refuses them."""
    with pytest.raises(Exception):  # noqa: B017 - any refusal
        JSONCodec(Exact).decode(payload)
    assert isinstance(MsgspecCodec(Exact).decode(payload), Exact)


def test_known_difference_a_decimal_number_keeps_all_its_digits_only_on_msgspec() -> None:
    body = b'{"n": 1, "d": 0.1000000000000000055511151231257827}'
    assert JSONCodec(Exact).decode(body).d == decimal.Decimal("0.1")
    assert MsgspecCodec(Exact).decode(body).d == decimal.Decimal(
        "0.1000000000000000055511151231257827"
    )


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime.datetime(1, 1, 1, 0, 0, 1),
        timezones=st.none() | st.timezones() | st.just(UTC),
    ),
    spelling=st.sampled_from(["iso", "Z", "space", "no colon", "7 digits"]),
)
def test_date_times_are_read_alike(when: datetime.datetime, spelling: str) -> None:
    text = when.isoformat()
    if spelling == "Z":
        text = text.replace("+00:00", "Z")
    elif spelling == "space":
        text = text.replace("T", " ")
    elif spelling == "no colon" and len(text) > 6 and text[-3] == ":" and text[-6] in "+-":
        text = text[:-3] + text[-2:]
    elif spelling == "7 digits" and "." in text:
        text = text.replace(".", ".5", 1)  # past microseconds: rounded, maybe into the next second
    _agree(Reading, {"sensor": "s", "values": [], "at": text})
