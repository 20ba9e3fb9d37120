"""The outbox relay against real targets (RabbitMQ, SQS on moto, Redis, PostgreSQL).

Messages are written to a PostgreSQL outbox in the application's transactions (some
rolled back), and `qchan.outbox.relay` forwards them. For each scenario: exactly the
committed messages reach the target, none is lost, duplicates only where the scenario
explains them (a relay killed mid-batch, a send whose answer was lost) and then with the
same message id, and in order where the target keeps order.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.helpers import need_service, wait_for

from qchan import Msg, dequeue, enqueue
from qchan.adapters.postgres import from_url
from qchan.outbox import ID_ATTRIBUTE, Outbox, Relayed, relay
from qchan.outbox._relay import open_target

from .conftest import _make
from .harness import Numbered
from .proxy import TcpProxy
from .transports import PostgresTransport, RabbitTransport, RedisTransport, SQSTransport, Transport

DSN = "postgresql://postgres@127.0.0.1:5432/test"
pytestmark = pytest.mark.integration

TARGETS = [
    pytest.param("amqp", id="amqp"),
    pytest.param("sqs", id="sqs"),
    pytest.param("redis", id="redis"),
    pytest.param("postgres", id="postgres"),
]
#: Targets that deliver one queue's messages in the order sent (to one consumer).
ORDERED = {"amqp", "redis", "postgres"}


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[Transport]:
    _need_postgres()
    t = _make(request.param, request)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def outbox() -> Iterator[str]:
    name = f"ob_{uuid.uuid4().hex[:12]}"
    yield name
    _drop_outbox(name)


def source(name: str) -> str:
    return f"{DSN}?queue={name}&wait=0.2"


def target_url(t: Transport, name: str, port: int | None = None, **query: Any) -> str:
    """`name`'s URL on `t`, through a proxy on `port` if given."""
    if isinstance(t, SQSTransport):
        url = t.url(name, f"http://127.0.0.1:{port}" if port else None)
        url += "&connect_timeout=1&read_timeout=5&max_attempts=1"
    elif isinstance(t, RabbitTransport | RedisTransport | PostgresTransport):
        url = t.url(name, port)
        if isinstance(t, RedisTransport):
            url += "&connect_timeout=1&socket_timeout=2"
    else:
        raise AssertionError(t)
    return url + "".join(f"&{k}={v}" for k, v in query.items())


def write(
    name: str,
    run: str,
    n: int,
    *,
    per_tx: int = 10,
    rollback_every: int = 4,
    key: Any = None,
) -> set[int]:
    """Send numbers 0..n-1 through the outbox, `per_tx` per transaction; every
    `rollback_every`-th transaction rolls back. Returns the committed numbers."""
    committed: set[int] = set()
    with psycopg.connect(DSN, autocommit=True) as conn:
        box = Outbox(conn, name)
        for start in range(0, n, per_tx):
            numbers = range(start, min(n, start + per_tx))
            undo = rollback_every and (start // per_tx) % rollback_every == rollback_every - 1
            try:
                with conn.transaction(), enqueue(Numbered, box, key=key) as (out, _):
                    for i in numbers:
                        out.send(Numbered(run, i))
                    if undo:
                        raise _Undo
            except _Undo:
                continue
            committed.update(numbers)
    return committed


class _Undo(Exception):
    pass


def left_in(name: str) -> int:
    with psycopg.connect(DSN, autocommit=True) as c:
        row = c.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("qchan", name))
        ).fetchone()
        assert row is not None
        return int(row[0])


def dead_in(name: str) -> list[tuple[bytes, str]]:
    with psycopg.connect(DSN, autocommit=True) as c:
        got = c.execute(
            sql.SQL("SELECT body, error FROM {} ORDER BY id").format(
                sql.Identifier("qchan", f"{name}_dlq")
            )
        ).fetchall()
        return [(bytes(b), str(e)) for b, e in got]


class Seen:
    """What a consumer of the target received: numbers in arrival order, ids per number."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.ids: dict[int, set[str]] = collections.defaultdict(set)

    @property
    def counts(self) -> collections.Counter[int]:
        return collections.Counter(self.order)

    @property
    def duplicates(self) -> int:
        return len(self.order) - len(set(self.order))

    def first_order(self) -> list[int]:
        seen: set[int] = set()
        out = []
        for n in self.order:
            if n not in seen:
                seen.add(n)
                out.append(n)
        return out


def read(t: Transport, name: str, run: str, wanted: set[int], timeout: float = 60) -> Seen:
    """Receive (and ack) everything of `run` on the target until every wanted number came
    and nothing more arrives for a second."""
    seen = Seen()
    q = t.open(name)
    try:
        with dequeue(Numbered, q) as (rcv, ack):
            deadline = time.monotonic() + timeout
            quiet = None
            while time.monotonic() < deadline:
                try:
                    m: Msg[Numbered] = rcv.recv(timeout=0.1)
                except TimeoutError:
                    if wanted <= set(seen.order):
                        quiet = quiet or time.monotonic()
                        if time.monotonic() - quiet > 1.0:
                            break
                    continue
                quiet = None
                if m.object.run == run:
                    seen.order.append(m.object.n)
                    mid = m.attributes.get(ID_ATTRIBUTE) or (m.bag.id if m.bag else None)
                    assert mid, f"message {m.object.n} arrived without its id"
                    seen.ids[m.object.n].add(mid)
                ack.send(m)
    finally:
        q.close()
    return seen


def check(seen: Seen, committed: set[int], ordered: bool, max_duplicates: int) -> None:
    missing = committed - set(seen.order)
    extra = set(seen.order) - committed
    assert not missing, f"{len(missing)} committed message(s) lost: {sorted(missing)[:10]}"
    assert not extra, f"{len(extra)} rolled-back message(s) published: {sorted(extra)[:10]}"
    assert seen.duplicates <= max_duplicates, f"{seen.duplicates} duplicates > {max_duplicates}"
    for n, ids in seen.ids.items():
        assert len(ids) == 1, f"message {n} came with two ids: {ids}"
    if ordered:
        assert seen.first_order() == sorted(committed), "the target got them out of order"


class _RelayThread(threading.Thread):
    """`relay` on a thread; what it raised, if it did (`error`), shows in the assertions."""

    def __init__(self, src: str, dst: str, stop: threading.Event, done: Relayed, **options: Any):
        super().__init__(daemon=True, name=f"relay-{src.rpartition('queue=')[2]}")
        # Opened here, in the test's thread: CPython 3.11.7 can fail compile() (which attrs
        # and cattrs call while classes and adapters are first built) when several threads
        # compile at once ("AST constructor recursion depth mismatch", CPython gh-106905).
        self.source, self.target = from_url(src), open_target(dst)
        self.options = {"stop": stop, "done": done, **options}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            relay(self.source, self.target, **self.options)
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.target.close()
            self.source.close()

    def __repr__(self) -> str:
        return f"<relay thread alive={self.is_alive()} error={self.error!r}>"


def _relay_thread(
    src: str, dst: str, stop: threading.Event, done: Relayed, **options: Any
) -> _RelayThread:
    t = _RelayThread(src, dst, stop, done, **options)
    t.start()
    return t


def test_relay_publishes_exactly_the_committed_in_order(target: Transport, outbox: str) -> None:
    """Writers commit and roll back while the relay runs; drain at the end."""
    name = target.new_name()
    run = uuid.uuid4().hex
    stop, done = threading.Event(), Relayed()
    relaying = _relay_thread(source(outbox), target_url(target, name), stop, done)
    try:
        committed = write(outbox, run, 600)
        wait_for(lambda: left_in(outbox) == 0, 60, "the outbox to empty")
    finally:
        stop.set()
        relaying.join(30)
    assert not relaying.is_alive()
    seen = read(target, name, run, committed)
    check(seen, committed, target.name in ORDERED, max_duplicates=0)
    assert done.relayed == len(committed) and done.dead_lettered == 0


def test_relay_to_kafka_keeps_the_order_per_key(
    request: pytest.FixtureRequest, outbox: str
) -> None:
    """Kafka orders per partition, so per key: the relay pipelines its batches (submit)
    and each key's messages arrive in the order committed."""
    t = _make("kafka", request)
    try:
        name = t.new_name()
        run = uuid.uuid4().hex
        committed = write(outbox, run, 400, key=lambda m: f"k{m.n % 4}")
        done = relay(source(outbox), t.url(name), drain=True)
        seen = read(t, name, run, committed)
    finally:
        t.close()
    check(seen, committed, False, max_duplicates=0)
    for k in range(4):
        mine = [n for n in seen.order if n % 4 == k]
        assert mine == sorted(mine), f"key k{k} out of order"
    assert done.relayed == len(committed)


def test_two_relays_at_once_never_send_a_row_twice(target: Transport, outbox: str) -> None:
    name = target.new_name()
    run = uuid.uuid4().hex
    n = 400 if isinstance(target, SQSTransport) else 1000  # moto takes ~150 msg/s here
    committed = write(outbox, run, n, per_tx=100, rollback_every=0)
    stop = threading.Event()
    dones = [Relayed(), Relayed()]
    dst = target_url(target, name)
    threads = [_relay_thread(source(outbox), dst, stop, d, batch=50) for d in dones]
    try:
        wait_for(lambda: left_in(outbox) == 0, 90, "the outbox to empty")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    seen = read(target, name, run, committed)
    check(seen, committed, target.name in ORDERED, max_duplicates=0)
    assert sum(d.relayed for d in dones) == len(committed)


def test_a_row_the_target_refuses_goes_to_the_outbox_dlq_and_the_relay_goes_on(
    target: Transport, outbox: str
) -> None:
    name = target.new_name()
    run = uuid.uuid4().hex
    if isinstance(target, SQSTransport):
        dst, big = target_url(target, name), 1_100_000  # over SQS's 1 MiB
    else:
        dst, big = target_url(target, name, max_message_size=100_000), 150_000
    with psycopg.connect(DSN, autocommit=True) as conn:
        box = Outbox(conn, outbox, max_message_size=2_000_000)
        with conn.transaction(), enqueue(Numbered, box) as (out, _):
            out.send(Numbered(run, 0))
            out.send(Numbered(run, 1, pad="x" * big))
            out.send(Numbered(run, 2))
    done = relay(source(outbox), dst, drain=True)
    assert done.relayed == 2 and done.dead_lettered == 1
    ((body, error),) = dead_in(outbox)
    assert b'"n":1' in body and ("max_message_size" in error or "large" in error.lower())
    assert left_in(outbox) == 0
    seen = read(target, name, run, {0, 2})
    check(seen, {0, 2}, target.name in ORDERED, max_duplicates=0)


def test_targets_down_for_10_s_then_back_lose_nothing_and_keep_order(
    request: pytest.FixtureRequest,
) -> None:
    """RabbitMQ, SQS, Redis and PostgreSQL side by side, each behind a TCP proxy cut for
    10 s once its relay has sent 100 (one outage window for the four: the scenario
    costs its 10 s once, not four times)."""
    _need_postgres()
    lanes: list[_Lane] = []
    stop = threading.Event()
    try:
        for kind in ("amqp", "sqs", "redis", "postgres"):
            lanes.append(_Lane(_make(kind, request)))
        for lane in lanes:  # every outbox is written before any relay starts
            lane.start(stop)
        pause = threading.Event()
        deadline = time.monotonic() + 60
        while not all(lane.cut_at for lane in lanes):
            for lane in lanes:
                if lane.cut_at is None and lane.done.relayed >= 100:
                    lane.proxy.cut()
                    lane.cut_at = time.monotonic()
            assert time.monotonic() < deadline, f"a relay never got going: {lanes}"
            pause.wait(0.01)
        last = max(lane.cut_at or 0.0 for lane in lanes)
        wait_for(lambda: all(lane.done.failures > 0 for lane in lanes), 30, "every relay to fail")
        pause.wait(max(0.0, last + 10.0 - time.monotonic()))  # the outage
        for lane in lanes:
            assert left_in(lane.outbox) > 0 and lane.done.failing_since is not None, lane
            lane.proxy.restore()
        wait_for(lambda: all(left_in(lane.outbox) == 0 for lane in lanes), 90, "outboxes to empty")
    finally:
        stop.set()
        for lane in lanes:
            lane.close()
    for lane in lanes:
        t = lane.target
        seen = read(t, lane.name, lane.run, lane.committed)
        check(seen, lane.committed, t.name in ORDERED, max_duplicates=lane.done.resent + 50)
        assert lane.done.failures > 0 and lane.done.dead_lettered == 0
        t.close()
        _drop_outbox(lane.outbox)


class _Lane:
    """One target of the outage scenario: its outbox, proxy and relay thread."""

    def __init__(self, target: Transport) -> None:
        self.target = target
        self.name = target.new_name()
        self.outbox = f"ob_{uuid.uuid4().hex[:12]}"
        self.run = uuid.uuid4().hex
        n = 400 if isinstance(target, SQSTransport) else 1000  # moto takes ~150 msg/s here
        self.committed = write(self.outbox, self.run, n, per_tx=50, rollback_every=5)
        self.proxy = TcpProxy(("127.0.0.1", _port_of(target)))
        self.done = Relayed()
        self.cut_at: float | None = None
        self.thread: _RelayThread | None = None

    def start(self, stop: threading.Event) -> None:
        dst = target_url(self.target, self.name, self.proxy.port)
        self.thread = _relay_thread(source(self.outbox), dst, stop, self.done, batch=50, hold=2.0)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(30)
        self.proxy.close()

    def __repr__(self) -> str:
        return f"<lane {self.target.name}: {self.done} {self.thread!r}>"


def _need_postgres() -> None:
    need_service("127.0.0.1", 5432, "PostgreSQL")


def _drop_outbox(name: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as c:
        for table in (name, f"{name}_dlq"):
            c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table)))


def _port_of(t: Transport) -> int:
    if isinstance(t, SQSTransport):
        return t.target[1]
    return int(t.port)  # type: ignore[attr-defined]


def test_relay_killed_mid_batch_and_restarted_loses_nothing(target: Transport, outbox: str) -> None:
    """`qchan relay` in a child process, SIGKILLed twice while it relays: every
    committed message arrives; a duplicate only from the batch in flight at a kill, with
    the same id."""
    name = target.new_name()
    run = uuid.uuid4().hex
    step = 150 if isinstance(target, SQSTransport) else 300  # moto takes ~150 msg/s here
    committed = write(outbox, run, 4 * step, per_tx=50, rollback_every=0)
    batch = 50
    cmd = [
        sys.executable, "-m", "qchan", "relay", source(outbox), target_url(target, name),
        "--batch", str(batch),
    ]  # fmt: skip
    kills = 0
    total = left_in(outbox)
    for kills in range(1, 3):
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            mark = total - kills * step
            wait_for(lambda m=mark: left_in(outbox) <= m, 60, "the relay to get going")  # type: ignore[misc]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: left_in(outbox) == 0, 90, "the outbox to empty")
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err.decode()
    seen = read(target, name, run, committed)
    check(seen, committed, False, max_duplicates=kills * batch)
    if target.name in ORDERED:
        # Nothing after a kill's batch goes out before it: the first arrivals are in order.
        assert seen.first_order() == sorted(committed)


def test_the_outbox_database_cut_mid_run_loses_nothing(
    request: pytest.FixtureRequest, outbox: str
) -> None:
    """The relay's own connection to the outbox (through a TCP proxy) cut for 3 s while it
    relays to Redis: the batch whose commit was lost is sent again (same ids), nothing is
    lost, the first arrivals stay in order, and the relay goes on by itself."""
    t = _make("redis", request)
    proxy = TcpProxy(("127.0.0.1", 5432))
    stop, done = threading.Event(), Relayed()
    try:
        name = t.new_name()
        run = uuid.uuid4().hex
        committed = write(outbox, run, 1000, per_tx=100, rollback_every=0)
        src = f"postgresql://postgres@127.0.0.1:{proxy.port}/test?queue={outbox}&wait=0.2"
        relaying = _relay_thread(
            src + "&connect_timeout=2", target_url(t, name), stop, done, batch=50
        )
        wait_for(lambda: done.relayed >= 100, 60, "a first part to be relayed")
        proxy.cut()
        wait_for(lambda: done.failures > 0, 30, "the relay to see its database gone")
        threading.Event().wait(3.0)  # the outage
        assert left_in(outbox) > 0 and not done.healthy(grace=1.0)
        proxy.restore()
        wait_for(lambda: left_in(outbox) == 0, 60, "the outbox to empty once it is back")
        assert done.healthy(grace=0.0)
    finally:
        stop.set()
        proxy.close()
    relaying.join(30)
    assert not relaying.is_alive() and relaying.error is None
    seen = read(t, name, run, committed)
    t.close()
    check(seen, committed, True, max_duplicates=50)
    assert done.dead_lettered == 0
