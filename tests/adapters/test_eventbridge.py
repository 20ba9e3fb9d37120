"""The EventBridge adapter (send only) against moto's server: a bus whose rule targets an SQS
queue, read with plain boto3 (support/aws.py), so each test sees the events exactly as a
consumer of that queue would."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from support.aws import AWS, REGION, Order
from support.sqs import free_port

from qchan import (
    AT_MOST_ONCE,
    Constant,
    EnqueueError,
    connect,
    enqueue,
    enqueue_sync,
)
from qchan.adapter import Adapter
from qchan.adapters.eventbridge import BusNotFound, EventBridgeAdapter, from_url
from qchan.adapters.eventbridge import _wire as wire
from qchan.errors import ConnectionLost, MessageTooLarge, RejectedError
from qchan.message import Bag
from qchan.testing import Conformance, Refund

pytestmark = pytest.mark.integration


def bag(body: bytes, category: str = "Order", source: str = "tests") -> Bag:
    return Bag(category, body, {"Category": category, "Source": source}, id=uuid.uuid4().hex)


def detail(message: dict[str, Any]) -> Any:
    return json.loads(message["Body"])


# -- URLs, options and the wire format (no broker) ------------------------------------------


def test_wire_entry_is_swarms_event_and_checks_what_eventbridge_refuses() -> None:
    entry, size = wire.entry(bag(b'{"id": "1"}', source="billing"), "orders", limit=1000)
    assert entry == {
        "Source": "billing",
        "DetailType": "Order",
        "Detail": '{"id": "1"}',
        "EventBusName": "orders",
    }
    assert size == len("billing") + len("Order") + len('{"id": "1"}')
    assert wire.entry_size("é", "", "") == 2  # UTF-8 bytes, as EventBridge counts
    for body in (b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        with pytest.raises(RejectedError, match="JSON object"):
            wire.entry(bag(body), "orders", limit=1000)
    with pytest.raises(MessageTooLarge, match="1000 bytes"):
        wire.entry(bag(b'{"x": "' + b"a" * 1000 + b'"}'), "orders", limit=1000)
    with pytest.raises(RejectedError, match="DetailType"):
        wire.entry(bag(b"{}", category=""), "orders", limit=1000)
    with pytest.raises(RejectedError, match="Source"):
        wire.entry(bag(b"{}", source=""), "orders", limit=1000)


# -- against the broker ---------------------------------------------------------------------


def test_enqueue_puts_swarms_event_on_the_bus(aws: AWS) -> None:
    bus, queue = aws.bus()
    q = aws.open(aws.url("eventbridge", bus), agent="billing")
    with enqueue(Order, q) as (out, _):
        for i in range(3):
            out.send(Order(str(i), i * 1.5))
    events = [detail(m) for m in aws.read(queue, 3)]
    assert sorted((e["detail"]["id"], e["detail"]["amount"]) for e in events) == [
        ("0", 0.0),
        ("1", 1.5),
        ("2", 3.0),
    ]
    assert {(e["source"], e["detail-type"]) for e in events} == {("billing", "Order")}


def test_enqueue_sync_returns_once_eventbridge_accepted(
    aws: AWS,
) -> None:
    bus, queue = aws.bus()
    q = aws.open(aws.url("eventbridge", bus), agent="svc")
    with enqueue_sync(Order, q, category="order.v2") as put:
        put.put(Order("s1", 2.0), timeout=20)
    (event,) = [detail(m) for m in aws.read(queue, 1)]
    assert event["detail-type"] == "order.v2" and event["detail"] == {"id": "s1", "amount": 2.0}


def test_non_json_and_oversized_events_end_on_dlq_and_the_rest_is_delivered(
    aws: AWS,
) -> None:
    bus, queue = aws.bus()
    q = aws.open(aws.url("eventbridge", bus), retry=Constant(0.01, max_attempts=5))
    big = b'{"x": "' + b"a" * 300_000 + b'"}'
    dead = []
    with enqueue(bytes, q, category="raw") as (out, dlq):
        for body in (b"not json", b'{"ok": 1}', big, b"[1]"):
            out.send(body)
        dead = [dlq.recv(timeout=20) for _ in range(3)]
    assert {m.object: type(m.error) for m in dead} == {
        b"not json": RejectedError,
        big: MessageTooLarge,
        b"[1]": RejectedError,
    }
    assert q.stats().retried == 0
    assert [detail(m)["detail"] for m in aws.read(queue, 1)] == [{"ok": 1}]


def fail_once(adapter: EventBridgeAdapter, failures: dict[str, str]) -> list[str]:
    """Wrap the client's put_events: the first time an event whose detail has an `id` in
    `failures` is put, it is not sent and comes back failed with that error code (as
    EventBridge reports a failed entry). Returns the ids of every entry put, in order."""
    real = adapter.client.put_events
    seen: list[str] = []
    lock = threading.Lock()

    def put_events(**kwargs: Any) -> Any:
        fail: dict[int, str] = {}
        with lock:
            for k, entry in enumerate(kwargs["Entries"]):
                id_ = json.loads(entry["Detail"])["id"]
                if id_ in failures and id_ not in seen:
                    fail[k] = failures[id_]
                seen.append(id_)
        entries = kwargs["Entries"]
        sent = [e for k, e in enumerate(entries) if k not in fail]
        results = iter(real(Entries=sent)["Entries"] if sent else [])
        out = [
            {"ErrorCode": fail[k], "ErrorMessage": "injected"} if k in fail else next(results)
            for k in range(len(entries))
        ]
        return {"FailedEntryCount": len(fail), "Entries": out}

    adapter.client.put_events = put_events  # type: ignore[method-assign]
    return seen


def test_failed_entries_are_retried_and_refused_ones_dead_lettered(
    aws: AWS,
) -> None:
    bus, queue = aws.bus()
    adapter = from_url(aws.url("eventbridge", bus))
    puts = fail_once(adapter, {"1": "ThrottlingException", "2": "InvalidArgument"})
    q = aws.open(adapter, retry=Constant(0.01, max_attempts=5))
    with enqueue(Order, q, policy=AT_MOST_ONCE, capacity=4) as (out, dlq):
        for i in range(4):
            out.send(Order(str(i), 1.0))
        dead = dlq.recv(timeout=20)
    assert dead.object == Order("2", 1.0) and isinstance(dead.error, RejectedError)
    assert "InvalidArgument" in str(dead.error)
    ids = sorted(detail(m)["detail"]["id"] for m in aws.read(queue, 3))
    assert ids == ["0", "1", "3"]  # the throttled one delivered once, by its retry
    assert sorted(puts) == ["0", "1", "1", "2", "3"]
    assert q.stats().retried == 1


def test_a_missing_bus_fails_at_connect(aws: AWS) -> None:
    with pytest.raises(BusNotFound, match="not found"):
        connect(aws.url("eventbridge", f"qchan-missing-{uuid.uuid4().hex[:8]}"))


def test_an_unreachable_endpoint_ends_on_dlq_as_connection_lost(aws: AWS) -> None:
    url = f"eventbridge://orders?endpoint=http://127.0.0.1:{free_port()}&region={REGION}"
    with (
        connect(url, connect_timeout=1, max_attempts=1, retry=Constant(0.01, max_attempts=2)) as q,
        enqueue_sync(Order, q) as put,
        pytest.raises(EnqueueError) as e,
    ):
        put.put(Order("1", 1.0), timeout=20)
    assert isinstance(e.value.__cause__, ConnectionLost)


def test_the_sqs_queue_a_rule_targets_delivers_the_typed_object(aws: AWS) -> None:
    bus, queue = aws.bus(detail_type="Order")  # the rule routes by category
    q = aws.open(aws.url("eventbridge", bus), agent="billing")
    with enqueue(Order, q) as (out, _), enqueue(Refund, q) as (refunds, _):
        refunds.send(Refund("e2e", "not for this rule"))
        out.send(Order("e2e", 4.5))
    (msg,) = aws.receive(queue, Order, 1)
    assert msg.object == Order("e2e", 4.5) and msg.category == "Order"
    assert (msg.attributes["Source"], msg.attributes["Envelope"]) == ("billing", "eventbridge")


class TestEventBridgeConformance(Conformance):
    """The shared suite's send side: eventbridge:// declares no `receive`."""

    features = frozenset({"missing_queue"})
    patience = 20.0

    @pytest.fixture
    def missing_adapter_factory(self, aws: AWS) -> Callable[[str], Adapter]:
        return lambda name: from_url(aws.url("eventbridge", name))

    @pytest.fixture
    def adapter_factory(self, aws: AWS) -> Callable[[str], Adapter]:
        made: set[str] = set()

        def make(name: str) -> Adapter:
            if name not in made:
                aws.events.create_event_bus(Name=name)
                aws.undo(lambda: aws.events.delete_event_bus(Name=name))
                made.add(name)
            return from_url(aws.url("eventbridge", name))

        return make
