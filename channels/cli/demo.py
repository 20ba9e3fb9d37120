"""`qchan demo`: a typed producer and consumer over the embedded broker, with a summary.

It also injects a few faults so the summary shows each mechanism at work: the
broker refuses some sends (the emitter retries them), the consumer refuses
one message in a hundred once (it is redelivered), and one message is too
large for the broker (it comes back on the dead-letter channel).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid

import attrs

from ..adapters.embedded import EmbeddedAdapter, broker
from ..endpoints import dequeue, enqueue
from ..kernel.queue import Queue
from ..retry import Constant
from .progress import Progress

__all__ = ["Tick", "run"]


@attrs.frozen
class Tick:
    """The demo's message: a sequence number, when it was sent, and some payload."""

    seq: int
    sent_at: float
    note: str = ""


def run(count: int = 20_000, quiet: bool = False) -> int:
    """Run the demo; print a summary; return 0 if every message is accounted for."""
    name = f"demo-{uuid.uuid4().hex[:8]}"
    adapter = EmbeddedAdapter(name, max_message_size=64 * 1024)
    q = Queue(adapter, agent="qchan-demo", retry=Constant(0.01, max_attempts=5), poll_wait=0.2)
    broker(name).fail_sends(5)  # transient failures: retried
    received: set[int] = set()
    latencies: list[float] = []
    dead: list[int] = []
    refused: set[int] = set()
    progress = Progress(count, "received") if not quiet else None
    started = time.monotonic()

    def produce() -> None:
        with enqueue(Tick, q) as (out, dlq):
            for i in range(count):
                out.send(Tick(i, time.monotonic()))
            out.send(Tick(-1, time.monotonic(), "x" * 100_000))  # too large: dead-lettered
            dead.append(dlq.recv(timeout=30).object.seq)

    producer = threading.Thread(target=produce, name="demo-producer")
    producer.start()
    with dequeue(Tick, q, capacity=256) as (rcv, ack):
        while len(received) < count:
            msg = rcv.recv(timeout=30)
            tick = msg.object
            if tick.seq % 100 == 7 and tick.seq not in refused:
                refused.add(tick.seq)
                ack.send(msg.fail(RuntimeError("demo: not now")))  # redelivered
                continue
            latencies.append(time.monotonic() - tick.sent_at)
            received.add(tick.seq)
            ack.send(msg)
            if progress:
                progress.update(len(received))
    elapsed = time.monotonic() - started
    producer.join()
    if progress:
        progress.finish(len(received))
    stats = q.stats()
    q.close()
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    ok = len(received) == count and dead == [-1]
    print(f"qchan demo over mem://{name}: {count:,} typed messages, producer -> consumer")
    rows = [
        ("sent (accepted by the broker)", f"{stats.sent:,}"),
        ("retried (broker refused, sent again)", f"{stats.retried:,}"),
        ("dead-lettered (too large, back on dlq)", f"{stats.dead_lettered:,}"),
        ("received", f"{stats.received:,}"),
        ("redelivered (nacked once, came back)", f"{stats.redelivered:,}"),
        ("acked", f"{stats.acked:,}"),
        ("throughput", f"{count / elapsed:,.0f} msg/s"),
        ("latency p50 / p99", f"{p50:.2f} ms / {p99:.2f} ms"),
        ("every message accounted for", "yes" if ok else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0 if ok else 1
