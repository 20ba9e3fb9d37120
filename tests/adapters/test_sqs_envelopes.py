"""SQS queues fed by EventBridge rules and SNS subscriptions deliver the message inside.

Against moto's server (support/sqs.py), which routes an EventBridge rule to its
SQS target and an SNS topic to its SQS subscription as AWS does. Every queue,
bus, rule and topic is unique per test and deleted afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import boto3
import pytest
from support.helpers import start

from qchan import Chan, DecodeError, OptionError, connect, dequeue
from qchan.adapters.sqs import SQSAdapter, _parse, from_url
from qchan.message import Bag
from qchan.urls import URLError

REGION = "us-east-1"
pytestmark = pytest.mark.integration


@attrs.frozen
class User:
    id: str
    name: str


@attrs.frozen
class Order:
    id: str
    amount: float


@pytest.fixture
def aws(sqs_endpoint: str) -> Iterator[Callable[[str], Any]]:
    """boto3 clients on the local endpoint, by service name."""
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = boto3.client(service, endpoint_url=sqs_endpoint, region_name=REGION)
        return clients[service]

    yield client
    for c in clients.values():
        c.close()


@pytest.fixture
def queue(aws: Callable[[str], Any]) -> Iterator[Callable[..., tuple[str, str, str]]]:
    """Create a uniquely named queue: (name, url, arn). Deleted after the test."""
    urls: list[str] = []

    def make(**attributes: str) -> tuple[str, str, str]:
        name = f"qchan-env-{uuid.uuid4().hex[:12]}"
        url = aws("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        urls.append(url)
        arn = aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return name, url, arn["Attributes"]["QueueArn"]

    yield make
    for url in urls:
        aws("sqs").delete_queue(QueueUrl=url)


@pytest.fixture
def eventbridge(aws: Callable[[str], Any]) -> Iterator[Callable[[str], str]]:
    """A bus with a rule whose target is the queue of `arn`; returns the bus name."""
    made: list[tuple[str, str]] = []

    def route(arn: str) -> str:
        events = aws("events")
        bus, rule = f"bus-{uuid.uuid4().hex[:12]}", f"rule-{uuid.uuid4().hex[:12]}"
        events.create_event_bus(Name=bus)
        events.put_rule(
            Name=rule, EventBusName=bus, EventPattern=json.dumps({"source": ["signup"]})
        )
        # On AWS the queue's policy must let events.amazonaws.com send; moto does not check it.
        events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        made.append((bus, rule))
        return bus

    yield route
    events = aws("events")
    for bus, rule in made:
        events.remove_targets(Rule=rule, EventBusName=bus, Ids=["q"])
        events.delete_rule(Name=rule, EventBusName=bus)
        events.delete_event_bus(Name=bus)


@pytest.fixture
def sns(aws: Callable[[str], Any]) -> Iterator[Callable[[str], str]]:
    """A topic with an SQS subscription (raw delivery off) to the queue of `arn`; its ARN."""
    topics: list[str] = []

    def subscribe(arn: str) -> str:
        topic = aws("sns").create_topic(Name=f"topic-{uuid.uuid4().hex[:12]}")["TopicArn"]
        aws("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        topics.append(topic)
        return topic

    yield subscribe
    for topic in topics:
        aws("sns").delete_topic(TopicArn=topic)


def put_event(aws: Callable[[str], Any], bus: str, category: str, detail: Any) -> str:
    reply = aws("events").put_events(
        Entries=[
            {
                "EventBusName": bus,
                "Source": "signup",
                "DetailType": category,
                "Detail": json.dumps(detail),
            }
        ]
    )
    assert reply["FailedEntryCount"] == 0
    event_id: str = reply["Entries"][0]["EventId"]
    return event_id


def publish(aws: Callable[[str], Any], topic: str, category: str | None, message: str) -> str:
    attributes = {"Source": {"DataType": "String", "StringValue": "billing"}}
    if category is not None:
        attributes["Category"] = {"DataType": "String", "StringValue": category}
    reply = aws("sns").publish(TopicArn=topic, Message=message, MessageAttributes=attributes)
    message_id: str = reply["MessageId"]
    return message_id


def sqs_url(endpoint: str, name: str, query: str = "") -> str:
    return f"sqs://{name}?endpoint={endpoint}&region={REGION}&wait=1{query}"


def depth(aws: Callable[[str], Any], url: str) -> int:
    """Messages on the queue, visible or in flight."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    found = aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(found[n]) for n in names)


def test_eventbridge_and_sns_messages_arrive_typed_routed_by_the_inner_category(
    aws: Any, queue: Any, eventbridge: Any, sns: Any, sqs_endpoint: str
) -> None:
    name, url, arn = queue()
    event_id = put_event(aws, eventbridge(arn), "User", {"id": "u-1", "name": "Ann"})
    topic = sns(arn)
    message_id = publish(aws, topic, "Order", json.dumps({"id": "o-1", "amount": 9.5}))
    q = connect(sqs_url(sqs_endpoint, name), poll_wait=1)
    with q, dequeue(User, q) as (users, ack_user), dequeue(Order, q) as (orders, ack_order):
        user = users.recv(timeout=20)
        order = orders.recv(timeout=20)
        ack_user.send(user)
        ack_order.send(order)
    assert user.object == User("u-1", "Ann")
    assert user.category == "User"
    assert user.attributes["Envelope"] == "eventbridge"
    assert user.attributes["EventId"] == event_id
    assert user.attributes["Source"] == "signup"
    assert user.attributes["EventRegion"] == REGION
    assert user.attributes["EventTime"].endswith("Z")
    assert order.object == Order("o-1", 9.5)
    assert order.category == "Order"
    assert order.attributes["Envelope"] == "sns"
    assert order.attributes["SnsMessageId"] == message_id
    assert order.attributes["SnsTopicArn"] == topic
    assert order.attributes["Source"] == "billing"
    # The receipt stayed the SQS one: the acks removed both messages.
    assert depth(aws, url) == 0


def test_a_nacked_envelope_comes_back_unwrapped_and_an_ack_removes_it(
    aws: Any, queue: Any, sns: Any, sqs_endpoint: str
) -> None:
    name, url, arn = queue(VisibilityTimeout="60")
    publish(aws, sns(arn), "User", json.dumps({"id": "u-2", "name": "Bob"}))
    with connect(sqs_url(sqs_endpoint, name), poll_wait=1) as q, dequeue(User, q) as (rcv, ack):
        first = rcv.recv(timeout=20)
        ack.send(first.fail(RuntimeError("not yet")))  # visible again at once
        again = rcv.recv(timeout=20)
        assert again.object == first.object == User("u-2", "Bob")
        assert again.deliveries == 2
        assert isinstance(again.digest, str)  # the SQS receipt handle
        ack.send(again)
    assert depth(aws, url) == 0


def test_an_sns_message_without_category_goes_to_the_foreign_channel(
    aws: Any, queue: Any, sns: Any, sqs_endpoint: str
) -> None:
    name, url, arn = queue()
    publish(aws, sns(arn), None, "plain text")
    q = connect(sqs_url(sqs_endpoint, name), poll_wait=1)
    with q, dequeue(str, q, category="") as (rcv, ack):
        msg = rcv.recv(timeout=20)
        ack.send(msg)
    assert msg.object == "plain text"
    assert msg.attributes["Envelope"] == "sns"
    assert depth(aws, url) == 0


@pytest.mark.parametrize("how", ["keyword", "query"])
def test_with_unwrap_off_the_envelope_arrives_as_it_is(
    how: str, aws: Any, queue: Any, eventbridge: Any, sqs_endpoint: str
) -> None:
    name, url, arn = queue()
    put_event(aws, eventbridge(arn), "User", {"id": "u-3", "name": "Cy"})
    if how == "keyword":
        q = connect(sqs_url(sqs_endpoint, name), poll_wait=1, unwrap=False)
    else:
        q = connect(sqs_url(sqs_endpoint, name, "&unwrap=false"), poll_wait=1)
    with q, dequeue(bytes, q, category="") as (rcv, ack):
        msg = rcv.recv(timeout=20)
        ack.send(msg)
    envelope = json.loads(msg.object)
    assert envelope["detail-type"] == "User"
    assert envelope["detail"] == {"id": "u-3", "name": "Cy"}
    assert "Envelope" not in msg.attributes
    assert depth(aws, url) == 0


def test_a_dead_letter_is_the_envelope_as_received(
    aws: Any, queue: Any, eventbridge: Any, sqs_endpoint: str
) -> None:
    """SQS's own redrive moves the message as it is; giving up now does the same."""
    _dlq_name, dlq_url, dlq_arn = queue()
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
    name, url, arn = queue(RedrivePolicy=policy)
    event_id = put_event(aws, eventbridge(arn), "User", {"id": "u-4", "name": "Di"})
    with connect(sqs_url(sqs_endpoint, name), poll_wait=1) as q, dequeue(User, q) as (rcv, ack):
        msg = rcv.recv(timeout=20)
        ack.send(msg.dead_letter(ValueError("no such user")))
    dead = aws("sqs").receive_message(
        QueueUrl=dlq_url, WaitTimeSeconds=10, MessageAttributeNames=["All"]
    )["Messages"]
    envelope = json.loads(dead[0]["Body"])
    assert envelope["id"] == event_id and envelope["detail-type"] == "User"
    assert "MessageAttributes" not in dead[0]  # nothing added, as received
    assert depth(aws, url) == 0


def test_an_inner_body_that_does_not_decode_is_reported_with_the_envelope_fields(
    aws: Any, queue: Any, eventbridge: Any, sqs_endpoint: str
) -> None:
    name, _, arn = queue()
    event_id = put_event(aws, eventbridge(arn), "User", {"id": "u-5"})  # no name
    errors: Chan[Exception] = Chan(16)
    q = connect(sqs_url(sqs_endpoint, name), poll_wait=1, errors=errors)
    with q, dequeue(User, q) as (rcv, _):
        start(rcv.recv, 20.0)  # a receiver waits: the poller takes what there is
        error = errors.recv(timeout=20)
    assert isinstance(error, DecodeError)
    assert json.loads(error.bag.body) == {"id": "u-5"}
    assert error.bag.attributes["EventId"] == event_id


def test_a_qchan_message_whose_body_looks_like_an_envelope_is_left_alone(
    queue: Any, sqs_endpoint: str
) -> None:
    name, _, _ = queue()
    adapter = from_url(sqs_url(sqs_endpoint, name))
    try:
        event = {
            "version": "0",
            "id": "e-1",
            "detail-type": "User",
            "source": "s",
            "account": "1",
            "time": "2026-01-01T00:00:00Z",
            "region": REGION,
            "resources": [],
            "detail": {"id": "u", "name": "n"},
        }
        sent = Bag("Audit", json.dumps(event).encode(), {"Category": "Audit"})
        assert adapter.send_batch([sent]) == [None]
        [got] = adapter.receive(10, 10)
        adapter.ack([got])
    finally:
        adapter.close()
    assert got.category == "Audit"
    assert json.loads(got.body) == event


def test_the_option_is_checked_where_it_is_given(sqs_endpoint: str) -> None:
    assert _parse("sqs://q?unwrap=off")[1] == {"unwrap": False}
    with pytest.raises(URLError, match="'unwrap'"):
        _parse("sqs://q?unwrap=maybe")
    with pytest.raises(OptionError, match="'unwrap' must be True or False, not 'no'"):
        SQSAdapter("q", region=REGION, unwrap="no")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="did you mean 'unwrap'"):
        from_url("sqs://q", unwarp=False)
