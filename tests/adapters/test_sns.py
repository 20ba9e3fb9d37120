"""The SNS adapter (send only) against moto's server: topics, standard and FIFO, subscribed
by SQS queues with raw delivery on and off, read with plain boto3 (support/aws.py), so each
test sees the messages exactly as a consumer of that queue would."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support.aws import AWS, REGION, Order

from qchan import (
    AT_MOST_ONCE,
    Constant,
    connect,
    enqueue,
    enqueue_sync,
)
from qchan.adapter import Adapter
from qchan.adapters.sns import SNSAdapter, TopicNotFound, from_url
from qchan.errors import MessageTooLarge, RejectedError
from qchan.message import Bag
from qchan.testing import Conformance

pytestmark = pytest.mark.integration


def bag(body: bytes, category: str = "Order", key: str | None = None) -> Bag:
    attrs_ = {"Category": category, "Source": "tests", "System": "sns", "Queue": "q"}
    return Bag(category, body, attrs_, id=uuid.uuid4().hex, key=key)


def attributes(message: dict[str, Any]) -> dict[str, str]:
    return {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}


# -- URLs, options and the wire format (no broker) ------------------------------------------


def test_entries_carry_the_attributes_as_sns_string_attributes() -> None:
    standard = SNSAdapter("arn:aws:sns:us-east-1:123456789012:orders", max_request_bytes=1024)
    fifo = SNSAdapter("arn:aws:sns:us-east-1:123456789012:orders.fifo")
    b = bag(b'{"id": "1"}')
    entry, size = standard._entry(3, b)
    assert entry == {
        "Id": "3",
        "Message": '{"id": "1"}',
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value}
            for name, value in b.attributes.items()
        },
    }
    assert size > len('{"id": "1"}')  # attributes count toward the size, as on SQS
    keyed, _ = fifo._entry(0, bag(b"{}", key="g/1 x"))
    assert keyed["MessageGroupId"] != "g/1 x" and len(keyed["MessageGroupId"]) == 64  # hashed
    by_category, _ = fifo._entry(0, b)
    assert by_category["MessageGroupId"] == "Order"
    assert by_category["MessageDeduplicationId"] == b.id  # stable across the kernel's retries
    assert "MessageGroupId" not in entry and "MessageDeduplicationId" not in entry
    binary, _ = standard._entry(0, bag(b"\x00\xff"))
    assert binary["Message"] == base64.b64encode(b"\x00\xff").decode()
    assert binary["MessageAttributes"]["ContentTransferEncoding"]["StringValue"] == "base64"
    with pytest.raises(RejectedError, match="empty"):
        standard._entry(0, bag(b""))
    with pytest.raises(MessageTooLarge, match="topic's message size of 1024"):
        standard._entry(0, bag(b"x" * 1024))
    standard.close()
    fifo.close()


# -- against the broker ---------------------------------------------------------------------


def test_raw_delivery_gives_the_body_and_the_four_attributes(
    aws: AWS,
) -> None:
    name, _, queue = aws.topic(raw=True)
    q = aws.open(aws.url("sns", name), agent="billing")
    with enqueue(Order, q) as (out, _):
        out.send(Order("1", 1.5))
    (m,) = aws.read(queue, 1)
    assert json.loads(m["Body"]) == {"id": "1", "amount": 1.5}
    assert attributes(m) == {
        "Category": "Order",
        "Source": "billing",
        "System": "sns",
        "Queue": name,
    }
    assert {v["DataType"] for v in m["MessageAttributes"].values()} == {"String"}


def test_without_raw_delivery_the_queue_gets_snss_notification(
    aws: AWS,
) -> None:
    name, arn, queue = aws.topic(raw=False)
    q = aws.open(aws.url("sns", name), agent="billing")
    with enqueue_sync(Order, q) as put:
        put.put(Order("2", 2.5), timeout=20)
    (m,) = aws.read(queue, 1)
    note = json.loads(m["Body"])
    assert note["Type"] == "Notification" and note["TopicArn"] == arn
    assert json.loads(note["Message"]) == {"id": "2", "amount": 2.5}
    assert {k: (v["Type"], v["Value"]) for k, v in note["MessageAttributes"].items()} == {
        "Category": ("String", "Order"),
        "Source": ("String", "billing"),
        "System": ("String", "sns"),
        "Queue": ("String", name),
    }


def test_a_fifo_topic_keeps_order_per_group(aws: AWS) -> None:
    name, _, queue = aws.topic(fifo=True, raw=True)
    q = aws.open(aws.url("sns", name))
    with enqueue(Order, q, key=lambda o: o.id.split("-")[0]) as (out, _):
        for i in range(30):
            out.send(Order(f"g{i % 3}-{i}", float(i)))
    got: dict[str, list[int]] = {}
    for m in aws.read(queue, 30):
        group, seq = json.loads(m["Body"])["id"].split("-")
        assert m["Attributes"]["MessageGroupId"] == group
        got.setdefault(group, []).append(int(seq))
    assert got == {f"g{g}": list(range(g, 30, 3)) for g in range(3)}


def test_a_fifo_content_dedup_topic_delivers_the_same_object_sent_twice(aws: AWS) -> None:
    # Topic and queue with ContentBasedDeduplication=true: without a
    # MessageDeduplicationId the second "twice" would be dropped (moto drops it in the
    # subscribed queue; SNS itself drops it on AWS). qchan sends each message's id.
    name, _, queue = aws.topic(fifo=True, raw=True, content_dedup=True)
    q = aws.open(aws.url("sns", name))
    order = Order("twice", 2.0)
    with enqueue(Order, q) as (out, dlq):
        out.send(order)
        out.send(order)
    assert len(dlq) == 0
    got = aws.read(queue, 2, timeout=10)
    assert [json.loads(m["Body"]) for m in got] == [{"id": "twice", "amount": 2.0}] * 2
    assert got[0]["MessageId"] != got[1]["MessageId"]


def test_a_fifo_resend_with_the_same_id_is_deduplicated(aws: AWS) -> None:
    name, _, queue = aws.topic(fifo=True, raw=True, content_dedup=True)
    adapter = from_url(aws.url("sns", name))
    try:
        b = bag(b'{"id": "once"}')
        assert adapter.send_batch([b]) == [None]
        assert adapter.send_batch([b]) == [None]  # the kernel's retry after a lost reply
    finally:
        adapter.close()
    assert [m["Body"] for m in aws.read(queue, 1)] == ['{"id": "once"}']


def test_content_dedup_true_sends_no_deduplication_id() -> None:
    arn = "arn:aws:sns:us-east-1:123456789012:orders.fifo"
    b = bag(b"{}")
    for content, expected in ((None, b.id), (False, b.id), (True, None)):
        adapter = SNSAdapter(arn, content_dedup=content)
        entry, _ = adapter._entry(0, b)
        assert entry.get("MessageDeduplicationId") == expected, content
        adapter.close()


def test_oversized_and_empty_messages_end_on_dlq_and_the_rest_is_delivered(
    aws: AWS,
) -> None:
    name, _, queue = aws.topic()
    q = aws.open(aws.url("sns", name), retry=Constant(0.01, max_attempts=5))
    big = b"x" * 300_000
    with enqueue(bytes, q, category="raw") as (out, dlq):
        for body in (b"ok", big, b""):
            out.send(body)
        dead = [dlq.recv(timeout=20) for _ in range(2)]
    assert {m.object: type(m.error) for m in dead} == {big: MessageTooLarge, b"": RejectedError}
    assert q.stats().retried == 0
    assert [m["Body"] for m in aws.read(queue, 1)] == ["ok"]


def test_a_message_sns_refuses_as_too_long_is_message_too_large(aws: AWS) -> None:
    # max_request_bytes at 1 MiB (a topic raised to it); moto's SNS keeps 256 KiB and
    # answers the entry in Failed: "Invalid parameter: Message too long".
    name, _, queue = aws.topic()
    adapter = from_url(aws.url("sns", name), max_request_bytes=1_048_576)
    try:
        outcomes = adapter.send_batch([bag(b"ok-1"), bag(b"x" * 300_000), bag(b"ok-2")])
    finally:
        adapter.close()
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], MessageTooLarge), outcomes
    assert "too long" in str(outcomes[1])
    assert sorted(m["Body"] for m in aws.read(queue, 2)) == ["ok-1", "ok-2"]


def fail_once(adapter: SNSAdapter, failures: dict[str, tuple[str, bool]]) -> list[str]:
    """Wrap the client's publish_batch: the first time a message whose body is in
    `failures` is published, it is not sent and comes back in `Failed` with that code and
    SenderFault. Returns the bodies of every entry published, in order."""
    real = adapter.client.publish_batch
    seen: list[str] = []
    lock = threading.Lock()

    def publish_batch(**kwargs: Any) -> Any:
        entries = kwargs["PublishBatchRequestEntries"]
        with lock:
            fail = {
                e["Id"]: failures[e["Message"]]
                for e in entries
                if e["Message"] in failures and e["Message"] not in seen
            }
            seen.extend(e["Message"] for e in entries)
        sent = [e for e in entries if e["Id"] not in fail]
        reply = real(TopicArn=kwargs["TopicArn"], PublishBatchRequestEntries=sent)
        failed = [
            {"Id": id_, "Code": code, "Message": "injected", "SenderFault": sender}
            for id_, (code, sender) in fail.items()
        ]
        return {"Successful": reply["Successful"], "Failed": reply.get("Failed", []) + failed}

    adapter.client.publish_batch = publish_batch  # type: ignore[method-assign]
    return seen


def test_failed_entries_are_retried_and_refused_ones_dead_lettered(
    aws: AWS,
) -> None:
    name, _, queue = aws.topic()
    adapter = from_url(aws.url("sns", name))
    published = fail_once(adapter, {"b": ("InternalError", False), "c": ("InvalidParameter", True)})
    q = aws.open(adapter, retry=Constant(0.01, max_attempts=5))
    with enqueue(str, q, policy=AT_MOST_ONCE, capacity=4) as (out, dlq):
        for body in "abcd":
            out.send(body)
        dead = dlq.recv(timeout=20)
    assert dead.object == "c" and isinstance(dead.error, RejectedError)
    assert "InvalidParameter" in str(dead.error)
    assert sorted(m["Body"] for m in aws.read(queue, 3)) == ["a", "b", "d"]
    assert sorted(published) == ["a", "b", "b", "c", "d"]
    assert q.stats().retried == 1


def test_a_missing_topic_fails_at_connect_and_create_makes_it(aws: AWS) -> None:
    name = f"qchan-missing-{uuid.uuid4().hex[:8]}.fifo"
    with pytest.raises(TopicNotFound, match="create=True"):
        connect(aws.url("sns", name))
    with connect(aws.url("sns", name), create=True) as q:
        arn = f"arn:aws:sns:{REGION}:{aws.account}:{name}"
        assert arn in repr(q.adapter)
        attrs_ = aws.sns.get_topic_attributes(TopicArn=arn)["Attributes"]
        assert attrs_["FifoTopic"] == "true"
    aws.sns.delete_topic(TopicArn=arn)


def test_a_topic_by_arn(aws: AWS) -> None:
    _, arn, queue = aws.topic()
    with connect(aws.url("sns", arn)) as q, enqueue_sync(str, q) as put:
        put.put("by arn", timeout=20)
    assert [m["Body"] for m in aws.read(queue, 1)] == ["by arn"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "notification"])
def test_the_subscribed_sqs_queue_delivers_the_typed_object(aws: AWS, raw: bool) -> None:
    name, _, queue = aws.topic(raw=raw)
    with enqueue(Order, aws.open(aws.url("sns", name), agent="billing")) as (out, _):
        out.send(Order("e2e", 4.5))
    (msg,) = aws.receive(queue, Order, 1)
    assert msg.object == Order("e2e", 4.5) and msg.category == "Order"
    assert (msg.attributes["Source"], msg.attributes["Queue"]) == ("billing", name)
    assert msg.attributes.get("Envelope") == (None if raw else "sns")


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "notification"])
def test_a_binary_body_arrives_as_the_bytes_sent(aws: AWS, raw: bool) -> None:
    name, _, queue = aws.topic(raw=raw)
    with enqueue(bytes, aws.open(aws.url("sns", name)), category="blob") as (out, _):
        out.send(bytes(range(256)))  # not UTF-8: base64 on the wire
    (msg,) = aws.receive(queue, bytes, 1, category="blob")
    assert msg.object == bytes(range(256))
    assert "ContentTransferEncoding" not in msg.attributes


class TestSNSConformance(Conformance):
    """The shared suite's send side: sns:// declares no `receive`."""

    features = frozenset({"missing_queue"})
    patience = 20.0

    @pytest.fixture
    def missing_adapter_factory(self, aws: AWS) -> Callable[[str], Adapter]:
        return lambda name: from_url(aws.url("sns", name))

    @pytest.fixture
    def adapter_factory(self, aws: AWS) -> Callable[[str], Adapter]:
        def make(name: str) -> Adapter:
            arn = aws.sns.create_topic(Name=name)["TopicArn"]  # idempotent
            aws.undo(lambda: aws.sns.delete_topic(TopicArn=arn))
            return from_url(aws.url("sns", arn))

        return make
