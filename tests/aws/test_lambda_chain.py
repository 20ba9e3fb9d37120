"""The whole SQS-to-Lambda chain on moto's server: qchan's sqs:// producer sends, the test
plays Lambda's event source mapping (tests/support/sqs_lambda.py: receive, build the
event, call the handler, delete what the partial batch response did not name), until the
good messages are done; the failed ones are still on the queue after that."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from support.aws import AWS
from support.helpers import wait_for
from support.sqs_lambda import poll, receive, receive_batch, sqs_event

from qchan import connect, enqueue
from qchan.aws import RecordsFailed, UnknownEvent, lambda_handler
from qchan.testing import Order

pytestmark = pytest.mark.integration

VISIBILITY = 5  # seconds: failed ones come back soon; a batch (ms here) never outlasts it


def make_queue(aws: AWS) -> tuple[str, str, str]:
    """A new queue with a short visibility timeout: (name, url, arn)."""
    name = f"qchan-chain-{uuid.uuid4().hex[:12]}"
    url = aws.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(VISIBILITY)})[
        "QueueUrl"
    ]
    aws.undo(lambda: aws.sqs.delete_queue(QueueUrl=url))
    arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return name, url, arn["QueueArn"]


def send_raw(aws: AWS, url: str, body: str, category: str | None) -> str:
    """A message written by something other than qchan (boto3): its MessageId."""
    attributes = (
        {} if category is None else {"Category": {"DataType": "String", "StringValue": category}}
    )
    return str(
        aws.sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)[
            "MessageId"
        ]
    )


class Recorder:
    """The business handler: records each order it handles; a negative amount raises."""

    def __init__(self) -> None:
        self.handled: list[str] = []

    def __call__(self, order: Order) -> None:
        if order.amount < 0:
            raise ValueError(f"order {order.id}: negative amount")
        self.handled.append(order.id)


def visible_and_in_flight(aws: AWS, url: str) -> int:
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_every_good_message_handled_once_and_every_bad_one_left_on_the_queue(
    aws: AWS, caplog: pytest.LogCaptureFixture
) -> None:
    name, url, arn = make_queue(aws)
    good = [f"good-{i}" for i in range(12)]  # more than one batch of 10
    with connect(aws.url("sqs", name)) as q, enqueue(Order, q) as (out, _):
        for i, id_ in enumerate(good):
            out.send(Order(id_, 1.0 + i))
            if i == 5:
                out.send(Order("raises", -1.0))  # the handler raises on it
    bad = {
        send_raw(aws, url, "{not json", "Order"): "cannot decode a 'Order' message",
        send_raw(aws, url, json.dumps({"id": "r", "amount": 1}), "Refund"): (
            "no handler for category 'Refund'"
        ),
        send_raw(aws, url, json.dumps({"id": "n", "amount": 1}), None): (
            "no handler for category ''"
        ),
        send_raw(aws, url, json.dumps({"id": 7}), "Order"): "cannot decode a 'Order' message",
    }
    recorder = Recorder()
    handler = lambda_handler(recorder, Order)

    with caplog.at_level(logging.ERROR, logger="qchan.aws"):
        failed = poll(aws.sqs, url, arn, handler, done=lambda: len(recorder.handled) >= len(good))
    assert sorted(recorder.handled) == sorted(good)  # each once: no duplicate, none missing
    failed_ids = set(failed)
    assert set(bad) <= failed_ids and len(failed_ids) == len(bad) + 1  # + the one that raised
    for message_id, why in bad.items():
        assert any(
            message_id in r.getMessage() and why in r.getMessage() for r in caplog.records
        ), f"{message_id}: {why!r} not logged"
    (raised,) = failed_ids - set(bad)
    assert any(
        raised in r.getMessage() and r.exc_info and "negative amount" in str(r.exc_info[1])
        for r in caplog.records
    )

    # Lambda returned the failed ones to the queue: they come back after the visibility
    # timeout, and nothing else does.
    back: dict[str, dict[str, Any]] = {}

    def all_back() -> bool:
        back.update((m["MessageId"], m) for m in receive_batch(aws.sqs, url))
        return set(back) >= failed_ids

    wait_for(all_back, timeout=15, what="the failed messages back on the queue")
    assert set(back) == failed_ids
    assert all(int(m["Attributes"]["ApproximateReceiveCount"]) >= 2 for m in back.values())
    assert visible_and_in_flight(aws, url) == len(failed_ids)


def test_records_from_another_source_are_refused_never_dropped(aws: AWS) -> None:
    name, url, arn = make_queue(aws)
    with connect(aws.url("sqs", name)) as q, enqueue(Order, q) as (out, _):
        for id_ in ("a", "b", "c"):
            out.send(Order(id_, 1.0))
    messages = receive(aws.sqs, url, 3)
    recorder = Recorder()
    handler = lambda_handler(recorder, Order)

    # An event from a source qchan.aws does not know: refused as a whole, nothing handled.
    foreign = sqs_event(messages, arn)
    for record in foreign["Records"]:
        record["eventSource"] = "aws:kinesis"
    with pytest.raises(UnknownEvent, match="aws:kinesis"):
        handler(foreign, None)
    assert recorder.handled == []

    # One record of another source in an SQS batch: the others are handled, and the event
    # fails (it cannot be named in a partial response), so Lambda deletes none of them.
    mixed = sqs_event(messages, arn)
    mixed["Records"][1]["eventSource"] = "aws:sns"
    with pytest.raises(RecordsFailed, match="1 of 3 sqs record"):
        handler(mixed, None)
    assert sorted(recorder.handled) == sorted(
        json.loads(m["Body"])["id"] for i, m in enumerate(messages) if i != 1
    )
    assert visible_and_in_flight(aws, url) == 3  # all still there
