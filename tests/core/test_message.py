"""`Msg`: what the consumer builds per received message is the same Msg as the constructor's."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from qchan import Msg
from qchan.message import Bag, received


def fields(m: Msg[Any]) -> dict[str, object]:
    return {f.name: getattr(m, f.name) for f in attrs.fields(Msg)}


def test_received_is_the_msg_the_constructor_makes() -> None:
    bag = Bag("Order", b"{}", {"Category": "Order"}, "id-1", deliveries=3)
    fast = received({"id": 1}, "Order", "receipt", bag.attributes, bag)
    slow = Msg({"id": 1}, "Order", "receipt", bag.attributes, bag=bag)
    assert type(fast) is Msg
    assert fields(fast) == fields(slow)  # every field set, none left over
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.deliveries == 3


def test_a_received_msg_is_frozen_and_its_negative_acks_are_new_msgs() -> None:
    bag = Bag("Order", b"{}")
    m = received(1, "Order", None, {}, bag)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.error = ValueError()  # type: ignore[misc]
    failed = m.fail(ValueError("no"), delay=2.0)
    dead = m.dead_letter(KeyError("gone"))
    assert (m.error, m.delay, m.dead) == (None, None, False)
    assert (type(failed.error), failed.delay, failed.dead) == (ValueError, 2.0, False)
    assert (type(dead.error), dead.dead, dead.bag) == (KeyError, True, bag)


def test_every_slot_of_msg_is_a_field_the_builder_fills() -> None:
    """A field added to Msg must be filled by `received` too (it fills slot by slot)."""
    slots = set(vars(Msg)["__slots__"])
    assert slots == {f.name for f in attrs.fields(Msg)}
