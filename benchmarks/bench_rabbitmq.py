"""RabbitMQ throughput: qchan against raw pika, same broker, same run, 1 KiB JSON messages.

Run: `python benchmarks/bench_rabbitmq.py [--messages N] [--queue-type quorum|classic]`
(RabbitMQ on 127.0.0.1:5672, guest/guest). Each row uses a fresh durable queue
of the given type (quorum, qchan's default) and deletes it afterwards.

Publishing rows: raw pika without confirms; raw pika with `confirm_delivery()`
(each publish waits for its confirm, the usual BlockingConnection loop); raw
pika with confirms pipelined in batches of qchan's size (SelectConnection, the
same technique the adapter uses); the adapter's `send_batch`; and qchan
`enqueue` through the kernel. Consuming rows: raw pika `basic_consume` with a
manual `basic_ack` per message at prefetch 100; the adapter's `receive` +
`ack`; qchan `dequeue` + ack through the kernel (prefetch 100 too).

Targets (issue 5): qchan enqueue >= 3x raw confirm-per-message and >= 0.5x raw
without confirms; qchan dequeue+ack >= 0.9x raw consume. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pika
from pika.adapters.select_connection import SelectConnection

from qchan.adapters.rabbitmq import from_url
from qchan.message import Bag

HOST, PORT = "127.0.0.1", 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/%2F"
PARAMS = pika.ConnectionParameters(HOST, PORT)
BATCH = 500  # the adapter's max_batch
PREFETCH = 100
QUEUE_TYPE = "quorum"  # set from --queue-type


@attrs.frozen
class Payload:
    """About 1 KiB once encoded as JSON."""

    id: int
    text: str


BODY = json.dumps(attrs.asdict(Payload(0, "x" * 1000))).encode()
HEADERS = {"Category": "Payload", "Source": "bench", "System": "amqp", "Queue": "bench"}


def props(i: int) -> Any:
    return pika.BasicProperties(
        content_type="application/json",
        message_id=str(i),
        headers=HEADERS,
        delivery_mode=2,
    )


@contextmanager
def fresh_queue(queue_type: str) -> Iterator[str]:
    name = f"qchan-bench-{uuid.uuid4().hex[:10]}"
    conn = pika.BlockingConnection(PARAMS)
    ch = conn.channel()
    ch.queue_declare(f"{name}.dlq", durable=True, arguments={"x-queue-type": queue_type})
    args: dict[str, Any] = {
        "x-queue-type": queue_type,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{name}.dlq",
    }
    if queue_type == "quorum":  # exactly what the adapter declares
        args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    ch.queue_declare(name, durable=True, arguments=args)
    try:
        yield name
    finally:
        ch.queue_delete(name)
        ch.queue_delete(f"{name}.dlq")
        conn.close()


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- raw pika -------------------------------------------------------------------


def raw_publish(queue: str, n: int, confirm: bool) -> float:
    conn = pika.BlockingConnection(PARAMS)
    ch = conn.channel()
    if confirm:
        ch.confirm_delivery()

    def run() -> None:
        for i in range(n):
            ch.basic_publish("", queue, BODY, props(i), mandatory=True)
        conn.process_data_events(0)

    seconds = timed(run)
    conn.close()
    return n / seconds


def raw_publish_pipelined(
    queue: str,
    n: int,
    batch: int = BATCH,
    message: Callable[[int], tuple[bytes, Any]] | None = None,
) -> float:
    """Confirms on, a batch in flight at a time: SelectConnection, confirms counted as they
    come. `message(i)` gives the i-th body and properties (default: BODY, props(i)); it runs
    inside the timed loop, so an encoding it does counts. Raises if the broker nacks any."""
    state: dict[str, Any] = {"acked": 0, "target": 0, "nacked": 0}
    make = message or (lambda i: (BODY, props(i)))

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        state["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=lambda _f: conn.ioloop.stop())

    def on_confirm(frame: Any) -> None:
        if isinstance(frame.method, pika.spec.Basic.Nack):
            state["nacked"] += 1
        state["acked"] = frame.method.delivery_tag  # tags are in order; multiple=True covers all
        if state["acked"] >= state["target"]:
            conn.ioloop.stop()

    conn = SelectConnection(
        PARAMS, on_open_callback=on_open, on_close_callback=lambda c, _r: c.ioloop.stop()
    )
    conn.ioloop.start()
    ch = state["ch"]

    def run() -> None:
        sent = 0
        while sent < n:
            k = min(batch, n - sent)
            for i in range(sent, sent + k):
                body, properties = make(i)
                ch.basic_publish("", queue, body, properties, mandatory=True)
            sent += k
            state["target"] = sent
            conn.ioloop.start()

    seconds = timed(run)
    conn.close()
    conn.ioloop.start()  # until on_close stops it
    conn.ioloop.close()
    assert not state["nacked"], f"{state['nacked']} publishes refused"
    return n / seconds


def fill(queue: str, n: int) -> None:
    raw_publish_pipelined(queue, n)


def raw_consume(queue: str, n: int, prefetch: int = PREFETCH) -> float:
    conn = pika.BlockingConnection(PARAMS)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    seen = 0

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal seen
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen >= n:
            ch.stop_consuming()

    ch.basic_consume(queue, on_message)
    seconds = timed(ch.start_consuming)
    conn.close()
    return n / seconds


# ---- qchan adapter (no kernel) ------------------------------------------------------


def adapter_publish(queue: str, n: int) -> float:
    adapter = from_url(f"{URL}?queue={queue}&queue_type={QUEUE_TYPE}")
    bags = [
        Bag("Payload", BODY, HEADERS, id=str(i), content_type="application/json") for i in range(n)
    ]
    adapter.send_batch(bags[:1])  # connect and declare outside the clock

    def run() -> None:
        for k in range(1, n, adapter.max_batch):
            outcomes = adapter.send_batch(bags[k : k + adapter.max_batch])
            assert all(o is None for o in outcomes), outcomes

    seconds = timed(run)
    adapter.close()
    return (n - 1) / seconds


def adapter_consume(queue: str, n: int) -> float:
    adapter = from_url(f"{URL}?queue={queue}&queue_type={QUEUE_TYPE}", prefetch=PREFETCH)
    seen = 0

    def run() -> None:
        nonlocal seen
        while seen < n:
            bags = adapter.receive(adapter.max_receive, 1.0)
            adapter.ack(bags)
            seen += len(bags)

    seconds = timed(run)
    adapter.close()
    return n / seconds


# ---- qchan kernel ---------------------------------------------------------------


def kernel_available() -> bool:
    try:
        import qchan

        return all(hasattr(qchan, name) for name in ("connect", "enqueue", "dequeue"))
    except ImportError:
        return False


def qchan_enqueue(queue: str, n: int) -> float:
    from qchan import connect, enqueue
    from qchan.endpoints import AT_MOST_ONCE

    objs = [Payload(i, "x" * 1000) for i in range(n)]
    with connect(f"{URL}?queue={queue}&queue_type={QUEUE_TYPE}") as q:
        with enqueue(Payload, q, policy=AT_MOST_ONCE, capacity=2 * BATCH) as (out, dlq):
            out.send(objs[0])
            t0 = time.perf_counter()
            for obj in objs[1:]:
                out.send(obj)
        seconds = time.perf_counter() - t0  # leaving the block waited for the flush
        assert len(dlq) == 0, f"{len(dlq)} messages on dlq"
    return (n - 1) / seconds


def qchan_dequeue(queue: str, n: int, prefetch: int | None = None) -> float:
    """With prefetch None: qchan's defaults (prefetch = in-flight limit = 500)."""
    from qchan import connect, dequeue

    options: dict[str, Any] = (
        {} if prefetch is None else {"prefetch": prefetch, "in_flight": prefetch}
    )
    url = f"{URL}?queue={queue}&queue_type={QUEUE_TYPE}"
    with connect(url, **options) as q, dequeue(Payload, q) as (rcv, ack):
        t0 = time.perf_counter()
        for seen, msg in enumerate(rcv, 1):
            ack.send(msg)
            if seen >= n:
                break
        seconds = time.perf_counter() - t0
    return n / seconds


# ---- the table --------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    args = parser.parse_args()
    global QUEUE_TYPE
    n, qt = args.messages, args.queue_type
    QUEUE_TYPE = qt
    n_slow = min(n, 4000)  # the confirm-per-message loop is slow; its rate does not depend on n

    rates: dict[str, float] = {}

    def row(label: str, fn: Callable[[str], float], prefill: int = 0) -> None:
        with fresh_queue(qt) as queue:
            if prefill:
                fill(queue, prefill)
            rates[label] = fn(queue)
        print(f"  {label}: {rates[label]:,.0f} msg/s", file=sys.stderr)

    row("raw pika publish, no confirms", lambda q: raw_publish(q, n, confirm=False))
    row("raw pika publish, confirm per message", lambda q: raw_publish(q, n_slow, confirm=True))
    row(f"raw pika publish, confirms pipelined x{BATCH}", lambda q: raw_publish_pipelined(q, n))
    row("qchan adapter send_batch (confirms on)", lambda q: adapter_publish(q, n))
    row(f"raw pika consume + ack, prefetch {PREFETCH}", lambda q: raw_consume(q, n), prefill=n)
    row("raw pika consume + ack, prefetch 500", lambda q: raw_consume(q, n, 500), prefill=n)
    row(
        f"qchan adapter receive + ack, prefetch {PREFETCH}",
        lambda q: adapter_consume(q, n),
        prefill=n,
    )
    kernel = kernel_available()
    if kernel:
        row("qchan enqueue (confirms on)", lambda q: qchan_enqueue(q, n))
        row(
            "qchan dequeue + ack (defaults: prefetch 500)", lambda q: qchan_dequeue(q, n), prefill=n
        )
        row(
            f"qchan dequeue + ack, prefetch {PREFETCH}",
            lambda q: qchan_dequeue(q, n, PREFETCH),
            prefill=n,
        )

    no_conf = rates["raw pika publish, no confirms"]
    per_msg = rates["raw pika publish, confirm per message"]
    consume = rates[f"raw pika consume + ack, prefetch {PREFETCH}"]
    print(f"\nRabbitMQ {qt} queue, {n:,} messages of {len(BODY)} bytes, one run\n")
    print("| case | msg/s | vs raw confirm-per-msg | vs raw no-confirm | vs raw consume | target |")
    print("|---|---:|---:|---:|---:|---|")
    targets = {
        "qchan enqueue (confirms on)": ">= 3x confirm-per-msg and >= 0.5x no-confirm",
        "qchan dequeue + ack (defaults: prefetch 500)": ">= 0.9x raw consume (prefetch 100)",
    }
    for label, rate in rates.items():
        consuming = "consume" in label or "receive" in label or "dequeue" in label
        cells = (
            ["", "", f"{rate / consume:.2f}x"]
            if consuming
            else [f"{rate / per_msg:.2f}x", f"{rate / no_conf:.2f}x", ""]
        )
        print(f"| {label} | {rate:,.0f} | {' | '.join(cells)} | {targets.get(label, '')} |")
    if kernel:
        enq = rates["qchan enqueue (confirms on)"]
        deq = rates["qchan dequeue + ack (defaults: prefetch 500)"]
        ok = enq >= 3 * per_msg and enq >= 0.5 * no_conf and deq >= 0.9 * consume
        print(f"\ntargets {'met' if ok else 'NOT met'}")
    else:
        print("\n(kernel not available: enqueue/dequeue rows skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
