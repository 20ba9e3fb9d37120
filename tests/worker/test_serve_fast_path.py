"""serve's per-message path: no span with nothing to trace, no select per buffered message."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from support.helpers import start, wait_for

from qchan import OptionError, Queue, enqueue, serve
from qchan.adapters.embedded import EmbeddedAdapter
from qchan.testing import Order
from qchan.worker import dequeue, select

trace = pytest.importorskip("opentelemetry.trace")


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a process that never set a tracer provider (other tests set one)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The (rcv, ack) pairs serve opens, as it opens them."""
    pairs: list[Any] = []

    def spy_dequeue(*args: Any, **kwargs: Any) -> Any:
        pairs.append(dequeue(*args, **kwargs))
        return pairs[-1]

    monkeypatch.setattr("qchan.worker.dequeue", spy_dequeue)
    return pairs


def _serve_one(q: Queue, handle: Any) -> tuple[int, int]:
    stop = threading.Event()

    def run(o: Order) -> None:
        handle(o)
        stop.set()

    served = start(serve, run, Order, q, workers=1, stop=stop).outcome(30)
    return served.handled, served.failed


def test_nothing_to_trace_runs_no_span_machinery(
    no_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tracer(*args: object, **kwargs: object) -> object:
        raise AssertionError("serve started a span with nothing to trace")

    monkeypatch.setattr(trace, "get_tracer", no_tracer)
    q = Queue(EmbeddedAdapter(f"t-{uuid.uuid4().hex[:8]}"), poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("plain", 1.0))  # no span here: no traceparent
    current: list[object] = []
    assert _serve_one(q, lambda o: current.append(trace.get_current_span())) == (1, 0)
    assert current == [trace.INVALID_SPAN]
    assert q.failure is None


def test_without_a_provider_the_handler_still_continues_the_producers_trace(
    no_provider: None,
) -> None:
    # No SDK: otel's API still carries a remote parent into the handler's
    # context, so that the handler's own sends pass the trace on.
    parent = trace.SpanContext(
        trace_id=0x1234, span_id=0x5678, is_remote=False, trace_flags=trace.TraceFlags(1)
    )
    q = Queue(EmbeddedAdapter(f"t-{uuid.uuid4().hex[:8]}"), poll_wait=0.1)
    with trace.use_span(trace.NonRecordingSpan(parent)), enqueue(Order, q) as (out, _):
        out.send(Order("traced", 1.0))
    seen: list[Any] = []
    assert _serve_one(q, lambda o: seen.append(trace.get_current_span().get_span_context()))
    assert [(c.trace_id, c.span_id) for c in seen] == [(0x1234, 0x5678)]


def test_a_worker_takes_buffered_messages_without_a_select_each(
    monkeypatch: pytest.MonkeyPatch, opened: list[Any]
) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        for i in range(52):
            out.send(Order(str(i - 32), 1.0))
    with dequeue(Order, q) as (rcv, ack):  # 32 settled: the buffer has earned its size
        for _ in range(32):
            ack.send(rcv.recv(timeout=5))
    selects: list[int] = []

    def spy_select(*cases: Any, **kwargs: Any) -> Any:
        selects.append(1)
        return select(*cases, **kwargs)

    monkeypatch.setattr("qchan.worker.select", spy_select)
    stop = threading.Event()
    seen: list[str] = []

    def handle(o: Order) -> None:
        if not seen:  # the other 19 wait in serve's buffer (it holds up to 32)
            wait_for(lambda: len(opened[0].rcv) == 19, timeout=10)
        seen.append(o.id)
        if len(seen) == 20:
            stop.set()

    served = start(serve, handle, Order, q, workers=1, stop=stop).outcome(30)
    assert (served.handled, sorted(seen, key=int)) == (20, [str(i) for i in range(20)])
    # One select for the first message, one that sees the stop; none for the 19 buffered.
    assert len(selects) <= 2


def test_idle_workers_wait_one_at_a_time_on_rcv(opened: list[Any]) -> None:
    # Every idle worker parked on rcv was woken by every hand-off (a thundering herd:
    # serve(workers=4) at 0.7x of one worker's speed); now one waits there and the
    # others wait for their turn, and all four still work when messages queue up.
    name = f"t-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    stop = threading.Event()
    release = threading.Event()
    busy: set[str] = set()
    lock = threading.Lock()

    def handle(o: Order) -> None:
        with lock:
            busy.add(threading.current_thread().name)
        release.wait(30)

    worker = start(serve, handle, Order, q, workers=4, stop=stop)
    wait_for(lambda: opened, timeout=10)
    waiting = opened[0].rcv._chan._recvq
    wait_for(lambda: len(waiting) == 1, timeout=10, what="a worker waiting on rcv")
    assert len(waiting) == 1  # and no more, while all four are idle
    with enqueue(Order, q) as (out, _):
        for i in range(4):
            out.send(Order(str(i), 1.0))
    wait_for(lambda: len(busy) == 4, timeout=10, what="four busy workers")
    release.set()
    stop.set()
    assert worker.outcome(30).handled == 4


@pytest.mark.parametrize(("workers", "capacity", "buffer"), [(4, 128, 128), (8, 2, 8)])
def test_capacity_sets_the_buffer_and_holds_at_least_one_per_worker(
    opened: list[Any], workers: int, capacity: int, buffer: int
) -> None:
    q = Queue(EmbeddedAdapter(f"t-{uuid.uuid4().hex[:8]}"), poll_wait=0.1)
    stop = threading.Event()
    stop.set()
    serve(lambda o: None, Order, q, workers=workers, capacity=capacity, stop=stop, signals=())
    assert opened[0].rcv.capacity == buffer


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_a_bad_capacity_is_refused_at_the_call(capacity: Any) -> None:
    q = Queue(EmbeddedAdapter(f"t-{uuid.uuid4().hex[:8]}"), poll_wait=0.1)
    with pytest.raises(OptionError, match="capacity"):
        serve(lambda o: None, Order, q, capacity=capacity, signals=())
    q.close()


def test_a_worker_stuck_at_the_deadline_still_counts_what_it_handled() -> None:
    # Workers count without a lock per message; serve reads the counts when it returns,
    # so a worker still busy at the deadline must not take its earlier work with it.
    q = Queue(EmbeddedAdapter(f"t-{uuid.uuid4().hex[:8]}"), poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        for i in range(4):
            out.send(Order(str(i), 1.0))
    stop, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def handle(o: Order) -> None:
        seen.append(o.id)
        if len(seen) == 4:  # the fourth never finishes before serve gives up on it
            stop.set()
            release.wait(30)

    try:
        served = start(
            serve, handle, Order, q, workers=1, stop=stop, signals=(), timeout=0.5
        ).outcome(30)
    finally:
        release.set()
    assert (served.handled, served.failed) == (3, 0)
