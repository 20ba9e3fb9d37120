"""Delivery follows demand (issue 25), on every transport: the three most ordinary things a
deployment does, restart consumers, run several of them, and run handlers that take time,
lose nothing, dead-letter nothing the application never received, and hand nothing out
twice for having waited in qchan's own buffer.

Each scenario failed on the code before issue 25 (main at 84ac3a1):
- restarts: RabbitMQ dead-lettered 270 to 275 of 300 messages unseen by the 7th consumer
  (each close gave back the whole prefetch, and every return counted); mem:// and SQS
  count a receive, so a message given back often enough reached max_deliveries too;
- two consumers: the first took the whole backlog (400 / 0);
- slow handlers: on SQS with a 2 s visibility timeout, 42 of 100 were handled twice.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import pytest

from qchan import Chan, Msg, dequeue, enqueue, serve

from .harness import Numbered
from .transports import Transport


def _send(transport: Transport, name: str, run: str, n: int) -> None:
    q = transport.open(name)
    try:
        # Keyed, so that Kafka spreads the messages over its partitions.
        with enqueue(Numbered, q, key=lambda o: str(o.n)) as (out, _):
            for i in range(n):
                out.send(Numbered(run, i))
    finally:
        q.close()


def test_restarting_consumers_lose_nothing_and_count_no_give_back(
    transport: Transport,
) -> None:
    """300 messages; 15 consumers in turn, each receives and acks 5 and closes (a rolling
    deploy, a crash loop, `qchan listen --count 5` run 15 times), with max_deliveries=3.
    Then one consumer takes the rest. Every message is received exactly once, on its
    first delivery, and nothing is dead-lettered: what a closing consumer gives back
    was never handed to its application, so it is never a delivery."""
    name = transport.new_name()
    options = transport.limit(name, 3)
    _send(transport, name, "r", 300)
    seen: collections.Counter[int] = collections.Counter()
    deliveries: list[int] = []

    def turn(take: int) -> None:
        """One consumer: receive and ack `take` messages (or until all 300 were seen),
        then close."""
        q = transport.open(name, **options)
        try:
            with dequeue(Numbered, q) as (rcv, ack):
                for _ in range(take):
                    if len(seen) == 300:
                        break
                    m = rcv.recv(timeout=30)
                    seen[m.object.n] += 1
                    deliveries.append(m.deliveries)
                    ack.send(m)
        finally:
            q.close()

    for _ in range(15):
        turn(5)
    turn(300)
    assert sorted(seen) == list(range(300))
    assert set(seen.values()) == {1}, "a message was received twice"
    assert set(deliveries) == {1}, "a give-back counted as a delivery"
    assert transport.dead_letters(name) == 0


def test_two_consumers_share_a_waiting_backlog(transport: Transport) -> None:
    """400 messages wait; two `serve` consumers on connections of their own (2 workers, a
    20 ms handler), the second started 0.5 s after the first. Each handles a fair part
    (before: 400 / 0, the first had taken everything), and none twice.

    Kafka shares by partitions, once the group has rebalanced (about 3 s on the mock
    cluster), so its handler takes 50 ms; what waits in the first consumer's buffer for
    a partition it loses is taken out (before: handled there, and again by the new
    owner); only what its workers hold at that moment may be handled twice."""
    work = 0.05 if transport.name == "kafka" else 0.02
    may_repeat = 4 if transport.name == "kafka" else 0
    # Kafka: the second member's part waits for the rebalance, 3 s on the mock cluster and
    # twice that on a busy machine; what is fair is judged from then (below).
    fair = 0 if transport.name == "kafka" else 100
    left_when_second_began: list[int] = []
    name = transport.new_name()
    _send(transport, name, "b", 400)
    handled: list[collections.Counter[int]] = [collections.Counter(), collections.Counter()]
    lock = threading.Lock()
    done = threading.Event()
    stops = [threading.Event(), threading.Event()]

    def consumer(i: int) -> None:
        def handle(obj: Numbered) -> None:
            time.sleep(work)  # the handler's work, not a wait for an outcome
            with lock:
                if i == 1 and not left_when_second_began:
                    left_when_second_began.append(400 - len(handled[0] | handled[1]))
                handled[i][obj.n] += 1
                if len(handled[0] | handled[1]) >= 400:
                    done.set()

        q = transport.open(name)
        serve(handle, Numbered, q, workers=2, stop=stops[i], signals=())

    threads = [threading.Thread(target=consumer, args=(0,))]
    threads[0].start()
    time.sleep(0.5)  # the scenario: the second consumer starts half a second later
    threads.append(threading.Thread(target=consumer, args=(1,)))
    threads[1].start()
    assert done.wait(60), f"handled {len(handled[0] | handled[1])} of 400 in 60 s"
    for stop in stops:
        stop.set()
    for t in threads:
        t.join(30)
    first, second = sum(handled[0].values()), sum(handled[1].values())
    assert min(first, second) >= fair, f"shares {first} / {second} of 400"
    # From the moment the second consumer began, the two shared what was left: the first
    # had not taken it all ahead (the bug: it had, and the second got nothing).
    assert left_when_second_began, "the second consumer handled nothing"
    (left,) = left_when_second_began
    # Kafka shares by partitions: what is left in each depends on how far the first member
    # had read it, so the second member's two partitions may hold well under half the rest
    # (seen: 99 of 262 on a loaded machine). Taken ahead, it would be next to nothing.
    part = 0.25 if transport.name == "kafka" else 0.4
    assert second >= part * left, f"shares {first} / {second}, {left} left when the second began"
    twice = sorted(n for n, k in (handled[0] + handled[1]).items() if k > 1)
    assert len(twice) <= may_repeat, f"{len(twice)} handled twice: {twice[:10]}"


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="qchan")
    return caplog


def test_slow_handlers_never_handle_a_message_twice(
    transport: Transport, errors_logged: pytest.LogCaptureFixture
) -> None:
    """A 2 s visibility timeout, 40 messages, `serve(workers=2)` with a 200 ms handler:
    the last messages wait in the buffer about 3 s, longer than the timeout. With default
    options the kernel learns the timeout and keeps what it holds invisible: each
    message is handled once, and nothing is logged as an error (before: 42 of 100 twice
    on SQS, and a stream of ReceiptHandleIsInvalid errors)."""
    if transport.name not in ("mem", "sqs", "redis", "postgres"):
        pytest.skip(f"{transport.name} has no visibility timeout")
    name = transport.new_name()
    _send(transport, name, "s", 40)
    handled: collections.Counter[int] = collections.Counter()
    stop = threading.Event()

    def handle(obj: Numbered) -> None:
        time.sleep(0.2)  # the handler's work
        handled[obj.n] += 1
        if len(handled) >= 40:
            stop.set()

    q = transport.open(name)
    assert q.adapter.visibility == transport.redelivery
    watchdog = threading.Timer(60, stop.set)
    watchdog.start()
    try:
        serve(handle, Numbered, q, workers=2, stop=stop, signals=())
    finally:
        watchdog.cancel()
    assert sorted(handled) == list(range(40))
    twice = sorted(n for n, k in handled.items() if k > 1)
    assert not twice, f"handled twice: {twice}"
    assert not [r for r in errors_logged.records if r.levelno >= logging.ERROR]


def test_a_message_failed_every_time_is_dead_lettered_after_exactly_max_deliveries(
    transport: Transport,
) -> None:
    """max_deliveries=3 and an application that fails the message every time: it is
    delivered exactly 3 times (deliveries 1, 2, 3), then dead-lettered."""
    name = transport.new_name()
    options = transport.limit(name, 3)
    _send(transport, name, "f", 1)
    seen: list[int] = []
    errors: Chan[Exception] = Chan(100)
    q = transport.open(name, errors=errors, **options)
    try:
        with dequeue(Numbered, q) as (rcv, ack):
            deadline = time.monotonic() + 60
            while transport.dead_letters(name) == 0 and time.monotonic() < deadline:
                try:
                    m: Msg[Numbered] = rcv.recv(timeout=0.5)
                except TimeoutError:
                    continue
                seen.append(m.deliveries)
                ack.send(m.fail(ValueError("always")))
    finally:
        q.close()
    assert seen == [1, 2, 3]
    assert transport.dead_letters(name) == 1


def _peek_everything(transport: Transport, name: str, n: int, options: dict[str, Any]) -> None:
    """What `qchan listen --no-ack` does: receive everything, ack nothing, close."""
    q = transport.open(name, **options)
    try:
        with dequeue(Numbered, q) as (rcv, _):
            for _ in range(n):
                rcv.recv(timeout=30)
    finally:
        q.close()


def test_receiving_without_acking_ten_times_dead_letters_nothing(transport: Transport) -> None:
    """`qchan listen --no-ack` (receive, never ack, close) run ten times in a row with
    max_deliveries=3: a give-back at close is not a delivery attempt, so nothing is
    dead-lettered and every message is still there, on its first counted delivery."""
    name = transport.new_name()
    options = transport.limit(name, 3)
    _send(transport, name, "p", 20)
    for _ in range(10):
        _peek_everything(transport, name, 20, options)
    assert transport.dead_letters(name) == 0
    q = transport.open(name, **options)
    try:
        with dequeue(Numbered, q) as (rcv, ack):
            got: dict[int, Any] = {}
            while len(got) < 20:
                m = rcv.recv(timeout=30)
                got[m.object.n] = m.deliveries
                ack.send(m)
    finally:
        q.close()
    assert set(got.values()) == {1}
