"""The application's database connection, whatever owns it: where an outbox row is written.

An outbox writes on the connection the application's transaction runs on, never on one of
its own, so the row commits or rolls back with the application's own writes. Four kinds:

- a psycopg 3 `Connection`: the transaction of `with conn.transaction():`, or of a
  connection not in autocommit; each send checks that the connection is open, not in
  autocommit outside a transaction block, and its transaction not failed;
- a psycopg2 connection: the same, by psycopg2's rules;
- a SQLAlchemy `Session` (`scoped_session`) or `Connection`: its transaction (begun by
  the write if none is); PostgreSQL only, then the driver connection as above;
- Django's `connection` (`connections[alias]`): `transaction.atomic()`; PostgreSQL only,
  inside `atomic()` (or with autocommit off), not marked for rollback.

Each kind resolves, per send, to the driver connection (psycopg 3 or psycopg2) the rows go
to; psycopg 3 writes with COPY, psycopg2 with one INSERT per row.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from qchan.errors import QchanError

__all__ = ["OutboxError", "Writable", "resolve_kind"]

# libpq's transaction status (psycopg 3's TransactionStatus and psycopg2's constants agree).
_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = 0, 1, 2, 3, 4


class OutboxError(QchanError):
    """A send on an outbox that cannot be written in the application's transaction (no
    transaction, a closed connection, a failed transaction, not PostgreSQL). Nothing of
    that send was written."""


class Writable:
    """A driver connection checked for a write inside the application's transaction."""

    __slots__ = ("conn", "psycopg3")

    def __init__(self, conn: Any, psycopg3: bool) -> None:
        self.conn = conn
        self.psycopg3 = psycopg3


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


def _check_driver(conn: Any, how: str) -> Writable:
    """`conn` (psycopg 3 or 2) if a write now lands in a transaction someone will commit."""
    if _is_psycopg3(conn):
        psycopg3 = True
    elif _is_psycopg2(conn):
        psycopg3 = False
    else:
        raise OutboxError(
            f"the outbox writes with psycopg (3) or psycopg2; {how} uses "
            f"{type(conn).__module__}.{type(conn).__name__}"
        )
    if conn.closed:
        raise OutboxError(f"the outbox's connection is closed ({how}): nothing was written")
    status = int(conn.info.transaction_status)
    if status == _INERROR:
        raise OutboxError(
            f"the transaction of the outbox's connection failed earlier ({how}): roll it "
            f"back; nothing was written"
        )
    if status == _UNKNOWN:
        raise OutboxError(f"the outbox's connection is broken ({how}): nothing was written")
    if status == _IDLE and conn.autocommit:
        raise OutboxError(
            f"send on an outbox outside a transaction ({how}, autocommit on): the message "
            f"would be published whatever happens to the rest; send inside "
            f"`with conn.transaction():` (psycopg), `transaction.atomic()` (Django) or the "
            f"session's transaction. Nothing was written"
        )
    return Writable(conn, psycopg3)


class _Kind:
    """How to reach the driver connection of one kind of application connection."""

    name = ""

    def __init__(self, given: Any) -> None:
        self.given = given

    def writable(self) -> Writable:
        raise NotImplementedError


class _Psycopg(_Kind):
    name = "a psycopg connection"

    def writable(self) -> Writable:
        return _check_driver(self.given, self.name)


class _SQLAlchemy(_Kind):
    name = "a SQLAlchemy session"

    def writable(self) -> Writable:
        sa = _module("sqlalchemy")
        given = self.given
        conn = given if isinstance(given, sa.engine.Connection) else given.connection()
        if conn.closed:
            raise OutboxError("the outbox's SQLAlchemy connection is closed: nothing was written")
        dialect = conn.dialect.name
        if dialect != "postgresql":
            raise OutboxError(_not_postgres(dialect, "the SQLAlchemy session"))
        # The session's (or connection's) transaction: SQLAlchemy begins one on first use.
        if not conn.in_transaction():
            conn.begin()
        return _check_driver(conn.connection.driver_connection, self.name)


class _Django(_Kind):
    name = "Django's connection"

    def writable(self) -> Writable:
        conn = self.given
        if conn.vendor != "postgresql":
            raise OutboxError(_not_postgres(conn.vendor, f"Django database {conn.alias!r}"))
        if conn.get_autocommit() and not conn.in_atomic_block:
            raise OutboxError(
                f"send on an outbox outside a transaction (Django database {conn.alias!r} is "
                f"in autocommit mode): send inside `with transaction.atomic():`, so the "
                f"message is published if and only if the block commits. Nothing was written"
            )
        if conn.needs_rollback:
            raise OutboxError(
                f"the atomic block of Django database {conn.alias!r} will roll back (an "
                f"error inside it): nothing was written"
            )
        conn.ensure_connection()
        return _check_driver(conn.connection, self.name)


def _not_postgres(what: str, where: str) -> str:
    return (
        f"the outbox is a PostgreSQL table, and {where} is {what}: a message sent there "
        f"could not commit with the application's transaction (refused, not sent outside it)"
    )


def resolve_kind(given: Any) -> _Kind:
    """The kind of `given`, or TypeError naming what an outbox accepts; refuses a
    database that is not PostgreSQL where that is known without a round trip."""
    if _is_psycopg3(given) or _is_psycopg2(given):
        return _Psycopg(given)
    orm = _module("sqlalchemy.orm")
    sa = _module("sqlalchemy")
    if sa is not None and isinstance(given, sa.engine.Connection):
        if given.dialect.name != "postgresql":
            raise OutboxError(_not_postgres(given.dialect.name, "the SQLAlchemy connection"))
        return _SQLAlchemy(given)
    if orm is not None and isinstance(given, (orm.Session, orm.scoped_session)):
        bind = given.get_bind()
        if bind is not None and bind.dialect.name != "postgresql":
            raise OutboxError(_not_postgres(bind.dialect.name, "the SQLAlchemy session"))
        return _SQLAlchemy(given)
    db = _module("django.db")
    if db is not None:
        wrapper = importlib.import_module("django.db.backends.base.base").BaseDatabaseWrapper
        proxy = importlib.import_module("django.utils.connection").ConnectionProxy
        if isinstance(given, proxy):
            given = db.connections[given._alias]  # the alias it stands for
        if isinstance(given, wrapper):
            if given.vendor != "postgresql":
                raise OutboxError(_not_postgres(given.vendor, f"Django database {given.alias!r}"))
            return _DjangoProxy(given.alias)
    raise TypeError(
        "Outbox needs the connection the application's transaction runs on: a psycopg "
        "Connection, a psycopg2 connection, a SQLAlchemy Session or Connection, or Django's "
        f"connection (django.db.connection); not {given!r}"
    )


class _DjangoProxy(_Django):
    """Django's connection of an alias, looked up per send: Django keeps one per thread."""

    def __init__(self, alias: str) -> None:
        super().__init__(None)
        self.alias = alias

    def writable(self) -> Writable:
        self.given = importlib.import_module("django.db").connections[self.alias]
        return super().writable()
