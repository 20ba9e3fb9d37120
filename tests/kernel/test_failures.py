"""Supervision: a worker thread that raises fails its queue loudly, and nothing hangs
(issue 14, point 1; DESIGN.md section 9).

Each test injects one failure into one kind of kernel thread (emitter, the consumer
as it receives and as it hands over, a `serve` worker) and checks the whole rule: the
error is on `errors` and in the log with its traceback; the queue shows it is failed;
every call blocked on one of its channels raises `QueueFailed` (its `__cause__` the
original error) within a second; leaving the `with` blocks and `q.close()` return within
close_timeout, and what was not delivered is named; un-acked messages stay on the
broker. Every wait has a deadline.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from support.helpers import start, wait_for

from qchan import (
    Backoff,
    Bag,
    Chan,
    Constant,
    EnqueueError,
    QchanError,
    Queue,
    QueueFailed,
    dequeue,
    enqueue,
    enqueue_sync,
    observe,
    select,
    serve,
)
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.kernel.consumer import Consumer
from qchan.testing import Faulty, Order, Wrapped

CLOSE = 2.0  # close_timeout of every queue here


@pytest.fixture
def name() -> str:
    return f"fail-{uuid.uuid4().hex[:10]}"


class BrokenBackoff(Backoff):
    """A user's own policy with a bug: asked for the first retry, it raises."""

    def delay(self, attempt: int) -> float:
        raise ZeroDivisionError("a bug in the user's Backoff")


class JunkReceive(Wrapped):
    """A user's adapter with a bug: `receive` returns the real bags and something else."""

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        bags = list(self.inner.receive(max_items, wait))
        return [*bags, "not a Bag"] if bags else bags  # type: ignore[list-item]


def _errors() -> Chan[Exception]:
    return Chan(64)


def _failure_on(errors: Chan[Exception], timeout: float = 5.0) -> QueueFailed:
    deadline = time.monotonic() + timeout
    while True:
        err = errors.recv(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(err, QueueFailed):
            return err


def _raises_queue_failed_soon(call: Any, *args: Any) -> QueueFailed:
    """`call(*args)` is blocked; it must raise QueueFailed within a second of the failure."""
    w = start(call, *args)
    w.join(5.0)
    assert not w.is_alive(), f"{call} still blocked 5 s after the queue failed"
    assert isinstance(w.error, QueueFailed), w.error
    return w.error


def _check_failed(q: Queue, cause: type[BaseException]) -> None:
    assert q.failure is not None
    assert isinstance(q.failure.__cause__, cause)
    assert q.stats().failed
    assert "failed" in repr(q)
    assert q.wait(timeout=1.0)


@pytest.fixture
def crit_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="qchan")
    return caplog


def _logged_with_traceback(caplog: pytest.LogCaptureFixture, cause: type[BaseException]) -> None:
    records = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is not None and records[0].exc_info[0] is cause


# -- the emitter ---------------------------------------------------------------------


def test_emitter_failure_fails_the_queue_and_names_every_message(
    name: str, crit_logs: pytest.LogCaptureFixture
) -> None:
    errors = _errors()
    q = Queue(
        Faulty(EmbeddedAdapter(name)),
        retry=BrokenBackoff(),
        errors=errors,
        close_timeout=CLOSE,
        linger=0.001,
    )
    accepted: list[Order] = []
    started = time.monotonic()
    raised: list[QueueFailed] = []

    def produce() -> None:
        with enqueue(Order, q) as (out, dlq):
            for i in range(1000):  # the emitter dies on its first retry; sends then raise
                order = Order(id=str(i), amount=1.0)
                try:
                    out.send(order, timeout=5.0)
                except QueueFailed as e:
                    raised.append(e)
                    break
                accepted.append(order)
            try:
                dlq.recv(timeout=5.0)  # a failed queue's dlq raises too, once drained
            except QueueFailed as e:
                raised.append(e)

    with pytest.raises(EnqueueError) as leaving:
        produce()
    assert len(raised) == 2, "a send and the dlq raise QueueFailed"
    assert all(isinstance(e.__cause__, ZeroDivisionError) for e in raised)
    # Leaving the block names every message whose send returned: none was delivered.
    assert sorted(m.object.id for m in leaving.value.failed) == sorted(o.id for o in accepted)
    assert all(isinstance(m.error, QueueFailed) for m in leaving.value.failed)
    assert isinstance(leaving.value.__cause__, QueueFailed)
    failure = _failure_on(errors)
    assert isinstance(failure.__cause__, ZeroDivisionError)
    _check_failed(q, ZeroDivisionError)
    q.close()
    assert time.monotonic() - started < CLOSE + 3
    _logged_with_traceback(crit_logs, ZeroDivisionError)
    with pytest.raises(QueueFailed):
        enqueue(Order, q)  # nothing more opens on a failed queue
    assert not broker(name).depth  # nothing was delivered, and nothing is lost: all named


def test_a_send_blocked_on_a_failed_queue_raises_within_a_second(name: str) -> None:
    errors = _errors()
    gate = threading.Event()

    class Gated(BrokenBackoff):
        def delay(self, attempt: int) -> float:
            gate.wait(10.0)
            raise ZeroDivisionError("a bug in the user's Backoff")

    q = Queue(
        Faulty(EmbeddedAdapter(name)),
        retry=Gated(),
        errors=errors,
        close_timeout=CLOSE,
        batch_size=1,
    )
    q2_out, _ = enqueue(Order, q)
    q2_out.send(Order(id="0", amount=1.0))  # the emitter takes it and retries: held in Gated
    blocked = start(lambda: [q2_out.send(Order(id=str(i), amount=1.0)) for i in range(1, 99)])
    assert not blocked.done.wait(0.5), blocked.error  # it stays blocked while the emitter retries
    gate.set()
    t0 = time.monotonic()
    blocked.join(5.0)
    assert not blocked.is_alive()
    assert isinstance(blocked.error, QueueFailed)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(EnqueueError) as closing:
        q.close()
    assert time.monotonic() - t0 < CLOSE + 1
    assert "0" in [m.object.id for m in closing.value.failed]


def test_a_sync_put_on_a_failed_queue_raises_queue_failed(name: str) -> None:
    q = Queue(Faulty(EmbeddedAdapter(name)), retry=BrokenBackoff(), close_timeout=CLOSE)
    with enqueue_sync(Order, q) as put:
        with pytest.raises(QueueFailed) as first:
            put.put(Order(id="1", amount=1.0), timeout=10.0)
        assert isinstance(first.value.__cause__, ZeroDivisionError)
        with pytest.raises(QueueFailed):
            put.put(Order(id="2", amount=1.0), timeout=10.0)
    q.close()


# -- the consumer, receiving -----------------------------------------------------------


def test_a_receive_failure_fails_the_queue_and_leaves_messages_on_the_broker(
    name: str, crit_logs: pytest.LogCaptureFixture
) -> None:
    broker(name).visibility_timeout = 0.5
    with Queue(EmbeddedAdapter(name)) as sender, enqueue(Order, sender) as (out, _):
        out.send(Order(id="kept", amount=1.0))
    errors = _errors()
    q = Queue(JunkReceive(EmbeddedAdapter(name)), errors=errors, close_timeout=CLOSE)
    started = time.monotonic()
    with dequeue(Order, q) as (rcv, ack):
        error = _raises_queue_failed_soon(rcv.recv)
        assert isinstance(error.__cause__, AttributeError)
        with pytest.raises(QueueFailed):
            for _ in rcv:
                pass
        with pytest.raises(QueueFailed):
            select(rcv, timeout=5.0)
    assert time.monotonic() - started < CLOSE + 3
    assert isinstance(_failure_on(errors).__cause__, AttributeError)
    _check_failed(q, AttributeError)
    q.close()
    _logged_with_traceback(crit_logs, AttributeError)
    # The message the consumer took and never handed over is redelivered by the broker.
    with Queue(EmbeddedAdapter(name), poll_wait=0.1) as again, dequeue(Order, again) as (rcv, ack):
        msg = rcv.recv(timeout=10.0)
        assert msg.object.id == "kept"
        ack.send(msg)


# -- the consumer, handing over --------------------------------------------------------


def test_consumer_failure_fails_the_queue(
    name: str, monkeypatch: pytest.MonkeyPatch, crit_logs: pytest.LogCaptureFixture
) -> None:
    def broken(self: Any, *args: Any) -> None:
        raise KeyError("a bug in the consumer")

    monkeypatch.setattr(Consumer, "_hand", broken)
    broker(name).visibility_timeout = 0.5
    errors = _errors()
    q = Queue(EmbeddedAdapter(name), errors=errors, close_timeout=CLOSE, poll_wait=0.1)
    started = time.monotonic()
    with enqueue(Order, q) as (out, _), dequeue(Order, q) as (rcv, ack):
        # The consumer raises on its way to handing the message over: the recv is blocked.
        blocked = start(rcv.recv)
        out.send(Order(id="1", amount=1.0))
        blocked.join(5.0)
        assert isinstance(blocked.error, QueueFailed)
        assert isinstance(blocked.error.__cause__, KeyError)
        with pytest.raises(QueueFailed):
            ack.send(object())  # type: ignore[arg-type]
    assert time.monotonic() - started < CLOSE + 3
    assert isinstance(_failure_on(errors).__cause__, KeyError)
    _check_failed(q, KeyError)
    q.close()
    _logged_with_traceback(crit_logs, KeyError)
    monkeypatch.undo()
    with Queue(EmbeddedAdapter(name), poll_wait=0.1) as again, dequeue(Order, again) as (rcv, ack):
        msg = rcv.recv(timeout=10.0)  # sent, never acked: redelivered
        assert msg.object.id == "1"
        ack.send(msg)


# -- serve's workers -------------------------------------------------------------------


class Fatal(BaseException):
    """Escapes `except Exception`: a handler (or a library under it) raising this kills
    an unsupervised thread."""


def test_a_serve_worker_that_dies_fails_the_queue_and_serve_raises(name: str) -> None:
    broker(name).visibility_timeout = 0.5
    with Queue(EmbeddedAdapter(name)) as sender, enqueue(Order, sender) as (out, _):
        out.send(Order(id="1", amount=1.0))

    def handler(order: Order) -> None:
        raise Fatal("escapes the handler's except Exception")

    q = Queue(EmbeddedAdapter(name), close_timeout=CLOSE, poll_wait=0.1)
    started = time.monotonic()
    with pytest.raises(QueueFailed) as raised:
        serve(handler, Order, q, workers=2, signals=())
    assert isinstance(raised.value.__cause__, Fatal)
    assert time.monotonic() - started < CLOSE + 5
    assert q.closed and q.stats().failed
    with Queue(EmbeddedAdapter(name), poll_wait=0.1) as again, dequeue(Order, again) as (rcv, ack):
        msg = rcv.recv(timeout=10.0)
        assert msg.object.id == "1"
        ack.send(msg)


def test_serve_raises_when_another_thread_fails_the_queue(name: str) -> None:
    q = Queue(JunkReceive(EmbeddedAdapter(name)), close_timeout=CLOSE, poll_wait=0.1)
    with Queue(EmbeddedAdapter(name)) as sender, enqueue(Order, sender) as (out, _):
        out.send(Order(id="1", amount=1.0))
    with pytest.raises(QueueFailed) as raised:
        serve(lambda o: None, Order, q, workers=2, signals=(), timeout=CLOSE)
    assert isinstance(raised.value.__cause__, AttributeError)


# -- misuse that does not fail the queue ------------------------------------------------


def test_an_ack_that_is_not_a_msg_is_reported_and_the_queue_goes_on(name: str) -> None:
    errors = _errors()
    with Queue(EmbeddedAdapter(name), errors=errors, poll_wait=0.1) as q:
        with enqueue(Order, q) as (out, _), dequeue(Order, q) as (rcv, ack):
            out.send(Order(id="1", amount=1.0))
            msg = rcv.recv(timeout=5.0)
            ack.send("oops")  # type: ignore[arg-type]
            err = errors.recv(timeout=5.0)
            assert isinstance(err, QchanError) and "not a Msg" in str(err)
            ack.send(msg)
            out.send(Order(id="2", amount=1.0))
            msg = rcv.recv(timeout=5.0)
            assert msg.object.id == "2"
            ack.send(msg)
        assert q.failure is None


def test_a_batch_of_acks_mixing_plain_failed_double_and_junk_settles_each_as_its_own(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The consumer settles plain acks inline and sends every other kind through the
    # careful path; in one batch of acks, each must still get its own outcome.
    errors = _errors()
    with Queue(EmbeddedAdapter(name), errors=errors, poll_wait=0.1) as q:
        with enqueue(Order, q) as (out, _), dequeue(Order, q) as (rcv, ack):
            for i in range(3):
                out.send(Order(id=str(i), amount=1.0))
            a, b, c = (rcv.recv(timeout=5.0) for _ in range(3))
            with caplog.at_level(logging.WARNING, logger="qchan.listener"):
                for m in [a, "oops", b.fail(ValueError("again")), a, c]:
                    ack.send(m)  # type: ignore[arg-type]
                err = errors.recv(timeout=5.0)
                assert isinstance(err, QchanError) and "not a Msg" in str(err)
                again = rcv.recv(timeout=5.0)  # b, nacked: redelivered
                assert (again.object.id, again.deliveries) == ("1", 2)
                ack.send(again)
                wait_for(lambda: q.stats().acked == 3, timeout=5.0, what="three acks applied")
        stats = q.stats()
        assert (stats.acked, stats.nacked) == (3, 1)
        assert "not in flight" in caplog.text  # a, acked twice
        assert q.failure is None


def test_an_exporter_that_raises_is_logged_and_called_again(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = threading.Semaphore(0)

    def export(queue: str, stats: Any) -> None:
        calls.release()
        raise OSError("the metrics endpoint is down")

    with Queue(EmbeddedAdapter(name)) as q:
        stop = observe(q, export, every=0.01)
        for _ in range(3):
            assert calls.acquire(timeout=5.0)
        stop()
        assert q.failure is None
    failures = [r for r in caplog.records if "export" in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    assert len(failures) < 3  # not one traceback per tick


class NoOutcomes(Wrapped):
    """A user's adapter with a bug on the send side: send_batch returns None."""

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        return None  # type: ignore[return-value]


class Crashes(Wrapped):
    """An adapter whose send_batch raises what `except Exception` does not catch."""

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        raise Fatal("the adapter's thread-killing bug")


def test_a_send_side_adapter_bug_is_named_on_dlq_not_lost(name: str) -> None:
    """An adapter returning garbage: each message fails, is retried, then handed back."""
    q = Queue(
        NoOutcomes(EmbeddedAdapter(name)), retry=Constant(0.0, max_attempts=2), close_timeout=CLOSE
    )
    with q, enqueue(Order, q) as (out, dlq):
        out.send(Order(id="1", amount=1.0))
        msg = dlq.recv(timeout=5.0)
        assert msg.object.id == "1" and isinstance(msg.error, TypeError)
    assert q.failure is None


def test_a_send_side_adapter_that_raises_base_exception_fails_the_queue(name: str) -> None:
    q = Queue(Crashes(EmbeddedAdapter(name)), close_timeout=CLOSE)
    started = time.monotonic()

    def produce() -> None:
        with enqueue(Order, q) as (out, _):
            for i in range(1, 100):  # the first batch kills the emitter; a later send raises
                out.send(Order(id=str(i), amount=1.0), timeout=5.0)

    with pytest.raises(EnqueueError) as leaving:
        produce()
    assert "1" in [m.object.id for m in leaving.value.failed]
    assert isinstance(leaving.value.__cause__, QueueFailed)
    assert isinstance(leaving.value.__cause__.__cause__, Fatal)
    q.close()
    assert time.monotonic() - started < CLOSE + 3
