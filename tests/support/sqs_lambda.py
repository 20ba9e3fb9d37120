"""Lambda's SQS event source mapping, played by a test: receive with boto3 from a queue on
the moto server, build the event Lambda builds, call the handler, delete what succeeded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from support.helpers import wait_for

REGION = "us-east-1"


def receive(sqs: Any, url: str, count: int) -> list[dict[str, Any]]:
    """Receive `count` raw messages with boto3, as Lambda's poller does."""
    got: list[dict[str, Any]] = []

    def more() -> bool:
        got.extend(receive_batch(sqs, url))
        return len(got) >= count

    wait_for(more, timeout=15, what=f"{count} messages on {url}")
    return got


def receive_batch(sqs: Any, url: str, wait: int = 1) -> list[dict[str, Any]]:
    """One ReceiveMessage of up to 10 messages, with every attribute Lambda passes on."""
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    ).get("Messages", [])
    return messages


def sqs_event(messages: list[dict[str, Any]], arn: str) -> dict[str, Any]:
    """The SQS event Lambda's event source mapping makes of received messages
    (field names and casing as in the AWS Lambda developer guide's SQS example event)."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],
                "messageAttributes": {
                    name: {
                        "stringValue": value["StringValue"],
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value["DataType"],
                    }
                    for name, value in m.get("MessageAttributes", {}).items()
                },
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


def poll(
    sqs: Any,
    url: str,
    arn: str,
    handler: Callable[[dict[str, Any], Any], Any],
    *,
    done: Callable[[], bool],
    timeout: float = 20.0,
) -> list[str]:
    """Run `handler` on the queue as an event source mapping with ReportBatchItemFailures
    does, until `done()` (or fail after `timeout` s): each batch received is one event;
    the messages the response does not list as failed are deleted, the failed ones left
    to come back after their visibility timeout. Returns the ids of every failed record."""
    failed: list[str] = []
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"the handler did not finish the queue within {timeout} s")
        messages = receive_batch(sqs, url)
        if not messages:
            continue
        response = handler(sqs_event(messages, arn), None)
        listed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        failed.extend(listed)
        done_ones = [m for m in messages if m["MessageId"] not in listed]
        for m in done_ones:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return failed
