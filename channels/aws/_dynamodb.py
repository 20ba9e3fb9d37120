"""DynamoDB's attribute-value JSON (`{"S": "ann"}`, `{"N": "9.5"}`, ...) as plain Python values.

| tag | Python |
|---|---|
| S | str |
| N | int when integral, else Decimal |
| B | bytes (the JSON holds base64) |
| BOOL | bool |
| NULL | None |
| M | dict of the converted values |
| L | list of the converted values |
| SS, NS, BS | frozenset of str, of numbers (as N), of bytes |

Numbers: DynamoDB keeps up to 38 significant decimal digits, sent as text.
A float would change them (`{"N": "0.1"}` is not the binary 0.1, and 17
digits lose the rest), so a number with a fraction is a `Decimal`, exact as
stored, as boto3's own deserializer gives it; an integral one is an `int`,
also exact and what code compares ids and counts with. Sets are frozensets:
DynamoDB's sets are unordered and hold no duplicates, and frozen so that a
number set can hold them as members of other sets, or be a dict key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["from_item", "from_value"]

# DynamoDB's numbers lie between 1E-130 and 9.99...E+125 in magnitude; refusing
# others keeps a hostile record from making a 10**1000000-sized int.
_MIN_EXPONENT = -130
_MAX_EXPONENT = 125


def _number(text: object) -> int | Decimal:
    if not isinstance(text, str):
        raise ValueError(f"a DynamoDB number (N) is a string, not {type(text).__name__}")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a DynamoDB number: {text[:40]!r}") from None
    if not d.is_finite() or (d and not _MIN_EXPONENT <= d.adjusted() <= _MAX_EXPONENT):
        raise ValueError(f"number out of DynamoDB's range: {text[:40]!r}")
    return int(d) if d == d.to_integral_value() else d


def _bytes(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"DynamoDB binary (B) is base64 text, not {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"DynamoDB binary (B) is not valid base64: {text[:40]!r}") from None


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a DynamoDB string (S) is a string, not {type(value).__name__}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"DynamoDB BOOL is true or false, not {value!r:.40}")
    return value


def _null(value: object) -> None:
    if value is not True:
        raise ValueError(f"DynamoDB NULL is true, not {value!r:.40}")


def _map(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"a DynamoDB map (M) is an object, not {type(value).__name__}")
    return {str(k): from_value(v) for k, v in value.items()}


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"a DynamoDB list (L) is an array, not {type(value).__name__}")
    return [from_value(v) for v in value]


def _set(member: Callable[[object], Any], tag: str) -> Callable[[object], frozenset[Any]]:
    def convert(value: object) -> frozenset[Any]:
        if not isinstance(value, list):
            raise ValueError(f"a DynamoDB set ({tag}) is an array, not {type(value).__name__}")
        return frozenset(member(v) for v in value)

    return convert


_CONVERT: dict[str, Callable[[object], Any]] = {
    "S": _string,
    "N": _number,
    "B": _bytes,
    "BOOL": _bool,
    "NULL": _null,
    "M": _map,
    "L": _list,
    "SS": _set(_string, "SS"),
    "NS": _set(_number, "NS"),
    "BS": _set(_bytes, "BS"),
}


def from_value(av: object) -> Any:
    """One attribute value (`{"N": "42"}`) as a Python value (`42`); ValueError if malformed."""
    if not isinstance(av, Mapping) or len(av) != 1:
        raise ValueError(f"not a DynamoDB attribute value (one type tag): {av!r:.60}")
    ((tag, value),) = av.items()
    convert = _CONVERT.get(tag)
    if convert is None:
        raise ValueError(f"unknown DynamoDB type tag {tag!r:.20}; known: {', '.join(_CONVERT)}")
    return convert(value)


def from_item(item: object) -> dict[str, Any]:
    """An item or key (`{"Id": {"N": "101"}}`) as a dict of Python values (`{"Id": 101}`)."""
    return _map(item)
