"""The outbox relay against `qchan redrive` between the same two transports, same run.

Run: `python benchmarks/bench_relay.py [--messages N] [--repeat R] [--to redis,amqp]`
(PostgreSQL on 127.0.0.1:5432 database `test`; Redis on :6379; RabbitMQ on :5672).

Each run fills a fresh outbox table with N messages of about 1 KiB through
`qchan.outbox.Outbox` (500 per transaction, timed as `outbox write`; a third table gets
the same rows by plain psycopg INSERTs, `raw write`), then moves them to a fresh queue of
the target: once with `relay(FROM, TO, drain=True)` and once, from the second outbox, with
`qchan redrive`'s own loop (`redrive(open_receiving(FROM), open_raw(TO), count=N)`). Both
read the same table layout and send with the same adapter; the relay holds each batch's
rows in one transaction and deletes them after the target confirmed, the redrive leases
them, then acks. Relay and redrive runs alternate; each figure is the median.

Target (issue 28): the relay >= 0.8x redrive's rate. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from psycopg import sql

from qchan import enqueue
from qchan.cli.operate import open_raw, open_receiving, redrive
from qchan.outbox import Outbox, relay

DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET = 0.8
PER_TX = 500


@attrs.frozen
class Item:
    """About 1 KiB once encoded."""

    id: int
    name: str
    text: str


def fill(name: str, n: int) -> float:
    """N messages into outbox `name`, PER_TX per transaction; messages per second."""
    objs = [Item(i, f"item-{i}", "x" * 950) for i in range(n)]
    with psycopg.connect(DSN, autocommit=True) as conn:
        box = Outbox(conn, name)
        with conn.transaction(), enqueue(Item, box) as (out, _):
            out.send(objs[0])  # makes the table, outside the timing
        began = time.perf_counter()
        for start in range(1, n, PER_TX):
            with conn.transaction(), enqueue(Item, box) as (out, _):
                for o in objs[start : start + PER_TX]:
                    out.send(o)
        return (n - 1) / (time.perf_counter() - began)


def fill_raw(name: str, n: int) -> float:
    """The same rows with plain psycopg: one INSERT per message, PER_TX per transaction
    (what an application writing its own outbox does); messages per second."""
    import json

    from qchan.codec import JSONCodec

    codec: JSONCodec[Item] = JSONCodec(Item)
    objs = [Item(i, f"item-{i}", "x" * 950) for i in range(n)]
    attributes = {"Category": "Item", "Source": "bench", "System": "outbox", "Queue": name}
    query = sql.SQL("INSERT INTO {} (body, attributes) VALUES (%s, %s::jsonb)").format(
        sql.Identifier("qchan", name)
    )
    with psycopg.connect(DSN, autocommit=True) as conn:
        with conn.transaction(), enqueue(Item, Outbox(conn, name)) as (out, _):
            out.send(objs[0])  # makes the table, outside the timing
        began = time.perf_counter()
        for start in range(1, n, PER_TX):
            with conn.transaction():
                for o in objs[start : start + PER_TX]:
                    row = json.dumps({**attributes, "qchan-id": str(o.id)})
                    conn.execute(query, (codec.encode(o), row))
        return (n - 1) / (time.perf_counter() - began)


def targets() -> dict[str, tuple[Callable[[str], str], Callable[[str], None]]]:
    """URL of a queue named `x` and how to delete it, per target."""

    def redis_drop(name: str) -> None:
        import redis

        with redis.Redis("127.0.0.1", 6379) as r:
            r.delete(name, f"{name}.dlq")

    def amqp_drop(name: str) -> None:
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
        try:
            ch = conn.channel()
            ch.queue_delete(name)
            ch.queue_delete(f"{name}.dlq")
        finally:
            conn.close()

    return {
        "redis": (lambda x: f"redis://127.0.0.1:6379/0?stream={x}", redis_drop),
        "amqp": (
            lambda x: f"amqp://guest:guest@127.0.0.1:5672/%2F?queue={x}&declare=declare",
            amqp_drop,
        ),
    }


def by_relay(outbox: str, to: str, n: int) -> float:
    began = time.perf_counter()
    done = relay(f"{DSN}?queue={outbox}", to, drain=True)
    seconds = time.perf_counter() - began
    assert done.relayed == n, done
    return n / seconds


def by_redrive(outbox: str, to: str, n: int) -> float:
    source = open_receiving(f"{DSN}?queue={outbox}", 30.0, moving=True)
    target = open_raw(to, 30.0, moving=True)
    try:
        began = time.perf_counter()
        r = redrive(source, target, count=n, timeout=5.0, retry_seconds=30.0)
        seconds = time.perf_counter() - began
    finally:
        target.close()
        source.close()
    assert r.moved == n, r
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--to", default="redis,amqp", help="targets, comma-separated")
    args = ap.parse_args()
    n = args.messages
    known = targets()
    runs: dict[str, list[float]] = {}
    tables: list[str] = []
    queues: list[tuple[str, str]] = []

    def run(label: str, fn: Callable[..., float], *a: Any) -> None:
        gc.collect()
        runs.setdefault(label, []).append(fn(*a))

    try:
        for i in range(args.repeat):
            for to in args.to.split(","):
                url, _ = known[to]
                pair = [f"bench_ob_{uuid.uuid4().hex[:8]}" for _ in range(2)]
                tables.extend(pair)
                raw = f"bench_ob_{uuid.uuid4().hex[:8]}"
                tables.append(raw)
                for t in pair:
                    run("outbox write", fill, t, n)
                run("raw write", fill_raw, raw, n)
                q1, q2 = (f"bench-relay-{uuid.uuid4().hex[:8]}" for _ in range(2))
                queues += [(to, q1), (to, q2)]
                # Alternate which goes first, so neither always meets a warmer server.
                steps = [
                    (f"{to} relay", by_relay, pair[0], url(q1)),
                    (f"{to} redrive", by_redrive, pair[1], url(q2)),
                ]
                for label, fn, table, dst in steps if i % 2 == 0 else steps[::-1]:
                    run(label, fn, table, dst, n)
    finally:
        with psycopg.connect(DSN, autocommit=True) as c:
            for t in tables:
                for suffix in ("", "_dlq"):
                    c.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(
                            sql.Identifier("qchan", t + suffix)
                        )
                    )
        for to, q in queues:
            known[to][1](q)
    m = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{n} messages of about 1 KiB, outbox in PostgreSQL {DSN}\n")
    print("| path | msg/s | µs/msg | vs redrive | target | |")
    print("|---|---:|---:|---:|---|---|")
    w, raw = m["outbox write"], m["raw write"]
    print(
        f"| raw INSERT per message, {PER_TX} per transaction | {raw:,.0f} | {1e6 / raw:.1f} | | | |"
    )
    print(
        f"| outbox write (enqueue on an Outbox), {PER_TX} per transaction | {w:,.0f} "
        f"| {1e6 / w:.1f} | {w / raw:.2f}x raw | | |"
    )
    for to in args.to.split(","):
        relay_rate, redrive_rate = m[f"{to} relay"], m[f"{to} redrive"]
        ratio = relay_rate / redrive_rate
        print(
            f"| outbox -> {to}: qchan redrive | {redrive_rate:,.0f} | {1e6 / redrive_rate:.1f} "
            f"| 1.00x | | |"
        )
        print(
            f"| outbox -> {to}: relay | {relay_rate:,.0f} | {1e6 / relay_rate:.1f} "
            f"| {ratio:.2f}x | >= {TARGET:g}x | {'ok' if ratio >= TARGET else 'below'} |"
        )
    print(f"\nmedian of {args.repeat} runs each, interleaved")


if __name__ == "__main__":
    main()
