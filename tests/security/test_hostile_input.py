"""Poison and hostile input (issue 8, item 4), property-based with hypothesis.

Two levels:

- the codecs directly: whatever the bytes, `decode` returns an object of the
  channel's type or raises an `Exception` (never a BaseException that would
  kill a worker thread, never a hang), and `JSONCodec.explain` turns any such
  error into one line. Both JSON backends (orjson when installed, the
  standard library's json otherwise) are exercised;
- the listener, end to end: raw bags injected into the embedded broker (as a
  foreign or broken producer would leave them) between good messages. The
  worker never dies, each bad message is reported on `errors` (DecodeError
  for a known category, UnroutableError for an unknown or missing one) with
  its raw bytes, the poison policy applies (here: the broker's redrive to
  dead letters after one receive), and the good messages around it still
  flow.

Hypothesis is bounded (max_examples, no deadline) so the file runs in well
under a minute.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from cattrs.preconf.json import make_converter as make_stdlib_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import start

from qchan import Bag, Chan, DecodeError, MsgspecCodec, Queue, UnroutableError, dequeue
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.codec import BytesCodec, JSONCodec, StrCodec, default_converter
from qchan.errors import MessageError
from qchan.testing import Order

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@attrs.frozen
class Tree:
    """A recursive type: structuring deep input recurses in cattrs."""

    name: str
    children: list[Tree] = attrs.Factory(list)


CODECS = {
    "orjson" if type(default_converter()).__module__.endswith("orjson") else "json": JSONCodec(
        Order
    ),
    "stdlib-json": JSONCodec(Order, make_stdlib_json()),
    "msgspec": MsgspecCodec(Order),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
invalid_utf8 = st.binary(min_size=1, max_size=64).map(lambda b: b"\xff" + b + b"\xc3")
deep = st.sampled_from([100, 1_000, 1_025, 10_000, 100_000]).flatmap(
    lambda d: st.sampled_from(
        [b"[" * d + b"]" * d, b'{"a":' * d + b"1" + b"}" * d, b"[" * d]
    )  # the last one is also truncated
)
bodies = st.one_of(
    st.binary(max_size=512),
    invalid_utf8,
    json_values.map(lambda v: json.dumps(v).encode()),
    deep,
    st.just(b""),
    st.just(b"null"),
    st.just(b'{"id": "x", "amount": 1e999}'),
)


# -- the codecs directly ------------------------------------------------------------


def _decode_or_error(codec: Any, body: bytes) -> Any:
    try:
        return codec.decode(body)
    except Exception as e:  # what the listener catches; a BaseException would escape it
        why = JSONCodec.explain(e)
        assert isinstance(why, str) and why
        return e


@pytest.mark.parametrize("backend", sorted(CODECS))
@BOUNDED
@given(body=bodies)
def test_json_decode_returns_the_type_or_raises_an_exception(backend: str, body: bytes) -> None:
    out = _decode_or_error(CODECS[backend], body)
    assert isinstance(out, Order | Exception), type(out)


@pytest.mark.parametrize(
    "make",
    [
        lambda: JSONCodec(Tree),
        lambda: JSONCodec(Tree, make_stdlib_json()),
        lambda: MsgspecCodec(Tree),
    ],
    ids=["default", "stdlib-json", "msgspec"],
)
@pytest.mark.parametrize("depth", [10, 500, 900, 1_025, 5_000, 50_000])
def test_deeply_nested_input_of_a_recursive_type_is_an_error_not_a_crash(
    make: Any, depth: int
) -> None:
    body = b'{"name":"n","children":[' * depth + b'{"name":"leaf"}' + b"]}" * depth
    out = _decode_or_error(make(), body)
    assert isinstance(out, Tree | Exception)
    if depth <= 10:
        assert isinstance(out, Tree)


@BOUNDED
@given(body=st.binary(max_size=256))
def test_str_and_bytes_codecs_on_any_bytes(body: bytes) -> None:
    assert BytesCodec().decode(body) == body
    out = _decode_or_error(StrCodec(), body)
    assert isinstance(out, str | UnicodeDecodeError)


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": {"a": 1}, "amount": 1.0}',  # object where a str is expected
        b'{"id": "x", "amount": 1.0, "tags": "abc"}',  # a string where a list is expected
        b'{"id": "x", "amount": true}',  # a bool where a float is expected
        b'{"id": "x", "amount": "nan"}',  # a string where a float is expected
        b'{"id": 7, "amount": 1.0}',  # a number where a str is expected
    ],
)
@pytest.mark.parametrize("codec", [JSONCodec(Order), MsgspecCodec(Order)], ids=["json", "msgspec"])
def test_json_that_does_not_match_the_type_is_refused(codec: Any, body: bytes) -> None:
    out = _decode_or_error(codec, body)
    assert isinstance(out, Exception), f"accepted as {out!r}"


# -- the listener, end to end --------------------------------------------------------


class Listening:
    """One embedded queue with an Order channel and an errors channel, shared by the
    examples of a test (so the same workers face every hostile message)."""

    def __init__(self) -> None:
        self.name = f"hostile-{uuid.uuid4().hex[:8]}"
        # Poison policy of this broker: after one receive without an ack, dead letters.
        EmbeddedAdapter(
            self.name, visibility_timeout=0.3, max_deliveries=1, max_message_size=8 * 1024 * 1024
        )
        self.errors: Chan[Exception] = Chan(4096)
        self.q = Queue(
            EmbeddedAdapter(self.name), errors=self.errors, poll_wait=0.05, ack_linger=0.001
        )
        self.rcv, self.ack = dequeue(Order, self.q, capacity=64)
        self.good = 0
        self.bad_ids: set[str] = set()

    def workers(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.endswith(f"-mem-{self.name}")]

    def inject(self, bags: list[Bag]) -> None:
        assert broker(self.name).send(bags) == [None] * len(bags)

    def good_bag(self) -> tuple[str, Bag]:
        self.good += 1
        ident = f"good-{self.good}"
        body = json.dumps({"id": ident, "amount": 1.0}).encode()
        return ident, Bag("Order", body, {"Category": "Order"}, id=ident)

    def close(self) -> None:
        self.q.close()
        broker(self.name).purge()


@pytest.fixture
def listening() -> Iterator[Listening]:
    lst = Listening()
    yield lst
    lst.close()


@st.composite
def hostile_bags(draw: st.DrawFn) -> Bag:
    body = draw(bodies)
    category = draw(
        st.one_of(
            st.just("Order"),  # known: a decode problem
            st.just(""),  # no Category attribute (a foreign producer)
            st.text(max_size=30),  # unknown, maybe odd characters
            st.just("Ωrder\u0000\ud7ff"),
        )
    )
    attributes: dict[str, str] = {}
    if category or draw(st.booleans()):
        attributes["Category"] = category
    if draw(st.booleans()):
        attributes["Source"] = "s" * draw(st.sampled_from([0, 1, 1_000, 300_000]))
    extra = draw(
        st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=50), max_size=3)
    )
    attributes.update({k: v for k, v in extra.items() if k != "Category"})
    return Bag(category, body, attributes, id=f"bad-{uuid.uuid4().hex}")


def _expect_error(bag: Bag) -> type[MessageError] | None:
    """What the listener must report for this bag (None: it decodes, so it is delivered)."""
    if bag.category != "Order":
        return UnroutableError
    out = _decode_or_error(JSONCodec(Order), bag.body)
    return None if isinstance(out, Order) else DecodeError


def _drain(
    lst: Listening,
    goods: set[str],
    *,
    reported: dict[str, Exception],
    delivered: set[str],
    want_errors: int,
    timeout: float = 10.0,
) -> None:
    deadline = time.monotonic() + timeout
    while goods or len(reported) < want_errors:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still waiting for goods {sorted(goods)} and "
                f"{want_errors - len(reported)} error report(s)"
            )
        try:
            m = lst.rcv.recv(timeout=0.01)
            assert m.bag is not None
            delivered.add(m.bag.id or "")
            goods.discard(m.object.id)
            lst.ack.send(m)
        except TimeoutError:
            pass
        try:
            e = lst.errors.recv(timeout=0)
        except TimeoutError:
            continue
        assert isinstance(e, MessageError), f"not a message error: {e!r}"
        reported[e.bag.id] = e


# The queue's worker threads use `random` (select picks among ready cases at random)
# while hypothesis draws examples; that is not the strategy using it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_the_listener_survives_hostile_messages_and_good_ones_flow(listening: Listening) -> None:
    lst = listening
    workers = lst.workers()
    assert len(workers) == 1  # the consumer

    @BOUNDED
    @given(bad=st.lists(hostile_bags(), min_size=1, max_size=4))
    def one_batch(bad: list[Bag]) -> None:
        g1, first = lst.good_bag()
        g2, last = lst.good_bag()
        lst.inject([first, *bad, last])
        expected = {b.id: _expect_error(b) for b in bad}
        failing = {i for i, kind in expected.items() if kind is not None}
        lst.bad_ids |= failing
        reported: dict[str, Exception] = {}
        delivered: set[str] = set()
        _drain(lst, {g1, g2}, reported=reported, delivered=delivered, want_errors=len(failing))
        assert set(reported) == failing, "a bad message was not reported (or a good one was)"
        for ident, err in reported.items():
            kind = expected[ident]
            assert kind is not None and isinstance(err, kind), (kind, err)
            bag = next(b for b in bad if b.id == ident)
            assert err.bag.body == bag.body  # the raw bytes, for the operator
        assert not failing & delivered

    one_batch()
    # The same two workers are alive and still deliver.
    assert all(t.is_alive() for t in workers) and lst.workers() == workers
    ident, bag = lst.good_bag()
    lst.inject([bag])
    m = lst.rcv.recv(timeout=5)
    lst.ack.send(m)
    assert m.object.id == ident
    # The poison policy applied to every bad message: each was redelivered once and then
    # moved to the broker's dead letters; none was acked.
    dead = broker(lst.name).dead_letters

    def all_dead() -> bool:
        return lst.bad_ids <= {b.id for b in dead}

    deadline = time.monotonic() + 10
    while not all_dead() and time.monotonic() < deadline:
        threading.Event().wait(0.05)
    assert all_dead(), f"{len(lst.bad_ids - {b.id for b in dead})} bad message(s) not dead-lettered"
    assert lst.q.stats().poison >= len(lst.bad_ids)


def test_error_text_about_a_hostile_message_stays_short(listening: Listening) -> None:
    lst = listening
    huge = "C" * 1_000_000
    lst.inject([Bag(huge, b"{}", {"Category": huge}, id="huge-category")])
    start(lst.rcv.recv, 5.0)  # a receiver waits: the poller takes what there is
    err = lst.errors.recv(timeout=5)
    assert isinstance(err, UnroutableError)
    assert len(str(err)) < 2_000, f"{len(str(err))} characters"
