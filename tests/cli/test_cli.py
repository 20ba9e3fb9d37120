"""The `qchan` command: send, listen, bench, demo; exit codes and messages a newcomer reads."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid

import pytest

from qchan import URLError
from qchan.adapters.embedded import broker
from qchan.cli import main
from qchan.urls import _BUILTIN, open_adapter

QCHAN = [sys.executable, "-m", "qchan"]


def run(
    argv: list[str],
    stdin: str = "",
    monkeypatch: pytest.MonkeyPatch | None = None,
    capsys: pytest.CaptureFixture[str] | None = None,
) -> tuple[int, str, str]:
    assert monkeypatch is not None and capsys is not None
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def name() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_send_then_listen_round_trip(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = '{"id": 1, "item": "tea"}\n\n{"id": 2}\n"just text"\n'
    code, _, err = run(["send", f"mem://{name}", "--category", "order"], lines, monkeypatch, capsys)
    assert code == 0, err
    assert "sent 3 message(s)" in err and "0 not delivered" in err
    code, out, err = run(
        ["listen", f"mem://{name}", "--count", "3", "--timeout", "5"], "", monkeypatch, capsys
    )
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [g["body"] for g in got] == [{"id": 1, "item": "tea"}, {"id": 2}, "just text"]
    assert {g["category"] for g in got} == {"order"}
    assert got[0]["attributes"]["Source"] == "qchan-cli"
    assert broker(name).depth == 0 and broker(name).in_flight == 0  # acked


def test_send_keeps_each_line_byte_for_byte_labelled_as_json(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["send", f"mem://{name}"], '{"b": 1,  "a": "\u00e9"}\n', monkeypatch, capsys)
    assert code == 0, err
    (bag,) = broker(name).receive(10, 0)
    assert bag.body == '{"b": 1,  "a": "\u00e9"}'.encode()
    assert bag.content_type == "application/json"


def test_a_bad_line_sends_nothing_and_says_which_and_why(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["send", f"mem://{name}"], '{"ok": 1}\n{"broken": \n', monkeypatch, capsys)
    assert code == 2
    assert "line 2: not JSON" in err and "nothing was sent" in err
    assert broker(name).depth == 0


def test_stream_mode_stops_at_the_bad_line(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["send", f"mem://{name}", "--stream"], '{"a": 1}\nnope\n{"b": 2}\n', monkeypatch, capsys
    )
    assert code == 2
    assert "stopped at line 2" in err and "the 1 line(s) before it were sent" in err
    assert broker(name).depth == 1


def test_listen_no_ack_leaves_the_messages(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["send", f"mem://{name}"], '{"a": 1}\n', monkeypatch, capsys)
    code, out, _ = run(
        ["listen", f"mem://{name}", "--count", "1", "--no-ack"], "", monkeypatch, capsys
    )
    assert code == 0 and json.loads(out)["body"] == {"a": 1}
    assert broker(name).depth == 1  # released at close, not acked


def test_listen_prints_binary_bodies_as_base64(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qchan import Bag

    broker(name).send([Bag("blob", b"\xff\x00raw", {"Category": "blob"}, id="b1")])
    code, out, _ = run(["listen", f"mem://{name}", "--count", "1"], "", monkeypatch, capsys)
    assert code == 0 and json.loads(out)["body_base64"] == "/wByYXc="


def test_listen_timeout_without_messages(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["listen", f"mem://{name}", "--count", "1", "--timeout", "0.2"], "", monkeypatch, capsys
    )
    assert (code, out) == (1, "")
    assert "no message within 0.2 s" in err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nope://x", "unknown queue URL scheme 'nope'"),
        ("orders", "has no scheme"),
        ("mem://x?colour=blue", "unknown option 'colour'"),
    ],
)
def test_bad_urls_exit_2_with_what_to_do(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["send", url], '{"a": 1}\n', monkeypatch, capsys)
    assert code == 2 and expected in err, err


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_BUILTIN, "fancy", ("qchan.adapters.not_installed_here", "fancy"))
    with pytest.raises(URLError, match=r"pip install 'qchan\[fancy\]'"):
        open_adapter("fancy://x")


@pytest.mark.integration
def test_unreachable_broker_exit_1_and_the_password_stays_hidden(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "amqp://user:hunter2@127.0.0.1:1/%2F?queue=nowhere"
    code, out, err = run(["send", url, "--retry-seconds", "1"], '{"a": 1}\n', monkeypatch, capsys)
    assert code == 1
    assert "1 not delivered" in err and "Connection refused" in err
    assert "hunter2" not in out + err and "user:***@" in err


def test_bench_reports_rates_and_latency(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["bench", f"mem://{name}", "--count", "500", "--size", "200"], "", monkeypatch, capsys
    )
    assert code == 0, err
    for label in ("enqueue", "dequeue + ack", "end to end", "latency p50 / p99"):
        assert label in out


def test_help_and_module_entry_point() -> None:
    out = subprocess.run([*QCHAN, "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("demo", "send", "listen", "bench", "exit codes"):
        assert word in out
    sub = subprocess.run([*QCHAN, "send", "--help"], capture_output=True, text=True, check=True)
    assert "nothing is sent" in sub.stdout


def test_demo_accounts_for_every_message() -> None:
    proc = subprocess.run(
        [*QCHAN, "demo", "--count", "2000", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.splitlines()[-1].split()
    assert last[-5:] == ["every", "message", "accounted", "for", "yes"], proc.stdout
    assert "dead-lettered (too large, back on dlq)  1" in proc.stdout


@pytest.mark.integration
def test_send_and_listen_across_processes_over_rabbitmq() -> None:
    """The newcomer's path: two commands, two processes, a real broker."""
    queue = f"qchan-cli-{uuid.uuid4().hex[:8]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/%2F?queue={queue}"
    lines = "".join(json.dumps({"n": i}) + "\n" for i in range(20))
    try:
        sent = subprocess.run(
            [*QCHAN, "send", url],
            input=lines,
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        heard = subprocess.run(
            [*QCHAN, "listen", url, "--count", "20", "--timeout", "20"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert heard.returncode == 0, heard.stderr
        assert sorted(json.loads(x)["body"]["n"] for x in heard.stdout.splitlines()) == list(
            range(20)
        )
        assert "guest:guest" not in sent.stderr + heard.stderr
    finally:
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
        ch = conn.channel()
        for q in (queue, f"{queue}.dlq"):
            ch.queue_delete(q)
        conn.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "quiet"])
def test_an_unreachable_kafka_says_so_in_a_few_lines_within_retry_seconds(quiet: bool) -> None:
    """Issue 14: 390 lines in 10 s (1,168 with --quiet), and --retry-seconds ignored."""
    pytest.importorskip("confluent_kafka")
    url = f"kafka://127.0.0.1:{_free_port()}/t"
    argv = [*QCHAN, "send", url, "--retry-seconds", "3", *(["--quiet"] if quiet else [])]
    started = time.monotonic()
    done = subprocess.run(
        argv, input='{"a": 1}\n', capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - started
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert "1 not delivered" in done.stderr
    assert len(lines) <= (4 if quiet else 6), lines
    assert not [line for line in lines if "[thrd:" in line]  # librdkafka's own: only with -v
    assert elapsed < 12, elapsed  # about --retry-seconds, plus the interpreter's start


@pytest.mark.integration
def test_listen_exits_1_when_the_broker_cannot_be_reached() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{_free_port()}/%2F?queue=nowhere"
    done = subprocess.run(
        [*QCHAN, "listen", url, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "could not be reached" in done.stderr and "Connection refused" in done.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["listen", "mem://x", "--timeout", "-1"], "argument --timeout: must be > 0, not -1"),
        (["listen", "mem://x", "--count", "abc"], "argument --count: not a number: 'abc'"),
        (["send", "mem://x", "--retry-seconds", "0"], "argument --retry-seconds: must be > 0"),
        (["bench", "mem://x", "--size", "0"], "argument --size: must be > 0"),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and said in capsys.readouterr().err
