"""`qchan relay FROM TO`: a process that relays until SIGTERM, with /metrics and /healthz,
and usage errors at the start (real PostgreSQL for both ends)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import attrs
import psycopg
import pytest
from psycopg import sql
from support.helpers import need_service, wait_for

from qchan import enqueue
from qchan.outbox import Outbox

HOST, PORT, DB = "127.0.0.1", 5432, "test"
# trust auth ignores the password: it is here to show it never reaches the output
DSN = f"postgresql://postgres:s3cret-pw@{HOST}:{PORT}/{DB}"
pytestmark = pytest.mark.integration


@attrs.frozen
class Placed:
    order: str


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    need_service(HOST, PORT, "PostgreSQL")
    suffix = uuid.uuid4().hex[:10]
    pair = (f"ob_{suffix}", f"to_{suffix}")
    yield pair
    with psycopg.connect(DSN, autocommit=True) as c:
        for n in pair:
            for table in (n, f"{n}_dlq"):
                c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("qchan", table)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def _count(table: str) -> int:
    with psycopg.connect(DSN, autocommit=True) as c:
        if c.execute("SELECT to_regclass(%s)", (f'"qchan"."{table}"',)).fetchone() == (None,):
            return -1
        row = c.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("qchan", table))
        ).fetchone()
        return int(row[0]) if row else -1


def test_relays_until_sigterm_and_serves_metrics_and_health(names: tuple[str, str]) -> None:
    outbox, target = names
    port = _free_port()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qchan",
            "relay",
            f"{DSN}?queue={outbox}&wait=0.2",
            f"{DSN}?queue={target}",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _count(outbox) == 0, 30, "the relay to make the outbox")
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 30, "/healthz")
        with psycopg.connect(DSN, autocommit=True) as conn:
            box = Outbox(conn, outbox)
            with conn.transaction(), enqueue(Placed, box) as (out, _):
                for i in range(5):
                    out.send(Placed(str(i)))
        wait_for(lambda: _count(target) == 5, 30, "five messages relayed")
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert f'qchan_relay_relayed_total{{outbox="{outbox}"}} 5.0' in text
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "relaying\n")
    finally:
        child.send_signal(signal.SIGTERM)
        out_text, err_text = child.communicate(timeout=30)
    assert child.returncode == 0, err_text
    assert "stopped: 5 relayed, 0 dead-lettered" in err_text
    assert "s3cret-pw" not in err_text + out_text


@pytest.mark.parametrize(
    ("source", "target", "says"),
    [
        ("mem://x", "mem://y", "not a postgresql:// URL"),
        (f"{DSN}?queue=ob_x&bogus=1", "mem://y", "bogus"),
        (f"{DSN}?queue=ob_x", "nope://y", "nope"),
    ],
)
def test_usage_errors_exit_2_before_anything_runs(source: str, target: str, says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qchan", "relay", source, target],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "s3cret-pw" not in done.stderr


def test_drain_stops_once_the_outbox_is_empty(names: tuple[str, str]) -> None:
    outbox, target = names
    with psycopg.connect(DSN, autocommit=True) as conn:
        box = Outbox(conn, outbox)
        with conn.transaction(), enqueue(Placed, box) as (out, _):
            for i in range(3):
                out.send(Placed(str(i)))
    done = subprocess.run(
        [sys.executable, "-m", "qchan", "relay", f"{DSN}?queue={outbox}", f"{DSN}?queue={target}",
         "--drain"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stopped: 3 relayed" in done.stderr
    assert _count(outbox) == 0 and _count(target) == 3


def test_a_metrics_port_in_use_exits_1_and_relays_nothing(names: tuple[str, str]) -> None:
    outbox, target = names
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "qchan", "relay", f"{DSN}?queue={outbox}",
             f"{DSN}?queue={target}", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "cannot serve metrics" in done.stderr and "s3cret-pw" not in done.stderr
    assert _count(target) == -1  # never made: nothing relayed
