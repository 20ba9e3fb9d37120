"""What qchan's sqs:// producer writes, received by SQS (moto's server) and handed to
lambda_handler in the event Lambda builds from it: the handler decodes it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from support.sqs_lambda import REGION, receive, sqs_event

from qchan import connect, enqueue
from qchan.aws import lambda_handler
from qchan.testing import Order

pytestmark = pytest.mark.integration


@pytest.fixture
def sqs(sqs_endpoint: str) -> Iterator[Any]:
    client = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name=REGION)
    yield client
    client.close()


@pytest.fixture
def make_queue(sqs: Any) -> Iterator[Callable[[bool], tuple[str, str, str]]]:
    """Create a uniquely named queue: (name, url, arn); deleted after the test."""
    urls: list[str] = []

    def make(fifo: bool) -> tuple[str, str, str]:
        name = f"qchan-lambda-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        urls.append(url)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return name, url, arn["QueueArn"]

    yield make
    for url in urls:
        sqs.delete_queue(QueueUrl=url)


def test_the_handler_decodes_what_the_sqs_producer_wrote(
    sqs: Any, sqs_endpoint: str, make_queue: Any
) -> None:
    name, url, arn = make_queue(False)
    binary = bytes(range(256))  # not text: qchan's SQS adapter sends it as base64
    q = connect(f"sqs://{name}?endpoint={sqs_endpoint}&region={REGION}")
    with q, enqueue(Order, q) as (orders, _), enqueue(bytes, q, category="blob") as (blobs, _):
        orders.send(Order("1", 9.5, ["a"]))
        orders.send(Order("2", 1.25))
        blobs.send(binary)
        blobs.send(b"plain text")
    messages = receive(sqs, url, 4)
    assert any(
        m["MessageAttributes"].get("ContentTransferEncoding", {}).get("StringValue") == "base64"
        for m in messages
    ), "the binary body travels base64-encoded"

    got_orders: list[Order] = []
    got_blobs: list[bytes] = []
    handler = lambda_handler(got_orders.append, Order).route(
        got_blobs.append, bytes, category="blob"
    )
    assert handler(sqs_event(messages, arn), None) == {"batchItemFailures": []}
    assert sorted(got_orders, key=lambda o: o.id) == [Order("1", 9.5, ["a"]), Order("2", 1.25)]
    assert sorted(got_blobs) == sorted([binary, b"plain text"])


def test_fifo_message_groups_from_the_producer_hold_back_after_a_failure(
    sqs: Any, sqs_endpoint: str, make_queue: Any
) -> None:
    name, url, arn = make_queue(True)
    q = connect(f"sqs://{name}?endpoint={sqs_endpoint}&region={REGION}")
    with q, enqueue(Order, q, key=lambda o: o.id[0]) as (out, _):
        for id_ in ("a1", "b1", "a2", "b2"):
            out.send(Order(id_, 1.0))
    messages = receive(sqs, url, 4)
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"a", "b"}
    handled: list[str] = []

    def handle(o: Order) -> None:
        handled.append(o.id)
        if o.id == "a1":
            raise RuntimeError("fails")

    response = lambda_handler(handle, Order)(sqs_event(messages, arn), None)
    assert response is not None
    by_id = {m["MessageId"]: m for m in messages}
    failed_groups = [
        by_id[f["itemIdentifier"]]["Attributes"]["MessageGroupId"]
        for f in response["batchItemFailures"]
    ]
    assert failed_groups == ["a", "a"]
    assert sorted(handled) == ["a1", "b1", "b2"]  # a2 never started
