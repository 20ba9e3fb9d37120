"""The SQS adapter against a real local SQS endpoint (moto's server, see support/sqs.py).

Adapter-level tests call the contract directly (send_batch, receive, ack,
nack, release, extend); kernel-level tests go through enqueue/dequeue; the
shared conformance suite runs as `TestSQSConformance`. Every queue is unique
per test and deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import boto3
import pytest
from botocore.exceptions import ClientError
from support.helpers import outage_then_invalid, slow_consume, start, wait_for
from support.sqs import MotoServer, free_port

from qchan import (
    AT_MOST_ONCE,
    Adapter,
    Chan,
    Constant,
    DecodeError,
    Retries,
    connect,
    dequeue,
    enqueue,
    serve,
)
from qchan.adapter import Hooks
from qchan.adapters import _aws as aws
from qchan.adapters.sqs import QueueNotFound, SQSAdapter, SQSError, _parse, from_url
from qchan.adapters.sqs import _wire as wire
from qchan.errors import ConnectionLost, MessageTooLarge, RejectedError
from qchan.message import Bag
from qchan.testing import FEATURES, Conformance, Peers
from qchan.urls import URLError

REGION = "us-east-1"
ATTRS = {"Category": "Order", "Source": "tests", "System": "sqs", "Queue": "q"}


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def sqs(sqs_endpoint: str) -> Any:
    """A plain boto3 client on the local endpoint (the 'foreign' side of interop tests)."""
    client = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name=REGION)
    yield client
    client.close()


@pytest.fixture
def make_queue(sqs: Any) -> Iterator[Callable[..., tuple[str, str]]]:
    """Create a uniquely named queue; returns (name, url). Deleted after the test."""
    urls: list[str] = []

    def make(fifo: bool = False, **attributes: str) -> tuple[str, str]:
        name = f"qchan-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        if fifo:
            attributes.setdefault("FifoQueue", "true")
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        urls.append(url)
        return name, url

    yield make
    for url in urls:
        try:
            sqs.delete_queue(QueueUrl=url)
        except Exception:
            pass


@pytest.fixture
def adapters(sqs_endpoint: str) -> Iterator[Callable[..., SQSAdapter]]:
    """Open adapters on the local endpoint (closed after the test)."""
    opened: list[SQSAdapter] = []

    def make(name: str, **options: Any) -> SQSAdapter:
        options.setdefault("wait", 1)
        a = from_url(f"sqs://{name}?endpoint={sqs_endpoint}&region={REGION}", **options)
        opened.append(a)
        return a

    yield make
    for a in opened:
        a.close()


class Recorder(Hooks):
    """Hooks that keep what the adapter reports."""

    def __init__(self) -> None:
        self.reported: list[BaseException] = []

    def report(self, error: BaseException) -> None:
        self.reported.append(error)


def count_calls(adapter: SQSAdapter, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every `operation` request the adapter makes (botocore event)."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    for client in (adapter.client, adapter._poll_client):
        client.meta.events.register(f"provide-client-params.sqs.{operation}", record)
    return seen


def bag(body: bytes | str, category: str = "Order", **kw: Any) -> Bag:
    raw = body.encode() if isinstance(body, str) else body
    attrs = {**ATTRS, "Category": category}
    return Bag(category, raw, attrs, id=kw.pop("id", uuid.uuid4().hex), **kw)


def receive_all(a: SQSAdapter, n: int, timeout: float = 20.0) -> list[Bag]:
    """Receive until `n` bags arrived (deadline), without acking."""
    got: list[Bag] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"received {len(got)} of {n} within {timeout} s")
        got.extend(a.receive(10, 1))
    return got


def drain(a: SQSAdapter, n: int, timeout: float = 20.0) -> list[Bag]:
    """Receive and ack until `n` bags arrived."""
    got: list[Bag] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"received {len(got)} of {n} within {timeout} s")
        batch = a.receive(10, 1)
        if batch:
            a.ack(batch)
            got.extend(batch)
    return got


def assert_empty(a: SQSAdapter, wait: float = 1.0) -> None:
    assert list(a.receive(10, wait)) == []


# -- URLs and wire format (no broker) -------------------------------------------


def test_url_by_name() -> None:
    name, params = _parse(
        "sqs://orders?endpoint=http://127.0.0.1:4566&region=us-east-1"
        "&create=true&wait=2&visibility_timeout=60"
    )
    assert name == "orders"
    assert params == {
        "endpoint": "http://127.0.0.1:4566",
        "region": "us-east-1",
        "create": True,
        "wait": 2.0,
        "visibility_timeout": 60,
    }


def test_url_by_queue_url() -> None:
    name, params = _parse("sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo")
    assert name == "orders.fifo"
    assert params["queue_url"] == "https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo"
    assert params["region"] == "eu-west-1"
    name, params = _parse("http://127.0.0.1:4566/000000000000/jobs")
    assert (name, params["queue_url"]) == ("jobs", "http://127.0.0.1:4566/000000000000/jobs")
    assert params["endpoint"] == "http://127.0.0.1:4566"


@pytest.mark.parametrize(
    "url",
    [
        "sqs://orders?colour=blue",
        "sqs://orders?create=maybe",
        "sqs://AKIA:secret@orders",
        "sqs://",
        "sqs://host/only-one-segment-too/many/segments",
    ],
)
def test_bad_urls_are_refused_without_leaking_secrets(url: str) -> None:
    with pytest.raises(URLError) as e:
        _parse(url)
    assert "secret" not in str(e.value)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        from_url("sqs://orders", colour="blue")


def test_wire_body_encoding() -> None:
    assert wire.encode_body("héllo ✓ {}".encode()) == ("héllo ✓ {}", False)
    for raw in (bytes(range(256)), b"a\x00b", b"\xff{not json"):
        text, encoded = wire.encode_body(raw)
        assert encoded and base64.b64decode(text) == raw


def test_wire_tokens_and_attributes() -> None:
    assert wire.token("orders.v2", "x") == "orders.v2"
    assert wire.token("", "default") == "default"
    long = wire.token("ü" * 200, "x")
    assert len(long) == 64 and long == wire.token("ü" * 200, "y")
    assert wire.string_attributes({"Category": "", "Source": "s"}) == {
        "Source": {"DataType": "String", "StringValue": "s"}
    }
    with pytest.raises(RejectedError):
        wire.string_attributes({"AWS.reserved": "x"})
    with pytest.raises(RejectedError):
        wire.string_attributes({f"a{i}": "x" for i in range(11)})


def test_missing_region_and_credentials_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ValueError, match="no AWS region"):
        SQSAdapter("orders", endpoint="http://127.0.0.1:9")
    with pytest.raises(SQSError, match="no AWS credentials"):
        from_url("sqs://orders?endpoint=http://127.0.0.1:9&region=us-east-1")


def test_a_request_too_long_for_one_message_is_message_too_large() -> None:
    # What the one-by-one resend of a batch refused as too long meets when one
    # message alone is still more than the endpoint takes in a request.
    a = SQSAdapter("orders", endpoint="http://127.0.0.1:9", region=REGION)
    for code in ("AWS.SimpleQueueService.BatchRequestTooLong", "BatchRequestTooLong"):
        refused = ClientError(
            {"Error": {"Code": code, "Message": "Batch requests cannot be longer than 1048576"}},
            "SendMessageBatch",
        )
        assert isinstance(a._error("send", refused), MessageTooLarge), code
    a.close()


#: A SendMessageBatch reply's Failed entry for a message over the queue's limit, as SQS
#: words it.
TOO_LONG_ENTRY = {
    "SenderFault": True,
    "Code": "InvalidParameterValue",
    "Message": "One or more parameters are invalid. Reason: Message must be shorter than "
    "262144 bytes.",
}


def test_failed_entries_tell_a_size_refusal_from_other_refusals() -> None:
    failed = [
        {"Id": "0", **TOO_LONG_ENTRY},
        {
            "Id": "1",
            "SenderFault": True,
            "Code": "InvalidParameterValue",
            "Message": "Value x for parameter MessageGroupId is invalid.",
        },
        {"Id": "2", "SenderFault": False, "Code": "InternalError", "Message": "try again"},
        {"Id": "3", "SenderFault": True, "Code": "RequestThrottled", "Message": "slow down"},
    ]
    out = aws.failed_entries(failed, "SQS refused message for queue q", SQSError)
    assert isinstance(out["0"], MessageTooLarge) and isinstance(out["0"], RejectedError)
    assert "must be shorter than 262144 bytes" in str(out["0"])
    assert type(out["1"]) is RejectedError
    assert type(out["2"]) is SQSError and out["2"].code == "InternalError"
    assert type(out["3"]) is SQSError and out["3"].code == "RequestThrottled"


# -- adapter level, against moto ------------------------------------------------


@pytest.mark.integration
def test_missing_queue_is_a_clear_error(sqs_endpoint: str) -> None:
    with pytest.raises(QueueNotFound, match="create it or pass create=True") as e:
        from_url(f"sqs://nope-{uuid.uuid4().hex[:8]}?endpoint={sqs_endpoint}&region={REGION}")
    assert sqs_endpoint in str(e.value)


@pytest.mark.integration
def test_create_makes_the_queue(adapters: Callable[..., SQSAdapter], sqs: Any) -> None:
    name = f"qchan-{uuid.uuid4().hex[:12]}.fifo"
    a = adapters(name, create=True)
    try:
        attrs = sqs.get_queue_attributes(QueueUrl=a.queue_url, AttributeNames=["All"])
        assert attrs["Attributes"]["FifoQueue"] == "true"
        assert a.fifo
    finally:
        sqs.delete_queue(QueueUrl=a.queue_url)


@pytest.mark.integration
def test_round_trip_with_attributes(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue()
    a = adapters(name)
    sent = [bag(json.dumps({"id": i}), id=f"m{i}") for i in range(3)]
    assert a.send_batch(sent) == [None, None, None]
    got = receive_all(a, 3)
    assert sorted(b.body for b in got) == sorted(b.body for b in sent)
    for b in got:
        assert b.category == "Order"
        assert dict(b.attributes) == ATTRS
        assert b.deliveries == 1
        assert b.id and b.digest
    a.ack(got)
    assert_empty(a)


@pytest.mark.integration
def test_binary_bodies_round_trip_and_are_base64_on_the_wire(
    make_queue: Any, adapters: Any, sqs: Any
) -> None:
    name, url = make_queue()
    a = adapters(name)
    bodies = [bytes(range(256)), b"nul\x00inside", "plain ✓".encode()]
    assert a.send_batch([bag(b, category="blob") for b in bodies]) == [None] * 3
    raw = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
    )["Messages"]
    wire_view = {m["Body"]: m.get("MessageAttributes", {}) for m in raw}
    assert "plain ✓" in wire_view and wire.ENCODING_ATTR not in wire_view["plain ✓"]
    encoded = [m for m in raw if m["Body"] != "plain ✓"]
    assert all(
        m["MessageAttributes"][wire.ENCODING_ATTR]["StringValue"] == "base64" for m in encoded
    )
    sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(raw)
        ],
    )
    got = drain(a, 3)
    assert sorted(b.body for b in got) == sorted(bodies)
    assert all(wire.ENCODING_ATTR not in b.attributes for b in got)


@pytest.mark.integration
def test_batches_are_split_by_count(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue()
    a = adapters(name)
    calls = count_calls(a, "SendMessageBatch")
    assert a.send_batch([bag(f"{i}") for i in range(25)]) == [None] * 25
    assert [len(c["Entries"]) for c in calls] == [10, 10, 5]
    assert sorted(int(b.body) for b in drain(a, 25)) == list(range(25))


@pytest.mark.integration
def test_batches_are_split_by_size(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue()
    a = adapters(name)
    calls = count_calls(a, "SendMessageBatch")
    big = [bag(f"{i}" + "x" * 100_000) for i in range(5)]
    assert a.send_batch(big) == [None] * 5
    # 256 KiB per request: two 100 kB messages fit, a third does not.
    assert [len(c["Entries"]) for c in calls] == [2, 2, 1]
    assert len(drain(a, 5)) == 5


@pytest.mark.integration
def test_oversized_message_is_rejected_and_the_rest_delivered(
    make_queue: Any, adapters: Any
) -> None:
    name, _ = make_queue(MaximumMessageSize="1024")
    a = adapters(name)
    outcomes = a.send_batch([bag("small-1"), bag("y" * 2000), bag("small-2")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], MessageTooLarge)
    assert isinstance(outcomes[1], RejectedError)  # the kernel dead-letters it, no retry
    assert "1024" in str(outcomes[1])
    assert sorted(b.body for b in drain(a, 2)) == [b"small-1", b"small-2"]
    assert_empty(a)


@pytest.mark.integration
def test_a_batch_refused_for_one_entry_is_resent_one_by_one(
    make_queue: Any, adapters: Any, sqs: Any
) -> None:
    # The limit shrinks after the adapter read it: SQS refuses the whole
    # request, and only the entry that broke the rule may fail.
    name, url = make_queue()
    a = adapters(name)
    a.queue_url  # noqa: B018 - resolve now, with the old limit
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
    calls = count_calls(a, "SendMessageBatch")
    outcomes = a.send_batch([bag("ok-1"), bag("z" * 3000), bag("ok-2")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], MessageTooLarge), outcomes
    assert [len(c["Entries"]) for c in calls] == [3, 1, 1, 1]
    assert sorted(b.body for b in drain(a, 2)) == [b"ok-1", b"ok-2"]


@pytest.mark.integration
def test_a_batch_over_sqss_request_limit_is_resent_one_by_one(
    make_queue: Any, adapters: Any
) -> None:
    # max_request_bytes above what the endpoint takes: SQS refuses the request as
    # AWS.SimpleQueueService.BatchRequestTooLong (botocore's code on the JSON protocol),
    # though each message fits alone. Each HTTP request is counted (botocore's own
    # retries too): one of 2, then one per message, none repeated.
    name, _ = make_queue(MaximumMessageSize="1048576")
    a = adapters(name, max_request_bytes=2_000_000)
    sent: list[int] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(len(json.loads(request.body)["Entries"]))

    a.client.meta.events.register("before-send.sqs.SendMessageBatch", record)
    big = [bag(f"{i}" + "x" * 600_000) for i in range(2)]
    assert a.send_batch(big) == [None, None]
    assert sent == [2, 1, 1]
    assert sorted(b.body for b in drain(a, 2)) == sorted(b.body for b in big)


@pytest.mark.integration
def test_an_entry_refused_for_its_size_in_the_reply_is_message_too_large(
    make_queue: Any, adapters: Any
) -> None:
    # moto refuses a whole batch for an entry's size; SQS can also answer it in the
    # reply's Failed list, which a wrapped client plays here, the rest sent to moto.
    name, _ = make_queue()
    a = adapters(name)
    real = a.client.send_message_batch

    def send_message_batch(**kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        big = [e for e in entries if e["MessageBody"].startswith("big")]
        kept = [e for e in entries if e not in big]
        reply = real(QueueUrl=kwargs["QueueUrl"], Entries=kept)
        failed = [{"Id": e["Id"], **TOO_LONG_ENTRY} for e in big]
        return {"Successful": reply["Successful"], "Failed": reply.get("Failed", []) + failed}

    a.client.send_message_batch = send_message_batch  # type: ignore[method-assign]
    outcomes = a.send_batch([bag("ok-1"), bag("big"), bag("ok-2")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], MessageTooLarge), outcomes
    assert sorted(b.body for b in drain(a, 2)) == [b"ok-1", b"ok-2"]


@pytest.mark.integration
def test_fifo_keeps_order_per_group_across_1000_messages(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue(fifo=True)
    producer, consumer = adapters(name), adapters(name)
    groups = ["alpha", "beta", "gamma", "delta"]
    total = 1000
    got: dict[str, list[int]] = {g: [] for g in groups}

    def consume() -> None:
        n = 0
        deadline = time.monotonic() + 90
        while n < total and time.monotonic() < deadline:
            batch = consumer.receive(10, 1)
            for b in batch:
                got[b.category].append(json.loads(b.body)["seq"])
                assert b.key == b.category  # MessageGroupId defaults to the category
            if batch:
                consumer.ack(batch)
            n += len(batch)

    worker = start(consume, name="fifo-consumer")  # consume while producing: shallow queue
    for first in range(0, total, 10):
        batch = [
            bag(json.dumps({"seq": i}), category=groups[i % 4]) for i in range(first, first + 10)
        ]
        assert producer.send_batch(batch) == [None] * 10
    worker.outcome(timeout=120)
    for g, seqs in got.items():
        expected = [i for i in range(total) if groups[i % 4] == g]
        assert seqs == expected, f"group {g} out of order or incomplete"


@pytest.mark.integration
@pytest.mark.parametrize("content", ["false", "true"], ids=["id-dedup", "content-dedup-queue"])
def test_fifo_resend_with_the_same_id_is_deduplicated(
    content: str, make_queue: Any, adapters: Any
) -> None:
    # On a queue with ContentBasedDeduplication too: the id, not the body, decides.
    name, _ = make_queue(fifo=True, ContentBasedDeduplication=content)
    a = adapters(name)
    calls = count_calls(a, "SendMessageBatch")
    b = bag("once", key="k1", id="stable-id-1")
    assert a.send_batch([b]) == [None]
    assert a.send_batch([b]) == [None]  # the kernel's retry after a lost reply
    assert calls[0]["Entries"][0]["MessageDeduplicationId"] == "stable-id-1"
    assert calls[0]["Entries"][0]["MessageGroupId"] == "k1"  # the bag's key wins
    assert [x.body for x in drain(a, 1)] == [b"once"]
    assert_empty(a)


@pytest.mark.integration
def test_fifo_distinct_messages_with_equal_bodies_all_arrive_on_a_content_dedup_queue(
    make_queue: Any, adapters: Any
) -> None:
    # ContentBasedDeduplication=true on the queue: SQS would drop the second "same"
    # within 5 minutes if qchan sent no MessageDeduplicationId. It sends the bag's id.
    name, _ = make_queue(fifo=True, ContentBasedDeduplication="true")
    a = adapters(name)
    calls = count_calls(a, "SendMessageBatch")
    sent = [bag("same"), bag("same"), bag("other")]
    assert a.send_batch(sent) == [None] * 3
    assert [e.get("MessageDeduplicationId") for e in calls[0]["Entries"]] == [b.id for b in sent]
    assert sorted(x.body for x in drain(a, 3)) == [b"other", b"same", b"same"]
    assert_empty(a)


@pytest.mark.integration
def test_fifo_content_dedup_true_lets_sqs_hash_the_body(make_queue: Any, adapters: Any) -> None:
    # The explicit opt-in: no MessageDeduplicationId, so equal bodies within SQS's
    # 5-minute window are one message (docs/sqs.md).
    name, _ = make_queue(fifo=True, ContentBasedDeduplication="true")
    a = adapters(name, content_dedup=True, group_id=lambda b: "g-" + b.category)
    calls = count_calls(a, "SendMessageBatch")
    assert a.send_batch([bag("same"), bag("same"), bag("other")]) == [None] * 3
    entry = calls[0]["Entries"][0]
    assert "MessageDeduplicationId" not in entry
    assert entry["MessageGroupId"] == "g-Order"
    assert sorted(x.body for x in drain(a, 2)) == [b"other", b"same"]
    assert_empty(a)


@pytest.mark.integration
def test_fifo_content_dedup_queue_delivers_the_same_object_sent_twice(
    make_queue: Any, sqs_endpoint: str
) -> None:
    # The case end to end: one object enqueued twice is two messages, with
    # equal bodies and attributes; neither may be dropped.
    name, _ = make_queue(fifo=True, ContentBasedDeduplication="true")
    order = Order("twice", 2.0)
    with connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1) as q:
        with enqueue(Order, q) as (out, dlq):
            out.send(order)
            out.send(order)
        assert len(dlq) == 0 and q.stats().sent == 2
        with dequeue(Order, q) as (rcv, ack):
            got = [rcv.recv(timeout=10) for _ in range(2)]
            for m in got:
                ack.send(m)
    assert [m.object for m in got] == [order, order]
    assert got[0].bag is not None and got[1].bag is not None
    assert got[0].bag.id != got[1].bag.id


@pytest.mark.integration
def test_dead_letters_with_equal_bodies_all_reach_a_content_dedup_fifo_dlq(
    make_queue: Any, adapters: Any, sqs: Any
) -> None:
    # The dead-letter copy sends the original's id too, whatever the DLQ's setting.
    dlq_name, dlq_url = make_queue(fifo=True, ContentBasedDeduplication="true")
    arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": 10}
    name, _ = make_queue(fifo=True, RedrivePolicy=json.dumps(redrive))
    a = adapters(name)
    assert a.send_batch([bag("same"), bag("same")]) == [None, None]
    got = receive_all(a, 2)
    a.dead_letter(got, [ValueError("give up")] * 2)
    assert [x.body for x in drain(adapters(dlq_name), 2)] == [b"same", b"same"]
    assert_empty(a)


@pytest.mark.integration
def test_raw_boto3_message_arrives_with_category_and_source(
    make_queue: Any, adapters: Any, sqs: Any
) -> None:
    # What a Go service built on fogfish/swarm sends: JSON body, two String attributes.
    name, url = make_queue()
    sqs.send_message(
        QueueUrl=url,
        MessageBody='{"id":"go-1","amount":2.5}',
        MessageAttributes={
            "Category": {"DataType": "String", "StringValue": "Order"},
            "Source": {"DataType": "String", "StringValue": "go-service"},
        },
    )
    sqs.send_message(QueueUrl=url, MessageBody='{"bare":true}')  # no attributes at all
    got = {b.body: b for b in drain(adapters(name), 2)}
    typed = got[b'{"id":"go-1","amount":2.5}']
    assert typed.category == "Order"
    assert dict(typed.attributes) == {"Category": "Order", "Source": "go-service"}
    bare = got[b'{"bare":true}']
    assert bare.category == "" and dict(bare.attributes) == {}


@pytest.mark.integration
def test_qchan_message_is_plain_json_with_string_attributes(
    make_queue: Any, adapters: Any, sqs: Any
) -> None:
    name, url = make_queue()
    body = '{"id": "py-1", "amount": 9.5}'
    assert adapters(name).send_batch([bag(body)]) == [None]
    m = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2, MessageAttributeNames=["All"])[
        "Messages"
    ][0]
    assert m["Body"] == body
    assert m["MessageAttributes"] == {
        k: {"DataType": "String", "StringValue": v} for k, v in ATTRS.items()
    }
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


@pytest.mark.integration
def test_unacked_message_comes_back_after_the_visibility_timeout(
    make_queue: Any, adapters: Any
) -> None:
    name, _ = make_queue()
    a = adapters(name, visibility_timeout=1)
    a.send_batch([bag("again")])
    first = receive_all(a, 1)[0]
    second = receive_all(a, 1, timeout=10)[0]  # never acked: back after ~1 s
    assert second.id == first.id
    assert second.digest != first.digest
    assert second.deliveries == 2
    a.ack([second])
    assert_empty(a)


@pytest.mark.integration
def test_nack_redelivers_now_or_after_its_delay(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue(VisibilityTimeout="60")
    a = adapters(name)
    a.send_batch([bag("n")])
    first = receive_all(a, 1)[0]
    a.give_back([first], counted=True, delay=0)
    again = receive_all(a, 1, timeout=5)[0]
    assert again.id == first.id
    t0 = time.monotonic()
    a.give_back([again], counted=True, delay=2)
    third = receive_all(a, 1, timeout=10)[0]
    assert time.monotonic() - t0 >= 1.5  # not before its delay
    assert third.id == first.id and third.deliveries == 3
    a.give_back([third], counted=False)
    last = receive_all(a, 1, timeout=5)[0]
    a.ack([last])
    assert_empty(a)


@pytest.mark.integration
def test_extend_keeps_a_message_invisible(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue(VisibilityTimeout="30")
    holder = adapters(name, visibility_timeout=2)  # receives with a 2 s timeout
    keeper = adapters(name)  # extends to the queue's 30 s
    other = adapters(name)
    holder.send_batch([bag("held")])
    held = receive_all(holder, 1)
    keeper.extend(held)
    # Without the extension the message is back after 2 s.
    assert_empty(other, wait=4)
    holder.give_back(held, counted=False)
    assert [b.id for b in receive_all(other, 1, timeout=5)] == [held[0].id]


@pytest.mark.integration
def test_idle_receive_is_one_long_poll(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue()
    a = adapters(name)
    calls = count_calls(a, "ReceiveMessage")
    t0 = time.monotonic()
    assert a.receive(10, 2) == []
    assert time.monotonic() - t0 >= 1.5
    assert [c["WaitTimeSeconds"] for c in calls] == [2]
    assert calls[0]["MessageAttributeNames"] == ["All"]


@pytest.mark.integration
def test_failed_acks_are_reported_not_raised(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue()
    a = adapters(name)
    hooks = Recorder()
    a.bind(hooks)
    a.send_batch([bag("x")])
    good = receive_all(a, 1)
    bogus = Bag("Order", b"", digest="not-a-receipt-handle")
    a.ack([*good, bogus])
    assert len(hooks.reported) == 1
    assert isinstance(hooks.reported[0], SQSError)
    assert "ReceiptHandleIsInvalid" in str(hooks.reported[0])
    assert_empty(a)  # the good one was deleted


@pytest.mark.integration
def test_queue_by_url(make_queue: Any, sqs_endpoint: str) -> None:
    name, url = make_queue()
    a = from_url(url, region=REGION, wait=1)
    try:
        assert a.name == name and a.queue_url == url
        assert a.send_batch([bag("by-url")]) == [None]
        assert [b.body for b in drain(a, 1)] == [b"by-url"]
    finally:
        a.close()


@pytest.mark.integration
def test_endpoint_down_at_start_then_back(sqs_endpoint: str) -> None:
    # sqs_endpoint: only for its dummy credentials; this test runs its own server.
    port = free_port()
    url = f"sqs://qchan-late-{uuid.uuid4().hex[:8]}?endpoint=http://127.0.0.1:{port}"
    a = from_url(url, region=REGION, create=True, wait=1, max_attempts=1, connect_timeout=1)
    try:
        outcomes = a.send_batch([bag("early-1"), bag("early-2")])  # does not raise
        assert all(isinstance(o, ConnectionLost) for o in outcomes), outcomes
        assert f"127.0.0.1:{port}" in str(outcomes[0])
        with pytest.raises(ConnectionLost):
            a.receive(10, 1)
        with MotoServer(port):
            # The kernel would retry with backoff; here we retry by hand.
            outcomes = wait_for(
                lambda: (
                    (o := a.send_batch([bag("early-1"), bag("early-2")]))
                    and all(x is None for x in o)
                    and o
                ),
                30,
                "sends to succeed",
            )
            assert sorted(b.body for b in drain(a, 2)) == [b"early-1", b"early-2"]
    finally:
        a.close()


@pytest.mark.integration
def test_repr_names_queue_and_endpoint_only(make_queue: Any, adapters: Any) -> None:
    name, _ = make_queue()
    r = repr(adapters(name))
    assert name in r and "127.0.0.1" in r
    assert "testing" not in r  # the dummy key and secret


@pytest.mark.integration
def test_concurrent_send_receive_ack_from_several_threads(make_queue: Any, adapters: Any) -> None:
    # The kernel calls send_batch, receive and ack from different threads.
    name, _ = make_queue()
    a = adapters(name)
    n = 300
    got: list[bytes] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            batch = a.receive(10, 1)
            if batch:
                a.ack(batch)
                got.extend(b.body for b in batch)

    consumers = [start(consume, name=f"c{i}") for i in range(2)]
    producers = [
        start(
            lambda k=k: [
                a.send_batch([bag(f"{k}-{i + j}") for j in range(10)]) for i in range(0, n // 3, 10)
            ],
            name=f"p{k}",
        )
        for k in range(3)
    ]
    for p in producers:
        assert all(o is None for batch in p.outcome(60) for o in batch)
    wait_for(lambda: len(set(got)) >= n, 60, f"{n} messages")
    done.set()
    for c in consumers:
        c.outcome(10)
    # Every message, and nothing else. A standard queue may deliver one twice (AWS
    # documents it; moto's ReceiveMessage marks messages received without a lock, so two
    # concurrent receives on a loaded machine can both take one): no exact count.
    assert set(got) == {f"{k}-{i}".encode() for k in range(3) for i in range(n // 3)}


# -- kernel level: enqueue / dequeue over SQS ---------------------------------------


@attrs.frozen
class Order:
    id: str
    amount: float


def sqs_url(endpoint: str, name: str) -> str:
    return f"sqs://{name}?endpoint={endpoint}&region={REGION}"


@pytest.mark.integration
def test_connect_splits_kernel_and_adapter_options_and_closes_promptly(
    make_queue: Any, sqs_endpoint: str
) -> None:
    name, _ = make_queue()
    q = connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1, agent="svc")
    try:
        assert isinstance(q.adapter, SQSAdapter)
        with enqueue(Order, q) as (out, _):
            out.send(Order("c1", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=20)
            ack.send(m)
        assert m.object == Order("c1", 1.0) and m.attributes["Source"] == "svc"
    finally:
        t0 = time.monotonic()
        q.close()
    # Close waits for the poller's long poll in flight: at most one wait period.
    assert time.monotonic() - t0 < 3


@pytest.mark.integration
def test_boto3_message_arrives_typed_and_qchan_message_reads_as_plain_json(
    make_queue: Any, sqs: Any, sqs_endpoint: str
) -> None:
    name, url = make_queue()
    sqs.send_message(
        QueueUrl=url,
        MessageBody='{"id": "go-7", "amount": 7.5}',
        MessageAttributes={
            "Category": {"DataType": "String", "StringValue": "Order"},
            "Source": {"DataType": "String", "StringValue": "go-swarm"},
        },
    )
    with connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1, agent="py") as q:
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=20)
            ack.send(m)
        assert m.object == Order("go-7", 7.5)
        assert m.category == "Order" and m.attributes["Source"] == "go-swarm"
        with enqueue(Order, q) as (out, _):
            out.send(Order("py-8", 8.0))
    raw = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MessageAttributeNames=["All"])[
        "Messages"
    ][0]
    assert json.loads(raw["Body"]) == {"id": "py-8", "amount": 8.0}
    got = {k: v["StringValue"] for k, v in raw["MessageAttributes"].items()}
    # The poller's last long poll may have taken it after the dequeue closed: then it went
    # back as an uncounted copy, which says so (docs/sqs.md, "Copies").
    assert got.pop("qchan-deliveries", "0") == "0"
    got.pop("qchan-id", None)
    assert got == {
        "Category": "Order",
        "Source": "py",
        "System": "sqs",
        "Queue": name,
    }
    assert all(v["DataType"] == "String" for v in raw["MessageAttributes"].values())


@pytest.mark.integration
def test_oversized_message_goes_to_dlq_without_retries(make_queue: Any, sqs_endpoint: str) -> None:
    name, _ = make_queue(MaximumMessageSize="1024")
    with connect(
        sqs_url(sqs_endpoint, name), wait=1, poll_wait=1, retry=Constant(0.01, max_attempts=5)
    ) as q:
        big = Order("x" * 2000, 1.0)
        with enqueue(Order, q) as (out, dlq):
            out.send(Order("small", 1.0))
            out.send(big)
            dead = dlq.recv(timeout=20)
        assert dead.object is big
        assert isinstance(dead.error, MessageTooLarge)
        assert q.stats().retried == 0 and q.stats().dead_lettered == 1
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=20)
            ack.send(m)
            assert m.object.id == "small"
            with pytest.raises(TimeoutError):
                rcv.recv(timeout=1.5)


@pytest.mark.integration
def test_endpoint_down_at_start_retries_then_delivers_everything(
    sqs_endpoint: str,
) -> None:
    port = free_port()
    url = sqs_url(f"http://127.0.0.1:{port}", f"qchan-late-{uuid.uuid4().hex[:8]}")
    q = connect(
        url,
        create=True,
        wait=1,
        poll_wait=1,
        max_attempts=1,
        connect_timeout=1,
        retry=Constant(0.2, max_attempts=None, max_elapsed=60),
    )
    server = MotoServer(port)
    try:
        out, dlq = enqueue(Order, q, policy=AT_MOST_ONCE, capacity=100)
        for i in range(25):
            out.send(Order(str(i), float(i)))
        wait_for(lambda: q.stats().retried >= 3, 20, "failed sends to be retried")
        assert q.stats().sent == 0
        server.start()
        wait_for(lambda: q.stats().sent == 25, 30, "all 25 to be sent once the endpoint is up")
        with dequeue(Order, q) as (rcv, ack):
            got = [rcv.recv(timeout=20) for _ in range(25)]
            for m in got:
                ack.send(m)
        assert sorted(int(m.object.id) for m in got) == list(range(25))
        assert len(dlq) == 0 and q.stats().dead_lettered == 0
    finally:
        q.close()
        server.stop()


@pytest.mark.integration
def test_fifo_order_per_group_end_to_end_across_1000_messages(
    make_queue: Any, sqs_endpoint: str
) -> None:
    name, _ = make_queue(fifo=True)
    total, groups = 1000, 5
    got: dict[str, list[int]] = {}
    with connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1) as q:

        def consume() -> None:
            with dequeue(Order, q) as (rcv, ack):
                for _ in range(total):
                    m = rcv.recv(timeout=30)
                    got.setdefault(m.bag.key if m.bag else "?", []).append(int(m.object.id))
                    ack.send(m)

        consumer = start(consume, name="fifo-dequeue")  # consume while producing
        with enqueue(Order, q, key=lambda o: f"g{int(o.id) % groups}") as (out, _):
            for i in range(total):
                out.send(Order(str(i), float(i)))
        consumer.outcome(timeout=90)
    assert sorted(got) == [f"g{k}" for k in range(groups)]
    for g, seqs in got.items():
        assert seqs == [i for i in range(total) if f"g{i % groups}" == g], g


CRASHING_CONSUMER = """
import os, sys
from qchan import connect, dequeue
import attrs

@attrs.frozen
class Order:
    id: str
    amount: float

q = connect(sys.argv[1], wait=1, poll_wait=1)
with dequeue(Order, q) as (rcv, ack):
    m = rcv.recv(timeout=20)
    print(m.object.id, flush=True)
    os._exit(3)  # dies before acking: no release, no close
"""


@pytest.mark.integration
def test_crash_before_ack_redelivers_after_the_visibility_timeout(
    make_queue: Any, sqs_endpoint: str
) -> None:
    name, _ = make_queue(VisibilityTimeout="2")
    url = sqs_url(sqs_endpoint, name)
    with connect(url, wait=1, poll_wait=1) as q, enqueue(Order, q) as (out, _):
        out.send(Order("crash-1", 1.0))
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CONSUMER, url],
        capture_output=True,
        timeout=60,
        text=True,
        check=False,
    )
    assert child.returncode == 3, child.stderr
    assert child.stdout.strip() == "crash-1"
    t0 = time.monotonic()
    with connect(url, wait=1, poll_wait=1) as q, dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=20)
        ack.send(m)
    assert m.object.id == "crash-1"
    assert m.bag is not None and m.bag.deliveries == 2
    assert time.monotonic() - t0 < 10


@pytest.mark.integration
def test_heartbeat_keeps_a_slow_message_from_redelivery(
    make_queue: Any, sqs_endpoint: str, adapters: Any
) -> None:
    name, _ = make_queue(VisibilityTimeout="2")
    url = sqs_url(sqs_endpoint, name)
    other = adapters(name)
    with connect(url, wait=1, poll_wait=1, extend_every=0.5) as q:
        with enqueue(Order, q) as (out, _):
            out.send(Order("slow", 1.0))
        with dequeue(Order, q) as (rcv, ack):
            m = rcv.recv(timeout=20)
            # A slow handler: 5 s, more than twice the visibility timeout.
            assert_empty(other, wait=5)
            ack.send(m)
        assert q.stats().redelivered == 0
    assert_empty(other)


@pytest.mark.integration
@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_poison_is_left_for_the_redrive_policy(
    fifo: bool, make_queue: Any, sqs: Any, sqs_endpoint: str, adapters: Any
) -> None:
    dlq_name, dlq_url = make_queue(fifo=fifo)
    arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    name, _ = make_queue(
        fifo=fifo,
        VisibilityTimeout="1",
        RedrivePolicy=json.dumps(
            {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": 2}
        ),
    )
    poison = b"\xff{not json"  # not UTF-8 either: base64 on the wire
    assert adapters(name).send_batch([bag(poison), bag('{"id": "good", "amount": 1.0}')]) == [
        None,
        None,
    ]
    errors: Chan[Exception] = Chan(16)
    dlq = adapters(dlq_name)
    with (
        connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1, errors=errors) as q,
        dequeue(Order, q) as (rcv, ack),
    ):
        m = rcv.recv(timeout=20)
        ack.send(m)
        # Reported, left in the queue, redelivered after 1 s, reported again;
        # then SQS moves it to the dead-letter queue, intact.
        dead = wait_for(lambda: dlq.receive(10, 1), 30, "the poison to reach the DLQ")
    assert m.object == Order("good", 1.0)
    assert dead[0].body == poison and dead[0].category == "Order"
    reported = []
    while len(errors):
        reported.append(errors.recv(timeout=0))
    assert len(reported) >= 2
    assert all(isinstance(e, DecodeError) and e.bag.body == poison for e in reported)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fifo", "in_flight"), [(False, 500), (True, 20)], ids=["standard-default", "fifo-20"]
)
def test_a_slow_consumer_never_sends_a_message_to_the_redrive_dlq(
    fifo: bool,
    in_flight: int,
    make_queue: Any,
    sqs: Any,
    sqs_endpoint: str,
    *,
    adapters: Any,
) -> None:
    """Issue 13 on SQS: with maxReceiveCount=2, a receive the application never saw (a
    release at visibility 0 while the kernel holds) would send messages to the DLQ.
    The kernel holds without receiving: every message once, none dead-lettered; in
    order on a FIFO queue (one producer, one consumer, one message group)."""
    dlq_name, dlq_url = make_queue(fifo=fifo)
    arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    name, _ = make_queue(
        fifo=fifo,
        VisibilityTimeout="30",
        RedrivePolicy=json.dumps(
            {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": 2}
        ),
    )
    n = 600
    with connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1, in_flight=in_flight) as q:
        got = slow_consume(q, n, work=0.001)
        stats = q.stats()
    if fifo:
        assert got == [str(i) for i in range(n)]
    assert (stats.received, stats.redelivered) == (n, 0)
    assert_empty(adapters(dlq_name))


# -- the conformance suite ---------------------------------------------------------


class TestSQSConformance(Peers, Conformance):
    """Standard queues: no order, redelivery after the queue's 2 s visibility timeout, and
    a redrive policy to a dead-letter queue after `peer_max_deliveries` receives (which
    the peer suite checks nothing reaches)."""

    ordered = False
    fifo = False
    queue_options = {"poll_wait": 1}
    patience = 30.0
    quiet = 1.0
    redelivery_after = 2.0
    features = frozenset(FEATURES) - {"wakeup"}  # a long poll cannot be cut short
    peer_max_deliveries = 10  # the redrive policy's maxReceiveCount

    @pytest.fixture
    def missing_adapter_factory(self, sqs_endpoint: str) -> Callable[[str], Adapter]:
        def make(name: str) -> Adapter:
            return from_url(sqs_url(sqs_endpoint, name + (".fifo" if self.fifo else "")), wait=1)

        return make

    @pytest.fixture
    def adapter_factory(self, sqs_endpoint: str, sqs: Any) -> Iterator[Callable[[str], Adapter]]:
        urls: set[str] = set()
        suffix = ".fifo" if self.fifo else ""
        self.sqs = sqs
        self.dead_letter_urls: dict[str, str] = {}  # queue name -> its dead-letter queue
        policies: dict[str, str] = {}

        def make(name: str) -> Adapter:
            if name not in policies:
                dlq = sqs.create_queue(
                    QueueName=f"{name}-dlq{suffix}",
                    Attributes={"FifoQueue": "true"} if self.fifo else {},
                )["QueueUrl"]
                urls.add(dlq)
                self.dead_letter_urls[name] = dlq
                arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
                policies[name] = json.dumps(
                    {
                        "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                        "maxReceiveCount": self.peer_max_deliveries,
                    }
                )
            a = from_url(
                sqs_url(sqs_endpoint, name + suffix),
                create=True,
                wait=1,
                queue_attributes={
                    "VisibilityTimeout": str(int(self.redelivery_after)),
                    "RedrivePolicy": policies[name],
                },
            )
            urls.add(a.queue_url)
            return a

        yield make
        for url in urls:
            try:
                sqs.delete_queue(QueueUrl=url)
            except Exception:
                pass

    def dead_lettered(self, name: str) -> int:
        url = self.dead_letter_urls.get(name)
        if url is None:
            return 0
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        got = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return sum(int(got[n]) for n in names)


class TestSQSFifoConformance(TestSQSConformance):
    """FIFO queues: the suite (a poison message there blocks its group: tested apart)."""

    ordered = True
    fifo = True
    # A FIFO queue's message given back is made visible again, counted: a copy would go
    # behind the rest of its group.
    features = TestSQSConformance.features - {"give_back"}

    def test_poison_payload_goes_to_errors_and_the_worker_keeps_going(
        self, open_queue: Callable[..., Any], inject: Callable[[list[Bag]], None]
    ) -> None:
        pytest.skip(
            "on FIFO, a poison message blocks its group until the queue's redrive "
            "policy moves it: test_poison_is_left_for_the_redrive_policy[fifo]"
        )


@pytest.mark.integration
@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_serve_retries_with_visibility_then_gives_up_to_the_redrive_dlq(
    fifo: bool, make_queue: Any, sqs: Any, sqs_endpoint: str, adapters: Any
) -> None:
    """Issue 14: a failing handler's message comes back after the policy's delay (SQS:
    ChangeMessageVisibility), and a give_up_on error moves it to the queue's redrive
    dead-letter queue at once, attributes intact."""
    dlq_name, dlq_url = make_queue(fifo=fifo)
    arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    name, _ = make_queue(
        fifo=fifo,
        VisibilityTimeout="30",
        RedrivePolicy=json.dumps(
            {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": 10}
        ),
    )
    calls, handle = outage_then_invalid()
    stop = threading.Event()

    q = connect(sqs_url(sqs_endpoint, name), wait=1, poll_wait=1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("x", 1.0))
    retries = Retries(delay=1.0, jitter=False, give_up_on=ValueError)
    worker = start(serve, handle, Order, q, workers=1, stop=stop, signals=(), retries=retries)
    dead = wait_for(lambda: adapters(dlq_name).receive(10, 1), 30, "the message in the DLQ")
    stop.set()
    worker.outcome(30)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.9
    assert dead[0].category == "Order" and json.loads(dead[0].body)["id"] == "x"
    assert_empty(adapters(name))


@pytest.mark.integration
@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_a_release_counts_no_delivery_except_on_a_fifo_queue(
    make_queue: Any, adapters: Any, fifo: bool
) -> None:
    """Issue 25: a give-back (release) is no delivery. A standard queue gets a copy that
    carries the count and the original id; a FIFO queue cannot take a copy without
    putting it behind the rest of its group, so there the message is made visible again
    and SQS counts the receive (docs/sqs.md, the documented limit this shows)."""
    name, _ = make_queue(fifo=fifo)
    a = adapters(name)
    assert a.send_batch([bag('{"id": "r", "amount": 1.0}', key="g")]) == [None]
    seen = []
    for _ in range(3):
        (got,) = receive_all(a, 1)
        seen.append((got.id, got.deliveries, dict(got.attributes)))
        a.give_back([got], counted=False)
    (last,) = receive_all(a, 1)
    a.ack([last])
    ids = {i for i, _, _ in seen} | {last.id}
    if fifo:
        assert [d for _, d, _ in seen] == [1, 2, 3] and last.deliveries == 4
    else:
        assert [d for _, d, _ in seen] == [1, 1, 1] and last.deliveries == 1
        assert len(ids) == 1  # the copy keeps the original's id
    assert all("qchan-deliveries" not in attrs for _, _, attrs in seen)
