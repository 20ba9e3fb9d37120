"""SQS throughput: qchan enqueue/dequeue vs raw boto3, same run, same endpoint, same messages.

Run: `python benchmarks/bench_sqs.py [--messages N] [--repeat R] [--endpoint URL]`.
Without --endpoint it starts a local moto server (tests/support/moto_launcher.py, moto
with its O(queue depth) attribute scan made lazy) and stops it at the end.

Every run uses a fresh queue and the same N messages of about 1 KiB of JSON
with the same four String attributes (Category, Source, System, Queue), so
both sides see the same queue depth: the send runs fill an empty queue to N,
the receive runs drain a queue prefilled to N. Raw and qchan runs alternate
(so load from elsewhere on the machine hits both) and each figure is the
median of R runs, in messages per second; the slow one-per-request loops run
once.

- send, raw batched: `send_message_batch` of 10 in a loop (json.dumps included).
- send, raw one per request: `send_message` in a loop (swarm's and kombu's pattern).
- send, qchan: `enqueue(Payload, q)` (default at-least-once) until leaving the
  `with` block, i.e. until the broker accepted everything.
- receive, raw batched: `receive_message` (10, long poll) + json.loads +
  `delete_message_batch`.
- receive, raw one per request: `receive_message` of 1 + `delete_message`.
- receive, qchan: `dequeue(Payload, q)`, `ack.send(msg)` for each, until the
  queue's stats say every ack reached the broker.

Targets (issue 4): qchan >= 0.9x raw batched on both paths, >= 5x the
one-per-request loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.sqs import MotoServer, dummy_aws_env

from qchan import Queue, dequeue, enqueue
from qchan.adapters.sqs import from_url

REGION = "us-east-1"


@attrs.frozen
class Payload:
    """About 1 KiB of JSON once encoded."""

    id: str
    customer: str
    amount: float
    lines: list[str]
    note: str


def payload(i: int) -> Payload:
    return Payload(
        id=f"order-{i:08d}",
        customer=f"customer-{i % 977:05d}",
        amount=i * 1.25,
        lines=[f"sku-{(i + k) % 10_000:05d}:qty={k + 1}" for k in range(20)],
        note="x" * 540,
    )


def body(i: int) -> str:
    return json.dumps(attrs.asdict(payload(i)))


def attributes(queue: str) -> dict[str, Any]:
    return {
        k: {"DataType": "String", "StringValue": v}
        for k, v in {
            "Category": "Payload",
            "Source": "bench",
            "System": "sqs",
            "Queue": queue,
        }.items()
    }


class Bench:
    def __init__(self, endpoint: str, n: int) -> None:
        self.endpoint = endpoint
        self.n = n
        self.client = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)

    @contextmanager
    def fresh_queue(self) -> Iterator[tuple[str, str]]:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        url = self.client.create_queue(QueueName=name)["QueueUrl"]
        try:
            yield name, url
        finally:
            self.client.delete_queue(QueueUrl=url)

    def prefill(self, name: str, url: str) -> None:
        attrs_ = attributes(name)
        for first in range(0, self.n, 10):
            self.client.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i - first), "MessageBody": body(i), "MessageAttributes": attrs_}
                    for i in range(first, min(first + 10, self.n))
                ],
            )

    def queue(self, name: str) -> Queue:
        adapter = from_url(f"sqs://{name}?endpoint={self.endpoint}&region={REGION}", wait=1)
        return Queue(adapter, agent="bench", poll_wait=1)

    # -- send -----------------------------------------------------------------

    def send_raw_batched(self, name: str, url: str) -> float:
        attrs_ = attributes(name)
        t0 = time.perf_counter()
        for first in range(0, self.n, 10):
            self.client.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {
                        "Id": str(i - first),
                        "MessageBody": json.dumps(attrs.asdict(payload(i))),
                        "MessageAttributes": attrs_,
                    }
                    for i in range(first, min(first + 10, self.n))
                ],
            )
        return self.n / (time.perf_counter() - t0)

    def send_raw_single(self, name: str, url: str) -> float:
        attrs_ = attributes(name)
        t0 = time.perf_counter()
        for i in range(self.n):
            self.client.send_message(
                QueueUrl=url,
                MessageBody=json.dumps(attrs.asdict(payload(i))),
                MessageAttributes=attrs_,
            )
        return self.n / (time.perf_counter() - t0)

    def send_qchan(self, name: str, url: str) -> float:
        q = self.queue(name)
        try:
            t0 = time.perf_counter()
            with enqueue(Payload, q) as (out, _):
                for i in range(self.n):
                    out.send(payload(i))
            return self.n / (time.perf_counter() - t0)
        finally:
            q.close()

    # -- receive --------------------------------------------------------------

    def recv_raw_batched(self, name: str, url: str) -> float:
        got = 0
        t0 = time.perf_counter()
        while got < self.n:
            msgs = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            for m in msgs:
                json.loads(m["Body"])
            if msgs:
                self.client.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]}
                        for k, m in enumerate(msgs)
                    ],
                )
            got += len(msgs)
        return self.n / (time.perf_counter() - t0)

    def recv_raw_single(self, name: str, url: str) -> float:
        got = 0
        t0 = time.perf_counter()
        while got < self.n:
            msgs = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            for m in msgs:
                json.loads(m["Body"])
                self.client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            got += len(msgs)
        return self.n / (time.perf_counter() - t0)

    def recv_qchan(self, name: str, url: str) -> float:
        q = self.queue(name)
        pause = threading.Event()
        try:
            t0 = time.perf_counter()
            with dequeue(Payload, q) as (rcv, ack):
                for _ in range(self.n):
                    ack.send(rcv.recv(timeout=60))
                while q.stats().acked < self.n:  # until every delete reached SQS
                    pause.wait(0.001)
                elapsed = time.perf_counter() - t0
            return self.n / elapsed
        finally:
            q.close()

    def once(self, fn: Callable[[str, str], float], prefill: bool) -> float:
        with self.fresh_queue() as (name, url):
            if prefill:
                self.prefill(name, url)
            return fn(name, url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--endpoint", help="an SQS endpoint already running (default: start moto)")
    args = ap.parse_args()

    with dummy_aws_env():
        if args.endpoint:
            report(Bench(args.endpoint, args.messages), args.repeat)
        else:
            with MotoServer() as server:
                report(Bench(server.endpoint, args.messages), args.repeat)


def report(b: Bench, repeat: int) -> None:
    rows = []
    for path, raw, single, ours, prefill in (
        ("send", b.send_raw_batched, b.send_raw_single, b.send_qchan, False),
        ("receive + ack", b.recv_raw_batched, b.recv_raw_single, b.recv_qchan, True),
    ):
        # Interleaved, so that load from elsewhere on the machine hits both sides.
        raws, ours_ = [], []
        for _ in range(repeat):
            raws.append(b.once(raw, prefill))
            ours_.append(b.once(ours, prefill))
        r_single = b.once(single, prefill)  # slow and steady: one run
        rows.append((path, statistics.median(raws), statistics.median(ours_), r_single))
    cpu = os.cpu_count()
    print(
        f"\nSQS, {b.n} messages of {len(body(0))} B JSON + 4 String attributes per run, "
        f"median of {repeat} interleaved runs (one-per-request: one run), "
        f"endpoint {b.endpoint} ({cpu} CPUs shared with the server)\n"
    )
    print(
        "| path | raw boto3 batched (msg/s) | qchan (msg/s) | qchan / raw | target "
        "| raw one per request (msg/s) | qchan / one-per-request | target |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---|")
    for path, r_raw, r_ours, r_single in rows:
        ratio, speedup = r_ours / r_raw, r_ours / r_single
        print(
            f"| {path} | {r_raw:,.0f} | {r_ours:,.0f} | {ratio:.2f}x "
            f"| >= 0.9x {'ok' if ratio >= 0.9 else 'MISSED'} | {r_single:,.0f} "
            f"| {speedup:.1f}x | >= 5x {'ok' if speedup >= 5 else 'MISSED'} |"
        )


if __name__ == "__main__":
    main()
