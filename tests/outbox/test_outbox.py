"""Publish on commit: `Outbox` on each kind of application connection (real PostgreSQL).

A message sent through an outbox exists if and only if the application's transaction
commits; a send that cannot be part of a transaction is refused at the call and writes
nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql
from support.helpers import need_service

from qchan import SendOnlyError, dequeue, enqueue, enqueue_sync, select
from qchan.errors import ChannelClosed, MessageTooLarge
from qchan.outbox import ID_ATTRIBUTE, KEY_ATTRIBUTE, Outbox, OutboxError

HOST, PORT, DB = "127.0.0.1", 5432, "test"
DSN = f"postgresql://postgres@{HOST}:{PORT}/{DB}"
pytestmark = pytest.mark.integration


@attrs.frozen
class Placed:
    order: str
    amount: float = 1.0


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


def rows(admin: psycopg.Connection[Any], name: str) -> list[tuple[bytes, dict[str, str]]]:
    if admin.execute("SELECT to_regclass(%s)", (f'"qchan"."{name}"',)).fetchone() == (None,):
        return []
    got = admin.execute(
        sql.SQL("SELECT body, attributes FROM {} ORDER BY id").format(sql.Identifier("qchan", name))
    ).fetchall()
    return [(bytes(b), a) for b, a in got]


def orders(admin: psycopg.Connection[Any], name: str) -> list[str]:
    return [json.loads(b)["order"] for b, _ in rows(admin, name)]


# -- psycopg 3 ----------------------------------------------------------------------------


def test_commit_publishes_exactly_the_committed_and_rollback_leaves_nothing(
    admin: psycopg.Connection[Any], name: str
) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        outbox = Outbox(conn, name)
        with conn.transaction(), enqueue(Placed, outbox) as (out, dlq):
            out.send(Placed("1"))
            out.send(Placed("2"))
            # Not visible to anyone else before the commit.
            assert orders(admin, name) == []

        def rolled_back() -> None:
            with conn.transaction(), enqueue(Placed, outbox) as (out, _):
                out.send(Placed("rolled back"))
                raise RuntimeError("the application's own failure")

        with pytest.raises(RuntimeError):
            rolled_back()
        with conn.transaction(), enqueue_sync(Placed, outbox) as put:
            put.put(Placed("3"))
    assert orders(admin, name) == ["1", "2", "3"]
    assert len(dlq) == 0


def test_each_row_carries_id_key_and_wire_attributes(
    admin: psycopg.Connection[Any], name: str
) -> None:
    with psycopg.connect(DSN) as conn:  # not autocommit: the first statement begins it
        outbox = Outbox(conn, name, agent="shop")
        with enqueue(Placed, outbox, key=lambda p: p.order) as (out, _):
            out.send(Placed("7"))
            out.send(Placed("8"))
        conn.commit()
    (b1, a1), (_, a2) = rows(admin, name)
    assert json.loads(b1) == {"order": "7", "amount": 1.0}
    assert a1["Category"] == "Placed" and a1["Source"] == "shop"
    assert a1[KEY_ATTRIBUTE] == "7"
    assert a1[ID_ATTRIBUTE] and a1[ID_ATTRIBUTE] != a2[ID_ATTRIBUTE]


def test_send_outside_a_transaction_is_refused_and_writes_nothing(
    admin: psycopg.Connection[Any], name: str
) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        outbox = Outbox(conn, name)
        with enqueue(Placed, outbox) as (out, _), pytest.raises(OutboxError, match="outside"):
            out.send(Placed("lost?"))
        with pytest.raises(OutboxError, match="outside a transaction"):
            enqueue_sync(Placed, outbox).put(Placed("lost?"))
    assert orders(admin, name) == []


def test_send_in_a_failed_transaction_or_on_a_closed_connection_is_refused(
    admin: psycopg.Connection[Any], name: str
) -> None:
    conn = psycopg.connect(DSN, autocommit=True)
    outbox = Outbox(conn, name)
    with conn.transaction(), enqueue(Placed, outbox) as (out, _):
        out.send(Placed("made the table"))

    def after_a_failure() -> None:
        with conn.transaction():
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            with enqueue(Placed, outbox) as (out, _):
                out.send(Placed("after the failure"))

    with pytest.raises(OutboxError, match="failed earlier"):
        after_a_failure()
    conn.close()
    with enqueue(Placed, outbox) as (out, _), pytest.raises(OutboxError, match="closed"):
        out.send(Placed("closed"))
    assert orders(admin, name) == ["made the table"]


def test_a_message_too_large_is_refused_before_anything_is_written(
    admin: psycopg.Connection[Any], name: str
) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        outbox = Outbox(conn, name, max_message_size=500)
        with conn.transaction(), enqueue(Placed, outbox) as (out, _):
            out.send(Placed("small"))
            with pytest.raises(MessageTooLarge, match="max_message_size=500"):
                out.send(Placed("x" * 600))
            out.send(Placed("after"))
    assert orders(admin, name) == ["small", "after"]


def test_out_is_a_send_channel_with_go_semantics_where_they_apply(name: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        outbox = Outbox(conn, name)
        out, dlq = enqueue(Placed, outbox)
        with pytest.raises(TypeError, match="caller's transaction"):
            select((out, Placed("x")), timeout=0)
        out.close()
        with pytest.raises(ChannelClosed):
            out.send(Placed("closed"))
        assert dlq.closed and len(dlq) == 0
        with pytest.raises(SendOnlyError, match="relay"):
            dequeue(Placed, outbox)  # type: ignore[arg-type]


def test_many_threads_share_one_outbox_on_their_own_connections(
    admin: psycopg.Connection[Any], name: str
) -> None:
    """One outbox per connection kind, one connection per thread (as a web server has);
    the table is made once, under the declaration lock."""
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with psycopg.connect(DSN, autocommit=True) as conn:
                outbox = Outbox(conn, name)
                for j in range(20):
                    with conn.transaction(), enqueue(Placed, outbox) as (out, _):
                        out.send(Placed(f"{i}-{j}"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    got = orders(admin, name)
    assert sorted(got) == sorted(f"{i}-{j}" for i in range(6) for j in range(20))
    # Each thread's own messages are in its order.
    for i in range(6):
        assert [o for o in got if o.startswith(f"{i}-")] == [f"{i}-{j}" for j in range(20)]


def test_not_a_connection_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="psycopg Connection"):
        Outbox("postgresql://localhost/db")


# -- psycopg2 -------------------------------------------------------------------------------


def test_psycopg2_connection(admin: psycopg.Connection[Any], name: str) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(DSN)
    try:
        outbox = Outbox(conn, name)
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("1"))
        conn.rollback()
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("2"))
        conn.commit()
        conn.autocommit = True
        with enqueue(Placed, outbox) as (out, _), pytest.raises(OutboxError, match="outside"):
            out.send(Placed("3"))
    finally:
        conn.close()
    assert orders(admin, name) == ["2"]


# -- SQLAlchemy -----------------------------------------------------------------------------


@pytest.fixture(params=["psycopg", "psycopg2"])
def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    sa = pytest.importorskip("sqlalchemy")
    if request.param == "psycopg2":
        pytest.importorskip("psycopg2")
    e = sa.create_engine(f"postgresql+{request.param}://postgres@{HOST}:{PORT}/{DB}")
    yield e
    e.dispose()


def test_sqlalchemy_session(admin: psycopg.Connection[Any], name: str, engine: Any) -> None:
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        outbox = Outbox(session, name)
        session.execute(text("SELECT 1"))
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("1"))
        session.rollback()
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("2"))
        session.commit()
        with session.begin(), enqueue(Placed, outbox) as (out, _):
            out.send(Placed("3"))
    assert orders(admin, name) == ["2", "3"]


def test_sqlalchemy_connection(admin: psycopg.Connection[Any], name: str, engine: Any) -> None:
    with engine.connect() as conn:
        outbox = Outbox(conn, name)
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("1"))
        conn.commit()
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("2"))
        conn.rollback()
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        enqueue(Placed, Outbox(conn, name)) as (out, _),
        pytest.raises(OutboxError, match="outside a transaction"),
    ):
        out.send(Placed("3"))
    assert orders(admin, name) == ["1"]


def test_sqlalchemy_on_another_database_is_refused_at_the_outbox() -> None:
    sa = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    engine = sa.create_engine("sqlite://")
    with Session(engine) as session, pytest.raises(OutboxError, match="writes to PostgreSQL"):
        Outbox(session)
    with engine.connect() as conn, pytest.raises(OutboxError, match="sqlite"):
        Outbox(conn)


# -- Django -----------------------------------------------------------------------------------

DJANGO = """
import json, sys
import django
from django.conf import settings
settings.configure(DATABASES={
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "test", "USER": "postgres",
                "HOST": "127.0.0.1", "PORT": "5432"},
    "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
})
django.setup()
import attrs
from django.db import connection, connections, transaction
from qchan import enqueue
from qchan.outbox import Outbox, OutboxError

@attrs.frozen
class Placed:
    order: str
    amount: float = 1.0

name = sys.argv[1]
outbox = Outbox(connection, name)
said = []
with transaction.atomic(), enqueue(Placed, outbox) as (out, _):
    out.send(Placed("1"))
try:
    with transaction.atomic():
        with enqueue(Placed, outbox) as (out, _):
            out.send(Placed("rolled back"))
        raise RuntimeError("no")
except RuntimeError:
    pass
try:
    with enqueue(Placed, outbox) as (out, _):
        out.send(Placed("autocommit"))
except OutboxError as e:
    said.append("outside" if "outside a transaction" in str(e) else str(e))
try:
    Outbox(connections["other"])
except OutboxError as e:
    said.append("sqlite" if "sqlite" in str(e) else str(e))
print(json.dumps(said))
"""


def test_django_connection_in_atomic(
    admin: psycopg.Connection[Any], name: str, tmp_path: Path
) -> None:
    pytest.importorskip("django")
    script = tmp_path / "django_outbox.py"
    script.write_text(textwrap.dedent(DJANGO))
    done = subprocess.run(
        [sys.executable, str(script), name], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["outside", "sqlite"]
    assert orders(admin, name) == ["1"]
