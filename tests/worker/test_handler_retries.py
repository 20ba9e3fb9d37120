"""Handler retries in `serve`, with backoff (issue 14, point 3), on the embedded broker.

A failed message is redelivered after a delay that grows per delivery, up to
`max_deliveries`, then dead-lettered; `give_up_on` dead-letters at once. Every
test has a deadline; timings are checked as lower bounds only (a slow machine
may add, never remove, time).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid

import pytest
from support.helpers import start, wait_for

from qchan import Queue, Retries, dequeue, enqueue, serve
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.options import OptionError
from qchan.testing import Order


@pytest.fixture
def name() -> str:
    return f"hr-{uuid.uuid4().hex[:10]}"


def _queue(name: str, *orders: str) -> Queue:
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1, close_timeout=2)
    with enqueue(Order, q) as (out, _):
        for oid in orders:
            out.send(Order(oid, 1.0))
    return q


def _dead_letter(name: str) -> threading.Event:
    """Set once the broker holds a dead letter."""
    dead = threading.Event()
    start(lambda: (wait_for(lambda: broker(name).dead_letters, 30.0, "a dead letter"), dead.set()))
    return dead


def _serve_until(q: Queue, handler: object, done: threading.Event, **options: object) -> object:
    stop = threading.Event()
    worker = start(serve, handler, Order, q, workers=2, stop=stop, signals=(), **options)
    assert done.wait(30.0), "the handler's outcome did not come within 30 s"
    stop.set()
    return worker.outcome(30.0)


def test_a_handler_that_always_fails_is_retried_with_growing_delays_then_dead_lettered(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = _queue(name, "always")
    calls: list[float] = []

    def handle(order: Order) -> None:
        calls.append(time.monotonic())
        raise ConnectionError("the downstream service is down")

    retries = Retries(delay=0.1, factor=2.0, max_deliveries=4, jitter=False)
    with caplog.at_level(logging.WARNING, logger="qchan.worker"):
        served = _serve_until(q, handle, _dead_letter(name), retries=retries)
    assert len(calls) == 4 and served.failed == 4  # type: ignore[attr-defined]
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= delay * 0.9, (gaps, "a redelivery came before its delay")
    assert [b.id for b in broker(name).dead_letters] and q.stats().gave_up == 1
    records = [r for r in caplog.records if r.name == "qchan.worker" and "handler" in r.message]
    assert [r.levelno for r in records] == [logging.WARNING] * 3 + [logging.ERROR]
    assert all(r.exc_info and r.exc_info[0] is ConnectionError for r in records)
    assert "delivery 4 of 4" in records[-1].message and "max_deliveries" in records[-1].message


def test_no_hot_loop_by_default(name: str) -> None:
    """Before: 184 handler calls and 1,289 log lines in 2 s. Default policy: 1 s, 2 s, ..."""
    q = _queue(name, "always")
    calls: list[float] = []
    stop = threading.Event()

    def handle(order: Order) -> None:
        calls.append(time.monotonic())
        raise ConnectionError("down")

    worker = start(serve, handle, Order, q, workers=4, stop=stop, signals=())
    wait_for(lambda: calls, 10.0, "the first call")
    threading.Event().wait(2.0)  # the outcome here is how few calls 2 s bring: time is the test
    stop.set()
    worker.outcome(30.0)
    assert 1 <= len(calls) <= 3, calls


def test_fails_twice_then_succeeds(name: str) -> None:
    q = _queue(name, "flaky")
    calls: list[int] = []
    done = threading.Event()

    def handle(order: Order) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise TimeoutError("slow downstream")
        done.set()

    served = _serve_until(q, handle, done, retries=Retries(delay=0.05))
    assert (served.handled, served.failed) == (1, 2)  # type: ignore[attr-defined]
    assert not broker(name).dead_letters and broker(name).depth == 0


class Invalid(ValueError):
    """A validation error: retrying cannot help."""


@pytest.mark.parametrize(
    ("error", "options"),
    [
        (Invalid("amount must be positive"), {"give_up_on": Invalid, "max_deliveries": 10}),
        (KeyError("a bug, not an outage"), {"retry_on": (ConnectionError, TimeoutError)}),
    ],
    ids=["give_up_on", "not-retry_on"],
)
def test_an_error_not_worth_retrying_is_dead_lettered_at_once(
    name: str, error: Exception, options: dict[str, object]
) -> None:
    q = _queue(name, "bad")
    calls: list[int] = []

    def handle(order: Order) -> None:
        calls.append(1)
        raise error

    _serve_until(q, handle, _dead_letter(name), **options)
    assert len(calls) == 1


def test_a_hand_written_loop_uses_the_same_policy(name: str) -> None:
    q = _queue(name, "loop")
    retries = Retries(delay=0.2, jitter=False, max_deliveries=2)
    with q, dequeue(Order, q) as (rcv, ack):
        first = rcv.recv(timeout=5.0)
        nack = retries.failed(first, ConnectionError("down"))
        assert (nack.delay, nack.dead) == (0.2, False)
        t0 = time.monotonic()
        ack.send(nack)
        second = rcv.recv(timeout=5.0)
        assert time.monotonic() - t0 >= 0.18 and second.deliveries == 2
        last = retries.failed(second, ConnectionError("down"))
        assert last.dead
        ack.send(last)
        wait_for(lambda: broker(name).dead_letters, 5.0, "the dead letter")


def test_retry_options_are_checked(name: str) -> None:
    q = _queue(name)
    with q:
        with pytest.raises(OptionError, match="not both"):
            serve(print, Order, q, retries=Retries(), max_deliveries=3)
        with pytest.raises(OptionError, match="exception classes"):
            serve(print, Order, q, give_up_on="ValueError")  # type: ignore[arg-type]
        with pytest.raises(OptionError, match="max_deliveries must be"):
            serve(print, Order, q, max_deliveries=0)
        with pytest.raises(OptionError, match=r"retries must be a qchan\.Retries"):
            serve(print, Order, q, retries=3)  # type: ignore[arg-type]
