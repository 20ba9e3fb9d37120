"""SNS topics and EventBridge buses on the moto server, each feeding an SQS queue that the
tests read with plain boto3 (the receiving side of the send-only transports).

A plugin of tests/conftest.py: a test takes `aws` by name. Everything it makes
has a unique name and is deleted after the test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import boto3
import pytest

from qchan import Adapter, EnqueueError, Queue, connect, dequeue
from qchan.urls import open_adapter

REGION = "us-east-1"


@attrs.frozen
class Order:
    """What the tests send."""

    id: str
    amount: float


class AWS:
    """boto3 clients on the local endpoint, and the resources a test made."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sqs: Any = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
        self.sns: Any = boto3.client("sns", endpoint_url=endpoint, region_name=REGION)
        self.events: Any = boto3.client("events", endpoint_url=endpoint, region_name=REGION)
        self._undo: list[Any] = []
        self._queues: list[Queue] = []
        sts = boto3.client("sts", endpoint_url=endpoint, region_name=REGION)
        self.account: str = sts.get_caller_identity()["Account"]
        sts.close()

    def open(self, target: str | Adapter, **options: Any) -> Queue:
        """A qchan Queue on an adapter, or on the adapter of a URL; closed after the test."""
        adapter = open_adapter(target) if isinstance(target, str) else target
        self._queues.append(Queue(adapter, **options))
        return self._queues[-1]

    def url(self, scheme: str, target: str) -> str:
        """The qchan URL of a bus or topic on the local endpoint."""
        return f"{scheme}://{target}?endpoint={self.endpoint}&region={REGION}"

    def receive(
        self, queue: str, type_: type[Any], n: int, category: str | None = None
    ) -> list[Any]:
        """`n` messages of `type_` received and acked through qchan from the SQS queue at
        the URL `queue`, as an application reads what a rule or subscription delivers."""
        name = queue.rsplit("/", 1)[-1]
        with (
            connect(f"{self.url('sqs', name)}&wait=1", poll_wait=1) as q,
            dequeue(type_, q, category=category) as (rcv, ack),
        ):
            got = [rcv.recv(timeout=20) for _ in range(n)]
            for m in got:
                ack.send(m)
        return got

    def queue(self, fifo: bool = False, content_dedup: bool = False) -> tuple[str, str]:
        """A new SQS queue: (url, arn); FIFO with ContentBasedDeduplication if asked."""
        name = f"qchan-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        attributes = {"FifoQueue": "true"} if fifo else {}
        if content_dedup:
            attributes["ContentBasedDeduplication"] = "true"
        url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self._undo.append(lambda: self.sqs.delete_queue(QueueUrl=url))
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        return url, arn

    def bus(self, detail_type: str | None = None) -> tuple[str, str]:
        """A new event bus with a rule sending its events to a new SQS queue: (bus, queue
        url). The rule matches every event, or those of one `detail_type` (a category)."""
        bus = f"qchan-{uuid.uuid4().hex[:12]}"
        self.events.create_event_bus(Name=bus)
        url, arn = self.queue()
        rule = f"{bus}-all"
        # Every event on a bus comes from this account: a pattern that matches them all.
        pattern: dict[str, list[str]] = {"account": [self.account]}
        if detail_type is not None:
            pattern = {"detail-type": [detail_type]}
        self.events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
        self.events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])

        def undo() -> None:
            self.events.remove_targets(Rule=rule, EventBusName=bus, Ids=["q"])
            self.events.delete_rule(Name=rule, EventBusName=bus)
            self.events.delete_event_bus(Name=bus)

        self._undo.append(undo)
        return bus, url

    def topic(
        self, fifo: bool = False, raw: bool = True, content_dedup: bool = False
    ) -> tuple[str, str, str]:
        """A new SNS topic subscribed by a new SQS queue: (name, arn, queue url). With
        `content_dedup`, both have ContentBasedDeduplication (FIFO only)."""
        name = f"qchan-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        attributes = {"FifoTopic": "true"} if fifo else {}
        if content_dedup:
            attributes["ContentBasedDeduplication"] = "true"
        arn = self.sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
        url, queue_arn = self.queue(fifo=fifo, content_dedup=content_dedup)
        self.sns.subscribe(
            TopicArn=arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true" if raw else "false"},
        )
        self._undo.append(lambda: self.sns.delete_topic(TopicArn=arn))
        return name, arn, url

    def read(self, url: str, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Receive and delete exactly `n` messages from an SQS queue, in the order received;
        then make sure no more arrive for a moment."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(got)} of {n} within {timeout} s")
            got.extend(self._receive(url, 1))
        extra = self._receive(url, 0)
        assert not extra, f"{len(extra)} more message(s) than the {n} expected: {extra}"
        return got

    def _receive(self, url: str, wait: int) -> list[dict[str, Any]]:
        reply = self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
        )
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        for m in messages:
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return messages

    def undo(self, step: Callable[[], Any]) -> None:
        """Run `step` when the test ends (deleting what the test made)."""
        self._undo.append(step)

    def close(self) -> None:
        for q in self._queues:
            try:
                q.close()
            except EnqueueError:
                pass
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception:
                pass
        for c in (self.sqs, self.sns, self.events):
            c.close()


def count_requests(client: Any, operation: str, entries: str) -> list[int]:
    """The number of entries of every `operation` request (botocore's name, e.g.
    "events.PutEvents") that `client` makes; `entries` names the list parameter."""
    sizes: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params[entries]))

    client.meta.events.register(f"provide-client-params.{operation}", record)
    return sizes


@pytest.fixture
def aws(sqs_endpoint: str) -> Iterator[AWS]:
    """boto3 clients on the moto server and per-test topics, buses and queues."""
    made = AWS(sqs_endpoint)
    yield made
    made.close()
