"""The Lambda example (examples/lambda_orders): one handler module deployed two ways, run
both ways on moto's SQS server. The worker (`serve` on sqs://) in a thread and as a real
process stopped by SIGTERM; the Lambda function through the event source mapping as
tests/support/sqs_lambda.py plays it. Each handles every good order once and leaves the
bad one on the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from support.aws import AWS
from support.helpers import start, wait_for
from support.sqs_lambda import poll

from qchan import connect, enqueue

pytestmark = pytest.mark.integration

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "examples",
    "lambda_orders",
)
MODULES = ("billing", "worker", "lambda_function")


@pytest.fixture(scope="module")
def example() -> Iterator[dict[str, ModuleType]]:
    """The example's modules, imported as Lambda and `python worker.py` import them."""
    import importlib

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(EXAMPLE)
        try:
            yield {name: importlib.import_module(name) for name in MODULES}
        finally:
            for name in MODULES:
                sys.modules.pop(name, None)


@pytest.fixture
def handled(example: dict[str, ModuleType]) -> Iterator[list[str]]:
    """The ids billed in this process, empty at the start of the test."""
    billed: list[str] = example["billing"].handled
    billed.clear()
    yield billed
    billed.clear()


def orders_queue(aws: AWS) -> tuple[str, str, str]:
    """A new queue (name, url, arn) holding 4 good orders and 1 bad one (amount 0).
    A short visibility timeout brings failed messages back quickly, as the test wants."""
    name = f"qchan-example-{uuid.uuid4().hex[:12]}"
    url = aws.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
    aws.undo(lambda: aws.sqs.delete_queue(QueueUrl=url))
    arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return name, url, arn["QueueArn"]


GOOD = ["o-1", "o-2", "o-3", "o-4"]


def send_orders(aws: AWS, name: str, billing: ModuleType) -> None:
    with connect(aws.url("sqs", name)) as q, enqueue(billing.Order, q) as (out, _):
        for i, id_ in enumerate(GOOD):
            out.send(billing.Order(id_, 10.0 + i))
            if i == 1:
                out.send(billing.Order("bad", 0.0))


def on_queue(aws: AWS, url: str) -> int:
    """Messages on the queue, visible or in flight."""
    a = aws.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def test_the_worker_serves_the_queue(
    aws: AWS,
    example: dict[str, ModuleType],
    handled: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, url, _ = orders_queue(aws)
    send_orders(aws, name, example["billing"])
    monkeypatch.setenv("QCHAN_URL", f"{aws.url('sqs', name)}&wait=1")
    stop = threading.Event()
    worker = start(example["worker"].main, stop)
    wait_for(lambda: len(handled) >= len(GOOD), timeout=20, what="every good order billed")
    stop.set()
    worker.outcome(20)
    assert sorted(handled) == GOOD
    out = capsys.readouterr().out
    assert f"serving sqs://{name}" in out and f"{len(GOOD)} handled" in out
    assert on_queue(aws, url) == 1  # the bad order was nacked, never acked


def test_the_lambda_function_handles_the_same_queue(
    aws: AWS, example: dict[str, ModuleType], handled: list[str]
) -> None:
    name, url, arn = orders_queue(aws)
    send_orders(aws, name, example["billing"])
    failed = poll(
        aws.sqs,
        url,
        arn,
        example["lambda_function"].handler,
        done=lambda: len(handled) >= len(GOOD),
    )
    assert sorted(handled) == GOOD  # each once
    assert len(set(failed)) == 1  # the bad order, answered as failed (maybe more than once)
    assert on_queue(aws, url) == 1  # and left on the queue for Lambda to retry


def test_python_worker_py_stops_gracefully_on_sigterm(aws: AWS, example: Any) -> None:
    name, url, _ = orders_queue(aws)
    send_orders(aws, name, example["billing"])
    proc = subprocess.Popen(
        [sys.executable, "worker.py"],
        cwd=EXAMPLE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "QCHAN_URL": f"{aws.url('sqs', name)}&wait=1"},
    )
    try:
        assert proc.stdout is not None
        assert f"serving sqs://{name}" in proc.stdout.readline()
        # Wait for the good orders to be acked: only the bad one is left.
        wait_for(lambda: on_queue(aws, url) == 1, timeout=20, what="the good orders acked")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"stopped by SIGTERM; {len(GOOD)} handled" in out, out
    billed = sorted(
        line.split()[2].rstrip(":") for line in err.splitlines() if "billed order" in line
    )
    assert billed == GOOD, err
    assert "order bad: amount must be positive" in err
