"""The `qchan send`, `listen` and `bench` commands (argument parsing lives in cli.py)."""

from __future__ import annotations

import base64
import json
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

import attrs

from ..chan import Chan
from ..codec import StrCodec
from ..endpoints import dequeue, enqueue
from ..errors import ConnectionLost
from ..kernel.queue import Queue, connect
from ..message import Msg
from ..retry import Exponential
from ..select import select
from ..urls import URLError, redact
from .progress import Progress

__all__ = ["JSONText", "bench", "listen", "send"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def err(text: str) -> None:
    print(f"qchan: {text}", file=sys.stderr, flush=True)


class JSONText(StrCodec):
    """A codec for JSON documents kept as text: sent byte for byte, labelled as JSON."""

    content_type = "application/json"


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(stream, 1):
        text = line.strip()
        if text:
            yield n, text


def _check(n: int, text: str) -> str | None:
    """Why line n is not a JSON document, or None."""
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return f"line {n}: not JSON: {e.msg} at column {e.colno}"
    return None


def send(q_factory: Any, category: str, source: IO[str], *, stream: bool, quiet: bool) -> int:
    """Enqueue each JSON line of `source` as one message of `category`."""
    q: Queue = q_factory()  # a bad URL is reported before any input is read
    try:
        return _send(q, category, source, stream=stream, quiet=quiet)
    finally:
        q.close()


def _send(q: Queue, category: str, source: IO[str], *, stream: bool, quiet: bool) -> int:
    items: Iterable[tuple[int, str]]
    if stream:
        items = _lines(source)
        total = 0
    else:  # validate everything first: bad input sends nothing at all
        items = list(_lines(source))
        for n, text in items:
            problem = _check(n, text)
            if problem:
                err(f"{problem}; nothing was sent")
                return EXIT_USAGE
        total = len(items)
        if not total:
            err("no JSON lines on the input; nothing was sent")
            return EXIT_USAGE
    failed: list[Msg[Any]] = []
    sent = 0
    progress = Progress(total, "sent") if (not quiet and total > 1000) else None
    bad_line: str | None = None
    sending = enqueue(str, q, category=category, codec=JSONText())
    # Drain the dlq as failures come, so a full dlq never holds the sender back.
    drain = threading.Thread(target=lambda: failed.extend(sending.dlq), name="qchan-cli-dlq")
    drain.start()
    try:
        for n, text in items:
            if stream:
                bad_line = _check(n, text)
                if bad_line:
                    break
            sending.out.send(text)
            sent += 1
            if progress and sent % 200 == 0:
                progress.update(sent)
    finally:
        failed.extend(sending.close())
        drain.join()
    if progress:
        progress.finish(sent)
    delivered = sent - len(failed)
    if not quiet or failed or bad_line:
        err(
            f"sent {delivered:,} message(s) to {q.url} as {category!r}; "
            f"{len(failed):,} not delivered"
        )
    for m in failed[:5]:
        err(f"  not delivered: {str(m.object)[:60]}: {m.error}")
    if bad_line:
        err(f"stopped at {bad_line}; the {sent:,} line(s) before it were sent")
        return EXIT_USAGE
    return EXIT_FAILED if failed else EXIT_OK


def _body(data: bytes) -> dict[str, Any]:
    try:
        return {"body": json.loads(data)}
    except (ValueError, RecursionError):
        pass
    try:
        return {"body_text": data.decode()}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(data).decode()}


def listen(
    q_factory: Any,
    category: str,
    *,
    count: int | None,
    ack: bool,
    timeout: float | None,
    out: IO[str],
    grace: float = 0.0,
) -> int:
    """Print received messages as JSON lines; ack them unless told not to.

    Exits 1 if `count` messages did not come within `timeout`, or if the broker
    could not be reached (then it says why, once). With nothing received when the
    timeout passes, it waits up to `grace` s more for the transport to say whether
    the broker was reachable (a first connection attempt may take that long)."""
    errors: Chan[Exception] = Chan(256)
    q: Queue = q_factory(errors=errors)
    received = 0
    unreachable: Exception | None = None  # the last connection failure, until a message
    said: set[str] = set()
    with q, dequeue(bytes, q, category=category) as (rcv, acks):
        deadline = None if timeout is None else time.monotonic() + timeout
        while count is None or received < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            sel = select(rcv, errors, timeout=left)
            if sel is None and not received and unreachable is None and grace > 0:
                sel = select(errors, timeout=grace)  # did the first connection fail?
                grace = 0.0
                if sel is not None:
                    sel = sel._replace(index=1)
            if sel is None:
                if unreachable is not None:
                    err(
                        f"the broker could not be reached within {timeout} s (said above); "
                        f"received {received}"
                    )
                    return EXIT_FAILED
                err(f"no message within {timeout} s; received {received}")
                return EXIT_FAILED if count is not None else EXIT_OK
            if sel.index == 1:
                problem: Exception = sel.value
                if isinstance(problem, ConnectionLost):
                    unreachable = problem
                shape = re.sub(r"\d+", "#", str(problem))
                if shape not in said:  # each kind of problem once
                    said.add(shape)
                    err(str(problem))
                continue
            msg = sel.value
            unreachable = None
            if deadline is not None:
                deadline = time.monotonic() + timeout  # type: ignore[operator]
            line = {
                "category": msg.category,
                "attributes": dict(msg.attributes),
                **_body(msg.object),
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            if ack:
                acks.send(msg)
            received += 1
    return EXIT_OK


@attrs.frozen
class BenchMessage:
    """What `qchan bench` sends: a sequence number, a send time and padding."""

    seq: int
    sent_at: float
    pad: str


def bench(q_factory: Any, *, count: int, size: int, category: str, quiet: bool) -> int:
    """Enqueue and dequeue `count` messages of about `size` bytes; print rates and latency."""
    errors: Chan[Exception] = Chan(1024)  # other traffic on a shared queue is not ours
    q: Queue = q_factory(errors=errors)
    pad = "x" * max(0, size - 40)
    latencies: list[float] = []
    t_sent: list[float] = []
    failed: list[Msg[Any]] = []

    def produce() -> None:
        sending = enqueue(BenchMessage, q, category=category)
        clock = time.perf_counter
        for i in range(count):
            sending.out.send(BenchMessage(i, clock(), pad))
        failed.extend(sending.close())
        t_sent.append(clock())

    with q:
        start = time.perf_counter()
        producer = threading.Thread(target=produce, name="qchan-bench-producer")
        with dequeue(BenchMessage, q, category=category, capacity=256) as (rcv, acks):
            producer.start()
            first = None
            seen: set[int] = set()
            while len(seen) < count - len(failed):
                try:
                    msg = rcv.recv(timeout=60)
                except TimeoutError:
                    err(f"received {len(seen)} of {count} within 60 s of the last one")
                    break
                now = time.perf_counter()
                first = first or now
                if msg.object.seq not in seen:
                    seen.add(msg.object.seq)
                    latencies.append(now - msg.object.sent_at)
                acks.send(msg)
            done = time.perf_counter()
            producer.join()
    if not latencies:
        err("nothing was received")
        return EXIT_FAILED
    latencies.sort()
    elapsed_send = (t_sent[0] if t_sent else done) - start
    rows = [
        ("messages", f"{count:,} x {size:,} bytes"),
        ("enqueue (accepted by the broker)", f"{count / elapsed_send:,.0f} msg/s"),
        ("dequeue + ack", f"{len(seen) / max(done - (first or done), 1e-9):,.0f} msg/s"),
        ("end to end", f"{len(seen) / (done - start):,.0f} msg/s"),
        (
            "latency p50 / p99",
            f"{statistics.median(latencies) * 1e3:.2f} ms / "
            f"{latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3:.2f} ms",
        ),
        ("not delivered", f"{len(failed):,}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"qchan bench {q.url} (category {category!r})")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return EXIT_FAILED if failed or len(seen) < count else EXIT_OK


def _within(url: str, seconds: float) -> dict[str, Any]:
    """The transport's own timeouts, so that a command gives up after about `seconds`
    (a Kafka send alone waits `send_timeout`, 30 s by default)."""
    scheme = url.partition(":")[0].lower()
    seconds = max(1.0, seconds)
    if scheme == "kafka":
        return {"send_timeout": seconds, "admin_timeout": min(10.0, seconds)}
    if scheme in ("amqp", "amqps"):
        return {"confirm_timeout": seconds}
    if scheme == "sqs":
        return {"connect_timeout": min(5.0, seconds), "read_timeout": min(30.0, seconds + 1)}
    return {}


def factory(url: str, retry_seconds: float, agent: str, **options: Any) -> Any:
    """A function that opens the queue (so that URL errors surface where the caller wants)."""

    def make(**more: Any) -> Queue:
        try:
            return connect(
                url,
                agent=agent,
                retry=Exponential(max_attempts=None, max_elapsed=retry_seconds),
                **{**_within(url, retry_seconds), **options, **more},
            )
        except URLError:
            raise
        except (TypeError, ValueError) as e:  # an option the transport does not know, say
            raise URLError(f"cannot open {redact(url)}: {e}") from None

    return make
