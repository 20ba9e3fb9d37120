"""The accounting harness: N numbered messages through enqueue -> broker -> dequeue + ack.

Every reliability scenario runs through `account()`. A producer thread sends
N uniquely numbered `Numbered` objects through `enqueue` (at least once, the
default policy), draining `dlq` as it goes; a consumer thread receives them
through `dequeue` and acks them. Scenarios inject their fault through hooks
(after the k-th send, after the k-th delivery) and the harness checks, at the
end, the promise qchan makes:

    (received at least once) + (dead-lettered: on dlq, or raised at close) = all N

It returns a `Report` (sent, received, duplicates, dead-lettered, lost, plus
what was left in flight and on the broker) for the scenario to assert on and
print. Duplicates are allowed under at-least-once; each scenario bounds and
explains its own.

Why a separate producer and consumer `Queue`: they stand for two processes,
each with its own connection, so a fault on one side (a dropped consumer
connection) does not touch the other.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest

from qchan import Chan, ChannelClosed, EnqueueError, Msg, Queue, dequeue, enqueue, select

__all__ = [
    "LONG",
    "Numbered",
    "Report",
    "account",
    "collect_errors",
    "fault_for",
    "receive_until",
]

log = logging.getLogger("qchan.tests.harness")

#: Marks for the long variants of a scenario (10 s cuts, ...): `slow`, and skipped
#: unless QCHAN_SLOW=1, so `make test` stays inside its time budget.
LONG = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("QCHAN_SLOW"),
        reason="long variant: set QCHAN_SLOW=1 (make test-reliability)",
    ),
]


@attrs.frozen
class Numbered:
    """One accounted message: which run it belongs to, its number, optional padding."""

    run: str
    n: int
    pad: str = ""


@attrs.define
class Report:
    """What one accounting run saw. `lost` must be 0; the rest explains the run."""

    transport: str
    scenario: str
    sent: int = 0  # handed to `out` by the producer
    received: int = 0  # distinct numbers received
    deliveries: int = 0  # every delivery, duplicates included
    duplicates: int = 0  # deliveries - received
    dead_lettered: int = 0  # distinct numbers handed back on dlq or raised at close
    both: int = 0  # dead-lettered although the broker had them (received as well)
    lost: int = 0  # neither received nor dead-lettered
    in_flight: int = 0  # consumer's q.stats().in_flight when the run ended
    broker_left: int | None = None  # messages still on the broker after close (None: unknown)
    retried: int = 0  # producer's send attempts repeated after a failure
    batch: int = 0  # the producer's batch size (a lost confirmation resends at most that many)
    redelivered: int = 0  # consumer's deliveries the broker flagged as redeliveries
    seconds: float = 0.0
    errors: dict[str, int] = attrs.Factory(dict)  # reported on errors, by type
    first_errors: list[str] = attrs.Factory(list)  # one example per type
    missing: list[int] = attrs.Factory(list)  # the first few lost numbers

    HEADER = (
        "| transport | scenario | sent | received | duplicates | dead-lettered | lost "
        "| in flight | left on broker | retried | seconds |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )

    def row(self) -> str:
        left = "?" if self.broker_left is None else str(self.broker_left)
        return (
            f"| {self.transport} | {self.scenario} | {self.sent} | {self.received} "
            f"| {self.duplicates} | {self.dead_lettered} | {self.lost} | {self.in_flight} "
            f"| {left} | {self.retried} | {self.seconds:.1f} |"
        )

    def __str__(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return f"{self.row()}\n  errors reported: {errors}"

    def check(self, *, max_duplicates: int | None = None, dead_letters: bool = True) -> None:
        """The zero-loss promise, plus the scenario's own bound on duplicates."""
        assert self.lost == 0, f"{self.lost} message(s) lost (first: {self.missing}): {self}"
        assert self.in_flight == 0, f"{self.in_flight} still in flight at the end: {self}"
        assert self.broker_left in (0, None), f"{self.broker_left} left on the broker: {self}"
        if max_duplicates is not None:
            assert self.duplicates <= max_duplicates, (
                f"{self.duplicates} duplicates, more than the {max_duplicates} this scenario "
                f"explains: {self}"
            )
        if not dead_letters:
            assert self.dead_lettered == 0, f"dead letters where none were expected: {self}"


def fault_for(
    seconds: float, start: Callable[[], None], end: Callable[[], None]
) -> Callable[[], None]:
    """A hook that starts a fault now and ends it `seconds` later, without blocking the caller."""

    def hook() -> None:
        start()
        t = threading.Timer(seconds, end)
        t.daemon = True
        t.start()

    return hook


class _Errors:
    """Drains errors channels into counters (a full errors channel falls back to logging)."""

    def __init__(self) -> None:
        self.chan: Chan[Exception] = Chan(4096, name="harness.errors")
        self.counts: collections.Counter[str] = collections.Counter()
        self.first: dict[str, str] = {}
        self._thread = threading.Thread(target=self._drain, name="harness-errors", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for e in self.chan:
            kind = type(e).__name__
            self.counts[kind] += 1
            self.first.setdefault(kind, str(e)[:300])

    def close(self) -> None:
        self.chan.close()
        self._thread.join(5)


def collect_errors() -> _Errors:
    """An errors channel for a scenario's queues; `close()` it, then read `.counts`."""
    return _Errors()


def account(
    producer: Queue,
    consumer: Queue,
    n: int,
    *,
    transport: str,
    scenario: str,
    errors: _Errors | None = None,
    on_sent: Mapping[int, Callable[[], None]] | None = None,
    on_received: Mapping[int, Callable[[], None]] | None = None,
    hold: int = 0,
    pad: int = 0,
    timeout: float = 120.0,
    settle: float = 15.0,
    leftover: Callable[[], int | None] | None = None,
    consumer_delay: float = 0.0,
) -> Report:
    """Send `n` numbered messages from `producer`, receive and ack them on `consumer`.

    `on_sent[k]` runs on the producer thread right after the k-th send;
    `on_received[k]` on the consumer thread right after the k-th delivery
    (before it is acked), so a fault can hit with messages in flight.
    `hold`: the consumer keeps up to that many deliveries un-acked and acks
    them as a group. `consumer_delay`: seconds the consumer spends per
    message (a slow consumer). `leftover()` says how many messages the
    broker still holds for the queue (None: it cannot tell); once every
    number is accounted for, the consumer keeps receiving (for at most
    `settle` s) until the broker holds none and nothing is in flight, so
    redeliveries of acks lost in the fault are counted as duplicates rather
    than left behind. Both queues are closed on return.
    """
    run = uuid.uuid4().hex[:8]
    report = Report(transport=transport, scenario=scenario)
    on_sent = on_sent or {}
    on_received = on_received or {}
    lock = threading.Lock()
    seen: collections.Counter[int] = collections.Counter()
    dead: set[int] = set()
    producer_done = threading.Event()
    accounted = threading.Event()
    failures: list[BaseException] = []
    started = time.monotonic()
    deadline = started + timeout
    padding = "x" * pad

    def check_accounted() -> None:
        # Called with `lock` held.
        if producer_done.is_set() and len(seen.keys() | dead) >= n:
            accounted.set()

    def dead_letter(m: Msg[Any]) -> None:
        obj = m.object
        if isinstance(obj, Numbered) and obj.run == run:
            with lock:
                dead.add(obj.n)
                check_accounted()

    def produce() -> None:
        try:
            sending = enqueue(Numbered, producer)
            out, dlq = sending
            for i in range(n):
                item = Numbered(run, i, padding)
                while True:
                    sel = select((out, item), dlq, timeout=max(0.0, deadline - time.monotonic()))
                    if sel is None:
                        raise TimeoutError(f"producer stuck at message {i} of {n}")
                    if sel.index == 0:
                        break
                    if sel.ok:
                        dead_letter(sel.value)
                report.sent += 1
                hook = on_sent.get(report.sent)
                if hook is not None:
                    hook()
            for m in sending.close():  # waits until each is delivered or on dlq
                dead_letter(m)
            try:
                producer.close()
            except EnqueueError as e:  # neither delivered nor on a dlq: reported, not lost
                for m in e.failed:
                    dead_letter(m)
        except BaseException as e:
            failures.append(e)
            log.exception("producer failed")
        finally:
            producer_done.set()
            with lock:
                check_accounted()

    def consume() -> None:
        try:
            rcv, ack = receiving = dequeue(Numbered, consumer)
            held: list[Msg[Numbered]] = []
            settle_until: float | None = None
            count = 0
            while time.monotonic() < deadline:
                try:
                    m = rcv.recv(timeout=0.05)
                except TimeoutError:
                    for h in held:
                        ack.send(h)
                    held.clear()
                    if accounted.is_set():
                        now = time.monotonic()
                        if settle_until is None:
                            settle_until = now + settle
                        if (
                            consumer.stats().in_flight == 0 and (leftover is None or not leftover())
                        ) or now >= settle_until:
                            break
                    continue
                if m.object.run != run:
                    ack.send(m)  # a message of an earlier run on a reused queue: not ours
                    continue
                count += 1
                with lock:
                    seen[m.object.n] += 1
                    check_accounted()
                hook = on_received.get(count)
                if hook is not None:
                    hook()
                if consumer_delay:
                    threading.Event().wait(consumer_delay)
                if hold:
                    held.append(m)
                    if len(held) >= hold:
                        for h in held:
                            ack.send(h)
                        held.clear()
                else:
                    ack.send(m)
            for h in held:
                ack.send(h)
            _wait(lambda: consumer.stats().in_flight == 0, 10)
            report.in_flight = consumer.stats().in_flight
            stats = consumer.stats()
            report.redelivered = stats.redelivered
            receiving.close()
        except BaseException as e:
            failures.append(e)
            log.exception("consumer failed")
        finally:
            try:
                consumer.close()
            except ChannelClosed:
                pass

    p = threading.Thread(target=produce, name=f"harness-producer-{run}", daemon=True)
    c = threading.Thread(target=consume, name=f"harness-consumer-{run}", daemon=True)
    c.start()
    p.start()
    p.join(max(1.0, deadline - time.monotonic()) + 30)
    c.join(max(1.0, deadline - time.monotonic()) + settle + 30)
    if p.is_alive() or c.is_alive():
        failures.append(
            AssertionError(
                f"harness threads still running after the deadline (producer alive: "
                f"{p.is_alive()}, consumer alive: {c.is_alive()})"
            )
        )
    report.seconds = time.monotonic() - started
    report.retried = producer.stats().retried
    report.batch = producer.options.batch_size
    if errors is not None:
        errors.close()
        report.errors = dict(errors.counts)
        report.first_errors = [f"{k}: {v}" for k, v in errors.first.items()]
    with lock:
        got = set(seen)
        report.received = len(got)
        report.deliveries = sum(seen.values())
        report.duplicates = report.deliveries - report.received
        report.dead_lettered = len(dead)
        report.both = len(got & dead)
        missing = sorted(set(range(n)) - got - dead)
    report.lost = len(missing)
    report.missing = missing[:10]
    if leftover is not None:
        report.broker_left = leftover()
    log.info("%s", report)
    if failures:
        raise AssertionError(f"harness failed: {failures[0]!r}; {report}") from failures[0]
    return report


def receive_until(
    q: Queue,
    run: str,
    wanted: set[int],
    timeout: float,
    *,
    leftover: Callable[[], int | None] | None = None,
    quiet: float = 3.0,
) -> collections.Counter[int]:
    """Receive (and ack) on `q`, a fresh consumer, until every wanted number of `run` came,
    then until the broker holds nothing more (where `leftover` can tell; otherwise until
    nothing came for `quiet` s); close `q`.

    Returns how often each number was delivered (numbers of other runs are acked and
    ignored). Gives up after `timeout` s: the caller's accounting shows what is missing.
    """
    seen: collections.Counter[int] = collections.Counter()
    try:
        with dequeue(Numbered, q) as (rcv, ack):
            deadline = time.monotonic() + timeout
            quiet_since: float | None = None
            while time.monotonic() < deadline:
                try:
                    m = rcv.recv(timeout=0.1)
                except TimeoutError:
                    if wanted <= set(seen):
                        now = time.monotonic()
                        quiet_since = quiet_since or now
                        # What the broker still holds may only come after a while (a
                        # dead consumer's partitions move when its session expires).
                        left = leftover() if leftover is not None else None
                        settled = left == 0 if left is not None else now - quiet_since > quiet
                        if q.stats().in_flight == 0 and settled:
                            break
                    continue
                quiet_since = None
                if m.object.run == run:
                    seen[m.object.n] += 1
                ack.send(m)
    finally:
        q.close()
    return seen


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True
