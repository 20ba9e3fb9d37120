"""The application's database connection, whatever owns it, and its transaction.

An outbox row (`qchan.outbox`) and an idempotency record (`PostgresStore.record`) are
written on the connection the application's transaction runs on, never on one of
qchan's own, so they commit or roll back with the application's own writes. Four kinds:

- a psycopg 3 `Connection`: the transaction of `with conn.transaction():`, or of a
  connection not in autocommit; each write checks that the connection is open, not in
  autocommit outside a transaction block, and its transaction not failed;
- a psycopg2 connection: the same, by psycopg2's rules;
- a SQLAlchemy `Session` (`scoped_session`) or `Connection`: its transaction (begun by
  the write if none is); PostgreSQL only, then the driver connection as above;
- Django's `connection` (`connections[alias]`): `transaction.atomic()`; PostgreSQL only,
  inside `atomic()` (or with autocommit off), not marked for rollback.

Each kind resolves, per write, to the driver connection (psycopg 3 or psycopg2).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from qchan.errors import QchanError

__all__ = ["TransactionError", "Use", "Writable", "resolve_kind"]

# libpq's transaction status (psycopg 3's TransactionStatus and psycopg2's constants agree).
_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = 0, 1, 2, 3, 4


class TransactionError(QchanError):
    """A write that belongs in the application's transaction cannot go there (no
    transaction, a closed connection, a failed transaction, not PostgreSQL). Nothing of
    it was written."""


class Use:
    """Who writes (for the errors: "the outbox", "PostgresStore.record"), what (a send, a
    record), and the error class to raise."""

    __slots__ = ("error", "what", "who")

    def __init__(self, who: str, what: str, error: type[TransactionError]) -> None:
        self.who = who
        self.what = what
        self.error = error


class Writable:
    """A driver connection checked for a write inside the application's transaction."""

    __slots__ = ("conn", "psycopg3")

    def __init__(self, conn: Any, psycopg3: bool) -> None:
        self.conn = conn
        self.psycopg3 = psycopg3

    def database(self) -> tuple[Any, ...]:
        """Which database the connection is on (host, port, name): a table seen there
        committed is there for every connection to it."""
        info = self.conn.info
        return (info.host, info.port, info.dbname)


def _module(name: str) -> Any:
    """An already imported module (None if the application never imported it: then its
    objects cannot be what it passed us)."""
    return sys.modules.get(name)


def _is_psycopg3(conn: Any) -> bool:
    psycopg = _module("psycopg")
    return psycopg is not None and isinstance(conn, psycopg.Connection)


def _is_psycopg2(conn: Any) -> bool:
    ext = _module("psycopg2.extensions")
    return ext is not None and isinstance(conn, ext.connection)


def _check_driver(conn: Any, how: str, use: Use) -> Writable:
    """`conn` (psycopg 3 or 2) if a write now lands in a transaction someone will commit."""
    if _is_psycopg3(conn):
        psycopg3 = True
    elif _is_psycopg2(conn):
        psycopg3 = False
    else:
        raise use.error(
            f"{use.who} writes with psycopg (3) or psycopg2; {how} uses "
            f"{type(conn).__module__}.{type(conn).__name__}"
        )
    if conn.closed:
        raise use.error(f"{use.who}: the connection is closed ({how}); nothing was written")
    status = int(conn.info.transaction_status)
    if status == _INERROR:
        raise use.error(
            f"{use.who}: the connection's transaction failed earlier ({how}): roll it back; "
            f"nothing was written"
        )
    if status == _UNKNOWN:
        raise use.error(f"{use.who}: the connection is broken ({how}); nothing was written")
    if status == _IDLE and conn.autocommit:
        raise use.error(
            f"{use.what} outside a transaction ({how}, autocommit on) would commit whatever "
            f"happens to the rest: write inside `with conn.transaction():` (psycopg), "
            f"`transaction.atomic()` (Django) or the session's transaction. Nothing was written"
        )
    return Writable(conn, psycopg3)


class _Kind:
    """How to reach the driver connection of one kind of application connection."""

    name = ""

    def __init__(self, given: Any, use: Use) -> None:
        self.given = given
        self.use = use

    def writable(self) -> Writable:
        raise NotImplementedError


class _Psycopg(_Kind):
    name = "a psycopg connection"

    def writable(self) -> Writable:
        return _check_driver(self.given, self.name, self.use)


class _SQLAlchemy(_Kind):
    name = "a SQLAlchemy session"

    def writable(self) -> Writable:
        sa = _module("sqlalchemy")
        given = self.given
        conn = given if isinstance(given, sa.engine.Connection) else given.connection()
        if conn.closed:
            raise self.use.error(
                f"{self.use.who}: the SQLAlchemy connection is closed; nothing was written"
            )
        dialect = conn.dialect.name
        if dialect != "postgresql":
            raise self.use.error(_not_postgres(dialect, "the SQLAlchemy session", self.use))
        # The session's (or connection's) transaction: SQLAlchemy begins one on first use.
        if not conn.in_transaction():
            conn.begin()
        return _check_driver(conn.connection.driver_connection, self.name, self.use)


class _Django(_Kind):
    """Django's connection of an alias, looked up per write: Django keeps one per thread."""

    name = "Django's connection"

    def writable(self) -> Writable:
        alias = self.given
        conn = importlib.import_module("django.db").connections[alias]
        use = self.use
        if conn.vendor != "postgresql":
            raise use.error(_not_postgres(conn.vendor, f"Django database {alias!r}", use))
        if conn.get_autocommit() and not conn.in_atomic_block:
            raise use.error(
                f"{use.what} outside a transaction (Django database {alias!r} is in "
                f"autocommit mode): write inside `with transaction.atomic():`, so it commits "
                f"if and only if the block does. Nothing was written"
            )
        if conn.needs_rollback:
            raise use.error(
                f"{use.who}: the atomic block of Django database {alias!r} will roll back (an "
                f"error inside it); nothing was written"
            )
        conn.ensure_connection()
        return _check_driver(conn.connection, self.name, use)


def _not_postgres(what: str, where: str, use: Use) -> str:
    return (
        f"{use.who} writes to PostgreSQL, and {where} is {what}: the write could not commit "
        f"with the application's transaction (refused, not made outside it)"
    )


def resolve_kind(given: Any, use: Use) -> _Kind:
    """The kind of `given`, or TypeError naming what is accepted; refuses a database that
    is not PostgreSQL where that is known without a round trip."""
    if _is_psycopg3(given) or _is_psycopg2(given):
        return _Psycopg(given, use)
    orm = _module("sqlalchemy.orm")
    sa = _module("sqlalchemy")
    if sa is not None and isinstance(given, sa.engine.Connection):
        if given.dialect.name != "postgresql":
            raise use.error(_not_postgres(given.dialect.name, "the SQLAlchemy connection", use))
        return _SQLAlchemy(given, use)
    if orm is not None and isinstance(given, (orm.Session, orm.scoped_session)):
        bind = given.get_bind()
        if bind is not None and bind.dialect.name != "postgresql":
            raise use.error(_not_postgres(bind.dialect.name, "the SQLAlchemy session", use))
        return _SQLAlchemy(given, use)
    db = _module("django.db")
    if db is not None:
        wrapper = importlib.import_module("django.db.backends.base.base").BaseDatabaseWrapper
        proxy = importlib.import_module("django.utils.connection").ConnectionProxy
        if isinstance(given, proxy):
            given = db.connections[given._alias]  # the alias it stands for
        if isinstance(given, wrapper):
            if given.vendor != "postgresql":
                raise use.error(
                    _not_postgres(given.vendor, f"Django database {given.alias!r}", use)
                )
            return _Django(given.alias, use)
    raise TypeError(
        f"{use.who} needs the connection the application's transaction runs on: a psycopg "
        "Connection, a psycopg2 connection, a SQLAlchemy Session or Connection, or Django's "
        f"connection (django.db.connection); not {given!r}"
    )
