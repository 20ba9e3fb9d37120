"""End-to-end typed round trip over the embedded broker, beside its cost floor, same run.

enqueue -> mem:// -> dequeue -> ack of N small attrs objects, in messages per
second and p50/p99 latency (send to receive), against:
- the codec alone: encode + decode of the same objects with the same codec;
- a bare queue.Queue(1024) hand-off of the same objects between two threads.
Then peak RSS while a producer outruns a slow consumer, for N and 10 N
messages, each in a fresh process: flat means backpressure, not a buffer.
And the decode of one 1 KiB object by each codec: JSONCodec (cattrs on orjson),
MsgspecCodec, and a raw msgspec.json.Decoder of the same type, interleaved runs.

Run: python benchmarks/bench_embedded.py [--items 100000] [--repeat 3] [--decode-only]
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter as json_converter

from qchan import (
    AT_LEAST_ONCE,
    AT_MOST_ONCE,
    JSONCodec,
    MsgspecCodec,
    Policy,
    Queue,
    dequeue,
    enqueue,
)
from qchan.adapters.embedded import EmbeddedAdapter
from qchan.codec import default_converter
from qchan.retry import Exponential

RSS_FLAT = 1.10  # the larger run's peak RSS within this of the smaller's (issue 18)


@attrs.frozen
class Small:
    id: int
    name: str
    amount: float
    tags: list[str]


@attrs.frozen
class Part:
    sku: str
    quantity: int
    price: decimal.Decimal


@attrs.frozen
class Item:
    """About 1 KiB of JSON: nested objects, a list, a dict, a datetime, decimals."""

    id: str
    customer: str
    created: datetime.datetime
    parts: list[Part]
    labels: dict[str, str]
    note: str | None = None
    priority: int = 0


ITEM = Item(
    "order-000123",
    "customer-4567",
    datetime.datetime(2026, 12, 3, 8, 9, 10, tzinfo=datetime.UTC),
    [Part(f"sku-{i:04d}", i + 1, decimal.Decimal(f"{i}.99")) for i in range(12)],
    {f"label{i}": f"value number {i}" for i in range(8)},
    "leave at the door, ring twice" * 3,
)


def decode_rates(runs: int, n: int = 20_000) -> list[tuple[str, float]]:
    """Median microseconds per decode of ITEM, per decoder; the runs interleave."""
    import msgspec  # qchan[fast]

    data = JSONCodec(Item).encode(ITEM)
    decoders: list[tuple[str, Callable[[bytes], Any]]] = [
        (f"JSONCodec (cattrs + {backend_name()})", JSONCodec(Item).decode),
        ("MsgspecCodec", MsgspecCodec(Item).decode),
        ("raw msgspec.json.Decoder(Item)", msgspec.json.Decoder(Item).decode),
    ]
    for _, dec in decoders:
        assert dec(data) == ITEM
    times: dict[str, list[float]] = {label: [] for label, _ in decoders}
    for _ in range(runs):
        for label, dec in decoders:
            t0 = time.perf_counter()
            for _ in range(n):
                dec(data)
            times[label].append((time.perf_counter() - t0) / n * 1e6)
    print(f"decode of one {len(data):,}-byte object, median of {runs} interleaved runs of {n:,}")
    return [(label, statistics.median(t)) for label, t in times.items()]


def backend_name() -> str:
    return "orjson" if type(default_converter()).__module__.endswith("orjson") else "json"


def print_decode_table(runs: int) -> None:
    rows = decode_rates(runs)
    raw = rows[-1][1]
    print()
    print("| decoder | µs per decode | vs raw msgspec |")
    print("|---|---:|---:|")
    for label, us in rows:
        print(f"| {label} | {us:.2f} | {us / raw:.2f}x |")


def objects(n: int) -> list[Small]:
    return [Small(i, f"item-{i}", i * 0.5, ["a", "b"]) for i in range(n)]


def codec_rate(objs: list[Small], conv: cattrs.Converter) -> float:
    codec: JSONCodec[Small] = JSONCodec(Small, conv)
    enc, dec = codec.encode, codec.decode
    t0 = time.perf_counter()
    for o in objs:
        dec(enc(o))
    return len(objs) / (time.perf_counter() - t0)


def queue_rate(objs: list[Small]) -> float:
    q: queue.Queue[Any] = queue.Queue(1024)
    done = object()

    def consume() -> None:
        get = q.get
        while get() is not done:
            pass

    t = threading.Thread(target=consume)
    t0 = time.perf_counter()
    t.start()
    put = q.put
    for o in objs:
        put(o)
    put(done)
    t.join()
    return len(objs) / (time.perf_counter() - t0)


def qchan_rate(
    objs: list[Small], conv: cattrs.Converter, policy: Policy
) -> tuple[float, float, float]:
    """(messages/s, p50 ms, p99 ms) for the whole round trip, acks applied."""
    n = len(objs)
    q = Queue(EmbeddedAdapter(f"bench-{uuid.uuid4().hex[:8]}"), poll_wait=0.2)
    sent_at = [0.0] * n
    lat = [0.0] * n

    def produce() -> None:
        with enqueue(Small, q, policy=policy, converter=conv) as (out, _):
            send, clock = out.send, time.perf_counter
            for o in objs:
                sent_at[o.id] = clock()
                send(o)

    t0 = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    with dequeue(Small, q, converter=conv, capacity=256) as (rcv, ack):
        recv, send_ack, clock = rcv.recv, ack.send, time.perf_counter
        for _ in range(n):
            m = recv(timeout=30)
            lat[m.object.id] = clock() - sent_at[m.object.id]
            send_ack(m)
    done = threading.Event()
    while q.stats().acked < n:  # every ack applied at the broker
        done.wait(0.001)
    elapsed = time.perf_counter() - t0
    producer.join()
    q.close()
    lat.sort()
    return n / elapsed, statistics.median(lat) * 1e3, lat[int(n * 0.99)] * 1e3


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: VmHWM, the high-water mark of its own memory.

    Not `getrusage().ru_maxrss`: Linux keeps that across fork and exec, so a child
    started by a big parent reports the parent's size (a 300 MiB parent's fresh
    `python -c` child: ru_maxrss 313 MiB, VmHWM 13 MiB).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best there is


def rss_child(n: int) -> None:
    """In a fresh process: a fast producer, a consumer 10x slower per batch; print peak RSS."""
    q = Queue(
        EmbeddedAdapter(f"rss-{uuid.uuid4().hex[:8]}", max_depth=5_000),
        retry=Exponential(base=0.001, cap=0.05, max_attempts=None, max_elapsed=None),
        poll_wait=0.2,
    )

    def produce() -> None:
        with enqueue(Small, q, policy=AT_MOST_ONCE, capacity=1024) as (out, _):
            for i in range(n):
                out.send(Small(i, f"item-{i}", 0.5, ["a"]))

    p = threading.Thread(target=produce)
    p.start()
    pause = threading.Event()
    with dequeue(Small, q, capacity=256) as (rcv, ack):
        for i in range(n):
            ack.send(rcv.recv(timeout=60))
            if i % 1000 == 0:
                pause.wait(0.002)  # the slow consumer
    p.join()
    q.close()
    print(peak_rss_kib())


def peak_rss_mib(n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-rss", action="store_true", help="skip the memory runs")
    ap.add_argument("--decode-only", action="store_true", help="only the 1 KiB decode table")
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    if args.decode_only:
        print_decode_table(max(5, args.repeat))
        return 0
    objs = objects(args.items)
    r = args.repeat

    def best(f: Callable[[], float]) -> float:
        return max(f() for _ in range(r))

    def best3(f: Callable[[], tuple[float, float, float]]) -> tuple[float, float, float]:
        return max((f() for _ in range(r)), key=lambda t: t[0])

    fast = default_converter()
    backend = "orjson" if type(fast).__module__.endswith("orjson") else "json"
    codecs = [("stdlib json", json_converter())]
    if backend == "orjson":
        codecs.append(("orjson", fast))
    print(
        f"embedded round trip, {args.items:,} small attrs objects, best of {r}, "
        f"Python {sys.version.split()[0]}"
    )
    print()
    print(f"bare queue.Queue(1024) hand-off: {best(lambda: queue_rate(objs)):,.0f} objects/s")
    print()
    print(
        "| codec | codec only enc+dec/s | policy | qchan msg/s | p50 ms | p99 ms | "
        "qchan / codec | target |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for label, conv in codecs:
        floor = best(lambda c=conv: codec_rate(objs, c))  # type: ignore[misc]
        for policy in (AT_LEAST_ONCE, AT_MOST_ONCE):
            rate, p50, p99 = best3(lambda c=conv, p=policy: qchan_rate(objs, c, p))  # type: ignore[misc]
            print(
                f"| {label} | {floor:,.0f} | {policy.value} | {rate:,.0f} | {p50:.2f} | "
                f"{p99:.2f} | {rate / floor:.2f}x | >= 0.5x |"
            )
    print()
    print_decode_table(max(5, r))
    if not args.no_rss:
        print()
        print("peak RSS, fast producer and slow consumer (embedded max_depth=5000):")
        print()
        print("| messages | peak RSS MiB | vs the smaller run | target |")
        print("|---:|---:|---:|---|")
        sizes = (args.items, 10 * args.items)
        peaks = [peak_rss_mib(n) for n in sizes]
        for n, peak in zip(sizes, peaks, strict=True):
            target = f"<= {RSS_FLAT:.2f}x" if n != sizes[0] else ""  # flat: no buffer grows
            print(f"| {n:,} | {peak:.1f} | {peak / peaks[0]:.2f}x | {target} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
