"""`qchan send` to the send-only AWS transports, and `qchan listen` refusing them, against
moto's server (support/aws.py reads what arrived)."""

from __future__ import annotations

import io
import json
import sys

import pytest
from support.aws import AWS

from qchan.cli import main

pytestmark = pytest.mark.integration


def run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(argv)


def test_send_to_eventbridge_puts_events_on_the_bus(
    aws: AWS, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bus, queue = aws.bus()
    url = aws.url("eventbridge", bus)
    code = run(["send", url, "--category", "Order"], '{"id": "1"}\n{"id": "2"}\n', monkeypatch)
    assert code == 0, capsys.readouterr().err
    got = aws.read(queue, 2)
    events = [json.loads(m["Body"]) for m in got]
    assert sorted(e["detail"]["id"] for e in events) == ["1", "2"]
    assert {e["detail-type"] for e in events} == {"Order"}


def test_send_to_sns_publishes_to_the_topic(
    aws: AWS, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name, _, queue = aws.topic(raw=True)
    code = run(["send", aws.url("sns", name), "--category", "Order"], '{"id": "7"}\n', monkeypatch)
    assert code == 0, capsys.readouterr().err
    (m,) = aws.read(queue, 1)
    assert json.loads(m["Body"]) == {"id": "7"}


@pytest.mark.parametrize("scheme", ["eventbridge", "sns"])
def test_listen_on_a_send_only_transport_is_a_usage_error_saying_where_to_receive(
    scheme: str, aws: AWS, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = aws.bus()[0] if scheme == "eventbridge" else aws.topic()[0]
    code = run(["listen", aws.url(scheme, target), "--timeout", "2"], "", monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "only sends" in err, err
    assert "SQS" in err and "Traceback" not in err, err
