"""The order message, and the validation of what a client posts.

`Order` is what travels on the queue (category "Order"); the Flask example
sends the same shape, so its orders can be handled by this project's worker.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter
from cattrs.v import format_exception


@attrs.frozen
class Order:
    """An accepted order, as it goes on the queue."""

    id: str
    customer: str
    item: str
    quantity: int


def _not_empty(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.frozen
class NewOrder:
    """What a client POSTs. `id` is optional: send your own to make retries recognisable."""

    customer: str = attrs.field(validator=_not_empty)
    item: str = attrs.field(validator=_not_empty)
    quantity: int = attrs.field(validator=_positive)
    id: str | None = attrs.field(default=None)


class InvalidOrder(ValueError):
    """The request body is not a valid order; `problems` lists each one, naming the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid order: " + "; ".join(problems))
        self.problems = problems


def _exact(type_: type[Any]) -> Any:
    """A strict structure hook: JSON `2.7` or `true` is not an int, `5` is not a str."""

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not type_:
            raise TypeError(f"expected {type_.__name__}, got {type(value).__name__}")
        return value

    return structure


# cattrs as qchan uses it, but strict about types and unknown fields: a web API
# should say "quantity: expected int" rather than turn "2.7" into 2.
_INPUT = make_converter(forbid_extra_keys=True)
_INPUT.register_structure_hook(int, _exact(int))
_INPUT.register_structure_hook(str, _exact(str))


def _describe(exc: BaseException, type_: type[Any] | None) -> str:
    if type_ is None and isinstance(exc, ValueError):  # an attrs validator: its message
        return str(exc)  # already names the field
    return format_exception(exc, type_)


def parse_order(data: Any) -> NewOrder:
    """Validate a decoded JSON body into a `NewOrder`, or raise `InvalidOrder`."""
    if not isinstance(data, dict):
        raise InvalidOrder([f"expected a JSON object, got {type(data).__name__}"])
    try:
        return _INPUT.structure(data, NewOrder)
    except cattrs.BaseValidationError as e:
        problems = cattrs.transform_error(e, format_exception=_describe)
        raise InvalidOrder([p.removesuffix(" @ $") for p in problems]) from None
