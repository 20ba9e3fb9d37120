"""qchan beside kombu and faststream; idle consumer CPU; RSS under backpressure.

Run: `python benchmarks/bench_peers.py [--messages N] [--slow M] [--repeat R] [--rss N N]
[--only throughput idle rss]`. Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); starts
librdkafka's mock cluster (tests/support/kafka.py's MockCluster, as bench_kafka.py does)
and moto (tests/support/sqs.py's MotoServer, as bench_sqs.py does), and stops them.

Throughput. The messages are bench_kafka.py's: N objects of about 1 KiB of JSON. Every
row is timed from its first message to its last confirm (publishing) or ack (consuming);
connections, declarations and consumer-group joins happen before the clock starts.
The cases run interleaved (A, B, C, ..., A, B, C, ...) and each figure is the median of
R runs, in messages per second and as a ratio to the raw client of the same run.
Rows whose every message waits for its own round trip (a confirm, a flush or a
commit per message) send `--slow` messages instead of N: their rate does not grow
with N, and N of them would take minutes.

RabbitMQ (a fresh quorum queue per run, declared as qchan's adapter declares it;
consumers at prefetch 500, qchan's default):
- raw pika: `SelectConnection` with confirms on, 500 publishes in flight (confirms
  pipelined); consuming, `basic_consume` + `basic_ack` per message, the body decoded.
- qchan: `enqueue(Item, q)` (at-least-once) until the `with` block is left; `dequeue`
  + `ack.send` per message until the broker has every ack; `serve(handler, workers=4)`.
- kombu: `Connection(transport_options={"confirm_publish": True})` and
  `Producer.publish` per message (py-amqp then waits for each confirm; kombu has no
  batched publish on py-amqp); consuming, `Consumer(callbacks=...)` at prefetch 500,
  `message.ack()` in the callback, `drain_events` until N are acked.
- faststream: `RabbitBroker.publish` (aio-pika with publisher confirms, its default),
  awaited one by one as its docs show, and 500 at a time (`asyncio.gather`, confirms
  pipelined); consuming, a `FastStream` app with a subscriber whose handler takes a
  pydantic model of Item, `AckPolicy.ACK` (ack after the handler; on RabbitMQ that is
  the default, REJECT_ON_ERROR, which acks the same way), stopped once N are handled.

Kafka (librdkafka's mock cluster, 3 brokers; producers idempotent with acks=all):
- raw confluent-kafka and qchan: bench_kafka.py's own runs (produce with a delivery
  report per message; `consume(500)` + commit per batch; `enqueue`; `dequeue` + ack).
- kombu: the `confluentkafka://` transport, `Producer.publish` (it produces and
  flushes each message) and `Consumer` + `message.ack()` (a synchronous commit per
  message). It consumes what it published (kombu wraps each message in its envelope).
- faststream: `KafkaBroker` on aiokafka (`faststream[kafka]`) and on confluent-kafka
  (`faststream[confluent]`): `publish_batch` of 500 messages, awaited (the batched
  publish faststream offers); consuming, an app with a subscriber at `AckPolicy.ACK`
  (commit after each handled message; faststream's Kafka default, ACK_FIRST, is
  auto-commit, which acks before the handler ran).
FastStream logs each message at INFO by default; the brokers here log at DEBUG
(`log_level=logging.DEBUG`), so no row pays for a log line per message. aiokafka's
producer gets `max_batch_size=1 MiB` (its 16 KiB default holds 14 of these messages,
and a larger batch is refused); the confluent one `allow_auto_create_topics=False`
(the topics exist, and the mock cluster has no controller to create them).

Idle consumer CPU: for mem://, amqp://, kafka:// and sqs://, a fresh process opens
`dequeue` on an empty queue, waits 2 s, then measures its own CPU time
(`time.process_time`) over 10 s with nothing to receive, in % of one core
(target < 1%); over target, the CPU time of each of its threads is shown.

RSS under backpressure: a fast producer process and a slow consumer process
(`enqueue` and `dequeue` + ack) on one RabbitMQ quorum queue held to 5,000
messages (`x-max-length`, publishes beyond it refused, so the producer waits on
the consumer, as mem://'s `max_depth` does in bench_embedded.py), for each size of
--rss; peak RSS of each process. mem:// is bench_embedded.py's table (one process, the
same sizes in `make bench`). Target: flat, the larger run's peak within 1.10x of the
smaller's (bench_embedded.RSS_FLAT). The slow consumer takes about 4,000 msg/s here,
so 1,000,000 messages take over 4 minutes: `make bench` runs 100,000 and 500,000.
Peak RSS is each process's VmHWM (see bench_embedded.peak_rss_kib).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import attrs
import pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_embedded import RSS_FLAT, peak_rss_kib
from bench_kafka import CODEC, HEADERS, Item, Stall, make_items
from bench_kafka import Bench as KafkaBench
from bench_rabbitmq import fresh_queue, raw_publish_pipelined
from bench_serve import Handler, wait_acked
from support.kafka import MockCluster
from support.sqs import MotoServer, dummy_aws_env

from qchan import AT_MOST_ONCE, Queue, connect, dequeue, enqueue, serve
from qchan.adapters.rabbitmq import from_url
from qchan.retry import Exponential

HOST, PORT = "127.0.0.1", 5672
AMQP = f"amqp://guest:guest@{HOST}:{PORT}/%2F"
KOMBU_AMQP = f"amqp://guest:guest@{HOST}:{PORT}//"
PARAMS = pika.ConnectionParameters(HOST, PORT)
PREFETCH = 500  # qchan's default prefetch; every RabbitMQ consumer here uses it
BATCH = 500  # publishes in flight (raw pika, faststream gathered, faststream Kafka batches)
AMQP_HEADERS = {**HEADERS, "System": "amqp"}
IDLE_SETTLE, IDLE_SPAN, IDLE_TARGET = 2.0, 10.0, 1.0  # s, s, % of a core
RSS_DEPTH = 5_000

Rate = float | str  # msg/s, or why the row could not run
# FastStream's own logger writes to stdout, where the tables go: its warnings go to stderr.
FASTSTREAM_LOG = logging.getLogger("bench_peers.faststream")


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _faststream_missing() -> str | None:
    try:
        import faststream  # noqa: F401
    except ImportError:
        return "faststream not installed (the `bench` extra)"
    return None


def _kombu_missing() -> str | None:
    try:
        import kombu  # noqa: F401
    except ImportError:
        return "kombu not installed (the `bench` extra)"
    return None


def run_async(coro: Coroutine[Any, Any, float]) -> float:
    return asyncio.run(coro)


def model_type() -> Any:
    """Item as a pydantic model, the type a faststream handler declares."""
    import pydantic

    class ItemModel(pydantic.BaseModel):
        id: str
        customer: str
        amount: float
        lines: list[str]
        note: str

    return ItemModel


# ---- RabbitMQ ----------------------------------------------------------------------


class KombuAcker:
    """A kombu consumer callback: acks each message, counts them, notes the first's time."""

    def __init__(self) -> None:
        self.seen = 0
        self.began = 0.0

    def __call__(self, body: Any, message: Any) -> None:
        if not self.seen:
            self.began = time.perf_counter()
        message.ack()
        self.seen += 1


class Rabbit:
    def __init__(self, n: int, slow: int) -> None:
        self.items = make_items(n)
        self.n, self.slow = n, slow

    def props(self) -> Any:
        return pika.BasicProperties(
            content_type="application/json", headers=AMQP_HEADERS, delivery_mode=2
        )

    def fill(self, queue: str, n: int | None = None) -> None:
        self.pika_publish(queue, n or self.n)

    # -- publish, each returns msg/s from the first publish to the last confirm --

    def pika_publish(self, queue: str, n: int | None = None) -> float:
        """Confirms on, BATCH publishes in flight, encoding included."""
        items, encode, props = self.items, CODEC.encode, self.props()
        return raw_publish_pipelined(
            queue, n or self.n, message=lambda i: (encode(items[i]), props)
        )

    def qchan_publish(self, queue: str) -> float:
        with connect(f"{AMQP}?queue={queue}") as q:
            with enqueue(Item, q) as (out, dlq):
                out.send(self.items[0])  # connected, declared
                began = time.perf_counter()
                for item in self.items[1:]:
                    out.send(item)
            rate = (self.n - 1) / (time.perf_counter() - began)
            assert len(dlq) == 0
        return rate

    def kombu_publish(self, queue: str) -> Rate:
        if why := _kombu_missing():
            return why
        import kombu

        items = self.items[: self.slow]
        with kombu.Connection(KOMBU_AMQP, transport_options={"confirm_publish": True}) as conn:
            producer = conn.Producer(serializer="json")
            kw: dict[str, Any] = {"routing_key": queue, "headers": AMQP_HEADERS}
            producer.publish(attrs.asdict(items[0]), **kw)  # connected
            began = time.perf_counter()
            for item in items[1:]:
                producer.publish(attrs.asdict(item), **kw)
            return (len(items) - 1) / (time.perf_counter() - began)

    def faststream_publish(self, queue: str, together: int) -> Rate:
        if why := _faststream_missing():
            return why
        from faststream.rabbit import RabbitBroker

        items = self.items if together > 1 else self.items[: self.slow]

        async def run() -> float:
            broker = RabbitBroker(AMQP, logger=FASTSTREAM_LOG, log_level=logging.DEBUG)
            async with broker:
                await broker.publish(attrs.asdict(items[0]), queue=queue, headers=AMQP_HEADERS)
                began = time.perf_counter()
                if together == 1:
                    for item in items[1:]:
                        await broker.publish(attrs.asdict(item), queue=queue, headers=AMQP_HEADERS)
                else:
                    for i in range(1, len(items), together):
                        await asyncio.gather(
                            *(
                                broker.publish(attrs.asdict(o), queue=queue, headers=AMQP_HEADERS)
                                for o in items[i : i + together]
                            )
                        )
                return (len(items) - 1) / (time.perf_counter() - began)

        return run_async(run())

    # -- consume, each on a queue filled with N, msg/s from the first message to the last ack --

    def pika_consume(self, queue: str) -> float:
        conn = pika.BlockingConnection(PARAMS)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=PREFETCH)
        decode, n = CODEC.decode, self.n
        seen, began = 0, 0.0

        def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
            nonlocal seen, began
            if not seen:
                began = time.perf_counter()
            decode(body)
            ch.basic_ack(method.delivery_tag)
            seen += 1
            if seen >= n:
                ch.stop_consuming()

        ch.basic_consume(queue, on_message)
        ch.start_consuming()
        rate = n / (time.perf_counter() - began)
        conn.close()
        return rate

    def qchan_consume(self, queue: str) -> float:
        with connect(f"{AMQP}?queue={queue}") as q, dequeue(Item, q) as (rcv, ack):
            ack.send(rcv.recv(timeout=30))
            began = time.perf_counter()
            for _ in range(self.n - 1):
                ack.send(rcv.recv(timeout=30))
            wait_acked(q, self.n)
            return self.n / (time.perf_counter() - began)

    def qchan_serve(self, queue: str) -> float:
        return serve_rate(connect(f"{AMQP}?queue={queue}"), self.n)

    def kombu_consume(self, queue: str) -> Rate:
        if why := _kombu_missing():
            return why
        import kombu

        n, acker = self.n, KombuAcker()
        with kombu.Connection(KOMBU_AMQP) as conn:
            kq = kombu.Queue(queue, no_declare=True)  # declared before, as qchan declares it
            with conn.Consumer(kq, callbacks=[acker], prefetch_count=PREFETCH):
                while acker.seen < n:
                    conn.drain_events(timeout=30)
            return n / (time.perf_counter() - acker.began)

    def faststream_consume(self, queue: str) -> Rate:
        if why := _faststream_missing():
            return why
        from faststream import AckPolicy, FastStream
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        return run_async(
            faststream_app(
                lambda: RabbitBroker(
                    AMQP,
                    logger=FASTSTREAM_LOG,
                    log_level=logging.DEBUG,
                    default_channel=Channel(prefetch_count=PREFETCH),
                ),
                lambda b, h: b.subscriber(
                    RabbitQueue(queue, declare=False), ack_policy=AckPolicy.ACK
                )(h),
                FastStream,
                self.n,
            )
        )


async def faststream_app(
    make_broker: Callable[[], Any],
    subscribe: Callable[[Any, Any], Any],
    app_type: Callable[..., Any],
    n: int,
) -> float:
    """A FastStream app whose one handler counts; it stops once n were handled."""
    item_model = model_type()
    broker = make_broker()
    app = app_type(broker, logger=None)
    seen, began, ended = 0, 0.0, 0.0

    async def handle(item: Any) -> None:
        nonlocal seen, began, ended
        seen += 1
        if seen == 1:
            began = time.perf_counter()
        if seen == n:
            ended = time.perf_counter()
            app.exit()

    # The model is made at run time: faststream reads the handler's annotations (which
    # `from __future__ import annotations` leaves as strings) to decode and validate.
    handle.__annotations__ = {"item": item_model, "return": None}
    subscribe(broker, handle)
    await app.run(log_level=logging.DEBUG)
    if seen < n:
        raise RuntimeError(f"faststream handled {seen} of {n}")
    return n / (ended - began)


def serve_rate(q: Queue, n: int) -> float:
    """serve(workers=4) with bench_serve.py's handler, from the first handled to the n-th ack."""
    stop = threading.Event()
    handler = Handler(n)
    ended: list[float] = []

    def watch() -> None:
        handler.all_in.wait()
        wait_acked(q, n)
        ended.append(time.perf_counter())
        stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    served = serve(handler, Item, q, workers=4, stop=stop, signals=())
    watcher.join(5)
    if served.handled < n or not ended:
        raise RuntimeError(f"serve handled {served.handled} of {n}")
    return n / (ended[0] - handler.first)


# ---- Kafka -------------------------------------------------------------------------


class Kafka:
    def __init__(self, cluster: MockCluster, n: int, slow: int) -> None:
        self.cluster = cluster
        self.bench = KafkaBench(cluster.bootstrap, cluster.create_topic, n)
        self.items = self.bench.items
        self.n, self.slow = n, slow
        self.kombu_topic = ""  # what the last kombu publish filled

    def topic(self) -> str:
        return self.bench.topic(max(4, -(-self.n // 3000)))  # the mock keeps ~5 MB a partition

    def qchan_serve(self, topic: str) -> float:
        q = Queue(self.bench.adapter(topic, group=f"serve-{uuid.uuid4().hex[:8]}"))
        return serve_rate(q, self.n)

    def kombu_connection(self) -> Any:
        import kombu

        first = self.cluster.bootstrap.split(",")[0]
        return kombu.Connection(f"confluentkafka://{first}")

    def kombu_publish(self) -> Rate:
        if why := _kombu_missing():
            return why
        topic = self.bench.topic(4)
        items = self.items[: self.slow]
        with self.kombu_connection() as conn:
            producer = conn.Producer(serializer="json")
            producer.publish(attrs.asdict(items[0]), routing_key=topic, headers=HEADERS)
            began = time.perf_counter()
            for item in items[1:]:
                producer.publish(attrs.asdict(item), routing_key=topic, headers=HEADERS)
            rate = (len(items) - 1) / (time.perf_counter() - began)
        self.kombu_topic = topic
        return rate

    def kombu_consume(self) -> Rate:
        if why := _kombu_missing():
            return why
        import kombu

        n, topic, acker = self.slow, self.kombu_topic, KombuAcker()
        stall = Stall()
        with self.kombu_connection() as conn:
            with conn.Consumer(kombu.Queue(topic), callbacks=[acker]):
                while acker.seen < n:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        stall.check(0)
            return n / (time.perf_counter() - acker.began)

    def faststream_broker(self, flavour: str) -> Any:
        if flavour == "aiokafka":
            from faststream.kafka import KafkaBroker

            return KafkaBroker(
                self.cluster.bootstrap.split(","),  # aiokafka takes a list, not librdkafka's string
                acks="all",
                enable_idempotence=True,
                max_batch_size=1 << 20,  # aiokafka's 16 KiB default holds 14 of these messages
                logger=FASTSTREAM_LOG,
                log_level=logging.DEBUG,
            )
        from faststream.confluent import KafkaBroker as ConfluentBroker

        return ConfluentBroker(
            self.cluster.bootstrap,
            acks="all",
            enable_idempotence=True,
            # The topics exist; creating them waits 60 s for a controller the mock lacks.
            allow_auto_create_topics=False,
            logger=FASTSTREAM_LOG,
            log_level=logging.DEBUG,
        )

    def faststream_publish(self, flavour: str) -> Rate:
        if why := _faststream_missing():
            return why
        topic = self.topic()
        items = [attrs.asdict(o) for o in self.items]  # faststream encodes dicts itself

        async def run() -> float:
            broker = self.faststream_broker(flavour)
            async with broker:
                await broker.publish(items[0], topic=topic, headers=HEADERS)
                began = time.perf_counter()
                for i in range(1, self.n, BATCH):
                    await broker.publish_batch(*items[i : i + BATCH], topic=topic, headers=HEADERS)
                return (self.n - 1) / (time.perf_counter() - began)

        return run_async(run())

    def faststream_consume(self, flavour: str, topic: str) -> Rate:
        if why := _faststream_missing():
            return why
        from faststream import AckPolicy, FastStream

        group = f"fs-{flavour}-{uuid.uuid4().hex[:8]}"
        return run_async(
            faststream_app(
                lambda: self.faststream_broker(flavour),
                lambda b, h: b.subscriber(
                    topic, group_id=group, auto_offset_reset="earliest", ack_policy=AckPolicy.ACK
                )(h),
                FastStream,
                self.n,
            )
        )


# ---- tables ------------------------------------------------------------------------


def interleaved(
    cases: list[tuple[str, Callable[[], Rate]]],
    repeat: int,
    new_round: Callable[[], None] = lambda: None,
) -> dict[str, tuple[Rate, list[float]]]:
    """Every case once per round, rounds repeated; the median rate per case, or why not."""
    runs: dict[str, list[float]] = {label: [] for label, _ in cases}
    why: dict[str, str] = {}
    for _ in range(repeat):
        new_round()
        for label, fn in cases:
            if label in why:
                continue
            gc.collect()
            try:
                rate = fn()
            except Exception as e:  # noqa: BLE001 - a peer that cannot run gets a row saying why
                rate = (
                    f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                )
            if isinstance(rate, str):
                why[label] = rate
            else:
                runs[label].append(rate)
            print(
                f"  {label}: {rate if isinstance(rate, str) else f'{rate:,.0f} msg/s'}",
                file=sys.stderr,
            )
    return {
        label: (why[label], []) if label in why else (statistics.median(runs[label]), runs[label])
        for label, _ in cases
    }


def table(
    title: str,
    groups: Sequence[Sequence[tuple[str, int, Any]]],
    results: dict[str, tuple[Rate, list[float]]],
) -> None:
    """groups: lists of (label, messages, ...) rows; each row is compared with the first
    of its group (the raw client's)."""
    print(f"{title}\n")
    print("| path | messages | msg/s (median) | runs msg/s | vs raw client |")
    print("|---|---:|---:|---|---:|")
    rows = [(label, n, group[0][0]) for group in groups for label, n, *_ in group]
    for label, n, raw in rows:
        rate, runs = results[label]
        if isinstance(rate, str):
            print(f"| {label} | {n:,} | — | {rate} | — |")
            continue
        base = results[raw][0]
        ratio = f"{rate / base:.2f}x" if isinstance(base, float) else "—"
        each = ", ".join(f"{r:,.0f}" for r in runs)
        print(f"| {label} | {n:,} | {rate:,.0f} | {each} | {ratio} |")
    print()


def throughput_rabbit(n: int, slow: int, repeat: int) -> None:
    r = Rabbit(n, slow)

    def on_fresh(fn: Callable[[str], Rate], fill: bool = False) -> Callable[[], Rate]:
        def run() -> Rate:
            with fresh_queue("quorum") as queue:
                if fill:
                    r.fill(queue)
                return fn(queue)

        return run

    pub: list[tuple[str, int, Callable[[str], Rate]]] = [
        ("publish: raw pika, confirms pipelined x500", n, r.pika_publish),
        ("publish: qchan enqueue", n, r.qchan_publish),
        ("publish: kombu Producer.publish, confirm_publish", slow, r.kombu_publish),
        (
            "publish: faststream RabbitBroker.publish, awaited each",
            slow,
            lambda q: r.faststream_publish(q, 1),
        ),
        (
            "publish: faststream RabbitBroker.publish, 500 gathered",
            n,
            lambda q: r.faststream_publish(q, BATCH),
        ),
    ]
    con: list[tuple[str, int, Callable[[str], Rate]]] = [
        ("consume: raw pika basic_consume + basic_ack", n, r.pika_consume),
        ("consume: qchan dequeue + ack.send", n, r.qchan_consume),
        ("consume: qchan serve(workers=4)", n, r.qchan_serve),
        ("consume: kombu Consumer + message.ack", n, r.kombu_consume),
        ("consume: faststream subscriber, AckPolicy.ACK", n, r.faststream_consume),
    ]
    before = load()
    cases = [(label, on_fresh(fn)) for label, _, fn in pub]
    cases += [(label, on_fresh(fn, fill=True)) for label, _, fn in con]
    results = interleaved(cases, repeat)
    table(
        f"RabbitMQ 127.0.0.1:5672, quorum queues, messages of {len(CODEC.encode(r.items[0]))} "
        f"bytes, median of {repeat} interleaved runs; load average {before} before, "
        f"{load()} after",
        [pub, con],
        results,
    )


def throughput_kafka(n: int, slow: int, repeat: int) -> None:
    cluster = MockCluster(Path("/tmp") / f"bench-peers-{uuid.uuid4().hex[:6]}.log")
    try:
        k = Kafka(cluster, n, slow)
        b = k.bench
        filled: list[str] = []

        def on_filled(fn: Callable[[str], Rate]) -> Callable[[], Rate]:
            def run() -> Rate:
                if not filled:
                    filled.append(b.filled())
                return fn(filled[0])

            return run

        pub: list[tuple[str, int, Callable[[], Rate]]] = [
            (
                "produce: raw confluent-kafka, a delivery report per message",
                n,
                lambda: b.produce_raw(True),
            ),
            ("produce: qchan enqueue", n, b.produce_qchan),
            ("produce: kombu Producer.publish (confluentkafka://)", slow, k.kombu_publish),
            (
                "produce: faststream KafkaBroker (aiokafka) publish_batch x500",
                n,
                lambda: k.faststream_publish("aiokafka"),
            ),
            (
                "produce: faststream KafkaBroker (confluent) publish_batch x500",
                n,
                lambda: k.faststream_publish("confluent"),
            ),
        ]
        con: list[tuple[str, int, Callable[[], Rate]]] = [
            (
                "consume: raw confluent-kafka consume(500) + commit per batch",
                n,
                on_filled(b.consume_raw),
            ),
            ("consume: qchan dequeue + ack.send", n, on_filled(b.consume_qchan)),
            ("consume: qchan serve(workers=4)", n, on_filled(k.qchan_serve)),
            ("consume: kombu Consumer + message.ack (what kombu produced)", slow, k.kombu_consume),
            (
                "consume: faststream (aiokafka) subscriber, AckPolicy.ACK",
                n,
                on_filled(lambda t: k.faststream_consume("aiokafka", t)),
            ),
            (
                "consume: faststream (confluent) subscriber, AckPolicy.ACK",
                n,
                on_filled(lambda t: k.faststream_consume("confluent", t)),
            ),
        ]
        before = load()
        cases = [(label, fn) for label, _, fn in pub + con]
        results = interleaved(cases, repeat, filled.clear)  # each round fills a topic of its own
        table(
            f"Kafka, librdkafka's mock cluster (3 brokers), messages of "
            f"{len(CODEC.encode(k.items[0]))} bytes, median of {repeat} interleaved runs; "
            f"load average {before} before, {load()} after",
            [pub, con],
            results,
        )
    finally:
        cluster.stop()


# ---- idle CPU ----------------------------------------------------------------------


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by Python thread name where known."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        name = names.get(int(task.name)) or (task / "comm").read_text().strip()
        out[f"{name} ({task.name})"] = seconds
    return out


def idle_child(url: str) -> None:
    """In a fresh process: dequeue on an empty queue; print % of a core, then per-thread CPU."""
    with connect(url) as q, dequeue(Item, q) as (rcv, _ack):
        try:
            rcv.recv(timeout=IDLE_SETTLE)
            raise RuntimeError("the idle queue was not empty")
        except TimeoutError:
            pass
        threads0, cpu0, wall0 = thread_cpu(), time.process_time(), time.monotonic()
        try:
            rcv.recv(timeout=IDLE_SPAN)
            raise RuntimeError("the idle queue was not empty")
        except TimeoutError:
            pass
        cpu, wall, threads1 = time.process_time() - cpu0, time.monotonic() - wall0, thread_cpu()
    print(f"{100 * cpu / wall:.3f}")
    for name, secs in sorted(threads1.items(), key=lambda kv: -kv[1]):
        used = secs - threads0.get(name, 0.0)
        if used > 0:
            print(f"{name}\t{100 * used / wall:.2f}")


def idle(repeat: int) -> None:
    before = load()
    results: dict[str, tuple[list[float], list[str]]] = {}
    cluster = MockCluster(Path("/tmp") / f"bench-peers-idle-{uuid.uuid4().hex[:6]}.log")
    queues: list[str] = []
    try:
        with dummy_aws_env(), MotoServer() as moto:
            import boto3

            sqs = boto3.client("sqs", endpoint_url=moto.endpoint, region_name="us-east-1")
            name = f"idle-{uuid.uuid4().hex[:8]}"
            topic = f"idle-{uuid.uuid4().hex[:8]}"
            cluster.create_topic(topic, 4)
            sqs.create_queue(QueueName=name)
            urls = {
                "mem://": f"mem://{name}",
                "amqp://": f"{AMQP}?queue={name}",
                "kafka://": f"kafka://{cluster.bootstrap}/{topic}?group={name}"
                "&group.protocol=consumer",
                "sqs://": f"sqs://{name}?endpoint={moto.endpoint}&region=us-east-1",
            }
            queues.append(name)
            for _ in range(repeat):
                for transport, url in urls.items():
                    out = subprocess.run(
                        [sys.executable, __file__, "--idle-child", url],
                        capture_output=True,
                        text=True,
                        check=False,
                        timeout=120,
                    )
                    if out.returncode != 0:
                        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
                        raise RuntimeError(f"idle {transport}: {tail[0]}")
                    lines = out.stdout.strip().splitlines()
                    got = results.setdefault(transport, ([], []))
                    got[0].append(float(lines[0]))
                    got[1][:] = lines[1:]
                    print(f"  idle {transport}: {lines[0]}% of a core", file=sys.stderr)
            sqs_urls = sqs.list_queues().get("QueueUrls", [])
            for u in sqs_urls:
                sqs.delete_queue(QueueUrl=u)
    finally:
        cluster.stop()
        for name in queues:  # the amqp:// queue the idle consumer declared
            conn = pika.BlockingConnection(PARAMS)
            ch = conn.channel()
            ch.queue_delete(name)
            ch.queue_delete(f"{name}.dlq")
            conn.close()
    print(
        f"Idle consumer CPU: `dequeue` open on an empty queue, {IDLE_SETTLE:.0f} s to settle, "
        f"then {IDLE_SPAN:.0f} s measured (process CPU time), median of {repeat} runs, each "
        f"a fresh process; load average {before} before, {load()} after\n"
    )
    print("| transport | % of one core (median) | runs | target | |")
    print("|---|---:|---|---|---|")
    over: list[str] = []
    for transport, (runs, threads) in results.items():
        pct = statistics.median(runs)
        ok = pct < IDLE_TARGET
        each = ", ".join(f"{r:.2f}" for r in runs)
        verdict = "ok" if ok else "over"
        print(f"| {transport} | {pct:.2f}% | {each} | < {IDLE_TARGET:.0f}% | {verdict} |")
        if not ok:
            over.append(
                f"{transport}: " + "; ".join(ln.replace("\t", " ") + "%" for ln in threads[:6])
            )
    if over:
        print("\nover target, CPU by thread (last run, % of a core):\n")
        for line in over:
            print(f"- {line}")
    print()


# ---- RSS under backpressure ----------------------------------------------------------


def rss_url(queue: str) -> str:
    return f"{AMQP}?queue={queue}"


#: The transports of the RSS rows; a child process opens its queue from "kind:name".
RSS_TRANSPORTS = ("amqp", "redis", "postgres")
RSS_URLS = {
    "redis": "redis://127.0.0.1:6379/0?stream={}",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test?queue={}",
}


def rss_queue(spec: str) -> Queue:
    kind, _, queue = spec.partition(":")
    # Refused publishes are retried until accepted, as bench_embedded.py's full mem:// queue.
    retry = Exponential(base=0.001, cap=0.05, max_attempts=None, max_elapsed=None)
    if kind == "amqp":
        adapter = from_url(rss_url(queue), queue_arguments={"x-max-length": RSS_DEPTH})
        return Queue(adapter, retry=retry)
    return connect(RSS_URLS[kind].format(queue), retry=retry)


def rss_producer(spec: str, n: int) -> None:
    """Print peak RSS (KiB), then how many sends were refused and retried (the backpressure)."""
    with rss_queue(spec) as q:
        with enqueue(Item, q, policy=AT_MOST_ONCE, capacity=1024) as (out, _):
            for i in range(n):
                out.send(Item(f"order-{i}", "c", 1.0, ["sku"], "x" * 64))
        stats = q.stats()
        assert stats.sent == n, stats
    print(peak_rss_kib(), stats.retried)


def rss_consumer(spec: str, n: int) -> None:
    pause = threading.Event()
    with rss_queue(spec) as q, dequeue(Item, q) as (rcv, ack):
        for i in range(n):
            ack.send(rcv.recv(timeout=120))
            if i % 50 == 0:
                pause.wait(0.01)  # the slow consumer: at most 5,000 msg/s
        wait_acked(q, n)
    print(peak_rss_kib())


def _rss_cleanup(kind: str, queue: str) -> None:
    if kind == "amqp":
        conn = pika.BlockingConnection(PARAMS)
        ch = conn.channel()
        ch.queue_delete(queue)
        ch.queue_delete(f"{queue}.dlq")
        conn.close()
    elif kind == "redis":
        import redis

        r = redis.Redis("127.0.0.1", 6379)
        r.delete(queue, f"{queue}.dlq")
        r.close()
    else:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            c.execute(f'DROP TABLE IF EXISTS qchan."{queue}", qchan."{queue}_dlq"')


def rss_run(kind: str, n: int) -> tuple[float, float, float, int]:
    """(producer MiB, consumer MiB, seconds, sends refused) for n messages on `kind`."""
    queue = f"bench_rss_{uuid.uuid4().hex[:8]}"
    spec = f"{kind}:{queue}"
    rss_queue(spec).close()  # declared once (RabbitMQ: with its max length)
    procs = []
    began = time.monotonic()
    try:
        for role in ("--rss-consumer", "--rss-producer"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, role, spec, str(n)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        _rss_cleanup(kind, queue)
    took = time.monotonic() - began
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"rss child failed: {err.strip().splitlines()[-1:]}")
    consumer = int(outs[0][0].split()[-1]) / 1024
    producer, retried = (int(v) for v in outs[1][0].split()[-2:])
    return producer / 1024, consumer, took, retried


def rss(sizes: list[int]) -> None:
    before = load()
    runs: dict[str, dict[int, tuple[float, float, float, int]]] = {}
    for kind in RSS_TRANSPORTS:
        for n in sizes:
            runs.setdefault(kind, {})[n] = rss_run(kind, n)
            print(f"  rss {kind} {n}: {runs[kind][n]}", file=sys.stderr)
    print(
        f"Peak RSS under backpressure: a fast producer and a slow consumer (at most 5,000 "
        f"msg/s), small messages, producer and consumer in separate processes. RabbitMQ: "
        f"one quorum queue held to {RSS_DEPTH:,} messages (x-max-length, refused publishes "
        f"retried); Redis and PostgreSQL take the whole backlog (a stream, a table), so only "
        f"the consumer is held back (mem://: bench_embedded.py's table). "
        f"Load average {before} before, {load()} after\n"
    )
    print(
        "| transport, process | "
        + " | ".join(f"{n:,} msgs MiB" for n in sizes)
        + " | growth | target |"
    )
    print("|---|" + "---:|" * len(sizes) + "---:|---|")
    lo, hi = sizes[0], sizes[-1]
    for kind in RSS_TRANSPORTS:
        for i, role in ((0, "producer"), (1, "consumer")):
            peaks = {n: runs[kind][n][i] for n in sizes}
            growth = peaks[hi] / peaks[lo]
            cells = " | ".join(f"{peaks[n]:.1f}" for n in sizes)
            print(f"| {kind}, {role} | {cells} | {growth:.2f}x | <= {RSS_FLAT:.2f}x |")
    for kind in RSS_TRANSPORTS:
        took = ", ".join(
            f"{n:,}: {runs[kind][n][2]:.0f} s, {runs[kind][n][3]:,} sends refused and retried"
            for n in sizes
        )
        print(f"\n{kind} runs ({took}).")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--slow", type=int, default=3_000, help="messages for per-message rows")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss", type=int, nargs="+", default=[100_000, 500_000])
    ap.add_argument(
        "--only", nargs="+", choices=("rabbitmq", "kafka", "idle", "rss"), help="sections to run"
    )
    ap.add_argument("--idle-child", help=argparse.SUPPRESS)
    ap.add_argument("--rss-producer", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--rss-consumer", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.idle_child:
        idle_child(args.idle_child)
        return 0
    if args.rss_producer:
        rss_producer(args.rss_producer[0], int(args.rss_producer[1]))
        return 0
    if args.rss_consumer:
        rss_consumer(args.rss_consumer[0], int(args.rss_consumer[1]))
        return 0
    only = set(args.only or ("rabbitmq", "kafka", "idle", "rss"))
    slow = min(args.slow, args.messages)
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load average {load()} at start\n"
    )
    if "rabbitmq" in only:
        throughput_rabbit(args.messages, slow, args.repeat)
    if "kafka" in only:
        throughput_kafka(args.messages, slow, args.repeat)
    if "idle" in only:
        idle(args.repeat)
    if "rss" in only:
        rss(args.rss)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
