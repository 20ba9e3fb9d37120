"""Codecs: domain objects to bytes and back. JSON through cattrs; `bytes` and `str` bypass it.

Nothing here can execute code on decode: JSON is data only, and cattrs builds
objects by calling the target class's own constructor with plain values.
orjson is used when installed (`pip install qchan[fast]`), the standard
library's json otherwise; both produce the same JSON.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, get_args, get_origin

import cattrs
from cattrs.cols import is_sequence, list_structure_factory
from cattrs.gen import make_dict_unstructure_fn
from cattrs.preconf.json import make_converter as make_json

from .errors import QchanError
from .event import Event, Meta

__all__ = [
    "BytesCodec",
    "Codec",
    "EncodeError",
    "JSONCodec",
    "StrCodec",
    "category_for",
    "codec_for",
    "default_converter",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class EncodeError(QchanError):
    """An object could not be encoded (it does not match the channel's type)."""


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

    def as_str(value: Any, type_: Any) -> str:
        if type(value) is str:
            return value
        raise refuse(value, type_)

    def as_int(value: Any, type_: Any) -> int:
        if type(value) is int:
            return value
        raise refuse(value, type_)

    def as_float(value: Any, type_: Any) -> float:
        if type(value) is float or type(value) is int:
            return float(value)
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


def codec_for(type_: Any, converter: cattrs.Converter | None = None) -> Codec[Any]:
    """The codec a channel of `type_` uses by default."""
    if type_ is bytes:
        return BytesCodec()
    if type_ is str:
        return StrCodec()
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
