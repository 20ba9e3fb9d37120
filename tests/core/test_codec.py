"""Codecs: typed JSON through cattrs, bytes and str channels, readable decode errors, no pickle."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re

import attrs
import pytest

from qchan import BytesCodec, EncodeError, Event, JSONCodec, Meta, StrCodec
from qchan.codec import category_for, codec_for


@attrs.frozen
class Line:
    sku: str
    qty: int


@attrs.frozen
class Invoice:
    id: str
    lines: list[Line]
    issued: datetime.datetime
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float


def test_attrs_class_round_trip_with_nesting_and_datetime() -> None:
    c: JSONCodec[Invoice] = JSONCodec(Invoice)
    inv = Invoice("i1", [Line("a", 2)], datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC))
    data = c.encode(inv)
    assert json.loads(data) == {
        "id": "i1",
        "lines": [{"sku": "a", "qty": 2}],
        "issued": "2026-01-02T03:04:00+00:00",
        "note": None,
    }
    assert c.decode(data) == inv


def test_dataclass_round_trip() -> None:
    c: JSONCodec[Point] = JSONCodec(Point)
    assert c.decode(c.encode(Point(1.5, -2.0))) == Point(1.5, -2.0)


def test_body_is_the_bare_object_and_unknown_keys_are_ignored() -> None:
    c: JSONCodec[Line] = JSONCodec(Line)
    assert json.loads(c.encode(Line("s", 1))) == {"sku": "s", "qty": 1}  # no envelope
    assert c.decode(b'{"sku": "s", "qty": 1, "added_later": true}') == Line("s", 1)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"sku": "s"}', "required field missing @ $.qty"),
        (b'{"sku": "s", "qty": "many"}', "invalid value for type, expected int @ $.qty"),
        (b"[1, 2]", ""),
        (b"\xff\xfe", ""),
        (b"", ""),
    ],
)
def test_decode_errors_are_explained(payload: bytes, reason: str) -> None:
    c: JSONCodec[Line] = JSONCodec(Line)
    with pytest.raises(Exception) as info:
        c.decode(payload)
    text = JSONCodec.explain(info.value)
    assert text
    if reason:
        assert reason in text


def test_encode_error_for_the_wrong_type() -> None:
    with pytest.raises(EncodeError, match="cannot encode str"):
        JSONCodec(Line).encode("nope")


def test_bytes_and_str_codecs_pass_through() -> None:
    raw = bytes(range(256))
    assert BytesCodec().decode(BytesCodec().encode(raw)) == raw
    assert StrCodec().decode(StrCodec().encode("ünïcode ✓")) == "ünïcode ✓"
    with pytest.raises(EncodeError):
        BytesCodec().encode("text")  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        StrCodec().encode(b"bytes")  # type: ignore[arg-type]
    assert codec_for(bytes).content_type == "application/octet-stream"
    assert codec_for(str).content_type.startswith("text/plain")
    assert codec_for(Line).content_type == "application/json"


def test_categories() -> None:
    assert category_for(Line) == "Line"
    assert category_for(Event[Meta, Line]) == "Line"
    assert category_for(bytes) == "bytes"
    with pytest.raises(TypeError, match="category="):
        category_for(dict[str, int])


def test_event_json_shape_leaves_unset_meta_out() -> None:
    c: JSONCodec[Event[Meta, Line]] = JSONCodec(Event[Meta, Line])
    body = json.loads(c.encode(Event(Meta(id="e1", type="Line"), Line("s", 1))))
    assert body == {"meta": {"id": "e1", "type": "Line"}, "data": {"sku": "s", "qty": 1}}
    assert c.decode(json.dumps(body).encode()).meta == Meta(id="e1", type="Line")


def test_every_meta_field_of_a_swarm_event_survives_a_round_trip() -> None:
    """Issue 16: an event passing through a qchan service keeps every field swarm's Meta has."""
    c: JSONCodec[Event[Meta, Line]] = JSONCodec(Event[Meta, Line])
    meta = {
        "id": "e1",
        "type": "Line",
        "realm": "blue",
        "agent": "go-service",
        "created": "2026-12-03T07:40:00Z",
        "target": "billing",
        "participant": "user:ann",
        "sink": "archive",
    }
    event = c.decode(json.dumps({"meta": meta, "data": {"sku": "s", "qty": 1}}).encode())
    assert event.meta is not None and event.meta.sink == "archive"
    again = json.loads(c.encode(event))["meta"]
    assert again.keys() == meta.keys()
    created = again.pop("created")
    assert datetime.datetime.fromisoformat(created) == datetime.datetime(
        2026, 12, 3, 7, 40, tzinfo=datetime.UTC
    )
    assert again == {k: v for k, v in meta.items() if k != "created"}
    assert "sink" not in json.loads(c.encode(Event(Meta(id="e2"), Line("s", 1))))["meta"]


def test_no_code_executing_decoder_anywhere_in_the_package() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    banned = re.compile(r"\b(pickle|marshal|shelve|dill|cloudpickle|yaml\.load|eval|exec)\b")
    offenders = [
        f"{p.relative_to(root)}:{n}"
        for folder in ("channels", "adapters")
        for p in (root / folder).rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if banned.search(line.split("#", 1)[0])
    ]
    assert offenders == []
