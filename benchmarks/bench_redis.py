"""Redis Streams throughput: qchan against raw redis-py, same Redis, same run, 1 KiB objects.

Run: `python benchmarks/bench_redis.py [--messages N] [--repeat R]` (Redis on
127.0.0.1:6379). Every run uses a fresh stream, deleted afterwards; raw and qchan
runs alternate so that the machine's load hits both, and each figure is the median.

- produce, raw: `codec.encode` + `XADD` of the same fields qchan writes (body and the
  four wire attributes), pipelined in batches of 100 (the adapter's `max_batch`).
- produce, qchan: `enqueue(Item, q)` (at-least-once: unbuffered `out`) until leaving
  the `with` block, i.e. until Redis has every message.
- consume, raw: `XREADGROUP COUNT 100` + `codec.decode` of each body + one `XACK` per
  batch, on a prefilled stream.
- consume, qchan: `dequeue(Item, q)` + `ack.send(msg)` per message, until every ack
  reached Redis.

Target (issue 27): qchan >= 0.8x raw on both paths. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from typing import Any

import attrs
import redis

from qchan import Queue, dequeue, enqueue
from qchan.adapters.redis import from_url
from qchan.codec import JSONCodec

HOST, PORT = "127.0.0.1", 6379
BATCH = 100
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


def url(stream: str) -> str:
    return f"redis://{HOST}:{PORT}/0?stream={stream}"


def fields(stream: str) -> dict[str, str]:
    return {"Category": "Item", "Source": "bench", "System": "redis", "Queue": stream}


def produce_raw(r: redis.Redis, stream: str, objs: list[Item]) -> float:
    encode, attributes = CODEC.encode, fields(stream)
    began = time.perf_counter()
    for start in range(0, len(objs), BATCH):
        pipe = r.pipeline(transaction=False)
        for obj in objs[start : start + BATCH]:
            pipe.xadd(stream, {"body": encode(obj), **attributes})
        pipe.execute()
    return len(objs) / (time.perf_counter() - began)


def produce_qchan(stream: str, objs: list[Item]) -> float:
    q = Queue(from_url(url(stream)), agent="bench")
    began = time.perf_counter()
    with enqueue(Item, q) as (out, dlq):
        for obj in objs:
            out.send(obj)
    rate = len(objs) / (time.perf_counter() - began)
    assert len(dlq) == 0
    q.close()
    return rate


def consume_raw(r: redis.Redis, stream: str, n: int) -> float:
    group = f"raw-{uuid.uuid4().hex[:6]}"
    r.xgroup_create(stream, group, id="0")
    decode = CODEC.decode
    got = 0
    began = time.perf_counter()
    while got < n:
        resp: Any = r.xreadgroup(group, "me", {stream: ">"}, count=BATCH, block=1000)
        ids = []
        for _, entries in resp or ():
            for entry_id, f in entries:
                decode(f[b"body"])
                ids.append(entry_id)
        if ids:
            r.xack(stream, group, *ids)
            got += len(ids)
    return n / (time.perf_counter() - began)


def consume_qchan(stream: str, n: int) -> float:
    q = Queue(from_url(url(stream), group=f"qchan-{uuid.uuid4().hex[:6]}"))
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
    r = redis.Redis(HOST, PORT)
    runs: dict[str, list[float]] = {}

    def run(label: str, fn: Any, *a: Any) -> None:
        gc.collect()
        runs.setdefault(label, []).append(fn(*a))

    streams: list[str] = []
    try:
        for _ in range(args.repeat):
            s1, s2 = (f"bench-{uuid.uuid4().hex[:8]}" for _ in range(2))
            streams += [s1, s2]
            run("produce raw", produce_raw, r, s1, objs)
            run("produce qchan", produce_qchan, s2, objs)
            run("consume raw", consume_raw, r, s1, n)
            run("consume qchan", consume_qchan, s2, n)
            r.delete(s1, s2)
    finally:
        if streams:
            r.delete(*streams)
        r.close()
    m = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{n} messages of {len(CODEC.encode(objs[0]))} bytes, Redis {HOST}:{PORT}\n")
    print("| path | msg/s | µs/msg | vs raw | target | |")
    print("|---|---:|---:|---:|---|---|")
    print(row("produce: raw redis-py, pipelined XADD", m["produce raw"], m["produce raw"], None))
    print(row("produce: qchan enqueue", m["produce qchan"], m["produce raw"], TARGET))
    print(row("consume: raw XREADGROUP + XACK", m["consume raw"], m["consume raw"], None))
    print(row("consume: qchan dequeue+ack", m["consume qchan"], m["consume raw"], TARGET))
    print(f"\nmedian of {args.repeat} runs each, interleaved")


if __name__ == "__main__":
    main()
