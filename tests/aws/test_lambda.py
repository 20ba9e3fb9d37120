"""qchan.aws.lambda_handler: each event source, routing, failures, the time margin, tracing,
and one handler function running unchanged under `serve` and under Lambda."""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from typing import Any

import attrs
import pytest
from support.helpers import start
from support.lambda_events import (
    FakeContext,
    dynamodb_record,
    eventbridge,
    order,
    s3_record,
    sns_record,
    sqs_record,
)
from support.otel import memory_spans

from qchan import Msg, OptionError, connect, enqueue, serve
from qchan.aws import (
    DynamoDBRecord,
    RecordsFailed,
    S3Record,
    UnknownEvent,
    lambda_handler,
)
from qchan.testing import Order


@attrs.frozen
class Refund:
    order: str


def _ids(response: Any) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "qchan.aws" and r.levelno >= logging.ERROR]


# -- SQS -----------------------------------------------------------------------


def test_sqs_records_are_decoded_and_all_succeeding_answers_no_failures() -> None:
    seen: list[Order] = []
    handler = lambda_handler(seen.append, Order)
    event = {"Records": [sqs_record(order(str(i)), message_id=f"m{i}") for i in range(3)]}
    assert handler(event, FakeContext(60_000)) == {"batchItemFailures": []}
    assert seen == [Order(str(i), 9.5) for i in range(3)]


def test_with_msg_the_handler_gets_the_msg_with_the_sqs_ids() -> None:
    seen: list[Msg[Order]] = []
    handler = lambda_handler(seen.append, Order, with_msg=True)
    record = sqs_record(order("1"), message_id="m1", attributes={"Source": "shop"}, receive_count=3)
    assert handler({"Records": [record]}, None) == {"batchItemFailures": []}
    (msg,) = seen
    assert msg.object == Order("1", 9.5)
    assert msg.category == "Order"
    assert msg.attributes["Source"] == "shop"
    assert msg.digest == record["receiptHandle"]
    assert msg.deliveries == 3
    assert msg.bag is not None and msg.bag.id == "m1"


def test_several_types_are_routed_by_category() -> None:
    orders: list[Order] = []
    refunds: list[Refund] = []
    other: list[bytes] = []
    handler = (
        lambda_handler(orders.append, Order)
        .route(refunds.append, Refund, category="refund.v2")
        .route(other.append, bytes, category="*")
    )
    event = {
        "Records": [
            sqs_record(order("1"), message_id="a"),
            sqs_record('{"order": "1"}', message_id="b", category="refund.v2"),
            sqs_record("anything", message_id="c", category="Audit"),
        ]
    }
    assert handler(event, None) == {"batchItemFailures": []}
    assert orders == [Order("1", 9.5)]
    assert refunds == [Refund("1")]
    assert other == [b"anything"]


def test_unknown_category_and_undecodable_body_are_failures_logged_with_the_record_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Order] = []
    handler = lambda_handler(seen.append, Order)
    event = {
        "Records": [
            sqs_record(order("1"), message_id="good-1"),
            sqs_record('{"order": "1"}', message_id="stray-7", category="Refund"),
            sqs_record('{"id": 5}', message_id="bad-9"),
            sqs_record(order("2"), message_id="good-2"),
        ]
    }
    with caplog.at_level(logging.INFO, logger="qchan.aws"):
        response = handler(event, None)
    assert _ids(response) == ["stray-7", "bad-9"]
    assert seen == [Order("1", 9.5), Order("2", 9.5)]
    errors = [r.getMessage() for r in _errors(caplog)]
    assert len(errors) == 2
    assert "'Refund'" in errors[0] and "stray-7" in errors[0] and "'Order'" in errors[0]
    assert "cannot decode" in errors[1] and "bad-9" in errors[1] and "id" in errors[1]


def test_a_handler_exception_is_logged_once_with_the_record_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bill(o: Order) -> None:
        if o.id == "2":
            raise RuntimeError("card declined")

    handler = lambda_handler(bill, Order)
    event = {"Records": [sqs_record(order(str(i)), message_id=f"m{i}") for i in range(1, 4)]}
    with caplog.at_level(logging.DEBUG):
        assert _ids(handler(event, None)) == ["m2"]
    mentions = [r for r in caplog.records if "card declined" in r.getMessage() or r.exc_info]
    assert len(mentions) == 1
    (record,) = mentions
    assert record.name == "qchan.aws" and record.levelno == logging.ERROR
    assert "m2" in record.getMessage()
    assert record.exc_info is not None and "card declined" in str(record.exc_info[1])


def test_fifo_a_failed_record_fails_the_later_records_of_its_group_unprocessed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[str] = []

    def handle(o: Order) -> None:
        handled.append(o.id)
        if o.id == "a1":
            raise ValueError("no stock")

    handler = lambda_handler(handle, Order)
    fifo = {"queue": "orders.fifo"}
    event = {
        "Records": [
            sqs_record(order("a1"), message_id="a1", group="A", **fifo),
            sqs_record(order("b1"), message_id="b1", group="B", **fifo),
            sqs_record(order("a2"), message_id="a2", group="A", **fifo),
            sqs_record(order("b2"), message_id="b2", group="B", **fifo),
            sqs_record(order("a3"), message_id="a3", group="A", **fifo),
        ]
    }
    with caplog.at_level(logging.WARNING, logger="qchan.aws"):
        assert _ids(handler(event, None)) == ["a1", "a2", "a3"]
    assert handled == ["a1", "b1", "b2"]  # a2 and a3 never started
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("a2, a3" in w and "message group" in w for w in warnings), warnings


def test_an_undecodable_fifo_record_also_holds_back_its_group() -> None:
    handled: list[str] = []
    handler = lambda_handler(lambda o: handled.append(o.id), Order)
    event = {
        "Records": [
            sqs_record("not json", message_id="x1", group="X", queue="q.fifo"),
            sqs_record(order("x2"), message_id="x2", group="X", queue="q.fifo"),
            sqs_record(order("y1"), message_id="y1", group="Y", queue="q.fifo"),
        ]
    }
    assert _ids(handler(event, None)) == ["x1", "x2"]
    assert handled == ["y1"]


def test_a_binary_body_marked_base64_arrives_as_the_bytes_sent() -> None:
    payload = bytes(range(256))
    seen: list[bytes] = []
    handler = lambda_handler(seen.append, bytes, category="blob")
    record = sqs_record(
        base64.b64encode(payload).decode(),
        message_id="b1",
        category="blob",
        attributes={"ContentTransferEncoding": "base64"},
    )
    assert handler({"Records": [record]}, None) == {"batchItemFailures": []}
    assert seen == [payload]


# -- the time margin ------------------------------------------------------------


def test_records_not_started_before_the_margin_are_failed_unprocessed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[str] = []
    handler = lambda_handler(lambda o: handled.append(o.id), Order, margin=2.0)
    event = {"Records": [sqs_record(order(str(i)), message_id=f"m{i}") for i in range(5)]}
    # Asked before each record after the first: 10 s left before the second,
    # then 1.5 s, less than the 2 s margin.
    context = FakeContext(10_000, 1_500)
    with caplog.at_level(logging.WARNING, logger="qchan.aws"):
        assert _ids(handler(event, context)) == ["m2", "m3", "m4"]
    assert handled == ["0", "1"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "3 sqs record(s) not started" in warning and "m2, m3, m4" in warning


def test_the_first_record_is_started_even_below_the_margin() -> None:
    """Else a margin above the function's timeout would fail every batch forever."""
    handled: list[str] = []
    handler = lambda_handler(lambda o: handled.append(o.id), Order, margin=5.0)
    event = {"Records": [sqs_record(order(str(i)), message_id=f"m{i}") for i in range(3)]}
    assert _ids(handler(event, FakeContext(3_000))) == ["m1", "m2"]
    assert handled == ["0"]


def test_without_a_context_every_record_is_started() -> None:
    handled: list[str] = []
    handler = lambda_handler(lambda o: handled.append(o.id), Order)
    event = {"Records": [sqs_record(order(str(i)), message_id=f"m{i}") for i in range(3)]}
    assert handler(event, object()) == {"batchItemFailures": []}
    assert handled == ["0", "1", "2"]


# -- SNS, EventBridge, S3: no partial responses ----------------------------------


def test_sns_message_is_routed_by_its_category_attribute() -> None:
    seen: list[Msg[Order]] = []
    handler = lambda_handler(seen.append, Order, with_msg=True)
    event = {"Records": [sns_record(order("1"), message_id="sns-1")]}
    assert handler(event, None) is None
    (msg,) = seen
    assert msg.object == Order("1", 9.5)
    assert msg.attributes["Envelope"] == "sns"
    assert msg.attributes["Test"] == "TestString"
    assert msg.attributes["SnsTopicArn"].endswith(":sns-lambda")


def test_sns_failure_raises_so_lambda_retries(caplog: pytest.LogCaptureFixture) -> None:
    def fail(o: Order) -> None:
        raise RuntimeError("downstream is down")

    handler = lambda_handler(fail, Order)
    with caplog.at_level(logging.ERROR), pytest.raises(RecordsFailed) as raised:
        handler({"Records": [sns_record(order("1"), message_id="sns-1")]}, None)
    assert raised.value.failed == ["sns-1"]
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert len(_errors(caplog)) == 1 and "sns-1" in _errors(caplog)[0].getMessage()


def test_sns_message_of_unknown_category_raises() -> None:
    handler = lambda_handler(lambda o: None, Order)
    with pytest.raises(RecordsFailed, match="sns-2"):
        handler({"Records": [sns_record("{}", category="Audit", message_id="sns-2")]}, None)


def test_eventbridge_detail_type_is_the_category_and_detail_the_object() -> None:
    seen: list[Msg[Order]] = []
    handler = lambda_handler(seen.append, Order, with_msg=True)
    event = eventbridge({"id": "1", "amount": 9.5}, id_="eb-1")
    assert handler(event, None) is None
    (msg,) = seen
    assert msg.object == Order("1", 9.5)
    assert msg.category == "Order"
    assert msg.attributes["Source"] == "billing" and msg.attributes["EventId"] == "eb-1"


def test_eventbridge_undecodable_detail_raises_naming_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = lambda_handler(lambda o: None, Order)
    with caplog.at_level(logging.ERROR), pytest.raises(RecordsFailed, match="eb-2"):
        handler(eventbridge({"id": 1}, id_="eb-2"), None)
    assert "eb-2" in _errors(caplog)[0].getMessage()


def test_s3_records_arrive_as_s3_records_with_the_key_decoded() -> None:
    seen: list[S3Record] = []
    handler = lambda_handler(seen.append, S3Record)
    event = {
        "Records": [
            s3_record("reports/2024+Q1/%C3%A9t%C3%A9.csv"),
            s3_record("old.csv", size=None, name="ObjectRemoved:Delete"),
        ]
    }
    assert handler(event, None) is None
    created, removed = seen
    assert created.key == "reports/2024 Q1/été.csv"
    assert created.bucket == "lambda-artifacts-deafc19498e3f2df"
    assert created.size == 1305107 and created.event_name == "ObjectCreated:Put"
    assert created.time.year == 2019 and created.time.utcoffset() is not None
    assert removed.size is None and removed.etag is None


def test_s3_records_without_a_handler_for_them_raise(caplog: pytest.LogCaptureFixture) -> None:
    handler = lambda_handler(lambda o: None, Order)
    with caplog.at_level(logging.ERROR), pytest.raises(RecordsFailed):
        handler({"Records": [s3_record("a.csv")]}, None)
    assert "S3Record" in _errors(caplog)[0].getMessage()


# -- SQS records carrying envelopes ------------------------------------------------


def test_sqs_records_carrying_eventbridge_or_sns_envelopes_deliver_the_inner_object() -> None:
    seen: list[Msg[Order]] = []
    handler = lambda_handler(seen.append, Order, with_msg=True)
    rule_target = json.dumps(eventbridge({"id": "1", "amount": 1.0}, id_="eb-9"))
    subscription = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-9",
            "TopicArn": "arn:aws:sns:us-east-2:123456789012:orders",
            "Message": order("2"),
            "Timestamp": "2024-01-02T12:45:07.000Z",
            "SignatureVersion": "1",
            "MessageAttributes": {"Category": {"Type": "String", "Value": "Order"}},
        }
    )
    event = {
        "Records": [
            sqs_record(rule_target, message_id="q1", category=None),
            sqs_record(subscription, message_id="q2", category=None),
        ]
    }
    assert handler(event, None) == {"batchItemFailures": []}
    assert [m.object for m in seen] == [Order("1", 1.0), Order("2", 9.5)]
    assert [m.attributes["Envelope"] for m in seen] == ["eventbridge", "sns"]
    assert [m.bag.id for m in seen if m.bag] == ["q1", "q2"]


def test_unwrap_false_delivers_envelopes_as_they_are() -> None:
    seen: list[bytes] = []
    handler = lambda_handler(seen.append, bytes, category="", unwrap=False)
    body = json.dumps(eventbridge({"id": "1", "amount": 1.0}, id_="eb-9"))
    event = {"Records": [sqs_record(body, message_id="q1", category=None)]}
    assert handler(event, None) == {"batchItemFailures": []}
    assert seen == [body.encode()]


# -- DynamoDB Streams ----------------------------------------------------------------


def test_dynamodb_failures_are_answered_by_sequence_number_and_later_records_wait() -> None:
    seen: list[DynamoDBRecord] = []

    def handle(r: DynamoDBRecord) -> None:
        seen.append(r)
        if r.sequence_number == "222":
            raise RuntimeError("projection failed")

    handler = lambda_handler(handle, DynamoDBRecord)
    item = {"Id": {"N": "101"}, "Message": {"S": "New item!"}}
    event = {
        "Records": [
            dynamodb_record("111", new=item, old=None),
            dynamodb_record("222", new=item, old=item, name="MODIFY"),
            dynamodb_record("333", new=None, old=item, name="REMOVE"),
        ]
    }
    # A batch is one shard, in order: Lambda resumes from the lowest failed number,
    # so 333 is not started (it would be handled again anyway).
    assert _ids(handler(event, None)) == ["222", "333"]
    assert [r.sequence_number for r in seen] == ["111", "222"]
    assert seen[0].new_image == {"Id": 101, "Message": "New item!"}
    assert seen[0].keys == {"Id": 101} and seen[0].old_image is None


def test_a_dynamodb_record_qchan_cannot_read_is_a_failure_by_its_sequence_number() -> None:
    handler = lambda_handler(lambda r: None, DynamoDBRecord)
    bad = dynamodb_record("111", new={"Id": {"X": "1"}}, old=None)
    assert _ids(handler({"Records": [bad]}, None)) == ["111"]


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [{"httpMethod": "GET", "path": "/"}, [], {"Records": [{"eventSource": "aws:kinesis"}]}],
)
def test_an_event_from_an_unknown_source_raises(event: Any) -> None:
    handler = lambda_handler(lambda o: None, Order)
    with pytest.raises(UnknownEvent):
        handler(event, None)


def test_an_sqs_record_without_a_message_id_fails_the_whole_batch() -> None:
    """A partial response cannot name it, so only a raise gets it retried."""
    handler = lambda_handler(lambda o: None, Order)
    record = sqs_record("not json", message_id="x")
    del record["messageId"]
    with pytest.raises(RecordsFailed):
        handler({"Records": [record]}, None)


def test_bad_arguments_raise_at_the_call() -> None:
    with pytest.raises(OptionError, match="handler function"):
        lambda_handler("bill", Order)  # type: ignore[call-overload, arg-type]
    with pytest.raises(OptionError, match="margin"):
        lambda_handler(print, Order, margin=-1)
    with pytest.raises(OptionError, match="unwrap"):
        lambda_handler(print, Order, unwrap="no")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="'Order' has a handler already"):
        lambda_handler(print, Order).route(print, Order)


# -- one handler, two runtimes ----------------------------------------------------------


def test_one_work_function_runs_unchanged_under_serve_and_under_lambda() -> None:
    handled: list[Order] = []
    stop = threading.Event()

    def work(o: Order) -> None:  # the application's handler, written once
        if o.amount < 0:
            raise ValueError(f"negative amount in {o.id}")
        handled.append(o)
        if len(handled) == 2:
            stop.set()

    q = connect(f"mem://lambda-{uuid.uuid4().hex[:8]}")
    with enqueue(Order, q) as (out, _):
        out.send(Order("w1", 1.0))
        out.send(Order("w2", 2.0))
    served = start(serve, work, Order, q, workers=1, stop=stop).outcome(30)
    assert (served.handled, served.failed) == (2, 0)

    handler = lambda_handler(work, Order)
    event = {
        "Records": [
            sqs_record(order("l1", 3.0), message_id="l1"),
            sqs_record(order("l2", -1.0), message_id="l2"),
        ]
    }
    assert _ids(handler(event, None)) == ["l2"]
    assert [o.id for o in handled] == ["w1", "w2", "l1"]


# -- tracing ----------------------------------------------------------------------------


def test_a_traceparent_attribute_continues_the_producers_span() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace

    exporter = memory_spans()
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{trace_id}-{span_id}-01"
    handler = lambda_handler(lambda o: None, Order)
    record = sqs_record(order("t"), message_id="t1", attributes={"traceparent": traceparent})
    assert handler({"Records": [record]}, None) == {"batchItemFailures": []}
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "Order process"]
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.context.trace_id == int(trace_id, 16)
    assert span.parent is not None and span.parent.span_id == int(span_id, 16)
    assert span.attributes is not None and span.attributes["messaging.message.id"] == "t1"
