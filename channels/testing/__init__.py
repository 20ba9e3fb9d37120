"""The adapter conformance suite: the same behaviour tests against every transport.

Use it from a test module (needs pytest)::

    import pytest
    from qchan.testing import Conformance

    class TestMyBroker(Conformance):
        @pytest.fixture
        def adapter_factory(self):
            def make(name: str) -> Adapter:
                return MyAdapter(name, ...)   # the queue or topic `name`, created if need be
            return make

`make(name)` must open a new adapter on the queue called `name`; two calls with
the same name reach the same queue (and, for consumer-group brokers, the same
group), so that a message left un-acked by one queue is redelivered to the
next. Class attributes tune the suite: `ordered` (False for brokers without
per-channel order, such as SQS standard queues), `queue_options` (extra
`Queue` options every test uses), `patience` (how long to wait for a message
that must arrive), `quiet` (how long to listen to be sure nothing arrives)
and `redelivery_after` (how soon the broker redelivers a message received
and never acked: the visibility timeout the fixture configures, or 0 where
closing the consumer redelivers at once). Keep the fixture's visibility
timeout short (a second or two) so the suite stays fast.

`features` declares what the adapter does beyond the required methods (see
`FEATURES`); the tests of a feature run only where it is declared, so a
declaration is a promise the suite then checks. `missing_queue` also needs a
`missing_adapter_factory` fixture: `make(name)` opens an adapter on a queue
that does not exist (without creating it); `dead_letter` needs the method
`dead_lettered(name)`, how many dead letters of queue `name` the broker holds;
`extend` needs a `redelivery_after` above 0.

A new adapter is done when this suite passes against the real broker.

`Peers` (`qchan.testing.peers`) adds the behaviours of a Go Pub/Sub suite
(watermill's): consumers that come and go, nacks, concurrent consumers, order
per key. Mix it in, `class TestMyBroker(Peers, Conformance)`; its docstring
says how to scale it and how to let it check the broker's dead letters.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import attrs
import pytest

from ..adapter import Adapter, Hooks, Operations, ReceivingAdapter
from ..chan import Chan
from ..endpoints import AT_MOST_ONCE, dequeue, enqueue, enqueue_sync
from ..errors import (
    ConnectionLost,
    DecodeError,
    EnqueueError,
    QchanError,
    SendOnlyError,
    UnroutableError,
)
from ..kernel.queue import Queue
from ..message import Bag, Msg
from ..retry import Constant
from .doubles import Faulty, SendFaulty, SendSpy, Spy, Wrapped, faulty, spy_on
from .peers import Peers

__all__ = [
    "FEATURES",
    "Conformance",
    "Faulty",
    "Order",
    "Peers",
    "Refund",
    "SendFaulty",
    "SendSpy",
    "Spy",
    "Wrapped",
    "faulty",
    "spy_on",
]

AdapterFactory = Callable[[str], Adapter]

#: What an adapter may declare in `Conformance.features`, and what each promises.
FEATURES: dict[str, str] = {
    "receive": "it receives: a ReceivingAdapter, dequeue works (a send-only one leaves it out)",
    "wakeup": "wakeup() cuts short a receive already waiting in another thread",
    "sticky_wakeup": "a wakeup() just before a receive still cuts that receive short",
    "nack_delay": "give_back(bags, counted=True, delay=s) holds the redelivery back about s",
    "delivery_count": "a redelivered bag says so: `deliveries` counts each hand-out",
    "missing_queue": "an adapter on a queue that does not exist raises an error naming it",
    "double_ack": "acking one delivery twice neither raises, reports nor disturbs others",
    "give_back": "give_back(bags, counted=False) hands them out again soon, and where "
    "deliveries are counted (`delivery_count`) with the count they had",
    "dead_letter": "dead_letter(bags, errors) moves them off the queue into its dead "
    "letters, which `Conformance.dead_lettered(name)` counts",
    "extend": "extend(bags) keeps deliveries from every other consumer past the visibility "
    "timeout (`redelivery_after`, which must be > 0)",
    "depth": "an Operations: depth() counts the messages waiting (Kafka: the group's lag)",
    "purge": "purge() deletes every waiting message (Kafka: skips the group past them)",
}

_TestFunction = Callable[..., None]


def needs(*features: str) -> Callable[[_TestFunction], _TestFunction]:
    """Run the decorated suite test only for adapters that declare every one of `features`
    (a test without it needs "receive")."""
    unknown = set(features) - FEATURES.keys()
    assert not unknown, f"unknown features {sorted(unknown)}"

    def mark(test: _TestFunction) -> _TestFunction:
        test._qchan_needs = frozenset(features)  # type: ignore[attr-defined]
        return test

    return mark


class _Reports(Hooks):
    """Hooks that keep what the adapter reports."""

    def __init__(self) -> None:
        self.reported: list[BaseException] = []

    def report(self, error: BaseException) -> None:
        self.reported.append(error)


def _bag(n: int) -> Bag:
    body = f'{{"id": "{n}", "amount": 1.0}}'.encode()
    return Bag("Order", body, {"Category": "Order"}, id=uuid.uuid4().hex)


def _rx(adapter: Adapter) -> ReceivingAdapter:
    """The adapter as one qchan receives from (a test that needs "receive")."""
    assert isinstance(adapter, ReceivingAdapter), (
        f"{adapter!r} declares `receive`: subclass ReceivingAdapter"
    )
    return adapter


def _ops(adapter: Adapter) -> Operations:
    """The adapter's operator side (a test that needs "depth" or "purge")."""
    assert isinstance(adapter, Operations), f"{adapter!r} declares `depth`: mix in Operations"
    return adapter


def _take(adapter: Adapter, n: int, patience: float) -> list[Bag]:
    """Exactly `n` bags straight from the adapter, within `patience` seconds."""
    got: list[Bag] = []
    deadline = time.monotonic() + patience
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"received {len(got)} of {n} bags in {patience} s")
        got += _rx(adapter).receive(n - len(got), min(1.0, left))
    assert len(got) == n, f"asked for {n}, received {len(got)}"
    return got


@attrs.frozen
class Order:
    """A small typed message the suite sends."""

    id: str
    amount: float
    tags: list[str] = attrs.Factory(list)


@attrs.frozen
class Refund:
    """A second type, to share a queue with `Order`."""

    order: str
    reason: str


def _recv_all(rcv: Any, n: int, timeout: float, ack: Any = None) -> list[Msg[Any]]:
    """Receive n messages, each within `timeout` seconds (a deadline per message), acking
    each as it comes when given `ack` (as real consumers do: an SQS FIFO queue hands out
    a message group's next batch only once the last one is acked)."""
    got = []
    for i in range(n):
        try:
            got.append(rcv.recv(timeout=timeout))
            if ack is not None:
                ack.send(got[-1])
        except TimeoutError:
            raise AssertionError(
                f"received {i} of {n} messages; none more in {timeout} s"
            ) from None
    return got


class Conformance:
    """The tests every adapter passes. See the module docstring for how to use it."""

    ordered: ClassVar[bool] = True
    queue_options: ClassVar[dict[str, Any]] = {}
    patience: ClassVar[float] = 30.0
    quiet: ClassVar[float] = 2.0
    redelivery_after: ClassVar[float] = 0.0
    features: ClassVar[frozenset[str]] = frozenset({"receive"})

    @pytest.fixture(autouse=True)
    def _declared(self, request: pytest.FixtureRequest) -> None:
        """Skip a test whose features the adapter does not declare."""
        needed = getattr(request.function, "_qchan_needs", frozenset({"receive"}))
        missing = needed - self.features
        if missing:
            pytest.skip(f"the adapter does not declare {', '.join(sorted(missing))}")

    @pytest.fixture
    def missing_adapter_factory(self) -> AdapterFactory:
        pytest.fail("an adapter that declares missing_queue gives missing_adapter_factory")

    def dead_lettered(self, name: str) -> int:
        """How many messages the broker holds as dead letters of queue `name`: override it
        where the adapter declares `dead_letter` (0 where it has no dead letters)."""
        return 0

    @needs()
    def test_declared_features_are_known(self) -> None:
        unknown = self.features - FEATURES.keys()
        assert not unknown, f"unknown features {sorted(unknown)}; known: {sorted(FEATURES)}"

    @needs()
    def test_a_send_only_adapter_refuses_dequeue_at_the_call(
        self, open_queue: Callable[..., Queue]
    ) -> None:
        q = open_queue()
        receives = isinstance(q.adapter, ReceivingAdapter)
        assert receives == ("receive" in self.features), (
            "declare `receive` in features exactly when the adapter is a ReceivingAdapter"
        )
        if receives:
            return
        with pytest.raises(SendOnlyError, match=q.adapter.scheme):
            dequeue(Order, q)
        with enqueue(Order, q) as (out, dlq):  # the queue still sends
            out.send(Order("after", 1.0))
        assert len(dlq) == 0

    @needs("receive")
    def test_wakes_is_declared_as_the_wakeup_behaves(self, adapter: ReceivingAdapter) -> None:
        """The kernel trusts `wakes`: it makes every broker call on one thread and counts on
        `wakeup` to cut a waiting call short (the wakeup tests below check that it does);
        an adapter whose wakeup cannot gets its `receive` on a helper thread instead."""
        cuts = {"wakeup", "sticky_wakeup"} <= self.features
        assert adapter.wakes == cuts, (
            f"`wakes = {adapter.wakes}` but the features say wakeup "
            f"{'cuts' if cuts else 'does not cut'} a receive short: declare both "
            f"`wakeup` and `sticky_wakeup` exactly when `wakes` is True"
        )

    @pytest.fixture
    def queue_name(self) -> str:
        return f"qchan-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def open_queue(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> Iterator[Callable[..., Queue]]:
        opened: list[Queue] = []

        def make(
            *,
            name: str | None = None,
            wrap: Callable[[Adapter], Adapter] | None = None,
            **options: Any,
        ) -> Queue:
            adapter = adapter_factory(name or queue_name)
            if wrap is not None:
                adapter = wrap(adapter)
            q = Queue(adapter, **{**self.queue_options, **options})
            opened.append(q)
            return q

        yield make
        for q in opened:
            try:
                q.close()
            except EnqueueError:
                pass

    @pytest.fixture
    def inject(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> Callable[[list[Bag]], None]:
        """Send raw bags through an adapter of its own (as a foreign producer would)."""

        def send(bags: list[Bag]) -> None:
            raw = adapter_factory(queue_name)
            try:
                outcomes = raw.send_batch(bags)
                assert all(o is None for o in outcomes), outcomes
            finally:
                raw.close()

        return send

    # -- round trips ------------------------------------------------------------

    def test_round_trip_of_typed_objects(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue(agent="conformance", system="qchan-tests")
        sent = [Order(str(i), i * 1.25, ["a", "b"][: i % 3]) for i in range(10)]
        with enqueue(Order, q) as (out, _):
            for o in sent:
                out.send(o)
        with dequeue(Order, q) as (rcv, ack):
            got = _recv_all(rcv, 10, self.patience, ack)
        assert sorted(m.object.id for m in got) == sorted(o.id for o in sent)
        by_id = {m.object.id: m.object for m in got}
        assert all(by_id[o.id] == o for o in sent)
        attrs_ = got[0].attributes
        assert attrs_["Category"] == "Order"
        assert attrs_["Source"] == "conformance"
        assert attrs_["System"] == "qchan-tests"
        assert attrs_["Queue"] == q.name
        assert all(m.category == "Order" for m in got)

    def test_order_is_kept_per_channel(self, open_queue: Callable[..., Queue]) -> None:
        if not self.ordered:
            pytest.skip("this broker does not keep order")
        q = open_queue()
        with enqueue(Order, q) as (out, _):
            for i in range(100):
                out.send(Order(str(i), float(i)))
        with dequeue(Order, q) as (rcv, ack):
            got = _recv_all(rcv, 100, self.patience, ack)
        assert [m.object.id for m in got] == [str(i) for i in range(100)]

    def test_many_categories_share_one_queue(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue()
        # Every channel opens before anything is sent: a message taken while its
        # category had no channel yet would be unroutable, back only after the
        # broker's redelivery delay.
        with (
            dequeue(Order, q) as (r1, a1),
            dequeue(Refund, q) as (r2, a2),
            dequeue(str, q, category="note") as (r3, a3),
        ):
            with (
                enqueue(Order, q) as (orders, _),
                enqueue(Refund, q) as (refunds, _),
                enqueue(str, q, category="note") as (notes, _),
            ):
                for i in range(6):
                    orders.send(Order(str(i), 1.0))
                    refunds.send(Refund(str(i), "damaged"))
                    notes.send(f"note {i}")
            got_orders, got_refunds, got_notes = [], [], []
            for _ in range(6):  # round robin, acking as we go
                got_orders += _recv_all(r1, 1, self.patience, a1)
                got_refunds += _recv_all(r2, 1, self.patience, a2)
                got_notes += _recv_all(r3, 1, self.patience, a3)
        assert all(isinstance(m.object, Order) for m in got_orders)
        assert all(isinstance(m.object, Refund) for m in got_refunds)
        assert sorted(m.object for m in got_notes) == [f"note {i}" for i in range(6)]

    def test_bytes_and_str_channels(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue()
        raw = bytes(range(256))  # not UTF-8
        with (
            dequeue(bytes, q, category="blob") as (r1, a1),
            dequeue(str, q, category="text") as (r2, a2),
        ):
            with (
                enqueue(bytes, q, category="blob") as (blobs, _),
                enqueue(str, q, category="text") as (texts, _),
            ):
                blobs.send(raw)
                texts.send("héllo, wörld ✓")
            b = r1.recv(timeout=self.patience)
            t = r2.recv(timeout=self.patience)
            a1.send(b)
            a2.send(t)
        assert b.object == raw
        assert t.object == "héllo, wörld ✓"

    @needs()
    def test_sync_put_returns_once_the_broker_has_it(
        self, open_queue: Callable[..., Queue]
    ) -> None:
        q = open_queue()
        with enqueue_sync(Order, q) as orders:
            orders.put(Order("sync-1", 3.0), timeout=self.patience)
        if "receive" not in self.features:
            return  # accepted: what arrived is for the transport's own tests to read
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=self.patience)
            ack.send(m)
        assert m.object == Order("sync-1", 3.0)

    # -- acknowledgements ---------------------------------------------------------

    def test_ack_removes_the_message(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue()
        with enqueue(Order, q) as (out, _):
            for i in range(3):
                out.send(Order(str(i), 1.0))
        with dequeue(Order, q) as (rcv, ack):
            for m in _recv_all(rcv, 3, self.patience):
                ack.send(m)
        q.close()
        q2 = open_queue()
        # Long enough for an un-acked message to have come back by now.
        with dequeue(Order, q2) as (rcv2, _), pytest.raises(TimeoutError):
            rcv2.recv(timeout=self.redelivery_after + self.quiet)

    def test_nack_redelivers(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue()
        with enqueue(Order, q) as (out, _):
            out.send(Order("n", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            first = rcv.recv(timeout=self.patience)
            ack.send(first.fail(ValueError("try again")))
            again = rcv.recv(timeout=self.patience)
            ack.send(again)
        assert again.object == first.object

    def test_crash_before_ack_redelivers(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue()
        with enqueue(Order, q) as (out, _):
            out.send(Order("c", 2.0))
        with dequeue(Order, q) as (rcv, _):
            held = rcv.recv(timeout=self.patience)  # never acked
        q.close()  # releases what was not acked
        q2 = open_queue()
        with dequeue(Order, q2) as (rcv2, ack2):
            again = rcv2.recv(timeout=self.patience)
            ack2.send(again)
        assert again.object == held.object

    # -- bad input ------------------------------------------------------------------

    def _bad_then_good(
        self, open_queue: Callable[..., Queue], inject: Callable[[list[Bag]], None], bad: Bag
    ) -> tuple[Msg[Order], Exception]:
        """Inject `bad` (its attributes completed for the queue), send a good Order after it;
        the good one received and acked, and the error the bad one was reported with."""
        errors: Chan[Exception] = Chan(16)
        q = open_queue(errors=errors)
        inject([attrs.evolve(bad, attributes=q.attributes(bad.category), id=uuid.uuid4().hex)])
        with enqueue(Order, q) as (out, _):
            out.send(Order("good", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=self.patience)
            ack.send(m)
            err = errors.recv(timeout=self.patience)
        assert m.object == Order("good", 1.0)
        return m, err

    def test_poison_payload_goes_to_errors_and_the_worker_keeps_going(
        self, open_queue: Callable[..., Queue], inject: Callable[[list[Bag]], None]
    ) -> None:
        poison = b"\xff{not json"
        _, err = self._bad_then_good(open_queue, inject, Bag("Order", poison))
        assert isinstance(err, DecodeError)
        assert err.bag.body == poison
        assert "Order" in str(err)

    def test_unknown_category_is_reported_and_others_still_flow(
        self, open_queue: Callable[..., Queue], inject: Callable[[list[Bag]], None]
    ) -> None:
        _, err = self._bad_then_good(open_queue, inject, Bag("Nobody", b'{"x": 1}'))
        assert isinstance(err, UnroutableError)
        assert "Nobody" in str(err)

    # -- the emitter --------------------------------------------------------------

    @needs()
    def test_sends_are_batched(self, open_queue: Callable[..., Queue]) -> None:
        spy: list[SendSpy] = []

        def wrap(a: Adapter) -> Adapter:
            spy.append(spy_on(a))
            return spy[0]

        q = open_queue(wrap=wrap, linger=0.05)
        with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=100) as (out, _):
            for i in range(50):
                out.send(Order(str(i), 1.0))
        assert sum(spy[0].batches) == 50
        assert max(spy[0].batches) > 1, spy[0].batches
        if "receive" not in self.features:
            return
        with dequeue(Order, q) as (rcv, ack):
            _recv_all(rcv, 50, self.patience, ack)

    def test_close_flushes_everything_sent(self, open_queue: Callable[..., Queue]) -> None:
        q = open_queue(linger=0.2)
        out, _ = enqueue(Order, q, policy=AT_MOST_ONCE, capacity=500)
        for i in range(200):
            out.send(Order(str(i), 1.0))
        q.close()  # everything buffered is sent before close returns
        q2 = open_queue()
        with dequeue(Order, q2) as (rcv, ack):
            got = _recv_all(rcv, 200, self.patience, ack)
        assert {m.object.id for m in got} == {str(i) for i in range(200)}

    @needs()
    def test_transient_send_failures_are_retried(self, open_queue: Callable[..., Queue]) -> None:
        faults: list[SendFaulty] = []

        def wrap(a: Adapter) -> Adapter:
            faults.append(faulty(a, fail=2))
            return faults[0]

        q = open_queue(wrap=wrap, retry=Constant(0.01, max_attempts=5))
        with enqueue(Order, q) as (out, dlq):
            out.send(Order("r", 1.0))
        assert len(dlq) == 0
        assert q.stats().retried >= 1
        if "receive" not in self.features:
            return
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=self.patience)
            ack.send(m)
        assert m.object.id == "r"

    @needs()
    def test_message_that_keeps_failing_ends_on_dlq_after_the_configured_attempts(
        self, open_queue: Callable[..., Queue]
    ) -> None:
        faults: list[SendFaulty] = []

        def wrap(a: Adapter) -> Adapter:
            faults.append(faulty(a, fail=-1))
            return faults[0]

        q = open_queue(wrap=wrap, retry=Constant(0.01, max_attempts=3))
        out, dlq = enqueue(Order, q)
        sent = Order("doomed", 9.0)
        out.send(sent)
        dead = dlq.recv(timeout=self.patience)
        assert dead.object is sent  # the original object, handed back
        assert isinstance(dead.error, ConnectionLost)
        assert list(faults[0].attempts.values()) == [3]
        assert q.stats().dead_lettered == 1

    # -- features: the adapter on its own (see FEATURES) ----------------------------

    @pytest.fixture
    def adapter(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> Iterator[ReceivingAdapter]:
        """An adapter on the test's queue, connected (a group joined) and closed after."""
        a = _rx(adapter_factory(queue_name))
        try:
            a.receive(1, 0.2)
            yield a
        finally:
            a.close()

    def _one(self, adapter: ReceivingAdapter) -> Bag:
        """Send one bag through `adapter` and receive it back."""
        assert adapter.send_batch([_bag(1)]) == [None]
        (got,) = _take(adapter, 1, self.patience)
        return got

    @needs("receive", "sticky_wakeup")
    def test_a_wakeup_just_before_a_receive_cuts_it_short(self, adapter: ReceivingAdapter) -> None:
        adapter.wakeup()
        began = time.monotonic()
        assert list(adapter.receive(10, 20.0)) == []
        assert time.monotonic() - began < 2.0, "the wakeup was lost"

    @needs("receive", "wakeup")
    def test_a_wakeup_cuts_a_waiting_receive_short(self, adapter: ReceivingAdapter) -> None:
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(adapter.receive(10, 30.0)))
        began = time.monotonic()
        waiter.start()
        # Woken while it waits (or, should the thread start late, just before).
        threading.Timer(0.3, adapter.wakeup).start()
        waiter.join(10.0)
        assert not waiter.is_alive(), "receive still waiting 10 s after the wakeup"
        assert [list(g) for g in got] == [[]]
        assert time.monotonic() - began < 5.0

    @needs("receive", "nack_delay")
    def test_a_nack_delay_holds_the_redelivery_back(self, adapter: ReceivingAdapter) -> None:
        first = self._one(adapter)
        nacked = time.monotonic()
        adapter.give_back([first], counted=True, delay=2.0)
        (again,) = _take(adapter, 1, self.patience)
        waited = time.monotonic() - nacked
        adapter.ack([again])
        assert again.body == first.body
        assert waited >= 1.5, f"redelivered {waited:.2f} s after a nack with a 2 s delay"

    @needs("receive", "delivery_count")
    def test_a_redelivery_counts_as_another_delivery(self, adapter: ReceivingAdapter) -> None:
        first = self._one(adapter)
        adapter.give_back([first], counted=True)
        (again,) = _take(adapter, 1, self.patience)
        adapter.ack([again])
        assert (first.deliveries, again.deliveries) == (1, 2)

    @needs("missing_queue")
    def test_a_missing_queue_is_an_error_that_names_it(
        self, missing_adapter_factory: AdapterFactory, queue_name: str
    ) -> None:
        name = f"{queue_name}-missing"
        errors: list[BaseException] = []
        try:
            a = missing_adapter_factory(name)
        except QchanError as e:
            errors.append(e)  # refused at once: nothing to send or receive through
        else:
            try:
                calls: list[Callable[[], Any]] = [lambda: a.send_batch([_bag(1)])]
                if "receive" in self.features:
                    calls.append(lambda: _rx(a).receive(1, 0.5))
                for call in calls:
                    try:
                        outcome = call()
                    except QchanError as e:
                        errors.append(e)
                    else:
                        assert outcome, "send_batch returned no outcome"
                        assert all(o is not None for o in outcome), outcome
                        errors += [o for o in outcome if o is not None]
            finally:
                a.close()
        assert errors
        for error in errors:
            assert isinstance(error, QchanError), repr(error)
            assert name in str(error), f"{error!r} does not name the queue"

    def _depth_is(self, adapter: Adapter, ready: int) -> None:
        deadline = time.monotonic() + self.patience
        while (d := _ops(adapter).depth()).ready != ready:
            assert time.monotonic() < deadline, (
                f"depth {d}, not {ready} ready, in {self.patience} s"
            )
            threading.Event().wait(0.05)

    @needs("depth")
    def test_depth_counts_the_waiting_messages(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> None:
        a = adapter_factory(queue_name)
        try:
            assert a.send_batch([_bag(1), _bag(2), _bag(3)]) == [None] * 3
            self._depth_is(a, 3)
        finally:
            a.close()

    @needs("depth", "purge")
    def test_purge_deletes_every_waiting_message(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> None:
        a = adapter_factory(queue_name)
        try:
            assert a.send_batch([_bag(1), _bag(2)]) == [None, None]
            self._depth_is(a, 2)
            assert _ops(a).purge() in (2, None)  # None: the broker does not say (SQS)
            self._depth_is(a, 0)
        finally:
            a.close()
        if "receive" in self.features:
            b = adapter_factory(queue_name)
            try:
                assert list(_rx(b).receive(10, self.quiet)) == []
            finally:
                b.close()

    @needs("receive", "give_back")
    def test_a_give_back_not_counted_comes_again_soon_with_its_count(
        self, adapter: ReceivingAdapter
    ) -> None:
        first = self._one(adapter)
        given = time.monotonic()
        adapter.give_back([first], counted=False)
        (again,) = _take(adapter, 1, self.patience)
        waited = time.monotonic() - given
        adapter.ack([again])
        assert again.body == first.body
        assert waited < 5.0, f"given back, it came again only {waited:.1f} s later"
        if "delivery_count" in self.features:
            assert (first.deliveries, again.deliveries) == (1, 1)

    @needs("receive", "dead_letter")
    def test_dead_letter_moves_a_message_off_the_queue(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> None:
        a = _rx(adapter_factory(queue_name))
        hooks = _Reports()
        a.bind(hooks)
        try:
            assert a.send_batch([_bag(1), _bag(2)]) == [None, None]
            one, two = _take(a, 2, self.patience)
            a.dead_letter([one], [QchanError("the handler gave up")])
            a.ack([two])
            deadline = time.monotonic() + self.patience
            # Receiving meanwhile, as the kernel's consumer thread would (an adapter may settle on
            # the thread that receives), and nothing may come back.
            while (n := self.dead_lettered(queue_name)) != 1:
                said = f"dead_lettered({queue_name!r}) is {n}, not 1"
                assert n == 0, said
                assert time.monotonic() < deadline, (
                    f"{said} after {self.patience} s (declaring dead_letter, override "
                    f"Conformance.dead_lettered)"
                )
                assert list(a.receive(10, 0.1)) == [], "a dead-lettered message came back"
            # Off the queue: it does not come back, as an un-acked delivery would.
            assert list(a.receive(10, self.redelivery_after + self.quiet)) == []
        finally:
            a.close()
        # A transport may say what it dead-lettered (RabbitMQ, Kafka); each report names it.
        for report in hooks.reported:
            assert str(one.id) in str(report), f"{report!r} does not name {one.id}"

    @needs("receive", "extend")
    def test_extend_keeps_a_delivery_from_other_consumers(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> None:
        timeout = self.redelivery_after
        assert timeout > 0, "declaring extend, set redelivery_after (the visibility timeout)"
        a, b = _rx(adapter_factory(queue_name)), _rx(adapter_factory(queue_name))
        try:
            assert a.send_batch([_bag(1)]) == [None]
            (held,) = _take(a, 1, self.patience)
            end = time.monotonic() + 2.5 * timeout  # held two and a half timeouts
            while time.monotonic() < end:
                a.extend([held])
                stolen = list(b.receive(1, timeout / 3))
                assert stolen == [], "an extended delivery reached another consumer"
            a.ack([held])
            assert list(b.receive(1, timeout + self.quiet)) == []
        finally:
            a.close()
            b.close()

    @needs("receive", "double_ack")
    def test_acking_a_delivery_twice_is_harmless(
        self, adapter_factory: AdapterFactory, queue_name: str
    ) -> None:
        a = adapter_factory(queue_name)
        hooks = _Reports()
        a.bind(hooks)
        try:
            assert a.send_batch([_bag(1), _bag(2)]) == [None, None]
            one, two = _take(a, 2, self.patience)
            rx = _rx(a)
            rx.ack([one])
            rx.ack([one])
            rx.ack([two, one])
        finally:
            a.close()
        assert hooks.reported == []
        b = adapter_factory(queue_name)
        try:
            # Long enough for an un-acked delivery to have come back by now.
            assert list(_rx(b).receive(10, self.redelivery_after + self.quiet)) == []
        finally:
            b.close()
