"""The relay's rules against a scripted target (real PostgreSQL for the outbox): what a
target's refusal, failure, outage or a bug does to a row, and what the relay sends."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql
from support.helpers import need_service, wait_for

from qchan import Adapter, Bag, ConnectionLost, QchanError, RejectedError, enqueue
from qchan.options import OptionError
from qchan.outbox import ID_ATTRIBUTE, Outbox, Relayed, relay
from qchan.retry import Constant

HOST, PORT, DB = "127.0.0.1", 5432, "test"
DSN = f"postgresql://postgres@{HOST}:{PORT}/{DB}"
pytestmark = pytest.mark.integration
FAST = Constant(interval=0.01, max_attempts=None, max_elapsed=None)


@attrs.frozen
class Placed:
    order: str


class Target(Adapter):
    """Records what it is sent; `script(bag, attempt)` gives each bag's outcome."""

    scheme = "scripted"
    max_batch = 4

    def __init__(self, script: Callable[[Bag, int], BaseException | None] | None = None) -> None:
        super().__init__("orders")
        self.script = script or (lambda bag, attempt: None)
        self.sent: list[Bag] = []
        self.attempts: dict[str, int] = {}
        self.raise_next: list[BaseException] = []

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        if self.raise_next:
            raise self.raise_next.pop(0)
        out: list[BaseException | None] = []
        for bag in bags:
            assert bag.id is not None
            n = self.attempts[bag.id] = self.attempts.get(bag.id, 0) + 1
            outcome = self.script(bag, n)
            if outcome is None:
                self.sent.append(bag)
            out.append(outcome)
        return out

    def orders(self) -> list[str]:
        import json

        return [json.loads(b.body)["order"] for b in self.sent]


@pytest.fixture(scope="module")
def admin() -> Iterator[psycopg.Connection[Any]]:
    need_service(HOST, PORT, "PostgreSQL")
    c = psycopg.connect(DSN, autocommit=True)
    yield c
    c.close()


@pytest.fixture
def name(admin: psycopg.Connection[Any]) -> Iterator[str]:
    n = f"ob_{uuid.uuid4().hex[:12]}"
    yield n
    for table in (n, f"{n}_dlq"):
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table)))


def send(name: str, *orders: str, key: Callable[[Placed], str] | None = None) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        outbox = Outbox(conn, name, agent="shop")
        with conn.transaction(), enqueue(Placed, outbox, key=key) as (out, _):
            for o in orders:
                out.send(Placed(o))


def table(admin: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    return admin.execute(
        sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier("qchan", name))
    ).fetchall()


def url(name: str, **query: Any) -> str:
    return f"{DSN}?queue={name}&wait=0.1" + "".join(f"&{k}={v}" for k, v in query.items())


def test_sends_in_order_with_id_key_and_the_targets_queue(name: str) -> None:
    send(name, *[str(i) for i in range(10)], key=lambda p: f"k{p.order}")
    target = Target()
    done = relay(url(name), target, drain=True)
    assert target.orders() == [str(i) for i in range(10)]
    first = target.sent[0]
    assert first.key == "k0" and first.content_type == "application/json"
    assert first.attributes["Queue"] == "orders" and first.attributes["System"] == "scripted"
    assert first.attributes["Source"] == "shop" and first.attributes["Category"] == "Placed"
    assert first.id == first.attributes[ID_ATTRIBUTE]
    assert "qchan-key" not in first.attributes
    assert done.relayed == 10 and done.batches == 1


def test_a_row_inserted_by_plain_sql_gets_the_rows_id(
    admin: psycopg.Connection[Any], name: str
) -> None:
    send(name, "made the table")
    admin.execute(
        sql.SQL("INSERT INTO {} (body, attributes) VALUES (%s, %s)").format(
            sql.Identifier("qchan", name)
        ),
        (b'{"order": "plain"}', '{"Category": "Placed"}'),
    )
    target = Target()
    relay(url(name), target, drain=True)
    plain = target.sent[1]
    assert plain.id == f"qchan.{name}.2" and plain.attributes[ID_ATTRIBUTE] == plain.id


def test_a_refused_row_goes_to_the_dlq_at_once(admin: psycopg.Connection[Any], name: str) -> None:
    send(name, "a", "poison", "b")
    target = Target(lambda bag, n: RejectedError("no") if b"poison" in bag.body else None)
    done = relay(url(name), target, drain=True, backoff=FAST)
    assert target.orders() == ["a", "b"]
    assert sorted(target.attempts.values()) == [1, 1, 1]  # a refusal is not retried
    (dead,) = table(admin, f"{name}_dlq")
    assert b"poison" in bytes(dead[1]) and "refused by scripted://: RejectedError: no" in dead[4]
    assert done.dead_lettered == 1 and table(admin, name) == []


def test_a_message_failing_alone_is_counted_then_dead_lettered(
    admin: psycopg.Connection[Any], name: str
) -> None:
    """A per-message failure that is not a refusal: retried within the batch, counted once
    per batch, dead-lettered on max_deliveries; the others go on."""
    send(name, "a", "flaky", "b")
    target = Target(lambda bag, n: QchanError("internal") if b"flaky" in bag.body else None)
    done = relay(url(name, max_deliveries=3), target, drain=False, hold=0.05, backoff=FAST,
                 stop=_stop_when(lambda: table(admin, name) == []))  # fmt: skip
    assert target.orders() == ["a", "b"]
    (dead,) = table(admin, f"{name}_dlq")
    assert (
        b"flaky" in bytes(dead[1]) and "failed 3 times, the last: QchanError: internal" in dead[4]
    )
    assert done.dead_lettered == 1 and done.failures >= 3


def test_a_target_that_is_down_counts_nothing_and_gets_everything_once_back(
    admin: psycopg.Connection[Any], name: str
) -> None:
    send(name, *[str(i) for i in range(6)])
    down = threading.Event()
    down.set()
    target = Target(lambda bag, n: ConnectionLost("down") if down.is_set() else None)
    target.raise_next = [ConnectionLost("refused")] * 3  # the call itself fails too
    done = Relayed()
    stop = threading.Event()
    t = threading.Thread(
        target=relay,
        args=(url(name, max_deliveries=2), target),
        kwargs={"stop": stop, "done": done, "hold": 0.05, "backoff": FAST},
    )
    t.start()
    try:
        wait_for(lambda: done.failures >= 10, 30, "failures while the target is down")
        assert done.failing_since is not None and not done.healthy(grace=0.0)
        assert [r[4] for r in table(admin, name)] == [0] * 6  # not counted as deliveries
        down.clear()
        wait_for(lambda: table(admin, name) == [], 30, "the outbox to empty")
    finally:
        stop.set()
        t.join(10)
    assert target.orders() == [str(i) for i in range(6)]
    assert done.dead_lettered == 0 and done.healthy(grace=0.0)


def test_a_failure_the_whole_batch_shares_counts_against_no_message(
    admin: psycopg.Connection[Any], name: str
) -> None:
    """A missing queue, say: every message fails the same way. Dead-lettering them would
    empty the outbox into its dlq for a configuration mistake: the relay waits instead."""
    send(name, "a", "b", "c")
    broken = threading.Event()
    broken.set()
    target = Target(lambda bag, n: QchanError("no such queue") if broken.is_set() else None)
    done, stop = Relayed(), threading.Event()
    t = threading.Thread(
        target=relay,
        args=(url(name, max_deliveries=2), target),
        kwargs={"stop": stop, "done": done, "hold": 0.05, "backoff": FAST},
    )
    t.start()
    try:
        wait_for(lambda: done.failures >= 10, 30, "failures while the queue is missing")
        assert [r[4] for r in table(admin, name)] == [0, 0, 0]
        assert table(admin, f"{name}_dlq") == []
        broken.clear()  # the queue is made
        wait_for(lambda: table(admin, name) == [], 30, "the outbox to empty")
    finally:
        stop.set()
        t.join(10)
    assert target.orders() == ["a", "b", "c"] and done.dead_lettered == 0


def test_an_unexpected_error_is_logged_and_the_batch_starts_again(
    name: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qchan.outbox import _relay

    send(name, "a", "b")
    original = _relay._Relay._bag
    calls = {"n": 0}

    def buggy(self: Any, *row: Any) -> Bag:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug")
        return original(self, *row)

    monkeypatch.setattr(_relay._Relay, "_bag", buggy)
    target = Target()
    with caplog.at_level(logging.ERROR, logger="qchan.outbox"):
        done = relay(url(name), target, drain=True, backoff=FAST)
    assert target.orders() == ["a", "b"] and done.failures == 1
    assert any("unexpected error" in r.message and r.exc_info for r in caplog.records)


def test_stop_ends_a_relay_whose_target_keeps_failing(name: str) -> None:
    send(name, "a")
    target = Target(lambda bag, n: ConnectionLost("down"))
    stop = threading.Event()
    t = threading.Thread(
        target=relay, args=(url(name), target), kwargs={"stop": stop, "hold": 30.0}
    )
    t.start()
    wait_for(lambda: bool(target.attempts), 30, "a first attempt")
    started = time.monotonic()
    stop.set()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 5


def test_bad_arguments_are_refused_at_the_call(name: str) -> None:
    with pytest.raises(OptionError, match="dead-letter table"):
        relay(url(name, dlq=""), Target(), drain=True)
    with pytest.raises(OptionError, match="same table"):
        relay(url(name), url(name), drain=True)
    with pytest.raises(OptionError, match="batch"):
        relay(url(name), Target(), batch=0)
    with pytest.raises(OptionError, match="postgresql:// URL"):
        relay(42, Target())  # type: ignore[arg-type]


def _stop_when(predicate: Callable[[], bool]) -> threading.Event:
    """An event a watcher sets once `predicate` holds, or after 30 s (for a relay run in
    this thread: the test then fails on what the relay did not do)."""
    stop = threading.Event()

    def watch() -> None:
        try:
            wait_for(predicate, 30, "the relay's work")
        finally:
            stop.set()

    threading.Thread(target=watch, daemon=True).start()
    return stop
