"""The PostgreSQL adapter against the real PostgreSQL on 127.0.0.1:5432 (database `test`).

The conformance and peer suites, the URL, the table a plain client writes and reads,
leases shared by consumers in two processes, late acks, dead letters, publishing inside
the application's transaction, and NOTIFY waking an idle consumer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.helpers import need_service

from qchan import connect, dequeue, enqueue
from qchan.adapter import Adapter
from qchan.adapters.postgres import PostgresAdapter, QueueNotFound, from_url
from qchan.errors import MessageTooLarge
from qchan.message import Bag
from qchan.options import OptionError
from qchan.testing import FEATURES, Conformance, Order, Peers
from qchan.urls import URLError

HOST, PORT, DB = "127.0.0.1", 5432, "test"
DSN = f"postgresql://postgres@{HOST}:{PORT}/{DB}"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def db() -> Iterator[psycopg.Connection[Any]]:
    """A plain psycopg connection (fails in CI, skips elsewhere, when PostgreSQL is not there)."""
    need_service(HOST, PORT, "PostgreSQL")
    c = psycopg.connect(DSN, autocommit=True)
    yield c
    c.close()


def drop(db: psycopg.Connection[Any], *names: str) -> None:
    for n in names:
        for table in (n, f"{n}_dlq", f"{n}_archive"):
            db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table)))


@pytest.fixture
def queue(db: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    drop(db, name)


def url_for(name: str, **query: Any) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{DSN}?queue={name}{extra}"


def rows(db: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return db.execute(
        sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier("qchan", table))
    ).fetchall()


# ---------------------------------------------------------------- URL and options


def test_url_gives_the_connection_queue_and_options() -> None:
    a = from_url(
        "postgres://app:s3cret@db:6543/shop?queue=orders&schema=jobs&max_deliveries=7"
        "&sslmode=require"
    )
    o = a.options
    assert (o.queue, o.schema, o.max_deliveries, o.dlq) == ("orders", "jobs", 7, "orders_dlq")
    assert o.conninfo == "postgresql://app:s3cret@db:6543/shop?sslmode=require"
    assert "s3cret" not in repr(a) and "s3cret" not in repr(o)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://h/db", "needs the queue"),
        ("postgresql://h/db?queue=q&declare=maybe", "declare"),
        ("postgresql://h/db?queue=q&max_deliveries=0", "max_deliveries"),
        ("postgresql://h/db?queue=q&dlq=q", "must differ"),
        ("postgresql://h/db?queue=" + "x" * 70, "longer than"),
        ("postgresql://u:s3cret@h/db?queue=q&bogus=1", "bogus"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises((URLError, OptionError), match=why) as e:
        from_url(url)
    assert "s3cret" not in str(e.value)


# ---------------------------------------------------------------- the table, both ways


def test_a_plain_insert_is_received_and_what_qchan_sends_is_a_plain_row(
    db: psycopg.Connection[Any], queue: str
) -> None:
    with connect(url_for(queue), agent="billing") as q:
        with enqueue(Order, q) as (out, _):
            out.send(Order("1", 9.5))
        (_, body, attributes, *_rest) = rows(db, queue)[0]
        assert bytes(body) == b'{"id":"1","amount":9.5,"tags":[]}'
        assert attributes["Category"] == "Order" and attributes["Source"] == "billing"
        db.execute(
            sql.SQL("INSERT INTO {} (body, attributes) VALUES (%s, %s)").format(
                sql.Identifier("qchan", queue)
            ),
            (b'{"id": "2", "amount": 1.5}', json.dumps({"Category": "Order", "X": "y"})),
        )
        with dequeue(Order, q) as (rcv, ack):
            got = [rcv.recv(timeout=10) for _ in range(2)]
            for m in got:
                ack.send(m)
    assert [m.object.id for m in got] == ["1", "2"]
    assert got[1].attributes["X"] == "y"
    deadline = time.monotonic() + 10
    while rows(db, queue) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the table for the acks' outcome, with a deadline
    assert rows(db, queue) == []


def test_send_in_publishes_only_when_the_applications_transaction_commits(
    db: psycopg.Connection[Any], queue: str
) -> None:
    a = from_url(url_for(queue))
    try:
        a.depth()  # declared
        bag = Bag("Order", b'{"id": "t", "amount": 1}', {"Category": "Order"})
        with psycopg.connect(DSN) as app:
            with app.transaction(force_rollback=True):
                a.send_in(app, [bag])
            assert rows(db, queue) == []  # rolled back: never there
            with app.transaction():
                a.send_in(app, [bag])
                assert rows(db, queue) == []  # not committed yet: nobody sees it
        assert len(rows(db, queue)) == 1
        with pytest.raises(MessageTooLarge), psycopg.connect(DSN) as app:
            a.send_in(app, [Bag("c", b"x" * (2 << 20), {"Category": "c"})])
    finally:
        a.close()


def test_a_late_ack_after_another_consumer_took_the_row_does_nothing(
    db: psycopg.Connection[Any], queue: str
) -> None:
    first = from_url(url_for(queue, visibility_timeout=0.2))
    second = from_url(url_for(queue, visibility_timeout=30))
    try:
        first.send_batch([Bag("c", b"x", {"Category": "c"})])
        (mine,) = first.receive(1, 1.0)
        deadline = time.monotonic() + 10
        taken: list[Bag] = []
        while not taken and time.monotonic() < deadline:
            taken = list(second.receive(1, 0.2))  # the lease ran out: the second takes it
        assert [t.id for t in taken] == [mine.id] and taken[0].deliveries == 2
        first.ack([mine])  # late: the row is at its second delivery now
        assert len(rows(db, queue)) == 1
        second.ack(taken)
        assert rows(db, queue) == []
    finally:
        first.close()
        second.close()


def test_failures_count_up_to_max_deliveries_then_the_dead_letter_table(
    db: psycopg.Connection[Any], queue: str
) -> None:
    with connect(url_for(queue, max_deliveries=3)) as q:
        with enqueue(Order, q) as (out, _):
            out.send(Order("p", 1.0))
        seen = []
        with dequeue(Order, q) as (rcv, ack):
            for _ in range(3):
                m = rcv.recv(timeout=10)
                seen.append(m.deliveries)
                ack.send(m.fail(ValueError(f"attempt {m.deliveries}")))
            deadline = time.monotonic() + 10
            while not rows(db, f"{queue}_dlq") and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the table for the outcome, with a deadline
    assert seen == [1, 2, 3]
    [dead] = rows(db, f"{queue}_dlq")
    _, _body, attributes, deliveries, error, _original, _ = dead
    assert attributes["Category"] == "Order" and deliveries == 3 and "attempt 3" in error
    assert rows(db, queue) == []


def test_consumers_in_two_processes_never_share_a_row(
    db: psycopg.Connection[Any], queue: str
) -> None:
    """Two processes lease from one table at the same time (each connected, then both
    started together), each batch taking a few milliseconds of work: every row is
    received exactly once, and both processes get some."""
    n = 400
    a = from_url(url_for(queue))
    a.send_batch([Bag("c", str(i).encode(), {"Category": "c"}) for i in range(n)])
    a.close()
    child = (
        "import sys, time\n"
        "from qchan.adapters.postgres import from_url\n"
        "a = from_url(sys.argv[1]); a.depth(); print('ready', flush=True)\n"
        "sys.stdin.readline(); got = []; idle = 0\n"
        "while idle < 3:\n"
        "    bags = a.receive(7, 0.5)\n"
        "    time.sleep(0.005 if bags else 0)  # the handler's work\n"
        "    a.ack(bags); got += bags; idle = 0 if bags else idle + 1\n"
        "print(' '.join(b.body.decode() for b in got)); a.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, url_for(queue)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(outs), f"each process received some: {[len(o) for o in outs]}"
    assert sorted(int(x) for x in outs[0] + outs[1]) == list(range(n))  # each exactly once


def test_passive_declare_of_a_missing_table_names_it(queue: str) -> None:
    a = from_url(url_for(queue, declare="passive"))
    try:
        with pytest.raises(QueueNotFound, match=queue):
            a.send_batch([Bag("c", b"x", {"Category": "c"})])
    finally:
        a.close()


def test_an_insert_wakes_an_idle_consumer_at_once(db: psycopg.Connection[Any], queue: str) -> None:
    a = from_url(url_for(queue, wait=20))
    try:
        a.receive(1, 0.0)  # declared, listening set up on the first wait
        started = time.monotonic()
        db.execute(
            sql.SQL("INSERT INTO {} (body, attributes) VALUES ('x', '{{}}')").format(
                sql.Identifier("qchan", queue)
            )
        )
        got = a.receive(1, 20.0)
        took = time.monotonic() - started
        assert len(got) == 1 and took < 5, took  # the NOTIFY, not the 20 s wait
        a.ack(got)
    finally:
        a.close()


def test_connections_terminated_by_the_server_lose_nothing(
    db: psycopg.Connection[Any], queue: str
) -> None:
    """`pg_terminate_backend` on every qchan connection half-way through (what an
    operator, a failover or a restart does): sends and receives fail, are retried on new
    connections, and every message arrives; what was leased comes back after its lease."""
    n = 300
    terminated: list[int] = []
    with connect(url_for(queue, visibility_timeout=1), poll_wait=0.2) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(n):
                out.send(Order(str(i), float(i)))
        seen: dict[str, int] = {}
        with dequeue(Order, q) as (rcv, ack):
            while len(seen) < n:
                m = rcv.recv(timeout=30)
                seen[m.object.id] = seen.get(m.object.id, 0) + 1
                if len(seen) == n // 2 and not terminated:
                    (killed,) = db.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = %s",
                        (f"qchan-{queue}",),
                    ).fetchone() or (0,)
                    terminated.append(int(killed))
                ack.send(m)
            # Acks sent while the connections were gone were lost: those rows come back
            # once their lease runs out, and are handled (and acked) again.
            deadline = time.monotonic() + 20
            while rows(db, queue) and time.monotonic() < deadline:
                try:
                    again = rcv.recv(timeout=0.2)
                except TimeoutError:
                    continue
                seen[again.object.id] += 1
                ack.send(again)
    assert terminated and terminated[0] > 0, "no qchan connection to terminate"
    assert sorted(seen, key=int) == [str(i) for i in range(n)]
    assert rows(db, queue) == []


# ---------------------------------------------------------------- the suites


class TestPostgresConformance(Peers, Conformance):
    queue_options = {"poll_wait": 0.5}
    patience = 20.0
    quiet = 1.0
    redelivery_after = 2.0
    # A wait for a NOTIFY cannot be cut short from another thread: no wakeup.
    features = frozenset(FEATURES) - {"wakeup", "sticky_wakeup"}
    peer_max_deliveries = 5

    def dead_lettered(self, name: str) -> int:
        with psycopg.connect(DSN, autocommit=True) as c:
            found = c.execute("SELECT to_regclass(%s)", (f'"qchan"."{name}_dlq"',)).fetchone()
            if found is None or found[0] is None:
                return 0
            row = c.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("qchan", f"{name}_dlq"))
            ).fetchone()
            return int(row[0]) if row else 0

    @pytest.fixture
    def queue_name(self) -> str:
        return f"c_{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def missing_adapter_factory(self) -> Callable[[str], Adapter]:
        def make(name: str) -> Adapter:
            return from_url(url_for(name, declare="passive"))

        return make

    @pytest.fixture
    def adapter_factory(self, db: psycopg.Connection[Any]) -> Iterator[Callable[[str], Adapter]]:
        names: set[str] = set()

        def make(name: str) -> Adapter:
            names.add(name)
            return from_url(url_for(name, visibility_timeout=2, wait=0.5))

        yield make
        drop(db, *names)


def test_the_adapter_is_what_connect_opens(queue: str) -> None:
    with connect(url_for(queue)) as q:
        assert isinstance(q.adapter, PostgresAdapter)
