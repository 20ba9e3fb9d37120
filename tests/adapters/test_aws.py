"""What the send-only AWS transports (eventbridge://, sns://) share, run on both against
moto's server: URL and option checking, batches split by count and size, dequeue refused
at the call, no credentials in repr."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import attrs
import boto3
import pytest
from support.aws import AWS, Order, count_requests

from qchan import (
    AT_MOST_ONCE,
    OptionError,
    ReceivingAdapter,
    SendOnlyError,
    connect,
    dequeue,
    enqueue,
)
from qchan.adapters.eventbridge import EventBridgeAdapter
from qchan.adapters.sns import SNSAdapter
from qchan.message import Bag
from qchan.testing import SendSpy, spy_on
from qchan.urls import URLError, open_adapter

pytestmark = pytest.mark.integration


@attrs.frozen
class Target:
    """A bus or topic that feeds an SQS queue, and how to read the sent body back."""

    url: str
    queue: str
    body: Callable[[dict[str, Any]], Any]
    #: botocore's operation name and the name of its entry list.
    operation: tuple[str, str]


@pytest.fixture(params=["eventbridge", "sns"])
def target(request: pytest.FixtureRequest, aws: AWS) -> Target:
    if request.param == "eventbridge":
        bus, queue = aws.bus()
        return Target(
            aws.url("eventbridge", bus),
            queue,
            lambda m: json.loads(m["Body"])["detail"],
            ("events.PutEvents", "Entries"),
        )
    name, _, queue = aws.topic()
    return Target(
        aws.url("sns", name),
        queue,
        lambda m: json.loads(m["Body"]),
        ("sns.PublishBatch", "PublishBatchRequestEntries"),
    )


@pytest.mark.parametrize(
    ("url", "options", "error", "match"),
    [
        ("eventbridge://orders?regoin=us-east-1", {}, OptionError, "did you mean 'region'"),
        ("eventbridge://orders", {"endpiont": "http://h"}, OptionError, "did you mean 'endpoint'"),
        ("eventbridge://AKID:s3cr3t@orders", {}, URLError, "credentials"),
        ("eventbridge://", {}, URLError, "names nothing"),
        ("sns://orders?content_dedupe=true", {}, OptionError, "did you mean 'content_dedup'"),
        ("sns://orders", {"topic_attribute": {}}, OptionError, "did you mean 'topic_attributes'"),
        ("sns://AKID:s3cr3t@orders", {}, URLError, "credentials"),
        ("sns://orders?create=maybe", {}, URLError, "bad value 'maybe' for 'create'"),
    ],
)
def test_bad_urls_and_options_are_named_with_a_suggestion(
    url: str, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as e:
        connect(url, **options)
    assert "s3cr3t" not in str(e.value)


@pytest.mark.parametrize(
    ("make", "arn", "name"),
    [
        (EventBridgeAdapter, "arn:aws:events:eu-west-1:123456789012:event-bus/orders", "orders"),
        (SNSAdapter, "arn:aws:sns:eu-west-1:123456789012:orders.fifo", "orders.fifo"),
    ],
)
def test_an_arn_gives_the_name_and_the_region(make: Any, arn: str, name: str) -> None:
    a = make(arn)
    assert (a.name, a.region) == (name, "eu-west-1") and arn in repr(a)
    a.close()
    with pytest.raises(ValueError, match="max_request_bytes must be 1024 to"):
        make(arn, max_request_bytes=2_000_000)


def test_more_than_ten_messages_go_in_requests_of_ten(aws: AWS, target: Target) -> None:
    spy = SendSpy(open_adapter(target.url))
    requests = count_requests(spy.inner.client, *target.operation)  # type: ignore[attr-defined]
    q = aws.open(spy, batch_size=25)
    with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=25) as (out, _):
        for i in range(25):
            out.send(Order(str(i), 1.0))
    got = sorted(int(target.body(m)["id"]) for m in aws.read(target.queue, 25))
    assert got == list(range(25))
    # The kernel hands the adapter batches of up to batch_size; the service takes 10.
    assert sum(spy.batches) == 25 and max(spy.batches) > 10
    assert requests == [10, 10, 5]


def test_a_batch_over_256_kib_is_split_by_size(aws: AWS, target: Target) -> None:
    a = open_adapter(target.url)
    requests = count_requests(a.client, *target.operation)  # type: ignore[attr-defined]
    body = json.dumps({"x": "a" * 100_000}).encode()
    try:
        bags = [Bag("Big", body, {"Category": "Big", "Source": "tests"}) for _ in range(5)]
        assert a.send_batch(bags) == [None] * 5
    finally:
        a.close()
    assert requests == [2, 2, 1]  # 2 x 100 kB fit in 256 KiB, 3 do not
    assert [target.body(m) for m in aws.read(target.queue, 5)] == [{"x": "a" * 100_000}] * 5


def test_dequeue_raises_at_the_call_and_starts_no_poller(aws: AWS, target: Target) -> None:
    q = aws.open(target.url)
    with pytest.raises(SendOnlyError, match=r"only sends .* SQS queue .* Lambda"):
        dequeue(Order, q)
    poller = f"qchan-consumer-{q.adapter.scheme}-"  # this transport's (kernel/consumer.py)
    assert not [t for t in threading.enumerate() if t.name.startswith(poller)]
    assert not isinstance(q.adapter, ReceivingAdapter)  # it has the send side alone
    wrapped = aws.open(spy_on(open_adapter(target.url)))  # a test double keeps it send-only
    with pytest.raises(SendOnlyError):
        dequeue(Order, wrapped)


def test_no_credentials_in_repr(aws: AWS, target: Target) -> None:
    session = boto3.session.Session(
        aws_access_key_id="AKIDLEAKCHECK", aws_secret_access_key="s3cr3t-leak-check"
    )
    with connect(target.url, session=session) as q:
        text = repr(q) + repr(q.adapter)
    assert aws.endpoint in text and "region=us-east-1" in text
    assert "AKIDLEAKCHECK" not in text and "s3cr3t" not in text
