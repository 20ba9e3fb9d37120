"""The relay: forwards an outbox's rows to any qchan URL, in order, removing a row only once
the target confirmed it.

One batch is one transaction on the outbox's database:

1. `pg_try_advisory_xact_lock` on the outbox: one relay at a time sends (another waits
   its turn), so two relays never send one row twice while both run, and batches go out
   one after the other, in order;
2. the first rows by id, `FOR UPDATE` (the order of the sends; see docs/outbox.md for
   what that means across transactions);
3. the target's `send_batch`/`submit` (its confirmation: publisher confirms, the Kafka
   delivery report, the SQS batch result), retried with backoff while the target fails,
   for at most `hold` seconds per transaction;
4. in the same transaction: delete what the target confirmed, move what it refused
   (`RejectedError`), or failed `max_deliveries` times, to the outbox's dead-letter
   table, count the other failures; commit.

A crash (or a lost database connection) anywhere before the commit rolls the whole batch
back: its rows are sent again by the next relay, with the same message ids, so the target
may get the batch in flight twice, never less.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from qchan.adapter import Adapter, Hooks, Sending
from qchan.errors import ConnectionLost, RejectedError, describe
from qchan.message import ATTR_CATEGORY, ATTR_QUEUE, ATTR_SYSTEM, Bag
from qchan.options import OptionError, check_count, check_seconds
from qchan.retry import Backoff, Exponential
from qchan.urls import redact

from ._names import CONTENT_TYPE_ATTRIBUTE, ID_ATTRIBUTE, KEY_ATTRIBUTE

if TYPE_CHECKING:
    import psycopg

    from qchan.adapters.postgres import PostgresAdapter

__all__ = ["Relayed", "open_target", "relay"]

log = logging.getLogger("qchan.outbox")

_TAKE = """
SELECT id, body, attributes::text, deliveries FROM {table}
WHERE visible_at <= now() ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED
"""
_DELETE = "DELETE FROM {table} WHERE id = ANY(%(ids)s::bigint[])"
_COUNT = "UPDATE {table} SET deliveries = deliveries + 1 WHERE id = ANY(%(ids)s::bigint[])"


@attrs.define
class Relayed:
    """What a relay has done so far (its `/metrics`), and whether it is healthy."""

    #: Confirmed by the target and removed from the outbox.
    relayed: int = 0
    #: Refused by the target (or failing `max_deliveries` times): moved to the dead-letter table.
    dead_lettered: int = 0
    #: Messages sent again after a failure whose outcome was unknown (each may be in the
    #: target twice, with the same id).
    resent: int = 0
    #: Batches committed.
    batches: int = 0
    #: Failed attempts: the target or the outbox's database unreachable, a send that failed.
    failures: int = 0
    #: The last failure, as text (None once an attempt succeeds again).
    last_error: str | None = None
    #: Since when (time.monotonic()) the relay has failed without a success; None: healthy.
    failing_since: float | None = None

    def healthy(self, grace: float) -> bool:
        """False once attempts have failed for more than `grace` seconds in a row."""
        return self.failing_since is None or time.monotonic() - self.failing_since <= grace


class _Reports(Hooks):
    """What the target adapter reports between calls (a lost connection): logged."""

    def report(self, error: BaseException) -> None:
        log.warning("relay target: %s", error)


def open_target(url: str) -> Adapter:
    """The adapter of `url`, as `connect` opens it (kernel options in the query ignored)."""
    from qchan.options import split_query  # noqa: PLC0415
    from qchan.urls import adapter_names, open_adapter  # noqa: PLC0415

    adapter_url, _ = split_query(url, adapter_names(url, "QUERY_KEYS") or ())
    adapter = open_adapter(adapter_url)
    adapter.bind(_Reports())
    return adapter


class _Relay:
    def __init__(
        self,
        source: PostgresAdapter,
        target: Adapter,
        *,
        batch: int,
        backoff: Backoff,
        hold: float,
        wait: float,
        stop: threading.Event,
        done: Relayed,
    ) -> None:
        from psycopg import sql  # noqa: PLC0415

        from qchan.adapters import postgres  # noqa: PLC0415

        self.source = source
        self.target = target
        self.batch = batch
        self.backoff = backoff
        self.hold = hold
        self.wait = wait
        self.stop = stop
        self.done = done
        o = source.options
        if o.dlq is None:
            raise OptionError(
                "relay: the outbox needs a dead-letter table for what the target refuses "
                "(remove dlq= from FROM's URL)"
            )
        names = postgres._names(o)
        self._q: Callable[[str], Any] = lambda text: sql.SQL(text).format(**names)
        self._dead = self._q(postgres._DEAD_LETTER)
        self._lock_key = f"qchan-relay:{o.schema}.{o.queue}"
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._streak = 0  # failed attempts in a row (the backoff's attempt number)

    # -- the outbox's connection -----------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        if (
            self._conn is not None
            and not self._conn.closed
            and self._listen is not None
            and not self._listen.closed
        ):
            return self._conn
        o = self.source.options
        try:
            conn = psycopg.connect(
                o.conninfo, autocommit=True, application_name=f"qchan-relay-{o.queue}"
            )
            self.source._declare(conn)
            # LISTEN on a connection of its own: PostgreSQL holds notifications back from
            # a session inside a transaction, and the batch connection is in one for up to
            # `hold` s; the listener never is.
            listen = psycopg.connect(
                o.conninfo, autocommit=True, application_name=f"qchan-relay-{o.queue}"
            )
            listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.source._channel)))
        except psycopg.OperationalError as e:
            self._drop()
            raise ConnectionLost(f"outbox {redact(o.url())}: {_one_line(e)}") from None
        self._conn, self._listen = conn, listen
        return conn

    def _drop(self) -> None:
        conns = (self._conn, self._listen)
        self._conn = self._listen = None
        for conn in conns:
            if conn is not None:
                try:
                    conn.close()
                except Exception as e:  # noqa: BLE001 - already broken
                    log.debug("relay: closing a broken connection: %s", e)

    def close(self) -> None:
        self._drop()

    # -- the loop ------------------------------------------------------------------------

    def run(self, *, drain: bool) -> None:
        """Relay batches until `stop` is set (or, with `drain`, the outbox is empty)."""
        import psycopg  # noqa: PLC0415

        while not self.stop.is_set():
            try:
                n = self._one_batch()
                if n is None or n == 0:
                    if drain and n == 0:
                        return
                    self._idle()
            except (ConnectionLost, psycopg.OperationalError, psycopg.InterfaceError) as e:
                self._drop()
                self._failed(f"outbox database: {_one_line(e)}")
                continue
            except Exception as e:  # supervision: reported loudly, then the loop goes on
                log.exception("relay: unexpected error; starting the batch again")
                self._drop()
                self._failed(f"unexpected: {describe(e)}")

    def _failed(self, why: str) -> None:
        d = self.done
        d.failures += 1
        d.last_error = why
        if d.failing_since is None:
            d.failing_since = time.monotonic()
        self._streak += 1
        delay = self.backoff.next(self._streak, 0.0)
        log.warning("relay %s: %s", self.source.options.queue, why)
        self.stop.wait(delay if delay is not None else self.backoff.delay(self._streak))

    def _ok(self) -> None:
        self._streak = 0
        self.done.failing_since = None
        self.done.last_error = None

    def _idle(self) -> None:
        """Wait for a NOTIFY (a commit that wrote to the outbox), `wait` s at most, and
        for the stop in slices of 0.5 s."""
        self._connect()
        listen = self._listen
        assert listen is not None
        deadline = time.monotonic() + self.wait
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if any(True for _ in listen.notifies(timeout=min(left, 0.5), stop_after=1)):
                return

    def _one_batch(self) -> int | None:
        """Relay one batch; how many rows it settled (None: another relay holds the outbox)."""
        conn = self._connect()
        with conn.transaction():
            row = conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (self._lock_key,)
            ).fetchone()
            if row is None or not row[0]:
                return None
            rows = conn.execute(self._q(_TAKE), {"n": self.batch}).fetchall()
            if not rows:
                self._ok()
                return 0
            rows.sort(key=lambda r: r[0])
            bags = [self._bag(*r) for r in rows]
            outcomes = self._send(bags)
            self._settle(conn, rows, bags, outcomes)
        self.done.batches += 1
        return len(rows)

    def _bag(self, rid: int, body: bytes, attributes: str, deliveries: int) -> Bag:
        """The message to send: the row's body and attributes, its id and ordering key."""
        attrs_ = dict(self.source._attributes(attributes))
        key = attrs_.pop(KEY_ATTRIBUTE, None)
        content_type = attrs_.pop(CONTENT_TYPE_ATTRIBUTE, None)
        # As if sent to the target directly: its queue name and system.
        attrs_[ATTR_QUEUE] = self.target.name
        attrs_[ATTR_SYSTEM] = self.target.scheme
        mid = attrs_.get(ID_ATTRIBUTE)
        if not mid:  # a row some other client inserted: its id is the row's, kept on the wire
            o = self.source.options
            mid = attrs_[ID_ATTRIBUTE] = f"{o.schema}.{o.queue}.{rid}"
        return Bag(
            attrs_.get(ATTR_CATEGORY, ""),
            bytes(body),
            MappingProxyType(attrs_),
            mid,
            key,
            content_type,
            rid,
            deliveries,
        )

    def _submit(self, bags: Sequence[Bag]) -> list[BaseException | None]:
        """One outcome per bag: the target's batches, up to its pipeline at once."""
        target = self.target
        size = max(1, target.max_batch)
        chunks = [bags[i : i + size] for i in range(0, len(bags), size)]
        outcomes: list[BaseException | None] = []
        window = max(1, target.pipeline)
        for start in range(0, len(chunks), window):
            sendings: list[tuple[Sequence[Bag], Sending | BaseException]] = []
            for chunk in chunks[start : start + window]:
                try:
                    sendings.append((chunk, target.submit(chunk)))
                except Exception as e:  # noqa: BLE001 - the call failed: so did each bag
                    sendings.append((chunk, e))
            for chunk, sending in sendings:
                if isinstance(sending, BaseException):
                    outcomes.extend([sending] * len(chunk))
                    continue
                try:
                    got = sending.result(None)
                except Exception as e:  # noqa: BLE001
                    got = [e] * len(chunk)
                outcomes.extend(
                    got if got is not None else [ConnectionLost("no answer")] * len(chunk)
                )
        return outcomes

    def _send(self, bags: Sequence[Bag]) -> list[BaseException | None]:
        """Send, again while the target fails (not refuses), for `hold` s at most."""
        outcomes: list[BaseException | None] = [None] * len(bags)
        pending = list(range(len(bags)))
        started = time.monotonic()
        resent: set[int] = set()
        while True:
            got = self._submit([bags[i] for i in pending])
            retry = []
            for i, outcome in zip(pending, got, strict=True):
                outcomes[i] = outcome
                if outcome is not None and not isinstance(outcome, RejectedError):
                    retry.append(i)
            if not retry:
                self._ok()
                break
            first = outcomes[retry[0]]
            assert first is not None
            self.done.failures += 1
            self.done.last_error = f"target: {describe(first)}"
            if self.done.failing_since is None:
                self.done.failing_since = time.monotonic()
            self._streak += 1
            delay = self.backoff.next(self._streak, 0.0)
            delay = self.backoff.delay(self._streak) if delay is None else delay
            left = started + self.hold - time.monotonic()
            if left <= delay or self.stop.is_set():
                break
            log.warning(
                "relay %s: %d message(s) not confirmed (%s); again in %.2f s",
                self.source.options.queue,
                len(retry),
                describe(first),
                delay,
            )
            if self.stop.wait(delay):
                break
            resent.update(retry)  # a failed send may still have reached the target
            pending = retry
        self.done.resent += len(resent)
        return outcomes

    def _settle(
        self,
        conn: psycopg.Connection[Any],
        rows: Sequence[Any],
        bags: Sequence[Bag],
        outcomes: Sequence[BaseException | None],
    ) -> None:
        """In the batch's transaction: delete the confirmed, dead-letter the refused (and
        those failed too often), count the other failures."""
        o = self.source.options
        ok = [b.digest for b, e in zip(bags, outcomes, strict=True) if e is None]
        dead: list[tuple[Bag, str]] = []
        counted: list[int] = []
        # A failure every message of the batch shares (none was accepted or refused) is
        # the target's (down, a missing queue, no permission), not a message's: counted
        # against no message, it holds the relay back until the target is fixed. A row
        # that failed before while others went is the message's problem: still counted.
        shared = all(e is not None and not isinstance(e, RejectedError) for e in outcomes)
        for b, e in zip(bags, outcomes, strict=True):
            if e is None:
                continue
            if isinstance(e, RejectedError):
                dead.append((b, f"refused by {self.target.scheme}://: {describe(e)}"))
            elif isinstance(e, ConnectionLost) or (shared and b.deliveries == 0):
                pass  # the target's failure: not this message's, not counted
            elif b.deliveries + 1 >= o.max_deliveries:
                dead.append((b, f"failed {b.deliveries + 1} times, the last: {describe(e)}"))
            else:
                counted.append(b.digest)
        if ok:
            conn.execute(self._q(_DELETE), {"ids": ok})
        if counted:
            conn.execute(self._q(_COUNT), {"ids": counted})
        if dead:
            conn.execute(
                self._dead,
                {
                    "ids": [b.digest for b, _ in dead],
                    "d": [b.deliveries for b, _ in dead],
                    "used": [b.deliveries + 1 for b, _ in dead],
                    "err": [why[:2000] for _, why in dead],
                },
            )
            for b, why in dead:
                log.error("relay %s: message %s moved to %s: %s", o.queue, b.id, o.dlq, why)
        self.done.relayed += len(ok)
        self.done.dead_lettered += len(dead)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def relay(
    source: str | PostgresAdapter,
    target: str | Adapter,
    *,
    stop: threading.Event | None = None,
    drain: bool = False,
    batch: int = 500,
    backoff: Backoff | None = None,
    hold: float = 10.0,
    wait: float = 1.0,
    done: Relayed | None = None,
) -> Relayed:
    """Forward the outbox `source` (`postgresql://...?queue=outbox`) to `target` (a URL, or
    an adapter you opened), until `stop` is set, or with `drain` once it is empty.

    Runs in the calling thread (start a thread for it beside an application, or use the
    `qchan relay` command); many relays may run on one outbox, one sends at a time. A
    row leaves the outbox only after the target confirmed it; what the target refuses
    goes to the outbox's dead-letter table (`<queue>_dlq`), and so does a message the
    target failed `max_deliveries` times (FROM's option; a target that is down counts
    nothing). Failures are retried with `backoff` (exponential from 0.1 s to 5 s by
    default), each batch's transaction held at most `hold` s. `batch`: rows per
    transaction. Returns what it did (pass `done` to watch it while it runs).
    """
    from qchan.adapters.postgres import PostgresAdapter, from_url  # noqa: PLC0415

    check_count("batch", batch, where="relay")
    check_seconds("hold", hold, where="relay")
    check_seconds("wait", wait, where="relay")
    if isinstance(source, PostgresAdapter):
        src = source
    elif isinstance(source, str):
        src = from_url(source)
    else:
        raise OptionError(f"relay: source must be a postgresql:// URL, not {source!r}")
    opened: list[Adapter] = [] if isinstance(source, PostgresAdapter) else [src]
    try:
        dst = open_target(target) if isinstance(target, str) else target
        if isinstance(target, str):
            opened.append(dst)
        if not isinstance(dst, Adapter):
            raise OptionError(f"relay: target must be a queue URL or an adapter, not {target!r}")
        if isinstance(dst, PostgresAdapter) and (
            dst.options.conninfo,
            dst.options.schema,
            dst.options.queue,
        ) == (src.options.conninfo, src.options.schema, src.options.queue):
            raise OptionError("relay: FROM and TO are the same table; it would relay in circles")
        done = done if done is not None else Relayed()
        r = _Relay(
            src,
            dst,
            batch=batch,
            backoff=backoff or Exponential(base=0.1, cap=5.0, max_attempts=None, max_elapsed=None),
            hold=hold,
            wait=wait,
            stop=stop if stop is not None else threading.Event(),
            done=done,
        )
        try:
            r.run(drain=drain)
        finally:
            r.close()
    finally:
        for adapter in opened:  # only what this call opened
            adapter.close()
    return done
