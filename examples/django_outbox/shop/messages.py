"""The message the shop publishes, and the validation of what a client posts."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

import attrs

#: The largest amount an order may have (the columns hold 10 digits, 2 after the point).
MAX_AMOUNT = Decimal("99999999.99")


@attrs.frozen
class OrderPlaced:
    """Published (category "OrderPlaced") when, and only when, an order is committed."""

    order_id: int
    customer: str
    amount: Decimal  # travels as a string: exact


@attrs.frozen
class NewOrder:
    """A valid request body."""

    customer: str
    amount: Decimal


class InvalidOrder(ValueError):
    """The request body is not a valid order (the message names the field)."""


def parse_order(body: bytes) -> NewOrder:
    """`{"customer": "ann", "amount": "19.90"}` (amount: a string or a JSON number), or
    raise `InvalidOrder`."""
    try:
        data = json.loads(body)
    except ValueError as e:  # includes bytes that are not UTF-8
        raise InvalidOrder(f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidOrder(f"expected a JSON object, got {type(data).__name__}")
    extra = sorted(set(data) - {"customer", "amount"})
    if extra:
        raise InvalidOrder(f"unknown field(s): {', '.join(extra)}")
    customer = data.get("customer")
    if not isinstance(customer, str) or not customer.strip():
        raise InvalidOrder("customer: a non-empty string is required")
    if len(customer) > 200:
        raise InvalidOrder("customer: at most 200 characters")
    return NewOrder(customer=customer.strip(), amount=_amount(data.get("amount")))


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidOrder('amount: a number or a decimal string ("19.90") is required')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidOrder(f"amount: not a number: {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidOrder(f"amount: must be more than 0, not {value!r}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise InvalidOrder(f"amount: at most 2 decimal places, not {value!r}")
    if amount > MAX_AMOUNT:
        raise InvalidOrder(f"amount: at most {MAX_AMOUNT}, not {value!r}")
    return amount.quantize(Decimal("0.01"))
