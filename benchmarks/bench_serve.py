"""`serve(workers=1|4)` against qchan's own `dequeue` + `ack` loop, same run, same messages.

N small JSON messages are pre-loaded on a fresh queue (mem://; RabbitMQ on
127.0.0.1:5672 with --broker rabbitmq; librdkafka's mock cluster, 4 partitions,
with --broker kafka); then one of:
- loop: `with dequeue(T, q) as (rcv, ack): for msg in rcv: handler(msg.object); ack.send(msg)`;
- serve(workers=1), serve(workers=4) and serve(workers=4, capacity=128), stopped
  (`stop.set()`) once the N acks are applied;
each timed from the first message handled (after any group join) until the
broker has applied N acks. The cases run interleaved (A, B, C, D, A, B, C, D ...);
the table gives medians and the ratio to the loop. The handler is trivial, so this
measures serve's own cost.

Run: python benchmarks/bench_serve.py [--broker mem|rabbitmq|kafka] [--messages 20000] [--repeat 3]
     [--profile loop|serve1|serve4|serve4x128]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
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

from qchan import AT_MOST_ONCE, Queue, connect, dequeue, enqueue, serve
from qchan.adapters.embedded import EmbeddedAdapter

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
Opener = Callable[[], Queue]
KAFKA: list[Any] = []  # the mock cluster, started once


def fresh(broker: str) -> Opener:
    """Opens connections to one new, empty queue."""
    name = f"bench-serve-{uuid.uuid4().hex[:8]}"
    if broker == "mem":
        return lambda: Queue(EmbeddedAdapter(name))
    if broker == "rabbitmq":
        return lambda: connect(f"{AMQP}?queue={name}&queue_type=quorum")
    from qchan.adapters.kafka import KafkaAdapter

    if not KAFKA:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from support.kafka import MockCluster

        KAFKA.append(MockCluster(Path("/tmp") / f"bench-serve-{uuid.uuid4().hex[:6]}.log"))
    cluster = KAFKA[0]
    cluster.create_topic(name, 4)
    return lambda: Queue(
        KafkaAdapter(
            name,
            bootstrap=cluster.bootstrap,
            group=f"g-{name}",
            consumer_config={"group.protocol": "consumer"},
        )
    )


def delete(q: Queue) -> None:
    """Delete a RabbitMQ queue the run made (and its dead-letter queue)."""
    if q.options.system != "amqp":
        return
    import pika  # qchan[rabbitmq]

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    ch = conn.channel()
    ch.queue_delete(q.name)
    ch.queue_delete(f"{q.name}.dlq")
    conn.close()


@attrs.frozen
class Small:
    id: int
    name: str


class Handler:
    """Trivial work (count, and say when the n-th arrived): what is left is serve's cost."""

    def __init__(self, n: int) -> None:
        self.count = itertools.count(1).__next__  # atomic under the GIL
        self.n = n
        self.all_in = threading.Event()
        self.first = 0.0

    def __call__(self, obj: object) -> None:
        seen = self.count()
        if seen == 1:
            self.first = time.perf_counter()
        if seen == self.n:
            self.all_in.set()


def preload(broker: str, n: int) -> Opener:
    """A fresh queue holding n messages."""
    open_q = fresh(broker)
    q = open_q()
    with enqueue(Small, q, policy=AT_MOST_ONCE, capacity=1024) as (out, _):
        for i in range(n):
            out.send(Small(i, f"item-{i}"))
    q.close()
    return open_q


def wait_acked(q: Queue, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while q.stats().acked < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {q.stats().acked} of {n} acked in {timeout} s")
        pause.wait(0.0005)


def run_loop(open_q: Opener, n: int) -> float:
    q = open_q()
    handler = Handler(n)
    with dequeue(Small, q) as (rcv, ack):
        send = ack.send
        for done, msg in enumerate(rcv, 1):
            handler(msg.object)
            send(msg)
            if done == n:
                break
        wait_acked(q, n)
    elapsed = time.perf_counter() - handler.first
    q.close()
    delete(q)
    return elapsed


def run_serve(open_q: Opener, n: int, workers: int, capacity: int = 32) -> float:
    q = open_q()
    stop = threading.Event()
    elapsed: list[float] = []
    handler = Handler(n)

    def watch() -> None:
        handler.all_in.wait()  # no polling while the workers run
        wait_acked(q, n)
        elapsed.append(time.perf_counter() - handler.first)
        stop.set()

    watcher = threading.Thread(target=watch, daemon=True)  # no hang if serve raises
    watcher.start()
    served = serve(handler, Small, q, workers=workers, capacity=capacity, stop=stop, signals=())
    watcher.join()
    if served.handled < n:
        raise RuntimeError(f"serve handled {served.handled} of {n}")
    delete(q)
    return elapsed[0]


CASES: dict[str, Callable[[Opener, int], float]] = {
    "loop": run_loop,
    "serve1": lambda open_q, n: run_serve(open_q, n, 1),
    "serve4": lambda open_q, n: run_serve(open_q, n, 4),
    "serve4x128": lambda open_q, n: run_serve(open_q, n, 4, 128),
}
LABELS = {
    "loop": "qchan's own dequeue + ack loop",
    "serve1": "serve(handler, workers=1)",
    "serve4": "serve(handler, workers=4)",
    "serve4x128": "serve(handler, workers=4, capacity=128)",
}


def profile(broker: str, case: str, n: int, top: int) -> None:
    """cProfile of every thread of one run of `case`, sorted by tottime and by cumulative."""
    open_q = preload(broker, n)
    prof = cProfile.Profile()
    threading.setprofile(lambda *a: None)  # reset, then profile each new thread too
    profs: list[cProfile.Profile] = [prof]
    real_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        p = cProfile.Profile()
        profs.append(p)
        p.enable()
        try:
            real_run(self)
        finally:
            p.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        prof.enable()
        seconds = CASES[case](open_q, n)
        prof.disable()
    finally:
        threading.Thread.run = real_run  # type: ignore[method-assign]
        threading.setprofile(None)
    print(f"{LABELS[case]}: {n / seconds:,.0f} msg/s under the profiler, all threads")
    stats = pstats.Stats(profs[0])
    for p in profs[1:]:
        stats.add(p)
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"\n--- sorted by {key} ---")
        stats.sort_stats(key).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", choices=("mem", "rabbitmq", "kafka"), default="mem")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", choices=sorted(CASES), help="profile one run of one case")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    try:
        if args.profile:
            profile(args.broker, args.profile, args.messages, args.top)
        else:
            table(args.broker, args.messages, args.repeat)
    finally:
        for cluster in KAFKA:
            cluster.stop()
    return 0


class ThreadCPU:
    """CPU seconds spent by each kind of thread (consumer, fetch, workers, the caller)
    while a case runs: where a message's cost goes, with no profiler's overhead."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.lock = threading.Lock()
        self.real_run = threading.Thread.run

    @staticmethod
    def kind(name: str) -> str:
        for part in ("consumer", "fetch", "worker"):
            if f"qchan-{part}" in name:
                return "workers" if part == "worker" else part
        return "other"

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.spent[kind] = self.spent.get(kind, 0.0) + seconds

    def __enter__(self) -> ThreadCPU:
        self.spent = {}
        cpu = self
        real_run = self.real_run

        def run(thread: threading.Thread) -> None:
            began = time.thread_time()
            try:
                real_run(thread)
            finally:
                cpu.add(cpu.kind(thread.name), time.thread_time() - began)

        threading.Thread.run = run  # type: ignore[method-assign,assignment]
        self.began = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.add("caller", time.thread_time() - self.began)
        threading.Thread.run = self.real_run  # type: ignore[method-assign]


def table(broker: str, n: int, repeat: int) -> None:
    times: dict[str, list[float]] = {case: [] for case in CASES}
    cpu: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    load_before = os.getloadavg()
    for _ in range(repeat):
        for case, run in CASES.items():
            open_q = preload(broker, n)  # not timed
            with ThreadCPU() as spent:
                times[case].append(run(open_q, n))
            cpu[case].append(spent.spent)
    load_after = os.getloadavg()
    loop = n / statistics.median(times["loop"])
    print(
        f"serve vs qchan's own loop on {broker}, {n:,} pre-loaded messages, median of "
        f"{repeat} interleaved runs, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print()
    print("| consumer | msg/s (median) | runs msg/s | vs loop | target |")
    print("|---|---:|---|---:|---:|")
    for case, ts in times.items():
        rate = n / statistics.median(ts)
        runs = ", ".join(f"{n / t:,.0f}" for t in ts)
        target = "" if case == "loop" else ">= 0.9x"
        print(f"| {LABELS[case]} | {rate:,.0f} | {runs} | {rate / loop:.2f}x | {target} |")
    print()
    print(
        "CPU per message by thread, µs (medians; the caller is the loop's own thread, idle "
        "in serve; other: librdkafka's or pika's threads and the benchmark's watcher):"
    )
    print()
    kinds = ["caller", "workers", "consumer", "fetch", "other"]
    print("| consumer | " + " | ".join(kinds) + " | all threads | wall |")
    print("|---|" + "---:|" * (len(kinds) + 2))
    for case, runs_cpu in cpu.items():
        cells = [statistics.median(r.get(k, 0.0) for r in runs_cpu) * 1e6 / n for k in kinds]
        total = statistics.median(sum(r.values()) for r in runs_cpu) * 1e6 / n
        wall = statistics.median(times[case]) * 1e6 / n
        print(
            f"| {LABELS[case]} | "
            + " | ".join(f"{c:.1f}" for c in cells)
            + f" | {total:.1f} | {wall:.1f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
