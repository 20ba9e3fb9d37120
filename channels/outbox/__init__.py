"""Publish on commit: an outbox table written in the application's transaction, and a relay
that forwards it to any qchan URL.

    from qchan import enqueue
    from qchan.outbox import Outbox

    outbox = Outbox(conn)                          # psycopg, SQLAlchemy or Django connection
    with conn.transaction():
        save(order)
        with enqueue(OrderPlaced, outbox) as (out, _):
            out.send(OrderPlaced(order.id))        # a row in qchan.outbox, in this transaction

    qchan relay 'postgresql://app@db/shop?queue=outbox' 'amqp://.../%2F?queue=orders'

The message exists if and only if the transaction commits: a rollback leaves nothing, and
a crash after the commit loses nothing (the row waits for the relay). The outbox is a
PostgreSQL queue table (`postgresql://...?queue=outbox`, docs/postgres.md), so anything
that reads one reads it; each row carries the message's id (`qchan-id`) and ordering key
(`qchan-key`) as attributes, for the relay. docs/outbox.md has the guarantees.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from qchan.endpoints import DirectQueue
from qchan.errors import MessageTooLarge
from qchan.message import ATTR_CATEGORY, ATTR_QUEUE, ATTR_SOURCE, ATTR_SYSTEM, Bag
from qchan.options import OptionError, program

from .._transactions import TransactionError, Use, resolve_kind
from ._names import CONTENT_TYPE_ATTRIBUTE, ID_ATTRIBUTE, KEY_ATTRIBUTE
from ._relay import Relayed, relay

__all__ = ["ID_ATTRIBUTE", "KEY_ATTRIBUTE", "Outbox", "OutboxError", "Relayed", "relay"]

DEFAULT_QUEUE = "outbox"


class OutboxError(TransactionError):
    """A send on an outbox that cannot be written in the application's transaction (no
    transaction, a closed connection, a failed transaction, not PostgreSQL). Nothing of
    that send was written."""


_USE = Use("the outbox", "a send on an outbox", OutboxError)


class Outbox(DirectQueue):
    """An outbox on the connection the application's transactions run on.

    `connection`: a psycopg 3 `Connection`, a psycopg2 connection, a SQLAlchemy `Session`
    (or `scoped_session`, Flask-SQLAlchemy's `db.session`) or `Connection`, or Django's
    `django.db.connection` (`connections[alias]`). `enqueue(T, outbox)` and
    `enqueue_sync(T, outbox)` then write each send as a row of `<schema>.<queue>` in the
    current transaction, before `send` returns; a send outside a transaction, on a closed
    connection or in a failed transaction raises `OutboxError` and writes nothing. One
    Outbox may serve many threads (Django and scoped sessions: each its own connection).

    `declare="create"` makes the table (and its trigger and dead-letter table) in the
    first transaction that sends, if it is missing; `"none"`: it exists (a migration made
    it, or the relay, which creates it on start).
    """

    def __init__(
        self,
        connection: Any,
        queue: str = DEFAULT_QUEUE,
        *,
        schema: str = "qchan",
        declare: str = "create",
        max_message_size: int | None = None,
        agent: str | None = None,
        system: str | None = None,
    ) -> None:
        from psycopg import sql  # noqa: PLC0415

        from qchan.adapters import postgres  # noqa: PLC0415
        from qchan.adapters.postgres._config import (  # noqa: PLC0415
            DEFAULT_MAX_MESSAGE_SIZE,
            PostgresOptions,
        )

        if declare not in ("create", "none"):
            raise OptionError(f"Outbox: declare must be 'create' or 'none', not {declare!r}")
        self._kind = resolve_kind(connection, _USE)
        # The adapter's own option checks (names, sizes) and SQL for the table.
        self.options = PostgresOptions(
            queue=queue,
            conninfo="",
            schema=schema,
            max_message_size=(
                DEFAULT_MAX_MESSAGE_SIZE if max_message_size is None else max_message_size
            ),
        )
        self.name = queue
        self._agent = agent or program()
        self._system = system or "outbox"
        self._declare = declare == "create"
        # Databases where the table was seen committed (no more checks there: Django opens
        # a connection per request), and connections that made it in their current
        # transaction (its id: a rollback undoes it).
        self._declared: set[tuple[Any, ...]] = set()
        self._created: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        table = sql.Identifier(schema, queue)
        self._copy = sql.SQL(postgres._SEND).format(table=table)  # psycopg 3, many rows
        # One row, and psycopg2 (which takes the same text): an INSERT.
        self._insert = (
            sql.SQL("INSERT INTO {} (body, attributes) VALUES (%s, %s::jsonb)")
            .format(table)
            .as_string(None)
        )

    def __repr__(self) -> str:
        return f"<Outbox {self.options.schema}.{self.name} on {self._kind.name}>"

    @property
    def agent(self) -> str:
        return self._agent

    def attributes(self, category: str) -> Mapping[str, str]:
        return MappingProxyType(
            {
                ATTR_CATEGORY: category,
                ATTR_SOURCE: self._agent,
                ATTR_SYSTEM: self._system,
                ATTR_QUEUE: self.name,
            }
        )

    def _write(self, bags: Sequence[Bag]) -> None:
        rows = [self._row(bag) for bag in bags]  # refuses a message too large: nothing written
        target = self._kind.writable()
        conn = target.conn
        if self._declare and target.database() not in self._declared:
            self._create(target)
        if target.psycopg3 and len(rows) > 1:
            with conn.cursor() as cur, cur.copy(self._copy) as copy:
                for row in rows:
                    copy.write_row(row)
        elif target.psycopg3:
            # One row (a send): an INSERT psycopg prepares after a few, 3x a COPY's rate.
            conn.execute(self._insert, rows[0])
        else:
            with conn.cursor() as cur:
                cur.executemany(self._insert, rows)

    def _row(self, bag: Bag) -> tuple[bytes, str]:
        attributes = dict(bag.attributes)
        if bag.id is not None:
            attributes[ID_ATTRIBUTE] = bag.id
        if bag.key is not None:
            attributes[KEY_ATTRIBUTE] = bag.key
        if bag.content_type is not None:
            attributes[CONTENT_TYPE_ATTRIBUTE] = bag.content_type
        encoded = json.dumps(attributes, separators=(",", ":"))
        size = len(bag.body) + len(encoded)
        limit = self.options.max_message_size
        if size > limit:
            raise MessageTooLarge(
                f"outbox {self.name!r}: a {bag.category!r} message of {size} bytes (body and "
                f"attributes) is over max_message_size={limit}; nothing was written"
            )
        return bag.body, encoded

    def _create(self, target: Any) -> None:
        """Make the table in this transaction if it is missing (under the lock the
        adapter's declaration takes, so two first transactions do not race).

        The connection is remembered once it sees the table outside the transaction
        that made it: a table made in a transaction that rolls back is gone again."""
        from qchan.adapters import postgres  # noqa: PLC0415

        name = f'"{self.options.schema}"."{self.options.queue}"'
        conn = target.conn
        with conn.cursor() as cur:
            cur.execute(
                "SELECT to_regclass(%s) IS NOT NULL, pg_current_xact_id_if_assigned()::text",
                (name,),
            )
            row = cur.fetchone()
            assert row is not None
            exists, current = row
            with self._lock:
                made_in = self._created.get(conn)
                if exists and (made_in is None or made_in != current):
                    self._declared.add(target.database())  # committed: by us, or by anyone
                    self._created.pop(conn, None)
                if exists:
                    return
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('qchan-declare'))")
            for statement in postgres.declaration(self.options):
                cur.execute(statement if target.psycopg3 else statement.as_string(None))
            cur.execute("SELECT pg_current_xact_id()::text")
            made = cur.fetchone()
            assert made is not None
            with self._lock:
                self._created[conn] = made[0]
