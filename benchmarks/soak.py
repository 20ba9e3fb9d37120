"""Soak: minutes of steady traffic with a slow consumer; memory, threads and in-flight stay flat.

A producer sends numbered messages at a steady rate through `enqueue`; a
consumer that spends time on each message (and refuses 1 % of them once, so
redelivery runs too) receives through `dequeue` and acks. Every `--every`
seconds the run samples the process: resident memory (VmRSS, and the peak),
thread count, the queue's in-flight gauge, what waits on the broker, and the
counters. The first sample is taken after a warm-up, so caches, buffers and
the JIT-less interpreter's allocator have settled; from there to the end the
figures must stay flat. After the traffic it closes both queues and checks
that every qchan thread ended and every message was received (or
dead-lettered).

    python benchmarks/soak.py                       # mem://, 3 minutes
    python benchmarks/soak.py --minutes 10 --rate 2000
    python benchmarks/soak.py --url 'amqp://guest:guest@127.0.0.1:5672/%2F?queue=soak'

Prints the samples and a verdict table (figure, start, end, ratio, target)
as markdown; exits 1 if a target is missed. Not part of `make test`
(`make test-soak` runs it).
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import threading
import time
import uuid
from typing import Any

import attrs

from qchan import Chan, ChannelClosed, connect, dequeue, enqueue, select
from qchan.retry import Exponential
from qchan.urls import redact

# Targets (end of run versus the first sample after warm-up).
RSS_GROWTH = 1.10  # at most 10 % more resident memory ...
RSS_SLACK_MB = 8.0  # ... or 8 MB, whichever is larger (allocator noise on a small heap)
THREADS_GROWTH = 0  # not one thread more


@attrs.frozen
class Tick:
    run: str
    n: int
    payload: str


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def qchan_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("qchan-"))


@attrs.define
class Sample:
    t: float
    rss: float
    peak: float
    threads: int
    in_flight: int
    waiting: int | None
    sent: int
    received: int
    acked: int
    redelivered: int


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = uuid.uuid4().hex[:8]
        # An in-process broker's backlog is this process's memory: bound it (max_depth),
        # so a consumer that falls behind pushes back on the producer instead.
        url = args.url or f"mem://soak-{self.run}?max_depth={2 * args.rate}"
        self.url = url
        kernel: dict[str, Any] = {"in_flight": args.in_flight, "errors": Chan(4096)}
        self.errors: collections.Counter[str] = collections.Counter()
        self.producer_q = connect(
            url, retry=Exponential(cap=1.0, max_attempts=None, max_elapsed=120.0), **kernel
        )
        kernel["errors"] = self.producer_q.errors
        self.consumer_q = connect(url, **kernel)
        # Deliveries per message number, one byte each, allocated up front: the soak's
        # own bookkeeping must not grow during the run, or it would hide (or fake) a leak.
        capacity = int(args.rate * args.minutes * 60 * 1.5) + 10_000
        self.counts = bytearray(capacity)
        self.refused = bytearray(capacity)
        self.received = 0  # distinct numbers received
        self.deliveries = 0
        self.dead: set[int] = set()
        self.sent = 0
        self.stop = threading.Event()
        self.producer_done = threading.Event()
        self.lock = threading.Lock()
        self.samples: list[Sample] = []

    def waiting(self) -> int | None:
        adapter = self.consumer_q.adapter
        broker = getattr(adapter, "broker", None)
        return None if broker is None else int(broker.depth + broker.in_flight)

    def sample(self, started: float) -> Sample:
        s = self.consumer_q.stats()
        received = self.received
        return Sample(
            t=time.monotonic() - started,
            rss=rss_mb(),
            peak=peak_rss_mb(),
            threads=threading.active_count(),
            in_flight=s.in_flight,
            waiting=self.waiting(),
            sent=self.sent,
            received=received,
            acked=s.acked,
            redelivered=s.redelivered,
        )

    def produce(self) -> None:
        out, dlq = sending = enqueue(Tick, self.producer_q)
        interval = 1.0 / self.args.rate
        pad = "x" * self.args.size
        due = time.monotonic()
        pause = threading.Event()
        n = 0
        while not self.stop.is_set():
            due += interval
            wait = due - time.monotonic()
            if wait > 0:
                pause.wait(wait)
            sel = select((out, Tick(self.run, n, pad)), dlq)
            if sel is not None and sel.index == 1 and sel.ok:
                with self.lock:
                    self.dead.add(sel.value.object.n)
                continue
            n += 1
            self.sent = n
        failed = sending.close()
        with self.lock:
            self.dead.update(m.object.n for m in failed)
        self.producer_done.set()

    def consume(self) -> None:
        rcv, ack = receiving = dequeue(Tick, self.consumer_q)
        delay = self.args.consumer_delay
        pause = threading.Event()
        counts, refused = self.counts, self.refused
        while True:
            try:
                m = rcv.recv(timeout=0.2)
            except TimeoutError:
                if self.producer_done.is_set() and self.accounted():
                    break
                continue
            if m.object.run != self.run:
                ack.send(m)
                continue
            if delay:
                pause.wait(delay)  # the slow part of a slow consumer
            n = m.object.n
            if n % 100 == 7 and not refused[n]:  # 1 %: refused once, redelivered
                refused[n] = 1
                ack.send(m.fail(RuntimeError("soak: try again")))
                continue
            with self.lock:
                if not counts[n]:
                    self.received += 1
                counts[n] = min(255, counts[n] + 1)
                self.deliveries += 1
            ack.send(m)
        receiving.close()

    def accounted(self) -> bool:
        with self.lock:
            return self.received + sum(1 for n in self.dead if not self.counts[n]) >= self.sent

    def drain_errors(self) -> None:
        errors = self.producer_q.errors
        assert isinstance(errors, Chan)
        while True:
            try:
                e = errors.recv(timeout=0)
            except (TimeoutError, ChannelClosed):
                return
            self.errors[type(e).__name__] += 1

    def go(self) -> int:
        args = self.args
        base_threads = threading.active_count()
        started = time.monotonic()
        consumer = threading.Thread(target=self.consume, name="soak-consumer")
        producer = threading.Thread(target=self.produce, name="soak-producer")
        consumer.start()
        producer.start()
        end = started + args.minutes * 60
        next_at = started + args.warmup
        pause = threading.Event()
        while time.monotonic() < end:
            pause.wait(max(0.0, min(next_at, end) - time.monotonic()))
            if time.monotonic() >= next_at:
                self.samples.append(self.sample(started))
                self.print_sample(self.samples[-1])
                next_at += args.every
            self.drain_errors()
        self.samples.append(self.sample(started))
        self.print_sample(self.samples[-1])
        self.stop.set()
        producer.join(120)
        consumer.join(args.minutes * 60 + 120)
        stuck_workers = [t.name for t in (producer, consumer) if t.is_alive()]
        closed_at = time.monotonic()
        for q in (self.producer_q, self.consumer_q):
            q.close()
        close_s = time.monotonic() - closed_at
        self.drain_errors()
        left = qchan_threads()
        after = threading.active_count()
        with self.lock:
            lost = sum(1 for n in range(self.sent) if not self.counts[n] and n not in self.dead)
            dups = self.deliveries - self.received
        return self.verdict(
            base_threads,
            after,
            left=left,
            stuck=stuck_workers,
            lost=lost,
            dups=dups,
            close_s=close_s,
        )

    @staticmethod
    def print_sample(s: Sample) -> None:
        waiting = "?" if s.waiting is None else s.waiting
        print(
            f"| {s.t:7.1f} | {s.rss:7.1f} | {s.peak:7.1f} | {s.threads:3d} | {s.in_flight:5d} "
            f"| {waiting} | {s.sent} | {s.received} | {s.acked} | {s.redelivered} |",
            flush=True,
        )

    def verdict(
        self,
        base_threads: int,
        after: int,
        *,
        left: list[str],
        stuck: list[str],
        lost: int,
        dups: int,
        close_s: float,
    ) -> int:
        first, last = self.samples[0], self.samples[-1]
        rss_limit = max(first.rss * RSS_GROWTH, first.rss + RSS_SLACK_MB)
        rows: list[tuple[str, str, str, str, str, bool]] = [
            (
                "resident memory (MB)",
                f"{first.rss:.1f}",
                f"{last.rss:.1f}",
                f"{last.rss / first.rss:.2f}x",
                f"<= {rss_limit:.1f}",
                last.rss <= rss_limit,
            ),
            (
                "peak resident memory (MB)",
                f"{first.peak:.1f}",
                f"{last.peak:.1f}",
                f"{last.peak / first.peak:.2f}x",
                f"<= {rss_limit:.1f}",
                last.peak <= rss_limit,
            ),
            (
                "threads",
                str(first.threads),
                str(last.threads),
                f"{last.threads / first.threads:.2f}x",
                f"<= {first.threads + THREADS_GROWTH}",
                last.threads <= first.threads + THREADS_GROWTH,
            ),
            (
                "in flight",
                str(first.in_flight),
                str(last.in_flight),
                "",
                f"<= {self.args.in_flight}",
                last.in_flight <= self.args.in_flight,
            ),
            (
                "threads after close",
                str(base_threads),
                str(after),
                "",
                f"<= {base_threads}",
                after <= base_threads and not left and not stuck,
            ),
            ("lost messages", "", str(lost), "", "0", lost == 0),
        ]
        if first.waiting is not None and last.waiting is not None:
            limit = max(2 * first.waiting, self.args.rate)  # at most a second's worth more
            rows.append(
                (
                    "waiting on the broker",
                    str(first.waiting),
                    str(last.waiting),
                    "",
                    f"<= {limit}",
                    last.waiting <= limit,
                )
            )
        print()
        print(
            f"soak over {redact(self.url)}: {self.args.minutes:g} min at "
            f"{self.args.rate} msg/s, consumer {self.args.consumer_delay * 1000:.2f} ms/msg, "
            f"{self.sent} sent, {dups} duplicates, {len(self.dead)} dead-lettered, "
            f"close {close_s:.2f} s, errors {dict(self.errors) or 'none'}"
        )
        print()
        print("| figure | start | end | ratio | target | ok |")
        print("|---|---:|---:|---:|---:|---|")
        for name, start, end, ratio, target, ok in rows:
            print(f"| {name} | {start} | {end} | {ratio} | {target} | {'yes' if ok else 'NO'} |")
        if left or stuck:
            print(f"threads still running after close: {left + stuck}")
        return 0 if all(r[-1] for r in rows) else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="", help="queue URL (default: a fresh mem:// queue)")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--rate", type=int, default=500, help="messages per second sent")
    p.add_argument("--size", type=int, default=200, help="payload bytes per message")
    p.add_argument(
        "--consumer-delay",
        type=float,
        default=0.001,
        help="seconds the consumer spends per message (slow, but keeping up)",
    )
    p.add_argument("--in-flight", type=int, default=500)
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before the first sample")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = p.parse_args()
    if args.minutes * 60 <= args.warmup:
        p.error("--minutes must be longer than --warmup")
    print(f"pid {os.getpid()}, python {sys.version.split()[0]}")
    print()
    print(
        "| t (s) | RSS MB | peak MB | threads | in flight | waiting | sent | received "
        "| acked | redelivered |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sys.exit(Soak(args).go())


if __name__ == "__main__":
    main()
