"""Idempotent handlers: skip a message that was already handled successfully.

    store = RedisStore("redis://127.0.0.1:6379/0")

    @idempotent(store, key=lambda order: order.id)
    def bill(order: Order) -> None: ...

    serve(bill, Order, q)

Every transport redelivers (at-least-once), so a handler may see one message twice:
after a nack, a lost ack, a consumer that died, or a sender that retried. The
decorator claims the message's key in a `Store` before the handler runs: the first
delivery runs it and records "done" for `ttl` seconds; a later one is skipped (and
acked). A duplicate that arrives while the first still runs is nacked (`StillRunning`)
and comes back later: the first one's outcome decides. A claim lasts `lease` seconds,
so a consumer that dies while it holds one does not block the message for longer.

The record is written after the handler's effect, in another system: a crash between
the two runs the effect again on the redelivery. `PostgresStore.record` closes that
gap for effects in the same PostgreSQL database: the record is written inside the
application's transaction, and commits or rolls back with the effect.
docs/idempotency.md has the guarantees of each store.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import functools
import inspect
import logging
import threading
import time
import typing
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import attrs

from ._transactions import TransactionError, Use, resolve_kind
from .errors import QchanError
from .message import ATTR_ID, Msg
from .options import OptionError, check_seconds

if TYPE_CHECKING:
    import psycopg
    import redis
    from psycopg import sql

__all__ = [
    "ID_ATTRIBUTE",
    "Claim",
    "ClaimState",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "StillRunning",
    "Store",
    "StoreUnavailable",
    "idempotent",
    "message_key",
]

log = logging.getLogger("qchan.idempotency")

P = ParamSpec("P")
R = TypeVar("R")

#: The attribute that carries a message's stable id through the transport (the outbox
#: relay stamps it); `message_key` prefers it to the transport's id.
ID_ATTRIBUTE = ATTR_ID


class StillRunning(QchanError):
    """Another delivery of this message holds an unexpired claim: nacked, it comes back
    later, and by then the first one has either recorded it done or released it."""


class StoreUnavailable(QchanError):
    """The idempotency store could not be reached (`__cause__` is the client's error):
    the message is nacked rather than handled without the check."""


class ClaimState(enum.Enum):
    """What `Store.claim` found."""

    CLAIMED = "claimed"  # absent or expired: now ours, running, until the lease ends
    DONE = "done"  # handled before, and the record has not expired: skip
    RUNNING = "running"  # another delivery holds an unexpired claim


@attrs.frozen
class Claim:
    """The outcome of `Store.claim`: its state and, when CLAIMED, the token that `done`
    and `release` must show (so a delivery whose lease ran out cannot undo another's)."""

    state: ClaimState
    token: str | None = None


def _new_token() -> str:
    return uuid.uuid4().hex


class Store(abc.ABC):
    """Where `idempotent` keeps, per (namespace, key), "running" claims and "done" records.

    Each method is atomic. A store that cannot reach its backend raises
    `StoreUnavailable` (with the client's error as `__cause__`), so that the
    decorator nacks instead of guessing.
    """

    @abc.abstractmethod
    def claim(self, namespace: str, key: str, lease: float) -> Claim:
        """Claim the key for `lease` s if no unexpired record holds it; else say which holds it."""

    @abc.abstractmethod
    def done(self, namespace: str, key: str, token: str, ttl: float) -> bool:
        """Record the key done for `ttl` s, unless another delivery claimed it since (our
        lease ran out and another took it: True means written)."""

    @abc.abstractmethod
    def release(self, namespace: str, key: str, token: str) -> bool:
        """Drop our claim (the handler failed), if it is still ours: True means dropped."""

    @abc.abstractmethod
    def forget(self, namespace: str, key: str) -> None:
        """Drop whatever is recorded for the key (tests, operators: "run it again")."""

    def close(self) -> None:  # noqa: B027 - optional: stores without resources keep it
        """Release the store's connections (those it opened itself)."""

    def __enter__(self) -> typing.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- memory


@attrs.define
class _Record:
    state: ClaimState
    token: str
    expires: float


class MemoryStore(Store):
    """A store in this process's memory (tests, a single process): thread-safe.

    `clock` gives monotonic seconds (inject one to test expiry). Expired records are
    swept as the store grows, so it holds about as many as are live.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], _Record] = {}
        self._sweep_at = 1024

    def __len__(self) -> int:
        """Records held, expired or not (until swept)."""
        return len(self._records)

    def claim(self, namespace: str, key: str, lease: float) -> Claim:
        with self._lock:
            now = self._clock()
            record = self._records.get((namespace, key))
            if record is not None and record.expires > now:
                return Claim(record.state)
            token = _new_token()
            self._records[(namespace, key)] = _Record(ClaimState.RUNNING, token, now + lease)
            if len(self._records) >= self._sweep_at:
                self._sweep(now)
            return Claim(ClaimState.CLAIMED, token)

    def done(self, namespace: str, key: str, token: str, ttl: float) -> bool:
        with self._lock:
            now = self._clock()
            record = self._records.get((namespace, key))
            if record is not None and record.token != token and record.expires > now:
                return False
            self._records[(namespace, key)] = _Record(ClaimState.DONE, token, now + ttl)
            return True

    def release(self, namespace: str, key: str, token: str) -> bool:
        with self._lock:
            record = self._records.get((namespace, key))
            if record is None or record.token != token or record.state is not ClaimState.RUNNING:
                return False
            del self._records[(namespace, key)]
            return True

    def forget(self, namespace: str, key: str) -> None:
        with self._lock:
            self._records.pop((namespace, key), None)

    def _sweep(self, now: float) -> None:
        """Drop expired records; the next sweep when the live ones have doubled."""
        self._records = {k: r for k, r in self._records.items() if r.expires > now}
        self._sweep_at = max(1024, 2 * len(self._records))


# ---------------------------------------------------------------- Redis

# One round trip each. The value is "running:<token>" or "done:<token>", with the
# lease or the TTL as the key's expiry: an expired record is simply absent.
_REDIS_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'running:' .. ARGV[1], 'PX', ARGV[2])
return 'claimed'
"""
_REDIS_DONE = """
local v = redis.call('GET', KEYS[1])
if v and v ~= 'running:' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'done:' .. ARGV[1], 'PX', ARGV[2])
return 1
"""
_REDIS_RELEASE = """
if redis.call('GET', KEYS[1]) == 'running:' .. ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore(Store):
    """Records in Redis, one key each: `prefix + namespace + ":" + key`, expiring by itself.

    `client_or_url` is a `redis.Redis` (yours: the store does not close it) or a URL
    (`redis://host:6379/0`; the store's client times out connects and replies after
    `timeout` s unless the URL's query says otherwise). Needs `pip install 'qchan[redis]'`.
    """

    def __init__(
        self,
        client_or_url: str | redis.Redis,
        prefix: str = "qchan:handled:",
        *,
        timeout: float = 5.0,
    ) -> None:
        try:
            import redis  # noqa: PLC0415 - the `redis` extra, loaded only for this store
        except ImportError as e:
            raise ImportError("RedisStore needs redis-py: pip install 'qchan[redis]'") from e
        check_seconds("timeout", timeout, positive=True, where="RedisStore")
        if not isinstance(prefix, str):
            raise OptionError(f"RedisStore: prefix must be a str, not {prefix!r}")
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._owned = isinstance(client_or_url, str)
        if isinstance(client_or_url, str):
            self.client: redis.Redis = redis.Redis.from_url(
                client_or_url, socket_connect_timeout=timeout, socket_timeout=timeout
            )
        else:
            self.client = client_or_url
        self.prefix = prefix
        self._claim = self.client.register_script(_REDIS_CLAIM)
        self._done = self.client.register_script(_REDIS_DONE)
        self._release = self.client.register_script(_REDIS_RELEASE)

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"

    def _key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}{namespace}:{key}"

    def _call(self, what: str, script: Any, key: str, *args: object) -> Any:
        try:
            return script(keys=[key], args=list(args))
        except self._errors as e:
            raise StoreUnavailable(f"RedisStore: {what} {key!r}: Redis unreachable: {e}") from e

    def claim(self, namespace: str, key: str, lease: float) -> Claim:
        token = _new_token()
        found = self._call("claim", self._claim, self._key(namespace, key), token, _ms(lease))
        text = found.decode() if isinstance(found, bytes) else str(found)
        if text == "claimed":
            return Claim(ClaimState.CLAIMED, token)
        return Claim(ClaimState.DONE if text.startswith("done:") else ClaimState.RUNNING)

    def done(self, namespace: str, key: str, token: str, ttl: float) -> bool:
        return bool(self._call("done", self._done, self._key(namespace, key), token, _ms(ttl)))

    def release(self, namespace: str, key: str, token: str) -> bool:
        return bool(self._call("release", self._release, self._key(namespace, key), token))

    def forget(self, namespace: str, key: str) -> None:
        try:
            self.client.delete(self._key(namespace, key))
        except self._errors as e:
            raise StoreUnavailable(f"RedisStore: forget: Redis unreachable: {e}") from e

    def close(self) -> None:
        if self._owned:
            self.client.close()


# ---------------------------------------------------------------- PostgreSQL

_RECORD = Use("PostgresStore.record", "a record", TransactionError)

_PG_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    namespace text NOT NULL,
    key text NOT NULL,
    state text NOT NULL,
    token text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at);
"""
# One statement, one row back whatever it finds. An expired row (or none) becomes ours:
# a new state, token and expiry. An unexpired one is written back unchanged (the
# row is locked and re-read at its latest committed version, so two claims never both
# win), and RETURNING shows who holds it: our token means CLAIMED, another's DONE or
# RUNNING by its state.
_PG_CLAIM = """
INSERT INTO {table} AS h (namespace, key, state, token, expires_at)
VALUES (%(ns)s, %(key)s, %(state)s, %(token)s, now() + %(seconds)s * interval '1 second')
ON CONFLICT (namespace, key) DO UPDATE SET
    state = CASE WHEN h.expires_at <= now() THEN excluded.state ELSE h.state END,
    token = CASE WHEN h.expires_at <= now() THEN excluded.token ELSE h.token END,
    expires_at = CASE WHEN h.expires_at <= now() THEN excluded.expires_at ELSE h.expires_at END
RETURNING h.state, h.token
"""
_PG_DONE = """
INSERT INTO {table} AS h (namespace, key, state, token, expires_at)
VALUES (%(ns)s, %(key)s, 'done', %(token)s, now() + %(seconds)s * interval '1 second')
ON CONFLICT (namespace, key) DO UPDATE SET
    state = 'done', token = excluded.token, expires_at = excluded.expires_at
WHERE h.token = excluded.token OR h.expires_at <= now()
"""
_PG_RELEASE = """
DELETE FROM {table} WHERE namespace = %(ns)s AND key = %(key)s
    AND token = %(token)s AND state = 'running'
"""
_PG_FORGET = "DELETE FROM {table} WHERE namespace = %(ns)s AND key = %(key)s"
_PG_PURGE = "DELETE FROM {table} WHERE expires_at <= now()"


class PostgresStore(Store):
    """Records in a PostgreSQL table (psycopg 3): one row per (namespace, key).

    `conninfo_or_connection` is a conninfo string or URL (the store opens its own
    autocommit connection, reconnects after a lost one, and times connects out after
    `connect_timeout` s unless the conninfo says otherwise), or a psycopg connection
    the store then owns (made autocommit; not reconnected). One connection for every
    thread, behind a lock: each call is one short statement. `table` is
    "schema.name" or "name"; `declare=True` creates it (and its schema) if missing.
    Expired rows stay until a claim reuses them or `purge_expired()` runs (schedule it).
    Needs `pip install 'qchan[postgres]'`.

    `record(conn, namespace, key)` is the transactional form: the "handled" row is
    written inside a transaction of the application's, with its effect.
    """

    def __init__(
        self,
        conninfo_or_connection: str | psycopg.Connection[Any],
        table: str = "qchan.handled",
        declare: bool = True,
        *,
        connect_timeout: float = 5.0,
    ) -> None:
        try:
            import psycopg  # noqa: PLC0415 - the `postgres` extra, loaded only for this store
            from psycopg import sql  # noqa: PLC0415
        except ImportError as e:
            raise ImportError("PostgresStore needs psycopg 3: pip install 'qchan[postgres]'") from e
        check_seconds("connect_timeout", connect_timeout, positive=True, where="PostgresStore")
        parts = table.split(".") if isinstance(table, str) else []
        if not 1 <= len(parts) <= 2 or not all(0 < len(p) <= 63 for p in parts):
            raise OptionError(
                f"PostgresStore: table must be 'schema.name' or 'name' (each part 1 to 63 "
                f"characters), not {table!r}"
            )
        self.table = table
        names = {
            "table": sql.Identifier(*parts),
            "index": sql.Identifier(f"{parts[-1]}_expires_at"[:63]),
        }
        ddl = sql.SQL(_PG_DDL).format(**names)
        if len(parts) == 2:
            schema = sql.SQL("CREATE SCHEMA IF NOT EXISTS {};").format(sql.Identifier(parts[0]))
            ddl = sql.Composed([schema, ddl])
        self._ddl = ddl
        self._claim, self._done, self._release, self._forget, self._purge = (
            sql.SQL(text).format(**names)
            for text in (_PG_CLAIM, _PG_DONE, _PG_RELEASE, _PG_FORGET, _PG_PURGE)
        )
        self._noop = sql.SQL("SELECT 1").format()
        self._connect = psycopg.connect
        self._errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self._declare = bool(declare)
        self._declared = False
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._conninfo: str | None = None
        self._connect_kw: dict[str, Any] = {}
        if isinstance(conninfo_or_connection, str):
            self._conninfo = conninfo_or_connection
            if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(self._conninfo):
                # libpq counts whole seconds (and waits at least 2)
                self._connect_kw["connect_timeout"] = max(1, round(connect_timeout))
        else:
            self._conn = conninfo_or_connection
            self._conn.autocommit = True

    def __repr__(self) -> str:
        return f"<PostgresStore table={self.table!r}>"

    def _connection(self) -> psycopg.Connection[Any]:
        """The store's connection: opened, and the table declared, on first use (the lock
        held)."""
        conn = self._conn
        if conn is None or conn.closed:
            if self._conninfo is None:
                raise StoreUnavailable(
                    f"PostgresStore {self.table}: the connection it was given is closed"
                )
            try:
                conn = self._connect(self._conninfo, autocommit=True, **self._connect_kw)
            except self._errors as e:
                raise StoreUnavailable(
                    f"PostgresStore {self.table}: PostgreSQL unreachable: {_one_line(e)}"
                ) from e
            self._conn = conn
        if self._declare and not self._declared:
            with conn.transaction():
                # concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('qchan-declare'))")
                conn.execute(self._ddl)
            self._declared = True
        return conn

    def _run(self, what: str, query: sql.Composed, params: dict[str, Any]) -> psycopg.Cursor[Any]:
        """One statement on the store's connection (its cursor holds the result). A
        connection found dead is replaced, and the statement run again, once (each one
        may run twice: a claim retried shows the same token). Unreachable:
        StoreUnavailable."""
        with self._lock:
            for retry in (False, True):
                reused = self._conn is not None and not self._conn.closed
                try:
                    return self._connection().execute(query, params)
                except self._errors as e:
                    if self._conninfo is None or retry or not reused:
                        self._drop()
                        raise StoreUnavailable(
                            f"PostgresStore {self.table}: {what}: {_one_line(e)}"
                        ) from e
                    self._drop()
                    log.info("PostgresStore %s: connection lost (%s); reconnecting", self.table, e)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _drop(self) -> None:
        """Close a failed connection of the store's own: the next call opens another."""
        if self._conninfo is None:
            return  # the application's: not replaced (a closed one says so)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def claim(self, namespace: str, key: str, lease: float) -> Claim:
        token = _new_token()
        params = {"ns": namespace, "key": key, "state": "running", "token": token, "seconds": lease}
        ((state, holder),) = self._run("claim", self._claim, params).fetchall()
        if holder == token:
            return Claim(ClaimState.CLAIMED, token)
        return Claim(ClaimState.DONE if state == "done" else ClaimState.RUNNING)

    def done(self, namespace: str, key: str, token: str, ttl: float) -> bool:
        params = {"ns": namespace, "key": key, "token": token, "seconds": ttl}
        return self._run("done", self._done, params).rowcount > 0

    def release(self, namespace: str, key: str, token: str) -> bool:
        params = {"ns": namespace, "key": key, "token": token}
        return self._run("release", self._release, params).rowcount > 0

    def forget(self, namespace: str, key: str) -> None:
        self._run("forget", self._forget, {"ns": namespace, "key": key})

    def purge_expired(self) -> int:
        """Delete the expired rows (schedule it, e.g. hourly); how many went."""
        return self._run("purge", self._purge, {}).rowcount

    def record(
        self,
        conn: Any,
        namespace: str,
        key: str,
        ttl: float = 86400.0,
    ) -> bool:
        """Write "handled" for the key inside the transaction open on `conn` (yours: a
        psycopg 3 or psycopg2 connection, a SQLAlchemy Session or Connection, or Django's
        `connection` inside `atomic()`): True if this transaction now holds the record
        (go on and do the effect: both commit or roll back together), False if it was
        handled before (skip it). Outside a transaction (autocommit), or in a failed
        one, it raises `qchan.TransactionError` and writes nothing.

        A concurrent duplicate waits on the row until this transaction ends, then sees
        its outcome: after a commit False, after a rollback True. Raises `StillRunning`
        if a claim of `idempotent` (same table and namespace) holds the key. Use the
        default READ COMMITTED isolation: under REPEATABLE READ or SERIALIZABLE a
        concurrent duplicate fails with a serialization error instead (retry it).
        psycopg's errors pass unchanged: the transaction is yours.
        """
        check_seconds("ttl", ttl, positive=True, where="PostgresStore.record")
        if self._declare and not self._declared:
            self._run("declare", self._noop, {})  # the DDL on the store's connection
        target = resolve_kind(conn, _RECORD).writable()
        token = _new_token()
        params = {"ns": namespace, "key": key, "state": "done", "token": token, "seconds": ttl}
        if target.psycopg3:
            row = target.conn.execute(self._claim, params).fetchone()
        else:
            with target.conn.cursor() as cur:
                cur.execute(self._claim.as_string(None), params)
                row = cur.fetchone()
        assert row is not None, "INSERT ... ON CONFLICT DO UPDATE returns the row"
        state, holder = row
        if holder == token:
            return True
        if state == "running":
            raise StillRunning(
                f"{namespace} {key!r}: a delivery of idempotent() holds a claim on it "
                f"(table {self.table})"
            )
        return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------- the decorator


def message_key(msg: Msg[Any]) -> str:
    """The message's stable id: its `qchan-id` attribute (the outbox relay stamps it),
    else the transport's id (`msg.bag.id`)."""
    if not isinstance(msg, Msg):
        raise OptionError(
            f"message_key takes a qchan.Msg, not {type(msg).__name__}: a handler that takes "
            f"the object needs idempotent(key=...), a function of the object"
        )
    found = msg.attributes.get(ID_ATTRIBUTE)
    if found:
        return found
    if msg.bag is not None and msg.bag.id:
        return msg.bag.id
    raise OptionError(
        f"message_key: this {msg.category!r} message has no id (no {ID_ATTRIBUTE!r} attribute, "
        f"no transport id): give idempotent(key=...) a function that names it"
    )


def _handler_name(handler: Callable[..., object]) -> str | None:
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{module}.{qualname}"


def _takes_msg(handler: Callable[..., object]) -> bool | None:
    """Whether the handler's first parameter is annotated `Msg[...]` (None: cannot tell:
    no annotation, `Any`, or one that does not resolve yet)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
        hints = typing.get_type_hints(handler)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve (yet), say
        return None
    if not params or params[0].kind not in (
        params[0].POSITIONAL_ONLY,
        params[0].POSITIONAL_OR_KEYWORD,
    ):
        return None
    hint = hints.get(params[0].name)
    if hint is None or hint is Any or hint is object:
        return None
    return hint is Msg or typing.get_origin(hint) is Msg


_NEEDS_KEY = (
    "a handler that takes the object needs key=..., a function of the object that "
    "returns its stable id (e.g. key=lambda order: order.id); without key= the handler "
    "must take the Msg (def handle(msg: Msg[Order])) so that its message id is used"
)


def idempotent(
    store: Store,
    *,
    key: Callable[[Any], str] | None = None,
    ttl: float = 86400.0,
    lease: float = 300.0,
    namespace: str | None = None,
    on_store_error: Literal["nack", "handle"] = "nack",
) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Make a `serve` handler skip messages it already handled successfully.

    `key(x)` names the message, `x` being what the handler takes (the object, or the
    `Msg`); without `key` the handler must take the `Msg`, and `message_key` names it.
    `namespace` (default: the handler's module and qualified name) keeps two handlers
    of one message apart: each runs once.

    Per delivery: the key is claimed in `store` for `lease` s, then
    - handled before (a "done" record younger than `ttl` s): the handler is skipped,
      the call returns None (serve acks);
    - another delivery holds a claim: raises `StillRunning` (serve nacks; it comes back);
    - claimed: the handler runs. Returned: the key is recorded done for `ttl` s (if the
      store fails then, a WARNING: the effect happened, the message is acked). Raised:
      the claim is released and the exception goes on unchanged (serve nacks).
    - the store is unreachable: raises `StoreUnavailable` (nacked), or with
      `on_store_error="handle"` runs the handler without the check, with a WARNING.

    Choose `lease` longer than the handler ever runs, and `ttl` longer than the
    broker may redeliver (docs/idempotency.md).
    """
    where = "idempotent"
    if not all(callable(getattr(store, m, None)) for m in ("claim", "done", "release")):
        raise OptionError(
            f"{where}: store must be a qchan Store (MemoryStore, RedisStore, PostgresStore), "
            f"not {store!r}"
        )
    check_seconds("ttl", ttl, positive=True, where=where)
    check_seconds("lease", lease, positive=True, where=where)
    if on_store_error not in ("nack", "handle"):
        raise OptionError(
            f"{where}: on_store_error must be 'nack' or 'handle', not {on_store_error!r}"
        )
    if key is not None and not callable(key):
        raise OptionError(f"{where}: key must be a function of the message, not {key!r}")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise OptionError(f"{where}: namespace must be a non-empty str, not {namespace!r}")

    def decorate(handler: Callable[P, R]) -> Callable[P, R | None]:
        if not callable(handler):
            raise OptionError(f"{where}: decorates a handler function, not {handler!r}")
        if key is None and _takes_msg(handler) is False:
            raise OptionError(f"{where}({_handler_name(handler) or handler!r}): {_NEEDS_KEY}")
        ns = namespace or _handler_name(handler)
        if ns is None:
            raise OptionError(f"{where}: {handler!r} has no name: give namespace=")

        def key_of(item: object) -> str:
            if key is not None:
                found = key(item)
                if not isinstance(found, str) or not found:
                    raise OptionError(
                        f"{where}({ns}): key(...) must return a non-empty str, not {found!r}"
                    )
                return found
            if not isinstance(item, Msg):
                raise OptionError(f"{where}({ns}): {_NEEDS_KEY}")
            return message_key(item)

        @functools.wraps(handler)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            if not args:
                raise OptionError(f"{where}({ns}): the handler takes the message first")
            k = key_of(args[0])
            try:
                claim = store.claim(ns, k, lease)
            except StoreUnavailable as e:
                if on_store_error == "nack":
                    raise
                log.warning("%s %r: store unavailable (%s); handled without the check", ns, k, e)
                return handler(*args, **kwargs)
            if claim.state is ClaimState.DONE:
                log.info("%s %r: handled before; skipped", ns, k)
                return None
            if claim.state is ClaimState.RUNNING or claim.token is None:
                raise StillRunning(
                    f"{ns} {k!r}: another delivery is handling it (its claim lasts up to "
                    f"{lease:g} s); redelivered later"
                )
            token = claim.token
            try:
                result = handler(*args, **kwargs)
            except BaseException:
                try:
                    store.release(ns, k, token)
                except Exception:  # the lease ends it anyway
                    log.warning(
                        "%s %r: could not release the claim; it expires in %g s",
                        ns,
                        k,
                        lease,
                        exc_info=True,
                    )
                raise
            try:
                recorded = store.done(ns, k, token, ttl)
            except Exception:  # the effect happened: ack, and say so
                log.warning(
                    "%s %r: handled, but could not record it (a redelivery after the %g s "
                    "lease would run it again)",
                    ns,
                    k,
                    lease,
                    exc_info=True,
                )
            else:
                if not recorded:
                    log.warning(
                        "%s %r: handled, but its claim had expired (the handler ran longer "
                        "than lease=%g s) and another delivery claimed it: it may run twice",
                        ns,
                        k,
                        lease,
                    )
            return result

        return wrapper

    return decorate
