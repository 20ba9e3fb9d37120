"""The adapter a broker author starts from (`qchan.adapter`'s docstring) works as written."""

from __future__ import annotations

import collections
import textwrap
import threading
import time
import uuid
from typing import Any

import attrs

import qchan
from qchan import Queue, dequeue, enqueue
from qchan.testing import Order


def _list_adapter() -> type[Any]:
    doc = qchan.adapter.__doc__ or ""
    start = doc.index("    class ListAdapter")
    code = textwrap.dedent(doc[start:])
    scope: dict[str, Any] = {
        "qchan": qchan,
        "attrs": attrs,
        "collections": collections,
        "threading": threading,
    }
    exec(compile(code, "qchan.adapter docstring", "exec"), scope)  # our own docstring
    cls: type[Any] = scope["ListAdapter"]
    return cls


def test_the_docstring_adapter_round_trips_redelivers_and_long_polls() -> None:
    adapter = _list_adapter()(f"list-{uuid.uuid4().hex[:8]}")
    began = time.monotonic()
    assert list(adapter.receive(10, 0.3)) == []  # an empty receive waits, then returns
    assert 0.25 <= time.monotonic() - began < 5.0
    with Queue(adapter, poll_wait=0.2) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(5):
                out.send(Order(str(i), 1.0))
        with dequeue(Order, q) as (rcv, ack):
            first = rcv.recv(timeout=5)
            ack.send(first.fail(RuntimeError("once")))  # given back, counted
            seen = {first.object.id: first.deliveries}
            while len(seen) < 5 or seen[first.object.id] == 1:
                m = rcv.recv(timeout=5)
                seen[m.object.id] = m.deliveries
                ack.send(m)
    assert sorted(seen) == [str(i) for i in range(5)]
    assert seen[first.object.id] == 2
