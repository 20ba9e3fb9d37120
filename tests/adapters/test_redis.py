"""The Redis Streams adapter against the real Redis on 127.0.0.1:6379.

The conformance and peer suites, the URL, the wire format both ways with a plain
redis-py client, and what the pending entries list does for redelivery, counts and
dead letters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from support.helpers import need_service

from qchan import Queue, connect, dequeue, enqueue
from qchan.adapter import Adapter
from qchan.adapters.redis import from_url
from qchan.errors import MessageTooLarge, RejectedError
from qchan.message import Bag
from qchan.options import OptionError
from qchan.testing import FEATURES, Conformance, Order, Peers
from qchan.urls import URLError

HOST, PORT = "127.0.0.1", 6379
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    """A plain redis-py client (fails in CI, skips elsewhere, when Redis is not there)."""
    need_service(HOST, PORT, "Redis")
    c = redis.Redis(HOST, PORT)
    yield c
    c.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    name = f"qchan-test-{uuid.uuid4().hex[:12]}"
    yield name
    client.delete(name, f"{name}.dlq")


def url_for(name: str, **query: Any) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"redis://{HOST}:{PORT}/0?stream={name}{extra}"


# ---------------------------------------------------------------- URL and options


def test_url_gives_host_port_db_stream_and_options() -> None:
    a = from_url("redis://cache:6380/3?stream=orders&group=billing&max_deliveries=7")
    o = a.options
    assert (o.host, o.port, o.db, o.stream, o.group, o.max_deliveries) == (
        "cache",
        6380,
        3,
        "orders",
        "billing",
        7,
    )
    assert (o.dlq, o.name, o.tls) == ("orders.dlq", "orders", False)
    assert from_url("rediss://h/0?stream=s").options.tls is True
    assert from_url("redis://h/0?stream=s&dlq=").options.dlq is None
    a._client.close()


def test_credentials_never_show() -> None:
    a = from_url("redis://alice:s3cr%40t@cache:6379/0?stream=orders")
    assert a.options.password == "s3cr@t"
    assert "s3cr" not in repr(a) and "s3cr" not in repr(a.options)
    with pytest.raises(URLError) as e:
        from_url("redis://alice:s3cret@cache:6379/0?stream=orders&bogus=1")
    assert "s3cret" not in str(e.value) and "bogus" in str(e.value)


def test_tls_options_pass_through_to_redis_py() -> None:
    a = from_url(
        "rediss://cache.example.com:6380/0?stream=s&ssl_ca_certs=/etc/ca.pem"
        "&ssl_cert_reqs=required&ssl_check_hostname=true",
        ssl_certfile="/etc/me.pem",
        ssl_keyfile="/etc/me.key",
    )
    pool = a._client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kw = pool.connection_kwargs
    assert (kw["ssl_ca_certs"], kw["ssl_certfile"], kw["ssl_keyfile"]) == (
        "/etc/ca.pem",
        "/etc/me.pem",
        "/etc/me.key",
    )
    assert (kw["ssl_cert_reqs"], kw["ssl_check_hostname"]) == ("required", True)
    assert "me.key" not in repr(a.options)
    a._client.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://h:6379/0", "needs the stream"),
        ("redis://h:6379/x?stream=s", "database number"),
        ("redis://h:6379/0?stream=s&max_deliveries=0", "max_deliveries"),
        ("redis://h:6379/0?stream=s&visibility_timeout=soon", "visibility_timeout"),
        ("redis://h:6379/0?stream=s&dlq=s", "must differ"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises((URLError, OptionError), match=why):
        from_url(url)


def test_unknown_keyword_is_refused_with_a_suggestion() -> None:
    with pytest.raises(OptionError, match="did you mean 'max_deliveries'"):
        from_url("redis://h/0?stream=s", max_delivery=3)


# ---------------------------------------------------------------- the wire, both ways


def test_a_plain_client_reads_what_qchan_sends(client: redis.Redis, stream: str) -> None:
    with connect(url_for(stream), agent="billing") as q, enqueue(Order, q) as (out, _):
        out.send(Order("1", 9.5))
    [(_, fields)] = client.xrange(stream)
    assert fields[b"body"] == b'{"id":"1","amount":9.5,"tags":[]}'
    assert fields[b"Category"] == b"Order"
    assert fields[b"Source"] == b"billing"
    assert fields[b"Queue"] == stream.encode()


def test_qchan_receives_what_a_plain_client_sends(client: redis.Redis, stream: str) -> None:
    client.xadd(stream, {"body": b'{"id": "7", "amount": 1.5}', "Category": "Order", "X": "y"})
    with connect(url_for(stream)) as q, dequeue(Order, q) as (rcv, ack):
        m = rcv.recv(timeout=10)
        ack.send(m)
    assert m.object == Order("7", 1.5)
    assert m.attributes["X"] == "y"
    assert m.bag is not None and m.bag.deliveries == 1


def test_the_group_reads_what_was_sent_before_it_existed(client: redis.Redis, stream: str) -> None:
    for i in range(3):
        client.xadd(stream, {"body": f'{{"id": "{i}", "amount": 1}}', "Category": "Order"})
    with connect(url_for(stream, group="late")) as q, dequeue(Order, q) as (rcv, ack):
        got = [rcv.recv(timeout=10) for _ in range(3)]
        for m in got:
            ack.send(m)
    assert [m.object.id for m in got] == ["0", "1", "2"]


def test_too_large_and_reserved_attribute_are_refused_alone(stream: str) -> None:
    a = from_url(url_for(stream), max_message_size=100)
    try:
        out = a.send_batch(
            [
                Bag("c", b"x" * 200, {"Category": "c"}),
                Bag("c", b"small", {"Category": "c"}),
                Bag("c", b"small", {"Category": "c", "body": "clash"}),
            ]
        )
    finally:
        a.close()
    assert isinstance(out[0], MessageTooLarge)
    assert out[1] is None
    assert isinstance(out[2], RejectedError) and "body" in str(out[2])


def test_maxlen_trims_the_stream(client: redis.Redis, stream: str) -> None:
    a = from_url(url_for(stream, maxlen=10))
    try:
        for _ in range(10):
            a.send_batch([Bag("c", b"x", {"Category": "c"}) for _ in range(100)])
    finally:
        a.close()
    assert client.xlen(stream) < 1000  # approximately: MAXLEN ~ trims whole nodes


# ---------------------------------------------------------------- the pending entries list


def test_a_consumer_that_died_holding_messages_hands_them_to_the_next(
    client: redis.Redis, stream: str
) -> None:
    dead = from_url(url_for(stream, visibility_timeout=0.5))
    dead.send_batch([Bag("Order", b'{"id": "d", "amount": 1}', {"Category": "Order"})])
    (held,) = dead.receive(10, 1.0)  # never acked: the process "dies" here
    assert held.deliveries == 1
    dead._client.close()
    with connect(url_for(stream, visibility_timeout=0.5)) as q, dequeue(Order, q) as (rcv, ack):
        again = rcv.recv(timeout=10)
        ack.send(again)
    assert again.object == Order("d", 1.0)
    assert again.bag is not None and again.bag.deliveries == 2
    assert client.xpending(stream, "qchan")["pending"] == 0


def test_failures_count_up_to_max_deliveries_then_the_dead_letter_stream(
    client: redis.Redis, stream: str
) -> None:
    with connect(url_for(stream, max_deliveries=3)) as q:
        with enqueue(Order, q) as (out, _):
            out.send(Order("p", 1.0))
        seen = []
        with dequeue(Order, q) as (rcv, ack):
            for _ in range(3):
                m = rcv.recv(timeout=10)
                seen.append(m.deliveries)
                ack.send(m.fail(ValueError(f"attempt {m.deliveries}")))
            deadline = time.monotonic() + 10
            while client.xlen(f"{stream}.dlq") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the broker for the outcome, with a deadline
    assert seen == [1, 2, 3]
    [(_, fields)] = client.xrange(f"{stream}.dlq")
    assert fields[b"Category"] == b"Order"
    assert b"attempt 3" in fields[b"Error"]
    assert fields[b"Deliveries"] == b"3"
    assert client.xpending(stream, "qchan")["pending"] == 0


def test_a_stream_deleted_under_a_consumer_is_made_again(client: redis.Redis, stream: str) -> None:
    a = from_url(url_for(stream))
    try:
        a.send_batch([Bag("c", b"1", {"Category": "c"})])
        assert [b.body for b in a.receive(1, 1.0)] == [b"1"]
        client.delete(stream)  # an operator's DEL: the group goes with it
        a._next_scan = 0.0  # the next receive looks at the PEL first, and meets NOGROUP
        assert a.receive(1, 0.1) == []  # noted, not an error: made again next time
        a.send_batch([Bag("c", b"2", {"Category": "c"})])
        got: list[Bag] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = list(a.receive(1, 0.2))
        assert [b.body for b in got] == [b"2"]
    finally:
        a.close()


def test_depth_and_purge(client: redis.Redis, stream: str) -> None:
    a = from_url(url_for(stream))
    try:
        a.send_batch([Bag("c", b"x", {"Category": "c"}) for _ in range(5)])
        assert a.depth().ready == 5  # the group does not exist yet: the stream's length
        got = a.receive(2, 1.0)
        assert len(got) == 2
        d = a.depth()
        assert (d.ready, d.in_flight) == (3, 2)
        assert a.purge() == 5
        assert client.xlen(stream) == 0
    finally:
        a.close()


def test_close_leaves_the_group_only_when_it_holds_nothing(
    client: redis.Redis, stream: str
) -> None:
    a = from_url(url_for(stream))
    a.send_batch([Bag("c", b"x", {"Category": "c"})])
    (bag,) = a.receive(1, 1.0)
    holder = a.me
    a.close()  # still holds one: stays in the group, so the entry is not lost
    names = {c["name"] for c in client.xinfo_consumers(stream, "qchan")}
    assert holder.encode() in names
    b = from_url(url_for(stream, visibility_timeout=0.2))
    try:
        deadline = time.monotonic() + 10
        got: list[Bag] = []
        while not got and time.monotonic() < deadline:
            got = list(b.receive(1, 0.2))
        assert [g.id for g in got] == [bag.id]
        b.ack(got)
    finally:
        b.close()
    names = {c["name"] for c in client.xinfo_consumers(stream, "qchan")}
    assert b.me.encode() not in names


# ---------------------------------------------------------------- the suites


class TestRedisConformance(Peers, Conformance):
    queue_options = {"poll_wait": 0.5}
    patience = 20.0
    quiet = 1.0
    redelivery_after = 2.0
    # A blocking XREADGROUP cannot be cut short from another thread: no wakeup; the
    # stream and group are created on first use: no missing queue.
    features = frozenset(FEATURES) - {"wakeup", "sticky_wakeup", "missing_queue"}
    peer_max_deliveries = 5

    def dead_lettered(self, name: str) -> int:
        c = redis.Redis(HOST, PORT)
        try:
            return int(c.xlen(f"{name}.dlq"))
        finally:
            c.close()

    @pytest.fixture
    def adapter_factory(self, client: redis.Redis) -> Iterator[Callable[[str], Adapter]]:
        names: set[str] = set()

        def make(name: str) -> Adapter:
            names.add(name)
            return from_url(url_for(name, visibility_timeout=2, wait=0.5))

        yield make
        for n in names:
            client.delete(n, f"{n}.dlq")


def test_enqueue_dequeue_over_the_url(stream: str) -> None:
    q: Queue
    with connect(url_for(stream)) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(20):
                out.send(Order(str(i), float(i)))
        with dequeue(Order, q) as (rcv, ack):
            got = [rcv.recv(timeout=10) for _ in range(20)]
            for m in got:
                ack.send(m)
    assert [m.object.id for m in got] == [str(i) for i in range(20)]
