"""Kafka throughput: qchan enqueue/dequeue vs raw confluent-kafka, same run, same mock cluster.

Run: `python benchmarks/bench_kafka.py [--messages N] [--repeat R] [--bootstrap H:P]`.
Without --bootstrap it starts librdkafka's mock cluster (tests/support/kafka_mock_cluster.py,
3 brokers) and stops it at the end.

Every run uses a fresh 4-partition topic and the same N objects of about 1 KiB,
encoded by qchan's JSON codec on both sides, with the same four headers
(Category, Source, System, Queue). Producers run with librdkafka's defaults
plus qchan's (idempotent, acks=all, linger.ms=5). Runs alternate raw and qchan
so machine load hits both; each figure is the median of R runs in messages/s.

Produce path:
- raw: `codec.encode` + `produce` + `poll(0)` per message, `flush` at the end.
- raw + reports: the same with an `on_delivery` callback per message, as any
  producer that must know which message failed needs (the plain loop only
  learns that something failed, from `flush`).
- adapter: `codec.encode`, then `KafkaAdapter.send_batch` of max_batch bags
  (no kernel threads): the adapter's own cost.
- hand-off: the raw loop with reports, moved behind a thread hand-off as the
  emitter does it (`out` is a `Chan(500)`; one thread takes what is there in
  one go, encodes and produces): what any design with an emitter thread can
  reach here, with no batching, accounting, retries or dead letters.
- qchan: `enqueue(Item, q)` (at-least-once, unbuffered `out`) until leaving the
  `with` block, i.e. until the broker confirmed everything; and the same with
  `policy=AT_MOST_ONCE` (buffered `out`). The adapter pipelines (up to four
  batches in flight).

Consume path (a topic prefilled with N messages, a new group per run, the clock
starts at the first message so the group join is not counted):
- raw: `consume(500)` + `codec.decode` + `commit(asynchronous=True)` per batch.
- adapter: `receive(500)` + decode + `ack` per batch (no kernel threads); and the same
  with a `Msg` built per message and the acks taken from them: the ceiling of a consume
  path that ran the adapter on the application's thread, with no consumer thread.
- hand-off: the raw loop on a thread of its own, as the listener is: it hands
  each decoded object (with its message) to the application through a
  `Chan(32)`, and commits once per batch after the application's acks came
  back through a second channel. What any design with a listener thread and
  per-message acks can reach here, with no routing or offset bookkeeping.
- qchan: `dequeue(Item, q)` + `ack.send(msg)` per message, until every ack is
  committed.

Kernel only: the same qchan enqueue and dequeue+ack on the embedded broker
(`mem://`, no Kafka), the ceiling any adapter can reach through the kernel.

Each timed run starts after `gc.collect()`, so that no run pays for the
garbage of the one before (the collector stays on while it runs: qchan's
own collections count).

Target (issue 6): qchan >= 0.8x raw on both paths. The last section profiles
the single-threaded adapter loops (cProfile) to show where the Python time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.kafka import MockCluster

from qchan import AT_MOST_ONCE, Chan, ChannelClosed, Queue, connect, dequeue, enqueue
from qchan.adapters.kafka import KafkaAdapter
from qchan.chan import Pipe
from qchan.codec import Codec, codec_for
from qchan.message import Bag, Msg
from qchan.msgspec_codec import MsgspecCodec

TARGET = 0.8
GROUP = {"group.protocol": "consumer"}


@attrs.frozen
class Item:
    """About 1 KiB of JSON once encoded."""

    id: str
    customer: str
    amount: float
    lines: list[str]
    note: str


def make_items(n: int) -> list[Item]:
    return [
        Item(
            id=f"order-{i}",
            customer=f"customer-{i % 97}",
            amount=i * 1.25,
            lines=[f"sku-{i % 13}-{j}" for j in range(12)],
            note="x" * 780,
        )
        for i in range(n)
    ]


CODEC = codec_for(Item)
MSGSPEC: Codec[Item] = MsgspecCodec(Item)
HEADERS = {"Category": "Item", "Source": "bench", "System": "kafka", "Queue": "bench"}


class Bench:
    def __init__(self, bootstrap: str, create: Callable[[str, int], None], n: int) -> None:
        self.bootstrap = bootstrap
        self.create = create
        self.items = make_items(n)
        self.n = n
        size = len(CODEC.encode(self.items[0]))
        print(f"{n} messages of {size} bytes, bootstrap {bootstrap}\n")

    def topic(self, partitions: int = 4) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self.create(name, partitions)
        return name

    def adapter(self, topic: str, **options: Any) -> KafkaAdapter:
        return KafkaAdapter(topic, bootstrap=self.bootstrap, consumer_config=GROUP, **options)

    # -- produce ------------------------------------------------------------

    def produce_raw(self, reports: bool = False) -> float:
        """The raw loop; with `reports`, plus what at-least-once needs: a delivery report
        per message, checked (the plain loop cannot tell which message failed)."""
        topic = self.topic()
        p = Producer(
            {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all"}
        )
        p.produce(topic, b"{}", headers=list(HEADERS.items()))
        assert p.flush(30) == 0  # connected, producer id assigned: like the adapter's warm-up
        headers = list(HEADERS.items())
        encode = CODEC.encode
        failed: list[Any] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(msg)

        extra: dict[str, Any] = {"on_delivery": report} if reports else {}
        began = time.perf_counter()
        for item in self.items:
            while True:
                try:
                    p.produce(topic, encode(item), headers=headers, **extra)
                    break
                except BufferError:
                    p.poll(0.01)
            p.poll(0)
        assert p.flush(60) == 0
        assert not failed
        return self.n / (time.perf_counter() - began)

    def produce_handoff(self) -> float:
        """The raw loop with reports behind a thread hand-off: the ceiling of an emitter."""
        topic = self.topic()
        p = Producer(
            {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all"}
        )
        headers = list(HEADERS.items())
        p.produce(topic, b"{}", headers=headers)
        assert p.flush(30) == 0
        encode = CODEC.encode
        failed: list[Any] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(msg)

        out: Pipe[Item] = Pipe(500)

        def emitter() -> None:
            produce = p.produce
            while True:
                try:
                    first = out.recv()
                except ChannelClosed:
                    return
                for item in [first, *out.recv_many(499)]:
                    while True:
                        try:
                            produce(topic, encode(item), headers=headers, on_delivery=report)
                            break
                        except BufferError:
                            p.poll(0.01)
                p.poll(0)

        thread = threading.Thread(target=emitter)
        began = time.perf_counter()
        thread.start()
        for item in self.items:
            out.send(item)
        out.close()
        thread.join()
        assert p.flush(60) == 0
        assert not failed
        return self.n / (time.perf_counter() - began)

    def produce_adapter(self) -> float:
        a = self.adapter(self.topic())
        a.send_batch([Bag("Item", b"{}", HEADERS)])  # connected
        encode = CODEC.encode
        batch = a.max_batch
        began = time.perf_counter()
        for i in range(0, self.n, batch):
            bags = [Bag("Item", encode(o), HEADERS, id=str(i)) for o in self.items[i : i + batch]]
            assert all(o is None for o in a.send_batch(bags))
        rate = self.n / (time.perf_counter() - began)
        a.close()
        return rate

    def produce_qchan(self, buffered: bool = False) -> float:
        a = self.adapter(self.topic())
        a.send_batch([Bag("Item", b"{}", HEADERS)])  # connected
        q = Queue(a)
        kw: dict[str, Any] = {"policy": AT_MOST_ONCE, "capacity": 4096} if buffered else {}
        began = time.perf_counter()
        with enqueue(Item, q, **kw) as (out, dlq):
            for item in self.items:
                out.send(item)
        rate = self.n / (time.perf_counter() - began)
        assert len(dlq) == 0
        assert q.stats().sent == self.n
        q.close()
        return rate

    def produce_mem(self) -> float:
        """The kernel alone: the same enqueue on the embedded broker (no Kafka at all)."""
        q = connect(f"mem://bench-{uuid.uuid4().hex[:8]}")
        began = time.perf_counter()
        with enqueue(Item, q) as (out, _):
            for item in self.items:
                out.send(item)
        rate = self.n / (time.perf_counter() - began)
        q.close()
        return rate

    # -- consume ------------------------------------------------------------

    def filled(self) -> str:
        # The mock cluster keeps about 5 MB per partition (older records are
        # deleted): enough partitions, filled round robin, that every message stays.
        partitions = max(4, -(-self.n // 3000))
        topic = self.topic(partitions)
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20})
        headers = list(HEADERS.items())
        for i, item in enumerate(self.items):
            while True:
                try:
                    p.produce(topic, CODEC.encode(item), headers=headers, partition=i % partitions)
                    break
                except BufferError:
                    p.poll(0.01)
        assert p.flush(60) == 0
        return topic

    def consumer(self, topic: str, group: str) -> Consumer:
        """A raw consumer of `topic` in a new group, from the start, committing by hand."""
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{group}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **GROUP,
            }
        )
        c.subscribe([topic])
        return c

    def consume_raw(self, topic: str, headers: bool = False, codec: Codec[Item] = CODEC) -> float:
        c = self.consumer(topic, "raw")
        decode = codec.decode
        got = 0
        began = 0.0
        stall = Stall()
        while got < self.n:
            msgs = c.consume(500, 1.0)
            stall.check(len(msgs))
            if msgs and not began:
                began = time.perf_counter()
            for m in msgs:
                if headers:  # what routing by Category needs first
                    m.headers()
                decode(m.value() or b"")
            if msgs:
                c.commit(asynchronous=True)
            got += len(msgs)
        rate = self.n / (time.perf_counter() - began)
        c.close()
        return rate

    def consume_handoff(self, topic: str) -> float:
        """The raw loop behind a thread hand-off, acks coming back: the ceiling of a listener."""
        c = self.consumer(topic, "hand-off")
        decode = CODEC.decode
        rcv: Chan[tuple[Item, Any]] = Chan(32)
        acks: Pipe[Any] = Pipe(self.n)  # never full: the listener reads it between batches
        stall = Stall()

        def listener() -> None:
            got = acked = 0
            while got < self.n:
                msgs = c.consume(500, 0.1)
                stall.check(len(msgs))
                for m in msgs:
                    rcv.send((decode(m.value() or b""), m))
                got += len(msgs)
                done = len(acks.recv_many(self.n))
                if done:
                    c.commit(asynchronous=True)
                    acked += done
            rcv.close()
            while acked < self.n:  # the last acks
                acks.recv(timeout=30)
                acked += 1 + len(acks.recv_many(self.n))
            c.commit(asynchronous=True)

        thread = threading.Thread(target=listener)
        thread.start()
        first = rcv.recv(timeout=60)
        began = time.perf_counter()
        acks.send(first[1])
        for _, m in rcv:
            acks.send(m)
        thread.join()
        rate = self.n / (time.perf_counter() - began)
        c.close()
        return rate

    def consume_adapter(self, topic: str, msgs: bool = False) -> float:
        """The adapter alone, no kernel thread; with `msgs`, also a `Msg` per message and
        the acks taken from them, as a consume path on the caller's thread would."""
        a = self.adapter(topic, group=f"adapter-{uuid.uuid4().hex[:8]}")
        decode = CODEC.decode
        got = 0
        began = 0.0
        stall = Stall()
        while got < self.n:
            bags = a.receive(500, 1.0)
            stall.check(len(bags))
            if bags and not began:
                began = time.perf_counter()
            if msgs:
                received = [
                    Msg(decode(b.body), b.category, b.digest, b.attributes, None, None, b)
                    for b in bags
                ]
                a.ack([m.bag for m in received if m.bag is not None])
            else:
                for b in bags:
                    decode(b.body)
                a.ack(bags)
            got += len(bags)
        rate = self.n / (time.perf_counter() - began)
        a.close()
        return rate

    def consume_qchan(self, topic: str, codec: Codec[Item] = CODEC) -> float:
        q = Queue(self.adapter(topic, group=f"qchan-{uuid.uuid4().hex[:8]}"))
        began = 0.0
        with dequeue(Item, q, codec=codec) as (rcv, ack):
            for i in range(self.n):
                m = rcv.recv(timeout=30)
                if i == 0:
                    began = time.perf_counter()
                ack.send(m)
            deadline = time.monotonic() + 30
            while q.stats().acked < self.n and time.monotonic() < deadline:
                time.sleep(0.001)  # a benchmark polling a counter, not a test
        rate = self.n / (time.perf_counter() - began)
        q.close()
        return rate


class Stall:
    """Fail a consume loop that received nothing for 30 s instead of hanging."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def check(self, n: int) -> None:
        now = time.monotonic()
        if n:
            self.last = now
        elif now - self.last > 30:
            raise RuntimeError("no message for 30 s")


def consume_mem(bench: Bench) -> float:
    """The kernel alone: dequeue+ack on the embedded broker, prefilled."""
    q = connect(f"mem://bench-{uuid.uuid4().hex[:8]}")
    with enqueue(Item, q, policy=AT_MOST_ONCE, capacity=4096) as (out, _):
        for item in bench.items:
            out.send(item)
    began = time.perf_counter()
    with dequeue(Item, q) as (rcv, ack):
        for _ in range(bench.n):
            ack.send(rcv.recv(timeout=30))
        while q.stats().acked < bench.n:
            time.sleep(0.001)  # a benchmark polling a counter, not a test
    rate = bench.n / (time.perf_counter() - began)
    q.close()
    return rate


def median(runs: list[float]) -> float:
    return statistics.median(runs)


def row(label: str, rate: float, raw: float, target: float | None) -> str:
    ratio = rate / raw
    verdict = "" if target is None else ("ok" if ratio >= target else "below")
    tgt = "" if target is None else f">= {target:g}x"
    return f"| {label} | {rate:,.0f} | {1e6 / rate:.1f} | {ratio:.2f}x | {tgt} | {verdict} |"


def profile(label: str, fn: Callable[[], Any], top: int = 12) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    print(f"\n{label} (cProfile, by own time):\n")
    print("```")
    print("\n".join(lines[start : start + top + 1]))
    print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bootstrap", help="a running Kafka (default: start the mock cluster)")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    cluster: MockCluster | None = None
    if args.bootstrap:
        bootstrap = args.bootstrap

        def create(topic: str, partitions: int) -> None:
            from confluent_kafka.admin import AdminClient
            from confluent_kafka.cimpl import NewTopic

            admin = AdminClient({"bootstrap.servers": bootstrap})
            admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    else:
        cluster = MockCluster(Path("/tmp") / f"bench-kafka-{uuid.uuid4().hex[:6]}.log")
        bootstrap = cluster.bootstrap

        def create(topic: str, partitions: int) -> None:
            assert cluster is not None
            cluster.create_topic(topic, partitions)

    try:
        bench = Bench(bootstrap, create, args.messages)
        runs: dict[str, list[float]] = {}

        def run(label: str, fn: Callable[..., float], *args: Any) -> None:
            gc.collect()
            runs.setdefault(label, []).append(fn(*args))

        for _ in range(args.repeat):
            run("produce raw", bench.produce_raw)
            run("produce raw reports", bench.produce_raw, True)
            run("produce hand-off", bench.produce_handoff)
            run("produce adapter", bench.produce_adapter)
            run("produce qchan", bench.produce_qchan)
            run("produce qchan buffered", bench.produce_qchan, True)
            run("produce mem", bench.produce_mem)
            topic = bench.filled()
            run("consume raw", bench.consume_raw, topic)
            run("consume raw headers", bench.consume_raw, topic, True)
            run("consume raw headers msgspec", bench.consume_raw, topic, True, MSGSPEC)
            run("consume hand-off", bench.consume_handoff, topic)
            run("consume adapter", bench.consume_adapter, topic)
            run("consume adapter msgs", bench.consume_adapter, topic, True)
            run("consume qchan", bench.consume_qchan, topic)
            run("consume qchan msgspec", bench.consume_qchan, topic, MSGSPEC)
            run("consume mem", consume_mem, bench)
        m = {k: median(v) for k, v in runs.items()}
        pr, cr = m["produce raw"], m["consume raw"]
        print("| path | msg/s | µs/msg | vs raw | target | |")
        print("|---|---:|---:|---:|---|---|")
        print(row("produce: raw confluent-kafka loop", m["produce raw"], m["produce raw"], None))
        print(
            row(
                "produce: raw loop + a delivery report per message",
                m["produce raw reports"],
                m["produce raw"],
                None,
            )
        )
        print(
            row(
                "produce: raw loop + reports behind a thread hand-off (emitter ceiling)",
                m["produce hand-off"],
                m["produce raw"],
                None,
            )
        )
        print(row("produce: adapter send_batch only", m["produce adapter"], m["produce raw"], None))
        print(row("produce: qchan enqueue", m["produce qchan"], m["produce raw"], TARGET))
        print(
            row(
                "produce: qchan enqueue, AT_MOST_ONCE",
                m["produce qchan buffered"],
                m["produce raw"],
                TARGET,
            )
        )
        print(row("produce: qchan enqueue on mem:// (kernel only)", m["produce mem"], pr, None))
        print(row("consume: raw consume+commit loop", m["consume raw"], m["consume raw"], None))
        print(
            row(
                "consume: raw loop that also reads headers() (qchan routes by Category)",
                m["consume raw headers"],
                m["consume raw"],
                None,
            )
        )
        print(
            row(
                "consume: raw loop behind a thread hand-off, acks back (listener ceiling)",
                m["consume hand-off"],
                m["consume raw"],
                None,
            )
        )
        print(
            row("consume: adapter receive+ack only", m["consume adapter"], m["consume raw"], None)
        )
        print(
            row(
                "consume: adapter + a Msg per message, one thread (in-thread consume ceiling)",
                m["consume adapter msgs"],
                m["consume raw"],
                None,
            )
        )
        print(row("consume: qchan dequeue+ack", m["consume qchan"], m["consume raw"], TARGET))
        print(
            row(
                "consume: qchan dequeue+ack, against the raw loop that reads headers",
                m["consume qchan"],
                m["consume raw headers"],
                0.75,
            )
        )
        print(
            row(
                "consume: the same with MsgspecCodec, against the headers loop decoding with it",
                m["consume qchan msgspec"],
                m["consume raw headers msgspec"],
                0.6,
            )
        )
        print(row("consume: qchan dequeue+ack on mem:// (kernel only)", m["consume mem"], cr, None))
        print(f"\nmedian of {args.repeat} runs each, {args.messages} messages per run")

        if not args.no_profile:
            profile("produce: adapter send_batch loop", bench.produce_adapter)
            topic = bench.filled()
            profile("consume: adapter receive+ack loop", lambda: bench.consume_adapter(topic))
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
