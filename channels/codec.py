"""Codecs: domain objects to bytes and back. JSON through cattrs; `bytes` and `str` bypass it.

Nothing here can execute code on decode: JSON is data only, and cattrs builds
objects by calling the target class's own constructor with plain values.
orjson is used when installed (`pip install qchan[fast]`), the standard
library's json otherwise; both produce the same JSON.

Field types beyond JSON's own, the same on every codec: `datetime` as an RFC 3339
string (written by `isoformat`), `Decimal` as a string (exact; a JSON number is
accepted too), `UUID` as its canonical string, enums by value, NamedTuples as
arrays.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import json
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import (
    is_namedtuple,
    is_sequence,
    list_structure_factory,
    namedtuple_unstructure_factory,
)
from cattrs.errors import StructureHandlerNotFoundError
from cattrs.gen import make_dict_unstructure_fn
from cattrs.preconf.json import make_converter as make_json

from .errors import QchanError
from .event import Event, Meta

__all__ = [
    "BytesCodec",
    "Codec",
    "EncodeError",
    "JSONCodec",
    "PayloadMismatch",
    "PydanticCodec",
    "StrCodec",
    "category_for",
    "codec_for",
    "default_converter",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class EncodeError(QchanError):
    """An object could not be encoded (it does not match the channel's type)."""


class PayloadMismatch(ValueError):
    """A payload that is not of the channel's type, said as cattrs says it
    (`invalid value for type, expected int @ $.quantity`)."""


class Codec(Protocol[T]):
    """Turns one type into bytes and back. `content_type` is its MIME type."""

    content_type: str

    def encode(self, obj: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


@functools.cache
def default_converter() -> cattrs.Converter:
    """The shared cattrs converter: orjson's when installed, the stdlib json one otherwise."""
    conv: cattrs.Converter
    try:  # orjson is an optional extra: import it only if present
        import orjson  # noqa: F401, PLC0415
        from cattrs.preconf.orjson import make_converter as make_orjson  # noqa: PLC0415

        conv = make_orjson()
    except ImportError:
        conv = make_json()
    # Meta's unset fields are left out of the JSON, as Go's `omitempty` does.
    conv.register_unstructure_hook(
        Meta, make_dict_unstructure_fn(Meta, conv, _cattrs_omit_if_default=True)
    )
    _strict(conv)
    return conv


def _strict(conv: cattrs.Converter) -> None:
    """Refuse JSON of the wrong type instead of converting it.

    cattrs' own hooks call the target type: str({"a": 1}) and list("abc")
    succeed, so a producer's mistake would arrive as a plausible object. A
    message that does not match its type is a DecodeError (reported on the
    errors channel) instead. An int is a valid float; a bool is not a number.
    """

    def refuse(value: Any, type_: Any) -> TypeError:
        return TypeError(
            f"expected {getattr(type_, '__name__', type_)}, got "
            f"{type(value).__name__} {str(value)[:40]!r}"
        )

    enums: dict[Any, Callable[[Any, Any], Any]] = {}

    def subclass(value: Any, type_: Any) -> Any:
        # cattrs hands an IntEnum, a StrEnum or a (str, Enum) to the hook for int or
        # str: those go by value; other subclasses are taken as before.
        if not _is_enum(type_):
            return value
        if type_ not in enums:
            enums[type_] = _strict_enum(type_, refuse)
        return enums[type_](value, type_)

    def as_str(value: Any, type_: Any) -> str:
        if type(value) is str:
            return value if type_ is str else subclass(value, type_)
        raise refuse(value, type_)

    def as_int(value: Any, type_: Any) -> int:
        if type(value) is int:
            return value if type_ is int else subclass(value, type_)
        raise refuse(value, type_)

    def as_float(value: Any, type_: Any) -> float:
        if type(value) is float or type(value) is int:
            return float(value) if type_ is float else subclass(value, type_)
        raise refuse(value, type_)

    def as_bool(value: Any, type_: Any) -> bool:
        if type(value) is bool:
            return value
        raise refuse(value, type_)

    for t, hook in ((str, as_str), (int, as_int), (float, as_float), (bool, as_bool)):
        conv.register_structure_hook(t, hook)

    def is_list_like(type_: Any) -> bool:
        return is_sequence(type_) and get_origin(type_) is not tuple and type_ is not tuple

    def strict_list(type_: Any) -> Callable[[Any, Any], Any]:
        inner = list_structure_factory(type_, conv)

        def structure(value: Any, t: Any) -> Any:
            if isinstance(value, str | bytes | dict):
                raise refuse(value, t)
            return inner(value, t)

        return structure

    conv.register_structure_hook_factory(is_list_like, strict_list)
    _field_types(conv, refuse)


# RFC 3339 as msgspec reads it (so both codecs accept the same strings): a space or a
# lower-case t/z allowed, seconds required, any number of fraction digits, an optional
# offset with or without its colon (none: a naive datetime).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?"
)
# What isoformat() and Go write, in the range fromisoformat reads as RFC 3339 does.
_COMMON = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")


def parse_datetime(text: str) -> datetime.datetime:
    """An RFC 3339 date-time; `ValueError` for anything else (dates alone, ISO 8601's
    basic format, hour 24, leap seconds). Fractions beyond microseconds are rounded."""
    if _COMMON.fullmatch(text):
        return datetime.datetime.fromisoformat(text)  # 7x faster than the fields below
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {text[:40]!r}")
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    tz: datetime.tzinfo | None = None
    if z:
        tz = datetime.UTC
    elif sign:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError(f"offset out of range: {text[:40]!r}")
        offset = datetime.timedelta(hours=int(oh), minutes=int(om))
        tz = datetime.timezone(-offset if sign == "-" else offset) if offset else datetime.UTC
    micro = 0
    if frac:
        micro = int(frac[:6].ljust(6, "0")) + (len(frac) > 6 and frac[6] >= "5")
    carry = micro // 1_000_000
    value = datetime.datetime(
        int(y), int(mo), int(d), int(h), int(mi), int(s), micro % 1_000_000, tzinfo=tz
    )
    return value + datetime.timedelta(seconds=carry) if carry else value


def _is_enum(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, enum.Enum)


def _strict_enum(type_: Any, refuse: Callable[[Any, Any], TypeError]) -> Callable[[Any, Any], Any]:
    """By value, and of the values' own JSON type: Python's Enum(1.0) and Enum(True)
    would find the member whose value is 1."""
    kinds = {type(m.value) for m in type_}

    def structure(value: Any, t: Any) -> Any:
        if type(value) in kinds:
            try:
                return type_(value)
            except ValueError:
                pass
        raise refuse(value, t)

    return structure


def _field_types(conv: cattrs.Converter, refuse: Callable[[Any, Any], TypeError]) -> None:
    """Hooks for the field types JSON has no type for, strict like the scalar ones."""

    def as_datetime(value: Any, type_: Any) -> datetime.datetime:
        if type(value) is str:
            try:
                return parse_datetime(value)
            except ValueError:
                pass
        raise refuse(value, type_)

    def as_decimal(value: Any, type_: Any) -> decimal.Decimal:
        if type(value) is str:
            try:
                return decimal.Decimal(value)
            except decimal.InvalidOperation:
                pass
        elif type(value) is int:
            return decimal.Decimal(value)
        elif type(value) is float:
            # The JSON parser made it a float already: its shortest repr is the
            # number as written for up to 15 significant digits.
            return decimal.Decimal(repr(value))
        raise refuse(value, type_)

    def as_uuid(value: Any, type_: Any) -> uuid.UUID:
        # uuid.UUID itself also takes braces, "urn:uuid:" and stray hyphens.
        if type(value) is str and _UUID.fullmatch(value):
            return uuid.UUID(value)
        raise refuse(value, type_)

    conv.register_structure_hook(datetime.datetime, as_datetime)
    conv.register_structure_hook(decimal.Decimal, as_decimal)
    conv.register_unstructure_hook(decimal.Decimal, str)
    conv.register_structure_hook(uuid.UUID, as_uuid)
    conv.register_unstructure_hook(uuid.UUID, str)

    conv.register_structure_hook_factory(_is_enum, lambda t: _strict_enum(t, refuse))

    def strict_namedtuple(type_: Any) -> Callable[[Any, Any], Any]:
        hints = typing.get_type_hints(type_)
        fields: tuple[str, ...] = type_._fields
        least = sum(1 for f in fields if f not in type_._field_defaults)
        hooks = [(conv.get_structure_hook(hints[f]), hints[f]) for f in fields]

        def structure(value: Any, t: Any) -> Any:
            # An array of the fields in order; trailing fields with defaults may be left out.
            if type(value) is not list or not least <= len(value) <= len(fields):
                raise refuse(value, t)
            return type_(*(h(v, ft) for (h, ft), v in zip(hooks, value, strict=False)))

        return structure

    conv.register_structure_hook_factory(is_namedtuple, strict_namedtuple)
    conv.register_unstructure_hook_factory(
        is_namedtuple, lambda t: namedtuple_unstructure_factory(t, conv, unstructure_to=list)
    )


def unsupported_field(conv: cattrs.Converter, type_: Any) -> tuple[str, Any] | None:
    """The first field (its JSON path and type) `conv` has no structure hook for, or None.

    cattrs only finds out when a message arrives (and then every message is a
    DecodeError); this walks the type's fields when the channel is made.
    """

    def no_hook(t: Any) -> bool:
        if _is_record(get_origin(t) or t) or get_args(t):
            return False  # its fields or arguments are looked at one by one
        try:
            conv.get_structure_hook(t)
        except StructureHandlerNotFoundError:
            return True
        return False

    return first_field(type_, no_hook)


def first_field(type_: Any, bad: Callable[[Any], bool]) -> tuple[str, Any] | None:
    """The JSON path and type of the first type in `type_` (itself, its fields, their
    fields, the arguments of generics) for which `bad` is true, or None."""
    seen: set[Any] = set()

    def walk(t: Any, path: str) -> tuple[str, Any] | None:
        if isinstance(t, TypeVar) or t is Any or t is type(None) or t in seen:
            return None
        seen.add(t)
        origin, args = get_origin(t), get_args(t)
        if origin is typing.Annotated:
            return walk(args[0], path)
        if origin is typing.Literal:
            return None
        if origin is typing.Union or origin is types.UnionType:
            return next((r for a in args if (r := walk(a, path))), None)
        if bad(t):
            return path, t
        cls = origin or t
        if _is_record(cls):
            for name, ft in _field_hints(cls, args).items():
                if r := walk(ft, f"{path}.{name}"):
                    return r
            return None
        for i, a in enumerate(args):
            inner = f"{path}[{i}]" if origin is tuple else f"{path}[...]"
            if a is not ... and (r := walk(a, inner)):
                return r
        return None

    return walk(type_, "$")


def _is_record(cls: Any) -> bool:
    return attrs.has(cls) or dataclasses.is_dataclass(cls) or is_namedtuple(cls)


def _field_hints(cls: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    """The field types of an attrs class, dataclass or NamedTuple, type variables bound."""
    hints = typing.get_type_hints(cls)
    if attrs.has(cls):
        names = [a.name for a in attrs.fields(cls)]
    elif dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
    else:
        names = list(cls._fields)
    params: tuple[Any, ...] = getattr(cls, "__parameters__", ())
    bound = dict(zip(params, args, strict=False))
    return {n: _bind(hints[n], bound) for n in names if n in hints}


def _bind(t: Any, bound: dict[Any, Any]) -> Any:
    if isinstance(t, TypeVar):
        return bound.get(t, t)
    params: tuple[Any, ...] = getattr(t, "__parameters__", ())
    if bound and params:
        return t[tuple(bound.get(p, p) for p in params)]
    return t


def _name(type_: Any) -> str:
    """`Order`, `list[Order]`: a type as the user wrote it."""
    return type_.__name__ if isinstance(type_, type) else repr(type_).replace("typing.", "")


def _json_backend(conv: cattrs.Converter) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    if type(conv).__module__.endswith("orjson"):
        import orjson  # noqa: PLC0415 - optional extra

        odumps = orjson.dumps

        def dumps_exact(value: Any) -> bytes:
            # orjson returns its whole 4 KiB output buffer however short the JSON
            # (measured with orjson 3.13: 4,097 bytes allocated for an 81-byte
            # message); an exact copy keeps buffered messages 40x smaller.
            return memoryview(odumps(value)).tobytes()

        return dumps_exact, orjson.loads

    def dumps(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    return dumps, json.loads


class JSONCodec(Generic[T]):
    """JSON for attrs classes, dataclasses and anything else cattrs can (un)structure."""

    content_type = "application/json"

    def __init__(self, type_: Any, converter: cattrs.Converter | None = None) -> None:
        conv = converter or default_converter()
        self.type = type_
        # With a converter of the user's own, a hook for a whole class may cover fields
        # cattrs cannot do alone: only the default converter is checked field by field.
        if converter is None and (missing := unsupported_field(conv, type_)):
            path, field = missing
            raise TypeError(
                f"cannot make a JSON codec for {_name(type_)}: {path} has type "
                f"{_name(field)}, which qchan does not know how to (de)serialize; pass "
                f"converter= (a cattrs Converter with a structure and an unstructure hook "
                f"for {_name(field)}), or codec= (a Codec of your own)"
            )
        # Resolve cattrs' hooks once: per-message dispatch would cost a third of the time.
        self._unstructure = conv.get_unstructure_hook(type_)
        self._structure = conv.get_structure_hook(type_)
        self._dumps, self._loads = _json_backend(conv)

    def encode(self, obj: T) -> bytes:
        try:
            return self._dumps(self._unstructure(obj))
        except Exception as e:
            raise EncodeError(f"cannot encode {type(obj).__name__} as JSON: {e}") from e

    def decode(self, data: bytes) -> T:
        value = self._loads(data)
        obj: T = self._structure(value, self.type)
        return obj

    @staticmethod
    def explain(error: BaseException) -> str:
        """A one-line reason for a decode failure (cattrs' validation errors made readable)."""
        if isinstance(error, cattrs.BaseValidationError):
            return "; ".join(cattrs.transform_error(error))
        if isinstance(error, PayloadMismatch):
            return str(error)
        if type(error).__module__ == "msgspec":  # MsgspecCodec's malformed JSON
            return f"JSONDecodeError: {error}"
        return f"{type(error).__name__}: {error}"


class BytesCodec:
    """`bytes` channels: the body is the object, untouched."""

    content_type = "application/octet-stream"

    def encode(self, obj: bytes) -> bytes:
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise EncodeError(f"a bytes channel takes bytes, not {type(obj).__name__}")
        return bytes(obj)

    def decode(self, data: bytes) -> bytes:
        return data


class StrCodec:
    """`str` channels: UTF-8 text, untouched."""

    content_type = "text/plain; charset=utf-8"

    def encode(self, obj: str) -> bytes:
        if not isinstance(obj, str):
            raise EncodeError(f"a str channel takes str, not {type(obj).__name__}")
        return obj.encode()

    def decode(self, data: bytes) -> str:
        return data.decode()


# pydantic's error types for JSON's own types, named as cattrs names them.
_PYDANTIC_TYPES = {
    "int_type": "int",
    "string_type": "str",
    "float_type": "float",
    "bool_type": "bool",
    "list_type": "list",
}


class PydanticCodec(Generic[T]):
    """JSON for a pydantic model, through its own `model_dump_json` and
    `model_validate_json` (strict: `"1"` is not an int), errors in cattrs' words."""

    content_type = "application/json"

    def __init__(self, type_: Any) -> None:
        self.type = type_
        from pydantic import ValidationError  # noqa: PLC0415 - optional extra

        self._invalid = ValidationError

    def encode(self, obj: T) -> bytes:
        if not isinstance(obj, self.type):
            raise EncodeError(
                f"cannot encode {type(obj).__name__} as JSON: expected {self.type.__name__}"
            )
        try:
            text: str = obj.model_dump_json()
        except Exception as e:
            raise EncodeError(f"cannot encode {type(obj).__name__} as JSON: {e}") from e
        return text.encode()

    def decode(self, data: bytes) -> T:
        try:
            obj: T = self.type.model_validate_json(data, strict=True)
        except self._invalid as e:
            raise PayloadMismatch("; ".join(map(_pydantic_reason, e.errors()))) from e
        return obj


def _pydantic_reason(error: Any) -> str:
    path = "$" + "".join(f"[{p}]" if type(p) is int else f".{p}" for p in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"required field missing @ {path}"
    if kind in _PYDANTIC_TYPES:
        return f"invalid value for type, expected {_PYDANTIC_TYPES[kind]} @ {path}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping @ {path}"
    if kind == "json_invalid":
        return f"JSONDecodeError: {error['msg']}"
    return f"invalid value ({error['msg']}) @ {path}"


def _is_pydantic_model(type_: Any) -> bool:
    # A model class exists only once pydantic is imported: no import for everyone else.
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None and isinstance(type_, type) and issubclass(type_, pydantic.BaseModel)
    )


def codec_for(type_: Any, converter: cattrs.Converter | None = None) -> Codec[Any]:
    """The codec a channel of `type_` uses by default: bytes and str as they are, a pydantic
    model through pydantic (unless a `converter` is given), anything else JSONCodec."""
    if type_ is bytes:
        return BytesCodec()
    if type_ is str:
        return StrCodec()
    if converter is None and _is_pydantic_model(type_):
        return PydanticCodec(type_)
    return JSONCodec(type_, converter)


def category_for(type_: Any) -> str:
    """The default category of a type: its name; for `Event[M, T]`, the name of `T`."""
    if get_origin(type_) is Event:
        args = get_args(type_)
        if len(args) == 2 and isinstance(args[1], type):
            return args[1].__name__
    if isinstance(type_, type):
        return type_.__name__
    raise TypeError(f"cannot name a category for {type_!r}: pass category='...'")
