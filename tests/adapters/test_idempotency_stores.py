"""RedisStore and PostgresStore against the real Redis (127.0.0.1:6379) and PostgreSQL
(127.0.0.1:5432, database `test`).

Claim, done, release, forget and expiry on each server; one winner among concurrent
claims; the store unreachable (a port where nothing listens) raising StoreUnavailable
at once; PostgreSQL reconnecting after a lost connection; and `PostgresStore.record`
inside the application's transaction: a concurrent duplicate waits on the row and then
sees the first transaction's outcome (after a commit: handled; after a rollback: its
turn), with the effect written exactly once.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from support.helpers import need_service, start, wait_for

from qchan.idempotency import (
    ClaimState,
    PostgresStore,
    RedisStore,
    StillRunning,
    Store,
    StoreUnavailable,
    idempotent,
)
from qchan.options import OptionError
from qchan.testing import Order

HOST = "127.0.0.1"
REDIS_PORT = 6379
PG_PORT, PG_DB = 5432, "test"
DSN = f"postgresql://postgres@{HOST}:{PG_PORT}/{PG_DB}"
pytestmark = pytest.mark.integration


def _need(port: int, what: str) -> None:
    need_service(HOST, port, what)


def free_port() -> int:
    """A port where nothing listens: bound by us, then closed."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


def claims_once(store: Store, key: str, threads: int = 8) -> list[ClaimState]:
    """`threads` claims of one key at once: the states they got."""
    barrier = threading.Barrier(threads)

    def one() -> ClaimState:
        barrier.wait(10)
        return store.claim("race", key, 30).state

    return [w.outcome(15) for w in [start(one) for _ in range(threads)]]


def the_semantics(store: Store, expired: Callable[[str, str], bool], wait: float = 10.0) -> None:
    """Claim, done, release, forget and expiry, the same on every store (leases of 0.2 s,
    waited for within `wait` s: by claiming until the claim succeeds, or by `expired`,
    which looks at the server without claiming)."""
    ns = "orders"
    mine = store.claim(ns, "1", 30)
    assert mine.state is ClaimState.CLAIMED and mine.token
    assert store.claim(ns, "1", 30).state is ClaimState.RUNNING
    assert store.release(ns, "1", "not-mine") is False
    assert store.claim(ns, "1", 30).state is ClaimState.RUNNING
    assert store.release(ns, "1", mine.token) is True
    again = store.claim(ns, "1", 30)
    assert again.state is ClaimState.CLAIMED and again.token != mine.token
    assert again.token is not None and store.done(ns, "1", again.token, 30) is True
    assert store.claim(ns, "1", 30).state is ClaimState.DONE
    assert store.release(ns, "1", again.token) is False  # a done record stays
    assert store.claim("another-namespace", "1", 30).state is ClaimState.CLAIMED
    store.forget(ns, "1")
    assert store.claim(ns, "1", 30).state is ClaimState.CLAIMED

    # a lease expires: another delivery claims it; the first one's done is then refused
    first = store.claim(ns, "2", 0.2)
    assert first.token is not None
    second = wait_for(
        lambda: (c := store.claim(ns, "2", 30)).state is ClaimState.CLAIMED and c,
        wait,
        "the 0.2 s lease to expire",
    )
    assert store.done(ns, "2", first.token, 30) is False
    assert store.done(ns, "2", second.token, 30) is True

    # a lease that expired with nobody else claiming: done still records it
    lone = store.claim(ns, "3", 0.2)
    assert lone.token is not None
    wait_for(lambda: expired(ns, "3"), wait, "the 0.2 s lease to expire")
    assert store.done(ns, "3", lone.token, 30) is True
    assert store.claim(ns, "3", 30).state is ClaimState.DONE

    # a done record expires after its TTL
    short = store.claim(ns, "4", 30)
    assert short.token is not None and store.done(ns, "4", short.token, 0.2) is True
    assert store.claim(ns, "4", 30).state is ClaimState.DONE
    wait_for(lambda: store.claim(ns, "4", 30).state is ClaimState.CLAIMED, wait, "the 0.2 s TTL")


def the_decorator(store: Store) -> None:
    effects: list[str] = []

    @idempotent(store, key=lambda o: o.id, namespace="bill")
    def bill(order: Order) -> None:
        effects.append(order.id)
        if order.amount < 0:
            raise ValueError("refund first")

    bill(Order("1", 1.0))
    bill(Order("1", 1.0))
    with pytest.raises(ValueError, match="refund first"):
        bill(Order("2", -1.0))
    bill(Order("2", 1.0))  # released: the retry runs
    bill(Order("2", 1.0))
    assert effects == ["1", "2", "2"]


# ---------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    _need(REDIS_PORT, "Redis")
    c = redis.Redis(HOST, REDIS_PORT)
    yield c
    c.close()


@pytest.fixture
def redis_store(redis_client: redis.Redis) -> Iterator[RedisStore]:
    prefix = f"qchan-test-handled-{uuid.uuid4().hex[:12]}:"
    store = RedisStore(f"redis://{HOST}:{REDIS_PORT}/0", prefix=prefix)
    yield store
    store.close()
    keys = list(redis_client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_client.delete(*keys)


def test_redis_claim_done_release_and_expiry(
    redis_store: RedisStore, redis_client: redis.Redis
) -> None:
    def expired(ns: str, key: str) -> bool:
        return not redis_client.exists(f"{redis_store.prefix}{ns}:{key}")

    the_semantics(redis_store, expired)


def test_redis_keys_are_prefix_namespace_key_with_the_lease_as_expiry(
    redis_store: RedisStore, redis_client: redis.Redis
) -> None:
    name = f"{redis_store.prefix}billing:order-7"
    c = redis_store.claim("billing", "order-7", 30)
    assert c.token is not None
    assert redis_client.get(name) == f"running:{c.token}".encode()
    assert 29_000 < redis_client.pttl(name) <= 30_000
    redis_store.done("billing", "order-7", c.token, 3600)
    assert redis_client.get(name) == f"done:{c.token}".encode()
    assert 3_599_000 < redis_client.pttl(name) <= 3_600_000


def test_redis_one_winner_among_concurrent_claims(redis_store: RedisStore) -> None:
    states = claims_once(redis_store, "k")
    assert sorted(s.value for s in states) == ["claimed"] + ["running"] * 7


def test_redis_store_under_the_decorator(redis_store: RedisStore) -> None:
    the_decorator(redis_store)


def test_redis_unreachable_raises_store_unavailable_at_once() -> None:
    store = RedisStore(f"redis://{HOST}:{free_port()}/0", timeout=1)
    called: list[str] = []

    @idempotent(store, key=lambda o: o.id)
    def bill(order: Order) -> None:
        called.append(order.id)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="Redis unreachable") as e:
        bill(Order("1", 1.0))
    assert time.monotonic() - started < 3
    assert isinstance(e.value.__cause__, redis.ConnectionError)
    assert called == []
    store.close()


def test_redis_store_leaves_a_given_client_open(redis_client: redis.Redis) -> None:
    prefix = f"qchan-test-handled-{uuid.uuid4().hex[:12]}:"
    with RedisStore(redis_client, prefix=prefix) as store:
        c = store.claim("ns", "k", 30)
        assert c.state is ClaimState.CLAIMED
    assert redis_client.ping()  # not closed by the store
    redis_client.delete(f"{prefix}ns:k")


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def db() -> Iterator[psycopg.Connection[Any]]:
    _need(PG_PORT, "PostgreSQL")
    c = psycopg.connect(DSN, autocommit=True)
    yield c
    c.close()


@pytest.fixture
def table(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"handled_{uuid.uuid4().hex[:12]}"
    yield f"qchan.{name}"
    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", name)))


@pytest.fixture
def pg_store(table: str) -> Iterator[PostgresStore]:
    store = PostgresStore(DSN, table=table)
    yield store
    store.close()


def count(db: psycopg.Connection[Any], table: str) -> int:
    schema, name = table.split(".")
    row = db.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_claim_done_release_and_expiry(
    db: psycopg.Connection[Any], pg_store: PostgresStore, table: str
) -> None:
    schema, name = table.split(".")
    query = sql.SQL("SELECT expires_at <= now() FROM {} WHERE namespace = %s AND key = %s").format(
        sql.Identifier(schema, name)
    )

    def expired(ns: str, key: str) -> bool:
        row = db.execute(query, (ns, key)).fetchone()
        return row is None or bool(row[0])

    the_semantics(pg_store, expired)


def test_postgres_declares_its_table(
    db: psycopg.Connection[Any], pg_store: PostgresStore, table: str
) -> None:
    c = pg_store.claim("billing", "order-7", 30)
    schema, name = table.split(".")
    columns = db.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, name),
    ).fetchall()
    assert columns == [
        ("namespace", "text"),
        ("key", "text"),
        ("state", "text"),
        ("token", "text"),
        ("expires_at", "timestamp with time zone"),
    ]
    row = db.execute(
        sql.SQL(
            "SELECT state, token, expires_at - now() > interval '29 seconds' FROM {} "
            "WHERE namespace = 'billing' AND key = 'order-7'"
        ).format(sql.Identifier(schema, name))
    ).fetchone()
    assert row == ("running", c.token, True)


def test_postgres_one_winner_among_concurrent_claims_on_four_connections(table: str) -> None:
    stores = [PostgresStore(DSN, table=table) for _ in range(4)]
    try:
        barrier = threading.Barrier(8)

        def one(store: PostgresStore) -> ClaimState:
            barrier.wait(10)
            return store.claim("race", "k", 30).state

        workers = [start(one, stores[i % 4]) for i in range(8)]
        states = [w.outcome(15) for w in workers]
    finally:
        for s in stores:
            s.close()
    assert sorted(s.value for s in states) == ["claimed"] + ["running"] * 7


def test_postgres_store_under_the_decorator(pg_store: PostgresStore) -> None:
    the_decorator(pg_store)


def test_postgres_reconnects_after_a_lost_connection(
    db: psycopg.Connection[Any], pg_store: PostgresStore
) -> None:
    assert pg_store.claim("ns", "1", 30).state is ClaimState.CLAIMED
    conn = pg_store._conn
    assert conn is not None
    db.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    assert pg_store.claim("ns", "1", 30).state is ClaimState.RUNNING  # on a new connection
    assert pg_store._conn is not conn


def test_postgres_unreachable_raises_store_unavailable_at_once(table: str) -> None:
    store = PostgresStore(f"postgresql://postgres@{HOST}:{free_port()}/test", table=table)
    called: list[str] = []

    @idempotent(store, key=lambda o: o.id)
    def bill(order: Order) -> None:
        called.append(order.id)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="PostgreSQL unreachable") as e:
        bill(Order("1", 1.0))
    assert time.monotonic() - started < 3
    assert isinstance(e.value.__cause__, psycopg.OperationalError)
    assert called == []


def test_postgres_store_on_a_given_connection(table: str) -> None:
    conn = psycopg.connect(DSN)
    with PostgresStore(conn, table=table) as store:
        assert conn.autocommit
        c = store.claim("ns", "k", 30)
        assert c.token is not None and store.done("ns", "k", c.token, 30)
        assert store.claim("ns", "k", 30).state is ClaimState.DONE
    assert conn.closed  # the store owned it


def test_postgres_purge_expired(
    db: psycopg.Connection[Any], pg_store: PostgresStore, table: str
) -> None:
    for i in range(3):
        pg_store.claim("ns", str(i), 0.05)
    pg_store.claim("ns", "live", 30)
    purged: list[int] = []

    def all_purged() -> bool:
        purged.append(pg_store.purge_expired())
        return sum(purged) == 3

    wait_for(all_purged, 10, "the three expired rows to be purged")
    assert count(db, table) == 1 and pg_store.purge_expired() == 0


def test_postgres_bad_table_names_are_refused() -> None:
    for bad in ("a.b.c", "", "x" * 64, ".t"):
        with pytest.raises(OptionError, match="table must be"):
            PostgresStore(DSN, table=bad)


# ---------------------------------------------------------------- the transactional form


@pytest.fixture
def effects(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A table of the application's effects (one row per order billed)."""
    name = f"effects_{uuid.uuid4().hex[:12]}"
    db.execute(sql.SQL("CREATE TABLE {} (order_id text)").format(sql.Identifier("qchan", name)))
    yield f"qchan.{name}"
    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", name)))


def bill_in(conn: psycopg.Connection[Any], effects: str, order_id: str) -> None:
    schema, name = effects.split(".")
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(schema, name)), (order_id,)
    )


def test_record_sequentially_runs_the_effect_once(
    db: psycopg.Connection[Any], pg_store: PostgresStore, effects: str
) -> None:
    with psycopg.connect(DSN) as conn:
        for _ in range(2):
            with conn.transaction():
                if pg_store.record(conn, "bill", "order-1"):
                    bill_in(conn, effects, "order-1")

        def fails() -> None:
            with conn.transaction():
                assert pg_store.record(conn, "bill", "order-2")
                bill_in(conn, effects, "order-2")
                raise ZeroDivisionError  # the effect fails: the record goes with it

        with pytest.raises(ZeroDivisionError):
            fails()
        with conn.transaction():
            assert pg_store.record(conn, "bill", "order-2")  # so the retry runs it
            bill_in(conn, effects, "order-2")
    assert count(db, effects) == 2


@pytest.mark.parametrize(("first_commits", "second_records"), [(True, False), (False, True)])
def test_record_a_concurrent_duplicate_waits_then_sees_the_first_outcome(
    db: psycopg.Connection[Any],
    pg_store: PostgresStore,
    effects: str,
    first_commits: bool,
    second_records: bool,
) -> None:
    recorded, finish = threading.Event(), threading.Event()
    pids: list[int] = []

    class Rollback(Exception):
        pass

    def first() -> bool:
        with psycopg.connect(DSN) as conn:
            try:
                with conn.transaction():
                    got = pg_store.record(conn, "bill", "order-1")
                    if got:
                        bill_in(conn, effects, "order-1")
                    recorded.set()
                    assert finish.wait(10)
                    if not first_commits:
                        raise Rollback
            except Rollback:
                pass
            return got

    def second() -> bool:
        assert recorded.wait(10)
        with psycopg.connect(DSN) as conn:
            pids.append(conn.info.backend_pid)
            with conn.transaction():
                got = pg_store.record(conn, "bill", "order-1")
                if got:
                    bill_in(conn, effects, "order-1")
            return got

    one, two = start(first), start(second)
    try:
        # the duplicate is blocked on the row lock the first transaction holds
        wait_for(
            lambda: (
                pids
                and db.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                    (pids[0],),
                ).fetchone()
            ),
            10,
            "the second transaction to wait on the first one's row",
        )
        assert not two.done.is_set()
    finally:
        finish.set()
    assert one.outcome(10) is True
    assert two.outcome(10) is second_records
    assert count(db, effects) == 1  # exactly once, whichever transaction did it


def test_record_refuses_a_key_a_decorator_claim_holds(
    pg_store: PostgresStore,
) -> None:
    assert pg_store.claim("bill", "order-1", 30).state is ClaimState.CLAIMED
    with psycopg.connect(DSN) as conn, conn.transaction(), pytest.raises(StillRunning):
        pg_store.record(conn, "bill", "order-1")


def test_record_after_the_ttl_holds_it_again(pg_store: PostgresStore) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:

        def record(ttl: float = 86400.0) -> bool:
            with conn.transaction():
                return pg_store.record(conn, "bill", "order-1", ttl=ttl)

        assert record(ttl=0.2) is True
        assert record(ttl=0.2) is False
        wait_for(record, 10, "the 0.2 s TTL")
        assert record() is False


def test_record_on_psycopg2_and_sqlalchemy_connections(
    db: psycopg.Connection[Any], pg_store: PostgresStore, table: str
) -> None:
    """The record goes in whatever transaction the application's own connection has."""
    psycopg2 = pytest.importorskip("psycopg2")
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    raw = psycopg2.connect(DSN)
    try:
        assert pg_store.record(raw, "bill", "p2")
        raw.rollback()  # the record goes with the transaction
        assert pg_store.record(raw, "bill", "p2")
        raw.commit()
        assert not pg_store.record(raw, "bill", "p2")
        raw.rollback()
    finally:
        raw.close()
    engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/test")
    try:
        with Session(engine) as session, session.begin():
            assert pg_store.record(session, "bill", "sa")
        with Session(engine) as session, session.begin():
            assert not pg_store.record(session, "bill", "sa")
    finally:
        engine.dispose()
    assert count(db, table) == 2


def test_record_outside_a_transaction_is_refused_and_writes_nothing(
    db: psycopg.Connection[Any], pg_store: PostgresStore, table: str
) -> None:
    from qchan import TransactionError

    with (
        psycopg.connect(DSN, autocommit=True) as conn,
        pytest.raises(TransactionError, match="a record outside a transaction"),
    ):
        pg_store.record(conn, "bill", "autocommit")
    with pytest.raises(TypeError, match=r"PostgresStore\.record needs the connection"):
        pg_store.record("postgresql://x", "bill", "nope")
    pg_store.claim("warm", "up", 1.0)  # the table exists
    assert count(db, table) == 1
