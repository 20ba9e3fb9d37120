"""pydantic models (issue 18): a channel of a BaseModel goes through the model's own JSON
methods, strictly, with errors in the cattrs path's words."""

from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

import attrs
import pydantic
import pytest

from qchan import EncodeError, JSONCodec, PydanticCodec, Queue, dequeue, enqueue
from qchan.adapters.embedded import EmbeddedAdapter
from qchan.codec import codec_for


class Line(pydantic.BaseModel):
    sku: str
    quantity: int


class Order(pydantic.BaseModel):
    id: str
    lines: list[Line]
    placed: datetime.datetime
    total: decimal.Decimal
    labels: dict[str, int] = {}


ORDER = Order(
    id="o-1",
    lines=[Line(sku="a", quantity=2)],
    placed=datetime.datetime(2026, 12, 3, 8, 9, tzinfo=datetime.UTC),
    total=decimal.Decimal("19.80"),
)


def test_a_model_channel_uses_the_models_own_json() -> None:
    codec = codec_for(Order)
    assert isinstance(codec, PydanticCodec)
    data = codec.encode(ORDER)
    assert data == ORDER.model_dump_json().encode()
    assert codec.decode(data) == ORDER


def test_a_model_round_trips_through_a_queue() -> None:
    q = Queue(EmbeddedAdapter("pydantic-orders"))
    try:
        with enqueue(Order, q) as (out, _):
            out.send(ORDER)
        with dequeue(Order, q) as (rcv, ack):
            msg = rcv.recv(timeout=5)
            ack.send(msg)
        assert msg.object == ORDER and msg.category == "Order"
    finally:
        q.close()


def _wire(**changes: Any) -> bytes:
    return json.dumps({**json.loads(ORDER.model_dump_json()), **changes}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            _wire(lines=[{"sku": "a", "quantity": "2"}]),  # strict: a string is not an int
            "invalid value for type, expected int @ $.lines[0].quantity",
        ),
        (_wire(lines=[{"sku": "a"}]), "required field missing @ $.lines[0].quantity"),
        (_wire(id=7), "invalid value for type, expected str @ $.id"),
        (_wire(lines="x"), "invalid value for type, expected list @ $.lines"),
        (_wire(labels=[1]), "expected a mapping @ $.labels"),
        (b"[1]", "expected a mapping @ $"),
    ],
)
def test_refusals_read_as_on_the_cattrs_path(body: bytes, reason: str) -> None:
    with pytest.raises(Exception) as info:
        PydanticCodec(Order).decode(body)
    assert JSONCodec.explain(info.value) == reason


@pytest.mark.parametrize(
    "body", [b"", b"\xff\xfe", b'{"id": ', b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 5_000]
)
def test_malformed_or_hostile_json_is_an_exception_explained_in_one_line(body: bytes) -> None:
    with pytest.raises(Exception) as info:
        PydanticCodec(Order).decode(body)
    assert JSONCodec.explain(info.value).startswith("JSONDecodeError: ")


def test_an_object_of_another_type_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="expected Order"):
        PydanticCodec(Order).encode(Line(sku="a", quantity=1))


@attrs.frozen
class Holder:
    order: Order


def test_a_model_inside_an_attrs_class_is_named_at_the_call() -> None:
    with pytest.raises(TypeError, match=r"\$\.order has type Order.*converter="):
        codec_for(Holder)
