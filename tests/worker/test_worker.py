"""serve(): worker threads, ack on return, nack on exception, graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from support.helpers import start, wait_for

from qchan import AT_MOST_ONCE, Queue, Retries, enqueue, serve
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Order
from qchan.worker import _SignalStop, stop_on_signals


def test_handles_acks_and_stops_on_the_event() -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    with enqueue(Order, q, policy=AT_MOST_ONCE) as (out, _):
        for i in range(50):
            out.send(Order(str(i), 1.0))
    seen: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def handle(o: Order) -> None:
        with lock:
            seen.append(o.id)
            if len(seen) == 50:
                stop.set()

    served = start(serve, handle, Order, q, workers=4, stop=stop).outcome(30)
    assert sorted(seen, key=int) == [str(i) for i in range(50)]
    assert (served.handled, served.failed) == (50, 0)
    assert q.closed and broker(name).depth == 0 and broker(name).in_flight == 0
    assert not [t for t in threading.enumerate() if t.name.startswith(f"qchan-worker-{name}")]


def test_a_raising_handler_nacks_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("flaky", 1.0))
    attempts: list[int] = []
    stop = threading.Event()

    def handle(o: Order) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first time fails")
        stop.set()

    with caplog.at_level(logging.WARNING, logger="qchan.worker"):
        served = start(
            serve, handle, Order, q, workers=2, stop=stop, retries=Retries(delay=0.01)
        ).outcome(30)
    assert (served.handled, served.failed, len(attempts)) == (1, 1, 2)
    assert "first time fails" in caplog.text and "redelivered" in caplog.text


def test_stop_finishes_the_message_in_hand_and_releases_the_rest() -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    with enqueue(Order, q, policy=AT_MOST_ONCE) as (out, _):
        for i in range(20):
            out.send(Order(str(i), 1.0))
    stop = threading.Event()
    in_hand = threading.Event()
    release = threading.Event()

    def handle(o: Order) -> None:
        in_hand.set()
        release.wait(10)  # slow handler: stopping happens while it holds a message

    w = start(serve, handle, Order, q, workers=1, stop=stop)
    in_hand.wait(10)
    stop.set()
    release.set()
    served = w.outcome(30)
    assert served.handled >= 1
    # What the worker finished is acked; everything else is back on the broker.
    assert broker(name).depth == 20 - served.handled and broker(name).in_flight == 0


def test_sigterm_stops_a_worker_process_gracefully(tmp_path: object) -> None:
    """A real process: serve() in the main thread, SIGTERM, clean exit with a summary."""
    script = textwrap.dedent(
        """
        import sys, threading
        from qchan import Queue, enqueue, serve
        from qchan.adapters.embedded import EmbeddedAdapter, broker
        from qchan.testing import Order
        q = Queue(EmbeddedAdapter("sig"), poll_wait=0.1)
        with enqueue(Order, q) as (out, _):
            for i in range(5):
                out.send(Order(str(i), 1.0))
        done = []
        def handle(o):
            done.append(o.id)
            if len(done) == 5:
                print("READY", flush=True)
        served = serve(handle, Order, q, workers=2)
        print("SERVED", served.handled, broker("sig").depth, broker("sig").in_flight, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.split() == ["SERVED", "5", "0", "0"]


def test_a_signal_that_lands_while_the_main_thread_holds_the_stop_events_lock() -> None:
    """The handler runs between two bytecodes of the main thread, which may be inside
    `stop.wait()` holding the event's lock: `stop.set()` there deadlocked (seen on CI,
    a worker process that never exited after SIGTERM)."""
    stop = threading.Event()
    received: list[signal.Signals] = []
    watcher = _SignalStop(stop, received)
    try:

        def signal_inside_wait() -> None:
            with stop._cond:  # type: ignore[attr-defined]  # as inside Event.wait
                watcher.handler(signal.SIGTERM, None)

        landed = start(signal_inside_wait)
        landed.outcome(5.0)  # returns: the handler did not wait for the lock
        assert stop.wait(5.0)
        assert received == [signal.SIGTERM]
    finally:
        watcher.close()


def test_stop_on_signals_sets_the_event_names_the_signal_and_restores_handlers() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_signals(stop, (signal.SIGUSR1,)) as received:
        assert signal.getsignal(signal.SIGUSR1) is not before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(5.0)
    assert received == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) is before


def test_queue_closed_elsewhere_ends_serve() -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    w = start(serve, lambda o: None, Order, q, workers=2)
    wait_for(
        lambda: [t for t in threading.enumerate() if t.name.startswith("qchan-worker")],
        what="workers up",
    )
    q.close()
    assert w.outcome(30).handled == 0


def test_a_handler_that_hangs_past_time_to_flight_is_redelivered_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1, time_to_flight=0.3)
    with enqueue(Order, q) as (out, _):
        out.send(Order("slow", 1.0))
    calls: list[str] = []
    stop = threading.Event()
    release = threading.Event()

    def handle(o: Order) -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            release.wait(10)  # hangs past time_to_flight
        else:
            stop.set()  # the redelivered copy, on another worker

    with caplog.at_level(logging.WARNING, logger="qchan"):
        w = start(serve, handle, Order, q, workers=2, stop=stop)
        wait_for(lambda: len(calls) == 2, what="the redelivery")
        release.set()
        served = w.outcome(30)
    assert calls[0] != calls[1]
    assert "not acked within time_to_flight=0.3s" in caplog.text
    assert served.handled == 2 and q.stats().expired == 1


@pytest.mark.integration
def test_sigterm_during_a_batch_finishes_the_message_in_hand_and_leaves_the_rest() -> None:
    """A worker process over RabbitMQ, SIGTERM while a handler is busy: that message is
    finished and acked, every other one stays on the broker, exit code 0."""
    import pika

    queue = f"qchan-sig-{uuid.uuid4().hex[:8]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/%2F?queue={queue}"
    script = textwrap.dedent(
        f"""
        import threading, time
        from qchan import connect, enqueue, serve
        from qchan.testing import Order
        q = connect({url!r})
        with enqueue(Order, q) as (out, _):
            for i in range(20):
                out.send(Order(str(i), 1.0))
        done = []
        def handle(o):
            print("BUSY", o.id, flush=True)
            time.sleep(1.0)  # a slow job: the signal arrives meanwhile
            done.append(o.id)
        served = serve(handle, Order, q, workers=1)
        print("SERVED", served.handled, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("BUSY")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        handled = int(out.split()[-1])
        assert handled >= 1
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
        ch = conn.channel()
        ready = ch.queue_declare(queue, passive=True).method.message_count
        assert ready == 20 - handled  # finished ones acked, the rest back on the broker
        for q_ in (queue, f"{queue}.dlq"):
            ch.queue_delete(q_)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
