"""`Queue` itself, on the embedded broker: events and attributes, the errors channel,
threads, stats, URLs, the lifecycle."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from support.helpers import start, wait_for
from support.queues import User, open_q, put_raw

from qchan import (
    Bag,
    Chan,
    ChannelClosed,
    Event,
    Meta,
    Queue,
    URLError,
    connect,
    dequeue,
    enqueue,
    register_scheme,
)
from qchan.adapters.embedded import EmbeddedAdapter, broker
from qchan.testing import Order, Refund

# -- events, attributes, URLs, lifecycle ----------------------------------------


def test_event_meta_is_stamped_and_encoded_beside_data(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name, agent="billing")
    with enqueue(Event[Meta, User], q) as (out, _):
        out.send(Event(Meta(realm="eu"), User("ann")))
    raw = broker(name).receive(1, 5)[0]
    body = json.loads(raw.body)
    assert raw.category == "User"
    assert set(body) == {"meta", "data"} and body["data"] == {"name": "ann"}
    meta = body["meta"]
    assert meta["type"] == "User" and meta["agent"] == "billing" and meta["realm"] == "eu"
    assert len(meta["id"]) == 32 and meta["created"].startswith("20")
    assert "target" not in meta and "participant" not in meta  # unset fields left out
    broker(name).change_visibility([raw.digest], 0)
    with dequeue(Event[Meta, User], q) as (rcv, ack):
        m = rcv.recv(timeout=5)
        ack.send(m)
    assert m.object.data == User("ann") and m.object.meta.realm == "eu"


def test_errors_channel_full_falls_back_to_logging(
    queues: list[Queue], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors: Chan[Exception] = Chan(1)
    q = open_q(queues, name, errors=errors)
    put_raw(name, *[Bag("Order", b"bad", {"Category": "Order"}, id=f"p{i}") for i in range(3)])
    with caplog.at_level(logging.ERROR, logger="qchan.queue"), dequeue(Order, q) as (rcv, _):
        start(rcv.recv, 10.0)  # a receiver waits: the poller takes what there is
        wait_for(lambda: q.stats().poison == 3, what="three poison messages")
    assert len(errors) == 1
    assert caplog.text.count("cannot decode") == 2


def test_wait_returns_when_another_thread_closes(name: str) -> None:
    q = Queue(EmbeddedAdapter(name))
    threading.Timer(0.1, q.close).start()
    assert q.wait(5) and q.closed


def test_threads_are_named_and_joined(name: str) -> None:
    q = Queue(EmbeddedAdapter(name), poll_wait=0.1)
    with enqueue(Order, q) as (out, _):
        out.send(Order("t", 1.0))
    with dequeue(Order, q) as (rcv, ack):
        ack.send(rcv.recv(timeout=5))
        names = {t.name for t in threading.enumerate() if t.name.endswith(name)}
    assert names == {f"qchan-{k}-mem-{name}" for k in ("emitter", "consumer")}
    q.close()
    assert not any(t.name.endswith(name) for t in threading.enumerate())


def test_stats_count_a_round_trip(queues: list[Queue], name: str) -> None:
    q = open_q(queues, name)
    with enqueue(Order, q) as (out, _):
        for i in range(4):
            out.send(Order(str(i), 1.0))
    with dequeue(Order, q) as (rcv, ack):
        for _ in range(4):
            ack.send(rcv.recv(timeout=5))
    s = q.stats()
    assert (s.sent, s.received, s.acked, s.in_flight, s.dead_lettered) == (4, 4, 4, 0, 0)


def test_urls_unknown_scheme_and_password_redaction(name: str) -> None:
    with pytest.raises(URLError, match="unknown queue URL scheme 'nope'"):
        connect("nope://x")
    with pytest.raises(URLError, match="has no scheme"):
        connect("orders")
    register_scheme("fake", lambda url, **o: EmbeddedAdapter(name))
    q = connect("fake://user:s3cret@host/q")
    try:
        assert "s3cret" not in repr(q) and "user:***@host" in repr(q)
    finally:
        q.close()
    with pytest.raises(TypeError, match="unknown option 'colour'"):
        connect(f"mem://{name}?colour=blue")


def test_operations_on_a_closed_queue_fail_clearly(name: str) -> None:
    q = Queue(EmbeddedAdapter(name))
    out, _ = enqueue(Order, q)
    q.close()
    with pytest.raises(ChannelClosed):
        out.send(Order("late", 1.0))
    with pytest.raises(ChannelClosed, match="closed"):
        enqueue(Refund, q)
    with pytest.raises(ChannelClosed, match="closed"):
        dequeue(Refund, q)
    q.close()  # idempotent
