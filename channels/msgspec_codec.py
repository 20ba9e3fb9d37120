"""`MsgspecCodec`: JSON decoded by msgspec straight into the channel's type (`qchan[fast]`).

Decoding with msgspec skips the dict that cattrs structures from: one pass from
bytes to the object. It keeps `JSONCodec`'s contract: the same bytes on the wire
(it encodes through `JSONCodec`), the same inputs refused, and errors explained in
the same words and paths (`invalid value for type, expected int @ $.quantity`).
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import attrs

from .codec import EncodeError, JSONCodec, PayloadMismatch, first_field

__all__ = ["MsgspecCodec"]

T = TypeVar("T")

_AT = re.compile(r"(.*?)(?: - at `(\$[^`]*)`)?", re.DOTALL)
_EXPECTED = re.compile(r"Expected `([^`]+)`, got `[^`]+`")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
# msgspec names JSON's types, cattrs Python's.
_NAMES = {"array": "list", "null": "None"}


def explain(error: Exception) -> str:
    """A msgspec `ValidationError` in cattrs' words: what was expected, `@` the JSON path."""
    m = _AT.fullmatch(str(error))
    text, path = (m[1], m[2] or "$") if m else (str(error), "$")
    if missing := _MISSING.fullmatch(text):
        return f"required field missing @ {path}.{missing[1]}"
    if expected := _EXPECTED.fullmatch(text):
        if expected[1] == "object":
            return f"expected a mapping @ {path}"
        names = " | ".join(_NAMES.get(n, n) for n in expected[1].split(" | "))
        return f"invalid value for type, expected {names} @ {path}"
    return f"invalid value ({text}) @ {path}"


def _converts(t: Any) -> bool:
    return attrs.has(t) and any(a.converter is not None for a in attrs.fields(t))


class MsgspecCodec(Generic[T]):
    """JSON for attrs classes, dataclasses and `msgspec.Struct`s, decoded by msgspec.

    `enqueue(Order, q, codec=MsgspecCodec(Order))`, and the same on `dequeue`. The type is
    checked here: a `TypeError` names what msgspec cannot decode (an enum mixing int and
    str values, an attrs field with a converter, which msgspec would not run).
    """

    content_type = "application/json"

    def __init__(self, type_: Any) -> None:
        try:
            import msgspec  # noqa: PLC0415 - optional extra
        except ImportError:
            raise ImportError("MsgspecCodec needs msgspec: pip install 'qchan[fast]'") from None
        self.type = type_
        if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
            # No other codec reads a Struct, so msgspec writes it too.
            encoder = msgspec.json.Encoder()
            self._encode = encoder.encode
        else:
            self._encode = JSONCodec(type_).encode
            if converted := first_field(type_, _converts):
                path, cls = converted
                raise TypeError(
                    f"MsgspecCodec cannot decode {cls.__name__} (at {path}): msgspec does "
                    f"not run attrs converters; use the default JSONCodec"
                )
        try:
            self._decode = msgspec.json.Decoder(type_).decode
        except TypeError as e:
            raise TypeError(f"MsgspecCodec cannot decode {type_!r}: {e}") from e
        self._invalid = msgspec.ValidationError

    def encode(self, obj: T) -> bytes:
        try:
            return self._encode(obj)
        except EncodeError:
            raise
        except Exception as e:
            raise EncodeError(f"cannot encode {type(obj).__name__} as JSON: {e}") from e

    def decode(self, data: bytes) -> T:
        try:
            obj: T = self._decode(data)
        except self._invalid as e:
            raise PayloadMismatch(explain(e)) from e
        return obj
