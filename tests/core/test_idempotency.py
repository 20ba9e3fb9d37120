"""qchan.idempotency with the memory store: the decorator's semantics, fast, no services.

First delivery runs and later ones skip; a failure releases the claim; a duplicate while
the first runs is nacked (StillRunning); leases and TTLs expire (an injected clock); the
store down at claim nacks (or handles, when asked); a crash between the effect and the
record runs the effect again after the lease; and serve over mem:// acks both copies of
a message whose effect happens once.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import typing
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support.helpers import start

import qchan
from qchan import Bag, Msg, Retries, enqueue, serve
from qchan.adapters.embedded import broker
from qchan.errors import QchanError
from qchan.idempotency import (
    ID_ATTRIBUTE,
    Claim,
    ClaimState,
    MemoryStore,
    StillRunning,
    Store,
    StoreUnavailable,
    idempotent,
    message_key,
)
from qchan.options import OptionError
from qchan.testing import Order


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flaky(MemoryStore):
    """A memory store whose calls can be made to fail: `down` (claim raises
    StoreUnavailable), `done_fails` and `release_fails` (those raise)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.down = False
        self.done_fails = False
        self.release_fails = False
        self.done_calls = 0

    def claim(self, namespace: str, key: str, lease: float) -> Claim:
        if self.down:
            raise StoreUnavailable("store down") from ConnectionRefusedError("refused")
        return super().claim(namespace, key, lease)

    def done(self, namespace: str, key: str, token: str, ttl: float) -> bool:
        self.done_calls += 1
        if self.done_fails:
            raise StoreUnavailable("store down at done") from ConnectionResetError("reset")
        return super().done(namespace, key, token, ttl)

    def release(self, namespace: str, key: str, token: str) -> bool:
        if self.release_fails:
            raise StoreUnavailable("store down at release")
        return super().release(namespace, key, token)


def msg_of(obj: Any, *, bag_id: str | None = "bag-1", qchan_id: str | None = None) -> Msg[Any]:
    attributes = {"Category": "Order"} | ({ID_ATTRIBUTE: qchan_id} if qchan_id else {})
    bag = Bag("Order", b"{}", attributes, id=bag_id)
    return Msg(obj, "Order", attributes=attributes, bag=bag)


def by_id(o: Order) -> str:
    return o.id


# ---------------------------------------------------------------- the basic cycle


def test_the_first_delivery_runs_and_a_second_is_skipped() -> None:
    store = MemoryStore()
    effects: list[str] = []

    @idempotent(store, key=by_id)
    def bill(order: Order) -> str:
        effects.append(order.id)
        return "billed"

    assert bill(Order("1", 9.5)) == "billed"
    assert bill(Order("1", 9.5)) is None  # skipped: serve acks it
    assert bill(Order("2", 1.0)) == "billed"
    assert effects == ["1", "2"]


def test_a_failure_releases_the_claim_and_the_retry_runs() -> None:
    store = MemoryStore()
    attempts: list[int] = []
    boom = ValueError("first time fails")

    @idempotent(store, key=by_id)
    def bill(order: Order) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise boom

    with pytest.raises(ValueError) as e:
        bill(Order("1", 1.0))
    assert e.value is boom  # unchanged
    bill(Order("1", 1.0))  # the redelivery runs (no StillRunning: the claim was released)
    bill(Order("1", 1.0))  # and then it is done
    assert len(attempts) == 2


def test_a_duplicate_while_the_first_runs_raises_still_running() -> None:
    store = MemoryStore()
    inside, finish = threading.Event(), threading.Event()
    effects: list[str] = []

    @idempotent(store, key=by_id, lease=60)
    def bill(order: Order) -> None:
        inside.set()
        assert finish.wait(10)
        effects.append(order.id)

    first = start(bill, Order("1", 1.0))
    assert inside.wait(10)
    with pytest.raises(StillRunning, match="another delivery is handling it") as e:
        bill(Order("1", 1.0))
    assert isinstance(e.value, QchanError)
    finish.set()
    first.outcome(10)
    assert bill(Order("1", 1.0)) is None
    assert effects == ["1"]


def test_an_expired_lease_lets_another_delivery_run() -> None:
    """A consumer that died holding a claim blocks the message for `lease` s at most."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    effects: list[str] = []

    @idempotent(store, key=by_id, lease=30, namespace="billing")
    def bill(order: Order) -> None:
        effects.append(order.id)

    assert store.claim("billing", "1", 30).state is ClaimState.CLAIMED  # then it "dies"
    with pytest.raises(StillRunning):
        bill(Order("1", 1.0))
    clock.advance(29.9)
    with pytest.raises(StillRunning):
        bill(Order("1", 1.0))
    clock.advance(0.2)
    bill(Order("1", 1.0))
    assert effects == ["1"]


def test_a_redelivery_after_the_ttl_runs_again() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    effects: list[str] = []

    @idempotent(store, key=by_id, ttl=3600)
    def bill(order: Order) -> None:
        effects.append(order.id)

    bill(Order("1", 1.0))
    clock.advance(3599)
    bill(Order("1", 1.0))
    assert effects == ["1"]
    clock.advance(2)
    bill(Order("1", 1.0))
    assert effects == ["1", "1"]


def test_two_handlers_of_one_message_each_run_once() -> None:
    store = MemoryStore()
    effects: list[str] = []

    @idempotent(store, key=by_id)
    def bill(order: Order) -> None:
        effects.append(f"bill {order.id}")

    @idempotent(store, key=by_id)
    def ship(order: Order) -> None:
        effects.append(f"ship {order.id}")

    for _ in range(2):
        bill(Order("1", 1.0))
        ship(Order("1", 1.0))
    assert effects == ["bill 1", "ship 1"]
    prefix = f"{__name__}.test_two_handlers_of_one_message_each_run_once.<locals>"
    assert store.claim(f"{prefix}.bill", "1", 1).state is ClaimState.DONE
    assert store.claim(f"{prefix}.ship", "1", 1).state is ClaimState.DONE


def test_an_explicit_namespace_is_shared_by_the_handlers_that_give_it() -> None:
    store = MemoryStore()
    effects: list[str] = []

    @idempotent(store, key=by_id, namespace="orders")
    def old(order: Order) -> None:
        effects.append("old")

    @idempotent(store, key=by_id, namespace="orders")
    def new(order: Order) -> None:  # a renamed handler keeps its records
        effects.append("new")

    old(Order("1", 1.0))
    new(Order("1", 1.0))
    assert effects == ["old"]


# ---------------------------------------------------------------- keys


def test_the_key_function_names_the_object() -> None:
    store = MemoryStore()
    effects: list[float] = []

    @idempotent(store, key=lambda o: f"{o.id}/{o.tags[0]}")
    def bill(order: Order) -> None:
        effects.append(order.amount)

    bill(Order("1", 1.0, ["a"]))
    bill(Order("1", 2.0, ["a"]))
    bill(Order("1", 3.0, ["b"]))
    assert effects == [1.0, 3.0]


def test_a_msg_handler_is_keyed_by_the_qchan_id_attribute_over_the_bag_id() -> None:
    store = MemoryStore()
    effects: list[str] = []

    @idempotent(store)
    def bill(msg: Msg[Order]) -> None:
        effects.append(message_key(msg))

    bill(msg_of(Order("1", 1.0), bag_id="sqs-a", qchan_id="orig"))
    bill(msg_of(Order("1", 1.0), bag_id="sqs-b", qchan_id="orig"))  # a copy: same id
    bill(msg_of(Order("1", 1.0), bag_id="orig"))  # the original: its bag id is that id
    bill(msg_of(Order("1", 1.0), bag_id="other"))
    assert effects == ["orig", "other"]


def test_a_msg_handler_may_have_a_key_function_of_the_msg() -> None:
    store = MemoryStore()
    effects: list[str] = []

    @idempotent(store, key=lambda m: m.object.id)
    def bill(msg: Msg[Order]) -> None:
        effects.append(msg.object.id)

    bill(msg_of(Order("1", 1.0), bag_id="a"))
    bill(msg_of(Order("1", 1.0), bag_id="b"))
    assert effects == ["1"]


def test_message_key_without_any_id_says_what_to_do() -> None:
    assert message_key(msg_of(Order("1", 1.0), bag_id="b", qchan_id="q")) == "q"
    assert message_key(msg_of(Order("1", 1.0), bag_id="b")) == "b"
    with pytest.raises(OptionError, match=r"no id .* give idempotent\(key=\.\.\.\)"):
        message_key(msg_of(Order("1", 1.0), bag_id=None))
    with pytest.raises(OptionError, match="no id"):
        message_key(Msg(Order("1", 1.0), "Order"))  # no bag at all
    with pytest.raises(OptionError, match=r"takes a qchan\.Msg, not Order"):
        message_key(Order("1", 1.0))  # type: ignore[arg-type]


def test_a_key_that_is_not_a_str_is_an_error_at_the_call() -> None:
    @idempotent(MemoryStore(), key=lambda o: o.amount)
    def bill(order: Order) -> None:
        raise AssertionError("not called")

    with pytest.raises(OptionError, match=r"must return a non-empty str, not 1\.0"):
        bill(Order("1", 1.0))


# ---------------------------------------------------------------- decoration


def test_an_object_handler_without_key_is_refused_at_decoration() -> None:
    with pytest.raises(OptionError, match="a handler that takes the object needs key=") as e:

        @idempotent(MemoryStore())
        def bill(order: Order) -> None: ...

    assert "test_an_object_handler_without_key_is_refused_at_decoration.<locals>.bill" in str(
        e.value
    )


def test_an_unresolvable_annotation_is_checked_at_the_call() -> None:
    """A type defined after the decorator ran (or a local one, with postponed annotations):
    the first parameter's annotation does not resolve, so the check waits for the call."""

    class Local:
        id = "1"

    @idempotent(MemoryStore())
    def bill(item: Local) -> None:
        raise AssertionError("not called")

    with pytest.raises(OptionError, match="a handler that takes the object needs key="):
        bill(Local())

    seen: list[str] = []

    @idempotent(MemoryStore())
    def bill_msg(msg: Msg[Local]) -> None:  # unresolvable too, but it gets a Msg: fine
        seen.append(msg.object.id)

    bill_msg(msg_of(Local()))
    bill_msg(msg_of(Local()))
    assert seen == ["1"]


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"ttl": 0}, "ttl must be > 0 s"),
        ({"ttl": -1.0}, "ttl must be > 0 s"),
        ({"ttl": "1d"}, "ttl must be a number of seconds"),
        ({"ttl": float("inf")}, "ttl must be a finite number"),
        ({"lease": 0}, "lease must be > 0 s"),
        ({"lease": None}, "lease must be a number of seconds"),
        ({"on_store_error": "skip"}, "on_store_error must be 'nack' or 'handle', not 'skip'"),
        ({"namespace": ""}, "namespace must be a non-empty str"),
        ({"key": "id"}, "key must be a function"),
    ],
)
def test_bad_options_are_refused_at_decoration(options: dict[str, Any], why: str) -> None:
    with pytest.raises(OptionError, match=why):
        idempotent(MemoryStore(), **options)


def test_a_store_that_is_not_one_is_refused() -> None:
    with pytest.raises(OptionError, match="store must be a qchan Store"):
        idempotent("redis://localhost")  # type: ignore[arg-type]


def bill_order(order: Order) -> int:
    """Bill it."""
    return 1


def bill_msg(msg: Msg[Order], extra: int = 0) -> None:
    """Bill it, with the Msg."""


def test_the_wrapper_keeps_the_signature_and_annotations() -> None:
    """serve and `qchan worker` infer the type from the first parameter's annotation."""
    from qchan.cli._target import _message_type  # the command's inference, loaded here

    store = MemoryStore()
    wrapped = idempotent(store, key=by_id)(bill_order)
    assert inspect.signature(wrapped) == inspect.signature(bill_order)
    assert typing.get_type_hints(wrapped) == {"order": Order, "return": int}
    assert (wrapped.__name__, wrapped.__doc__) == ("bill_order", "Bill it.")
    assert _message_type(wrapped) == (Order, False)
    wrapped_msg = idempotent(store)(bill_msg)
    assert inspect.signature(wrapped_msg) == inspect.signature(bill_msg)
    assert typing.get_type_hints(wrapped_msg)["msg"] == Msg[Order]
    assert _message_type(wrapped_msg) == (Order, True)


# ---------------------------------------------------------------- the store failing


def test_the_store_down_at_claim_nacks_without_calling_the_handler() -> None:
    store = Flaky()
    store.down = True
    called: list[str] = []

    @idempotent(store, key=by_id)
    def bill(order: Order) -> None:
        called.append(order.id)

    with pytest.raises(StoreUnavailable) as e:
        bill(Order("1", 1.0))
    assert isinstance(e.value.__cause__, ConnectionRefusedError)
    assert called == []
    store.down = False
    bill(Order("1", 1.0))
    assert called == ["1"]


def test_on_store_error_handle_runs_the_handler_without_the_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Flaky()
    store.down = True
    called: list[str] = []

    @idempotent(store, key=by_id, on_store_error="handle")
    def bill(order: Order) -> str:
        called.append(order.id)
        return "ok"

    with caplog.at_level(logging.WARNING, logger="qchan.idempotency"):
        assert bill(Order("1", 1.0)) == "ok"
        assert bill(Order("1", 1.0)) == "ok"  # no check: it runs again
    assert called == ["1", "1"]
    assert "store unavailable" in caplog.text and "without the check" in caplog.text
    assert store.done_calls == 0


def test_done_failing_after_success_returns_normally_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Flaky()
    store.done_fails = True

    @idempotent(store, key=by_id)
    def bill(order: Order) -> str:
        return "billed"

    with caplog.at_level(logging.WARNING, logger="qchan.idempotency"):
        assert bill(Order("1", 1.0)) == "billed"
    (record,) = [r for r in caplog.records if r.name == "qchan.idempotency"]
    assert record.levelno == logging.WARNING
    assert "handled, but could not record it" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], StoreUnavailable)


def test_release_failing_still_raises_the_handlers_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Flaky()
    store.release_fails = True
    boom = KeyError("boom")

    @idempotent(store, key=by_id)
    def bill(order: Order) -> None:
        raise boom

    with caplog.at_level(logging.WARNING, logger="qchan.idempotency"), pytest.raises(KeyError) as e:
        bill(Order("1", 1.0))
    assert e.value is boom
    assert "could not release the claim" in caplog.text


def test_a_crash_between_the_effect_and_the_record_runs_the_effect_again() -> None:
    """The documented gap: the effect happened, the record did not (the store failed, or
    the process died there). The claim holds until the lease ends; then the redelivery
    runs the handler again. Only `PostgresStore.record` closes this gap."""
    clock = Clock()
    store = Flaky(clock)
    store.done_fails = True
    effects: list[str] = []

    @idempotent(store, key=by_id, lease=60)
    def bill(order: Order) -> None:
        effects.append(order.id)

    bill(Order("1", 1.0))  # the effect, then done() fails: acked all the same
    store.done_fails = False
    with pytest.raises(StillRunning):  # a redelivery within the lease: back later
        bill(Order("1", 1.0))
    clock.advance(61)
    bill(Order("1", 1.0))  # after the lease: it runs again
    assert effects == ["1", "1"]
    bill(Order("1", 1.0))  # and now it is recorded
    assert effects == ["1", "1"]


def test_a_handler_that_outlives_its_lease_warns_when_another_delivery_claimed_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    inside, finish = threading.Event(), threading.Event()
    effects: list[str] = []

    @idempotent(store, key=by_id, lease=10)
    def bill(order: Order) -> None:
        effects.append(order.id)
        if len(effects) == 1:
            inside.set()
            assert finish.wait(10)

    first = start(bill, Order("1", 1.0))
    assert inside.wait(10)
    clock.advance(11)  # the first one's lease ran out while it runs
    bill(Order("1", 1.0))  # the redelivery claims it and runs
    with caplog.at_level(logging.WARNING, logger="qchan.idempotency"):
        finish.set()
        first.outcome(10)
    assert effects == ["1", "1"]
    assert "its claim had expired" in caplog.text


# ---------------------------------------------------------------- the memory store


def test_memory_store_tokens_guard_done_and_release() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    mine = store.claim("ns", "k", 10)
    assert mine.state is ClaimState.CLAIMED and mine.token
    assert store.claim("ns", "k", 10) == Claim(ClaimState.RUNNING)
    assert store.release("ns", "k", "not-mine") is False
    assert store.claim("ns", "k", 10).state is ClaimState.RUNNING
    clock.advance(11)
    theirs = store.claim("ns", "k", 10)  # mine expired: another delivery takes it
    assert theirs.state is ClaimState.CLAIMED and theirs.token != mine.token
    assert mine.token is not None and theirs.token is not None
    assert store.done("ns", "k", mine.token, 100) is False  # theirs decides
    assert store.release("ns", "k", mine.token) is False
    assert store.done("ns", "k", theirs.token, 100) is True
    assert store.claim("ns", "k", 10) == Claim(ClaimState.DONE)
    assert store.release("ns", "k", theirs.token) is False  # done is not released
    store.forget("ns", "k")
    assert store.claim("ns", "k", 10).state is ClaimState.CLAIMED


def test_memory_store_sweeps_expired_records() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for i in range(5000):
        store.claim("ns", str(i), 1)
        clock.advance(0.01)  # about 100 live at any time
    assert len(store) < 1100
    assert isinstance(store, Store)


def test_eight_threads_on_one_key_run_the_handler_once() -> None:
    store = MemoryStore()
    barrier = threading.Barrier(8)
    others_done = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()
    runs: list[int] = []

    @idempotent(store, key=by_id)
    def bill(order: Order) -> None:
        runs.append(threading.get_ident())
        others_done.wait(10)  # hold the claim while the others try

    def deliver() -> None:
        barrier.wait(10)
        try:
            bill(Order("1", 1.0))
            result = "ran" if threading.get_ident() in runs else "skipped"
        except StillRunning:
            result = "still running"
        with lock:
            outcomes.append(result)
            if outcomes.count("still running") == 7:
                others_done.set()

    threads = [start(deliver) for _ in range(8)]
    for t in threads:
        t.outcome(15)
    assert len(runs) == 1
    assert sorted(outcomes) == ["ran"] + ["still running"] * 7
    assert bill(Order("1", 1.0)) is None and len(runs) == 1


# ---------------------------------------------------------------- end to end, over mem://


def test_serve_acks_both_copies_and_the_effect_happens_once() -> None:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    store = MemoryStore()
    effects: list[str] = []
    seen: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    @idempotent(store, key=by_id)
    def bill(order: Order) -> None:
        with lock:
            effects.append(order.id)

    def handle(order: Order) -> None:
        bill(order)  # raises StillRunning if the copies meet: serve nacks, it comes back
        with lock:
            seen.append(order.id)
            if len(seen) == 2:
                stop.set()

    q = qchan.connect(f"mem://{name}", poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("42", 9.5))
        out.send(Order("42", 9.5))  # the same logical message, sent twice
    served = start(
        serve, handle, Order, q, workers=2, stop=stop, retries=Retries(delay=0.01)
    ).outcome(30)
    assert effects == ["42"]
    assert seen == ["42", "42"] and served.handled == 2
    assert broker(name).depth == 0 and broker(name).in_flight == 0
