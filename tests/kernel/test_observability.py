"""Stats export, per-queue log records, and trace context from producer to consumer."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest
from support.helpers import start, wait_for
from support.otel import memory_spans

from qchan import Queue, Stats, dequeue, enqueue, enqueue_sync, observe, serve
from qchan.adapters.embedded import EmbeddedAdapter
from qchan.kernel.stats import Counters
from qchan.testing import Faulty, Order


def _name() -> str:
    return f"obs-{uuid.uuid4().hex[:8]}"


def test_observe_exports_stats_periodically_and_at_close() -> None:
    q = Queue(EmbeddedAdapter(_name()), poll_wait=0.1)
    seen: list[tuple[str, Stats]] = []
    observe(q, lambda name, s: seen.append((name, s)), every=0.05)
    with enqueue(Order, q) as (out, _):
        out.send(Order("1", 1.0))
    wait_for(lambda: len(seen) >= 2, what="two exports")
    q.close()
    wait_for(lambda: seen[-1][1].sent == 1, what="a final export after close")
    assert {name for name, _ in seen} == {q.name}
    assert seen[-1][1].as_dict()["sent"] == 1


def test_every_kernel_log_record_names_its_queue(caplog: pytest.LogCaptureFixture) -> None:
    name = _name()
    from qchan import Constant

    q = Queue(Faulty(EmbeddedAdapter(name)), poll_wait=0.1, retry=Constant(0.0, max_attempts=2))
    with caplog.at_level(logging.INFO, logger="qchan"):
        out, dlq = enqueue(Order, q)
        out.send(Order("x", 1.0))
        dlq.recv(timeout=5)
        q.close()
    records = [r for r in caplog.records if r.name.startswith("qchan.")]
    assert records, "the failure path logged nothing"
    assert all(getattr(r, "queue", None) == name for r in records), [
        (r.name, r.getMessage()) for r in records if getattr(r, "queue", None) != name
    ]


otel = pytest.importorskip("opentelemetry.sdk.trace")


@pytest.fixture
def spans() -> object:
    return memory_spans()


@pytest.mark.parametrize("how", ["out.send", "put"])
def test_a_trace_continues_from_producer_to_consumer(spans: object, how: str) -> None:
    from opentelemetry import trace

    q = Queue(EmbeddedAdapter(_name()), poll_wait=0.1)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("checkout") as producer:
        if how == "put":
            with enqueue_sync(Order, q) as orders:
                orders.put(Order("t", 1.0))
        else:
            with enqueue(Order, q) as (out, _):
                out.send(Order("t", 1.0))
    stop = threading.Event()
    start(serve, lambda o: stop.set(), Order, q, workers=1, stop=stop).outcome(30)
    finished = spans.get_finished_spans()  # type: ignore[attr-defined]
    consumer = [s for s in finished if s.name == "Order process"]
    assert len(consumer) == 1
    ctx = producer.get_span_context()
    assert consumer[0].context.trace_id == ctx.trace_id
    assert consumer[0].parent is not None and consumer[0].parent.span_id == ctx.span_id
    assert consumer[0].kind == trace.SpanKind.CONSUMER


def test_no_active_span_adds_no_attributes(spans: object) -> None:
    q = Queue(EmbeddedAdapter(_name()), poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("u", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=5)
        ack.send(m)
    assert "traceparent" not in m.attributes
    q.close()


def test_repeated_lines_are_collapsed_and_counted() -> None:
    from qchan.logs import Repeats

    now = [0.0]
    repeats = Repeats(every=30.0, clock=lambda: now[0])
    assert repeats.check("connect to 127.0.0.1:9099 failed (after 0ms)") == (True, 0)
    for ms in range(1, 6):  # alike: they differ only in numbers
        assert repeats.check(f"connect to 127.0.0.1:9099 failed (after {ms}ms)") == (False, 0)
    assert repeats.check("another problem") == (True, 0)
    now[0] = 31.0
    assert repeats.check("connect to 127.0.0.1:9099 failed (after 9ms)") == (True, 5)


def test_a_reported_error_is_logged_once_with_one_prefix(caplog: pytest.LogCaptureFixture) -> None:
    from qchan import ConnectionLost, QchanError, Queue
    from qchan.adapters.embedded import EmbeddedAdapter

    with Queue(EmbeddedAdapter("obs-prefix")) as q, caplog.at_level(logging.ERROR, "qchan"):
        q._report(QchanError("queue 'obs-prefix': it names the queue already"))
        q._report(QchanError("it does not"))
        for _ in range(3):  # the broker is away: said once per 30 s
            q._report(ConnectionLost("queue 'obs-prefix': again and again"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "queue 'obs-prefix': it names the queue already",
        "queue obs-prefix: it does not",
        "queue 'obs-prefix': again and again",
    ]


def test_a_snapshot_gives_each_counter_under_its_own_name() -> None:
    counters = Counters()
    for i, name in enumerate(Counters.__slots__, start=1):
        setattr(counters, name, i)
    snap = counters.snapshot(in_flight=99, failed=True).as_dict()
    assert snap == {
        **{name: i for i, name in enumerate(Counters.__slots__, start=1)},
        "in_flight": 99,
        "failed": True,
    }
