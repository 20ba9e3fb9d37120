"""`qchan worker MODULE:FUNCTION URL`: bad input, the supervisor, scale and faults.

The handlers are in worker_handlers.py beside this file: each handled order is a
line "<id> <pid>" in the file QCHAN_TEST_HANDLED names, so a test counts what was
handled, by which process, and how many times. Every worker runs in a session
of its own and is killed, with its children, when the test ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.helpers import wait_for

from qchan import connect, enqueue
from qchan.cli import main, parser
from qchan.cli._target import resolve
from qchan.cli.worker import Supervisor
from qchan.testing import Order

HERE = Path(__file__).resolve().parent
IN_FLIGHT = 500  # the queue's default in_flight: what one process may hold un-acked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Worker:
    """One `qchan worker` command in a session of its own (so its children die with it)."""

    def __init__(self, tmp: Path, argv: list[str], **env: str) -> None:
        self.handled = tmp / "handled.txt"
        self.stderr_path = tmp / f"stderr-{uuid.uuid4().hex[:6]}.txt"
        self.port: int | None = None
        if "--metrics-port" not in argv and not any(a.startswith("mem:") for a in argv):
            self.port = free_port()
            argv = [*argv, "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1"]
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "QCHAN_TEST_HANDLED": str(self.handled),
            # The parent's state folder lands under pytest's tmp_path: a parent killed by
            # SIGKILL (a test below) cannot remove it itself.
            "TMPDIR": str(tmp),
            **env,
        }
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qchan", "worker", *argv],
                stdin=subprocess.DEVNULL,
                stderr=err,
                env=environment,
                start_new_session=True,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def lines(self) -> list[tuple[str, int]]:
        if not self.handled.exists():
            return []
        # The children append while this reads: a read can end inside a line still being
        # written (seen: a row of one field), so only lines ended by a newline count.
        text = self.handled.read_text()
        rows = [line.split() for line in text[: text.rfind("\n") + 1].splitlines()]
        return [(order_id, int(pid)) for order_id, pid in rows]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()
        except OSError:
            return 0, ""

    def healthy(self) -> bool:
        return self.get("/healthz")[0] == 200

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            text = f"worker still running after {timeout} s:\n{self.stderr}"
            raise AssertionError(text) from None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    """`start(argv, **env)`: a running Worker; every one is killed (with its children) after."""
    started: list[Worker] = []

    def start(argv: list[str], **env: str) -> Worker:
        w = Worker(tmp_path, argv, **env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def send_orders(url: str, count: int, start: int = 0) -> None:
    """Orders with ids start..start+count-1 (keyed by id: spread over Kafka's partitions)."""
    with connect(url) as q, enqueue(Order, q, key=lambda o: o.id) as (out, _):
        for i in range(start, start + count):
            out.send(Order(str(i), 1.0))


# ---- bad input: a clear error and the exit code, no traceback ------------------------


@pytest.fixture
def handlers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["no_such_module:handle", "mem://x"], "no module named 'no_such_module'"),
        (["worker_handlers:missing", "mem://x"], "has no 'missing'"),
        (["worker_handlers", "mem://x"], "is not MODULE:NAME"),
        (["worker_handlers:untyped", "mem://x"], "annotate its first parameter"),
        (["worker_handlers:handle", "mem://x", "--processes", "2"], "lives inside one process"),
        (["worker_handlers:handle", "nope://x"], "unknown queue URL scheme 'nope'"),
        (["worker_handlers:handle", "mem://x", "--give-up-on", "Nope"], "not a builtin exception"),
        (["worker_handlers:handle", "mem://x?colour=blue"], "unknown option 'colour'"),
    ],
)
def test_bad_input_exits_2_saying_what_to_do(
    argv: list[str],
    expected: str,
    handlers_importable: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["worker", *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert "Traceback" not in err


def test_a_module_that_raises_on_import_shows_its_traceback_only_with_v(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken_handlers.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["worker", "broken_handlers:handle", "mem://x"]) == 2
    err = capsys.readouterr().err
    assert "importing 'broken_handlers' raised RuntimeError: no config" in err
    assert "Traceback" not in err
    assert main(["-v", "worker", "broken_handlers:handle", "mem://x"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_the_type_comes_from_the_annotation_or_type(handlers_importable: None) -> None:
    plain = resolve("worker_handlers:handle", None)
    assert (plain.type_, plain.with_msg) == (Order, False)
    with_msg = resolve("worker_handlers:handle_msg", None)
    assert (with_msg.type_, with_msg.with_msg) == (Order, True)
    given = resolve("worker_handlers:untyped", "qchan.testing:Order")
    assert (given.type_, given.with_msg) == (Order, False)


def test_a_metrics_port_in_use_exits_1(
    handlers_importable: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            [
                "worker",
                "worker_handlers:handle",
                "mem://x",
                "--metrics-port",
                str(port),
                "--metrics-host",
                "127.0.0.1",
            ]
        )
    err = capsys.readouterr().err
    assert code == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in err, err
    assert "Traceback" not in err


def test_the_signal_handlers_are_in_before_healthz_can_answer(
    handlers_importable: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A SIGTERM sent once /healthz answers must be a graceful stop: with the handlers
    # installed after the metrics server started, the parent died by the signal (-15).
    from qchan.cli import _metrics
    from qchan.cli._target import WorkerRuntimeError

    seen: list[object] = []

    states: list[Path] = []

    def serve_metrics(host: str, port: int, state: Path, processes: int) -> Any:
        seen.append(signal.getsignal(signal.SIGTERM))
        states.append(state)
        raise WorkerRuntimeError("stopped by the test")

    monkeypatch.setattr(_metrics, "serve_metrics", serve_metrics)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["worker", "worker_handlers:handle", "mem://x", "--metrics-port", "9"])
    assert code == 1 and "stopped by the test" in capsys.readouterr().err
    assert seen and seen[0] not in (signal.SIG_DFL, before), seen  # qchan's own handler
    assert signal.getsignal(signal.SIGTERM) is before  # and the old one is back
    assert states and not states[0].exists()  # the state folder went too


def test_metrics_without_prometheus_client_names_the_pip_command(
    handlers_importable: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    code = main(["worker", "worker_handlers:handle", "mem://x", "--metrics-port", "9"])
    assert code == 2 and "pip install 'qchan[metrics]'" in capsys.readouterr().err


@pytest.mark.integration
def test_an_unreachable_broker_exits_1_without_the_password(workers: Any) -> None:
    url = "amqp://user:hunter2@127.0.0.1:1/%2F?queue=nowhere"
    w = workers(["worker_handlers:handle", url, "--retry-seconds", "1"])
    assert w.wait(30) == 1
    err = w.stderr
    assert "cannot reach amqp://user:***@127.0.0.1:1" in err, err
    assert "hunter2" not in err and "Traceback" not in err


@pytest.mark.integration
def test_healthz_is_503_while_the_broker_is_away_and_a_stop_is_still_clean(
    workers: Any,
) -> None:
    w = workers(["worker_handlers:handle", "amqp://127.0.0.1:1/%2F?queue=nowhere"])
    status, body = wait_for(lambda: (r := w.get("/healthz"))[0] and r, 15, "/healthz")
    assert status == 503 and "child 0: starting" in body
    w.signal()
    assert w.wait(20) == 0, w.stderr


# ---- one process on mem://, and the signals -----------------------------------------


def test_mem_single_process_warns_handles_everything_and_stops_on_sigterm(workers: Any) -> None:
    name = f"mem://w-{uuid.uuid4().hex[:8]}"
    w = workers(["worker_handlers:handle", name], QCHAN_TEST_SEED=f"{name},50")
    wait_for(lambda: len(w.lines()) >= 50, 20, "50 orders handled")
    w.signal()
    assert w.wait(15) == 0, w.stderr
    assert sorted(int(i) for i, _ in w.lines()) == list(range(50))
    assert "WARNING: mem:// is in-process" in w.stderr
    assert "stopped" in w.stderr


def test_children_stop_by_themselves_when_the_parent_is_killed(workers: Any) -> None:
    name = f"mem://w-{uuid.uuid4().hex[:8]}"
    w = workers(["worker_handlers:handle", name], QCHAN_TEST_SEED=f"{name},1")
    child = wait_for(w.lines, 20, "the child to handle its order")[0][1]
    os.kill(w.proc.pid, signal.SIGKILL)  # the parent only: no signal reaches the child

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 15, "the orphaned child to stop")


def test_a_second_signal_kills_the_children_at_once(workers: Any) -> None:
    name = f"mem://w-{uuid.uuid4().hex[:8]}"
    w = workers(
        ["worker_handlers:handle_slowly", name, "--close-timeout", "60"],
        QCHAN_TEST_SEED=f"{name},1",
    )
    wait_for(w.lines, 20, "the handler to start on the message")
    w.signal()
    wait_for(lambda: "stopping 1 child(ren) gracefully" in w.stderr, 10, "the graceful stop")
    started = time.monotonic()
    w.signal(signal.SIGINT)
    assert w.wait(10) == 130
    assert time.monotonic() - started < 5
    assert "SIGINT again: killing the children now" in w.stderr


# ---- scale: two processes on one RabbitMQ queue, two workers in one Kafka group -------


def duplicates(lines: list[tuple[str, int]]) -> int:
    return len(lines) - len({i for i, _ in lines})


@pytest.mark.integration
def test_rabbitmq_two_processes_share_2000_with_metrics_and_a_clean_sigterm(
    workers: Any, queue_name: str, admin: Any
) -> None:
    from support.rabbitmq import queue_depth, url_for

    url = url_for(queue_name)
    send_orders(url, 2000)
    w = workers(
        ["worker_handlers:handle", url, "--processes", "2", "--threads", "4", "--capacity", "16"],
        QCHAN_TEST_WORK="0.002",
    )
    wait_for(lambda: len({i for i, _ in w.lines()}) == 2000, 40, "2000 orders handled")
    lines = w.lines()
    per_pid = Counter(pid for _, pid in lines)
    assert len(per_pid) == 2 and min(per_pid.values()) > 100, per_pid  # both did real work
    assert duplicates(lines) <= 2 * IN_FLIGHT  # none expected without a fault
    wait_for(w.healthy, 10, "/healthz 200")
    _status, body = w.get("/healthz")
    assert "child 0: consuming" in body and "child 1: consuming" in body

    def acked() -> float:
        text = w.get("/metrics")[1]
        for line in text.splitlines():
            if line.startswith(f'qchan_acked_total{{queue="{queue_name}"}}'):
                return float(line.split()[-1])
        return 0.0

    wait_for(lambda: acked() >= 2000, 10, "qchan_acked_total to reach 2000 (summed)")
    metrics = w.get("/metrics")[1]
    assert f'qchan_handler_seconds_count{{queue="{queue_name}"}} {float(len(lines))}' in metrics
    assert f'qchan_in_flight{{queue="{queue_name}"}} 0.0' in metrics
    started = time.monotonic()
    w.signal()
    assert w.wait(15) == 0, w.stderr
    assert time.monotonic() - started < 10 + 5  # the close timeout, plus the margin
    assert queue_depth(admin, queue_name) == 0


@pytest.mark.integration
def test_rabbitmq_worker_processes_share_a_waiting_backlog(
    workers: Any, queue_name: str, admin: Any
) -> None:
    """Issue 25: 400 orders waiting, `--processes 2 --threads 2`, 20 ms each. Each child
    takes what its threads can use, so both handle a fair part (before: one child
    took the whole backlog and handled all 400, the other none)."""
    from support.rabbitmq import queue_depth, url_for

    url = url_for(queue_name)
    send_orders(url, 400)
    w = workers(
        ["worker_handlers:handle", url, "--processes", "2", "--threads", "2"],
        QCHAN_TEST_WORK="0.02",
    )
    wait_for(lambda: len({i for i, _ in w.lines()}) == 400, 60, "400 orders handled")
    lines = w.lines()
    per_pid = Counter(pid for _, pid in lines)
    assert len(per_pid) == 2 and min(per_pid.values()) >= 100, per_pid
    assert duplicates(lines) == 0
    w.signal()
    assert w.wait(15) == 0, w.stderr
    assert queue_depth(admin, queue_name) == 0


@pytest.mark.integration
def test_kafka_two_workers_in_one_group_share_2000(
    workers: Any, kafka_bootstrap: str, topic: str
) -> None:
    from support.kafka import group_config

    query = "".join(f"&{k}={v}" for k, v in group_config().items())
    url = f"kafka://{kafka_bootstrap}/{topic}?group=g-{topic}{query}"
    a = workers(["worker_handlers:handle", url], QCHAN_TEST_WORK="0.002")
    b = workers(["worker_handlers:handle", url], QCHAN_TEST_WORK="0.002")
    wait_for(lambda: a.healthy() and b.healthy(), 30, "both workers consuming")

    def handled() -> int:
        return len({i for i, _ in a.lines()})  # both write to the same file

    # In batches until the group has given the second member partitions too (a
    # rebalance takes ~0.1 s with KIP-848, seconds with the classic protocol), then
    # the rest: both must have handled some, and together every one.
    sent = 0
    while len({pid for _, pid in a.lines()}) < 2 and sent < 2000:
        send_orders(url, 200, start=sent)
        sent += 200
        wait_for(lambda: handled() == sent, 20, f"{sent} orders handled")
    send_orders(url, 2000 - sent, start=sent)
    wait_for(lambda: handled() == 2000, 60, "2000 orders handled")
    lines = a.lines()
    per_pid = Counter(pid for _, pid in lines)
    assert len(per_pid) == 2, per_pid
    assert duplicates(lines) <= 2 * IN_FLIGHT
    a.signal()
    b.signal()
    assert (a.wait(20), b.wait(20)) == (0, 0), a.stderr + b.stderr


# ---- faults: a child SIGKILLed mid-stream ----------------------------------------------


@pytest.mark.integration
def test_a_child_killed_mid_stream_is_restarted_and_nothing_is_lost(
    workers: Any, queue_name: str, admin: Any
) -> None:
    from support.rabbitmq import queue_depth, url_for

    url = url_for(queue_name)
    send_orders(url, 600)
    w = workers(
        ["worker_handlers:handle", url, "--processes", "2", "--threads", "2"],
        QCHAN_TEST_WORK="0.01",
    )
    wait_for(lambda: len({pid for _, pid in w.lines()}) == 2, 20, "both children handling")
    victim = w.lines()[-1][1]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "was killed by SIGKILL; restarting" in w.stderr, 10, "the restart")
    wait_for(lambda: len({i for i, _ in w.lines()}) == 600, 40, "600 orders handled")
    wait_for(w.healthy, 20, "the restarted child consuming")
    lines = w.lines()
    assert duplicates(lines) <= IN_FLIGHT  # at most what the killed child held
    w.signal()
    assert w.wait(15) == 0, w.stderr
    assert queue_depth(admin, queue_name) == 0


def test_capacity_reaches_each_child_and_a_bad_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parser().parse_args(["worker", "m:f", "mem://x", "--capacity", "8"])
    argv = Supervisor(args, tmp_path, threading.Event(), []).command(0)
    assert argv[argv.index("--capacity") + 1] == "8"  # the child runs serve(capacity=8)
    assert parser().parse_args(argv[3:]).capacity == 8
    with pytest.raises(SystemExit) as exited:
        main(["worker", "m:f", "mem://x", "--capacity", "0"])
    assert exited.value.code == 2
    assert "argument --capacity: must be >= 1, not 0" in capsys.readouterr().err
