"""Kafka adapter tests: offsets, poison, interop and broker loss against librdkafka's mock cluster.

The unit tests at the top need no broker. The integration tests talk to a
Kafka-protocol cluster (tests/support/kafka_mock_cluster.py, see support/kafka.py)
and use a fresh topic each. Adapter-level tests drive the contract directly
(send_batch, receive, ack, nack, release, reject) the way the kernel's
threads do; the kernel-level tests and the conformance suite are at the end.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import outage_then_invalid, slow_consume, start, wait_for
from support.kafka import (
    GROUP_PROTOCOL,
    PARTITIONS,
    Cluster,
    MockCluster,
    group_config,
    new_topic,
)

from qchan import Chan, Queue, Retries, connect, dequeue, enqueue, serve
from qchan.adapter import Adapter, Hooks
from qchan.adapters.kafka import (
    DeadLettered,
    KafkaAdapter,
    KafkaSendError,
    TopicNotFound,
    from_url,
)
from qchan.adapters.kafka._config import parse_url, redact_config, scrub
from qchan.adapters.kafka._inflight import (
    METADATA_LIMIT,
    InFlight,
    Metadata,
    Receipt,
    decode_metadata,
    encode_metadata,
    inherit,
    redelivery,
)
from qchan.adapters.kafka._producer import Produced
from qchan.errors import DecodeError, MessageTooLarge, QchanError, UnroutableError
from qchan.message import Bag
from qchan.testing import FEATURES, Conformance, Order, Peers
from qchan.urls import URLError

# ---------------------------------------------------------------- helpers


class Recorder(Hooks):
    """Hooks that remember what the adapter told the kernel."""

    def __init__(self) -> None:
        self.reports: list[BaseException] = []
        self.revoked: list[Any] = []

    def report(self, error: BaseException) -> None:
        self.reports.append(error)

    def revoke(self, predicate: Any) -> int:
        self.revoked.append(predicate)
        return 0


def adapter(bootstrap: str, topic: str, **options: Any) -> KafkaAdapter:
    consumer = {**group_config(), **options.pop("consumer_config", {})}
    a = KafkaAdapter(topic, bootstrap=bootstrap, consumer_config=consumer, **options)
    a.bind(Recorder())
    return a


def recorder(a: KafkaAdapter) -> Recorder:
    assert isinstance(a.hooks, Recorder)
    return a.hooks


@pytest.fixture
def adapters() -> Iterator[list[KafkaAdapter]]:
    """Adapters a test opens; closed at the end whatever happens."""
    opened: list[KafkaAdapter] = []
    yield opened
    for a in opened:
        a.close()


def bag(body: bytes, category: str = "Order", **attributes: str) -> Bag:
    return Bag(
        category,
        body,
        {"Category": category, "Source": "tests", "System": "kafka", "Queue": "q", **attributes},
        id=uuid.uuid4().hex,
    )


def receive_n(a: KafkaAdapter, n: int, timeout: float = 30.0) -> list[Bag]:
    """Exactly n bags (fails after `timeout` s with fewer); receive itself blocks, no sleep."""
    got: list[Bag] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"received {len(got)} of {n} messages in {timeout} s")
        got += a.receive(n - len(got), min(1.0, left))
    assert len(got) == n
    return got


def produce_plain(
    bootstrap: str, topic: str, values: list[bytes], partition: int = -1, **kw: Any
) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, v, partition=partition, **kw)
    assert p.flush(30) == 0


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages on `topic` (high less low watermark, summed over its partitions)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"size-{uuid.uuid4().hex}"})
    try:
        partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
        marks = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions]
        return sum(high - low for low, high in marks)
    finally:
        c.close()


def consume_plain(
    bootstrap: str,
    topic: str,
    n: int,
    timeout: float = 30.0,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """n messages read by a plain confluent-kafka consumer in a group of its own.

    With `until`, it reads (up to n at a time) until `until(messages read)` holds.
    """
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"plain-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            **group_config(),
        }
    )
    c.subscribe([topic])
    got: list[Any] = []
    done = until or (lambda got: len(got) >= n)
    deadline = time.monotonic() + timeout
    try:
        while not done(got) and time.monotonic() < deadline:
            want = n if until else n - len(got)
            got += [m for m in c.consume(want, 0.5) if m.error() is None]
    finally:
        c.close()
    if until is None:
        assert len(got) == n, f"plain consumer read {len(got)} of {n}"
    else:
        assert done(got), f"plain consumer read {[m.value() for m in got]} in {timeout} s"
    return got


def committed(bootstrap: str, topic: str, group: str) -> list[int]:
    """The group's committed offset of each partition (-1001: none)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return [tp.offset for tp in sorted(tps, key=lambda tp: tp.partition)]
    finally:
        c.close()


# ------------------------------------------------------------ unit: no broker


def test_url_gives_brokers_topic_group_and_librdkafka_properties() -> None:
    options, config = parse_url(
        "kafka://h1:9092,h2:9093/orders?group=billing&max_deliveries=3&security.protocol=SSL"
    )
    assert options == {
        "topic": "orders",
        "bootstrap": "h1:9092,h2:9093",
        "group": "billing",
        "max_deliveries": 3,
    }
    assert config == {"security.protocol": "SSL"}


def test_url_credentials_become_sasl_and_never_show() -> None:
    url = "kafka://alice:s3cr%40t@h1:9092/orders?sasl.mechanism=SCRAM-SHA-512"
    _, config = parse_url(url)
    assert config["sasl.username"] == "alice"
    assert config["sasl.password"] == "s3cr@t"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"  # the query wins over the default
    assert config["security.protocol"] == "SASL_SSL"
    a = from_url(url)
    assert "s3cr" not in repr(a)
    assert redact_config(a.options.config)["sasl.password"] == "***"
    assert scrub("bad value s3cr@t for x", config) == "bad value *** for x"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("kafka://h1:9092/", "topic"),
        ("kafka:///orders", "brokers"),
        ("kafka://h1:9092/orders?colour=blue", "unknown option 'colour'"),
        ("kafka://h1:9092/orders?max_deliveries=many", "max_deliveries"),
        ("kafka://u:hunter2@h1:9092/orders?bogus=1", "u:***@h1"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(URLError, match=re.escape(why)) as e:
        parse_url(url)
    assert "hunter2" not in str(e.value)


def test_unknown_option_and_bad_values_are_refused() -> None:
    with pytest.raises(TypeError, match="colour"):
        from_url("kafka://h:9092/t", colour="blue")
    with pytest.raises(ValueError, match=r"enable\.auto\.commit"):
        from_url("kafka://h:9092/t", consumer_config={"enable.auto.commit": True})
    with pytest.raises(ValueError, match="offset_reset"):
        from_url("kafka://h:9092/t?offset_reset=middle")
    with pytest.raises(ValueError, match="key"):
        from_url("kafka://h:9092/t", key="random")


def test_client_configuration_errors_do_not_leak_secrets() -> None:
    a = KafkaAdapter(
        "orders",
        bootstrap="127.0.0.1:1",
        # A password pasted into the wrong property: librdkafka quotes the invalid value.
        config={"sasl.password": "hunter2", "compression.type": "hunter2"},
    )
    with pytest.raises(QchanError, match="compression") as e:
        a.send_batch([bag(b"x")])
    assert "hunter2" not in str(e.value)
    assert "***" in str(e.value)


def test_defaults_follow_the_topic() -> None:
    a = from_url("kafka://h:9092/orders")
    assert (a.options.group, a.options.dlq, a.name) == ("qchan-orders", "orders.dlq", "orders")
    assert from_url("kafka://h:9092/orders?dlq=").options.dlq is None


class _Report:
    """What a delivery report carries (confluent-kafka's Message cannot be built here)."""

    def __init__(self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]):
        self._v, self._k, self._h = value, key, headers

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def headers(self) -> list[tuple[str, bytes]]:
        return self._h


def _report(b: Bag, key: str | None = None) -> _Report:
    return _Report(
        b.body, key.encode() if key else None, [(k, v.encode()) for k, v in b.attributes.items()]
    )


def test_a_failed_delivery_report_fails_exactly_its_message() -> None:
    """One callback serves a batch, so a failure is matched to its bag by content:
    value, key and headers; among identical bags, one per failure."""
    a = KafkaAdapter("t", bootstrap="127.0.0.1:9", key="category")
    same = [bag(b"same"), bag(b"same"), bag(b"same", "Refund")]
    bags = [bag(b"a"), *same, bag(b"b")]
    sending = Produced(a._producing, cast(Any, None), bags)
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
    sending.delivered(None, cast(Any, _report(bags[0], "Order")))
    sending.delivered(timed_out, cast(Any, _report(same[2], "Refund")))  # headers differ
    sending.delivered(timed_out, cast(Any, _report(same[0], "Order")))
    sending.delivered(None, cast(Any, _report(same[1], "Order")))
    sending.delivered(None, cast(Any, _report(bags[4], "Order")))
    outcomes = sending.result(0)
    assert outcomes is not None
    assert [o is None for o in outcomes] == [True, False, True, False, True]
    assert all(isinstance(o, KafkaSendError) for o in (outcomes[1], outcomes[3]))


def test_a_timed_out_report_without_headers_still_finds_its_message() -> None:
    """librdkafka drops the headers of a message it timed out: the report is matched by
    value and key. It once matched nothing, failing (and duplicating) the whole batch."""
    a = KafkaAdapter("t", bootstrap="127.0.0.1:9")
    bags = [bag(b"a"), bag(b"b"), bag(b"c")]
    sending = Produced(a._producing, cast(Any, None), bags)
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
    sending.delivered(None, cast(Any, _report(bags[0])))
    sending.delivered(timed_out, cast(Any, _Report(b"b", None, cast(Any, None))))
    sending.delivered(None, cast(Any, _report(bags[2])))
    outcomes = sending.result(0)
    assert outcomes is not None
    assert [o is None for o in outcomes] == [True, False, True]


def test_a_report_without_headers_fails_every_message_it_may_be() -> None:
    """Alike in value and key but not in headers: which one failed is unknown, so both
    count as failed (a retry may duplicate, never lose)."""
    a = KafkaAdapter("t", bootstrap="127.0.0.1:9")
    bags = [bag(b"same"), bag(b"same", "Refund"), bag(b"other")]
    sending = Produced(a._producing, cast(Any, None), bags)
    sending.delivered(
        KafkaError(KafkaError._MSG_TIMED_OUT), cast(Any, _Report(b"same", None, cast(Any, None)))
    )
    sending.delivered(None, cast(Any, _report(bags[2])))
    sending.delivered(None, cast(Any, _report(bags[1])))  # the other "same": delivered
    outcomes = sending.result(0)
    assert outcomes is not None
    assert [o is None for o in outcomes] == [False, False, True]


def test_a_delivery_report_that_matches_nothing_fails_the_batch() -> None:
    """Which message failed is unknown then: every one counts as failed (a retry may
    duplicate, never lose)."""
    a = KafkaAdapter("t", bootstrap="127.0.0.1:9")
    bags = [bag(b"a"), bag(b"b")]
    sending = Produced(a._producing, cast(Any, None), bags)
    sending.delivered(None, cast(Any, _report(bags[0])))
    sending.delivered(KafkaError(KafkaError._MSG_TIMED_OUT), cast(Any, _Report(b"?", None, [])))
    outcomes = sending.result(0)
    assert outcomes is not None
    assert all(isinstance(o, KafkaSendError) for o in outcomes), "none counted as delivered"


class _Client:
    """A producer that records being dropped."""

    def __init__(self) -> None:
        self.purged = False

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self.purged = True

    def flush(self, timeout: float = 0) -> int:
        return 0


def test_a_fatal_delivery_report_replaces_the_producer() -> None:
    """A fatal error (idempotence state lost) leaves the producer unusable: its batch's
    failure is reported and the next batch gets a new producer. It went unnoticed
    when the failure matched its bag."""
    a = KafkaAdapter("t", bootstrap="127.0.0.1:9")
    old = _Client()
    a._producing.producer = cast(Any, old)
    bags = [bag(b"a"), bag(b"b")]
    sending = Produced(a._producing, cast(Any, old), bags)
    fatal = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    sending.delivered(None, cast(Any, _report(bags[0])))
    sending.delivered(fatal, cast(Any, _report(bags[1])))
    outcomes = sending.result(0)
    assert outcomes is not None and outcomes[0] is None
    assert isinstance(outcomes[1], KafkaSendError) and outcomes[1].fatal
    assert a._producing.producer is None and old.purged


def _delivered(flight: InFlight, topic: str, partition: int, offsets: range) -> list[Bag]:
    bags = [
        Bag("c", b"", digest=Receipt(topic, partition, o), id=f"{topic}/{partition}/{o}")
        for o in offsets
    ]
    for b in bags:
        assert flight.deliver(b)
    return bags


def test_only_the_contiguous_settled_prefix_is_committed() -> None:
    flight = InFlight()
    flight.assign([("t", 0)], {})
    bags = _delivered(flight, "t", 0, range(5))
    flight.settle([bags[1], bags[3]])
    assert flight.to_commit() == {
        ("t", 0): (0, encode_metadata(0, 5, [2, 4], live=True, frontier=5))
    }
    flight.settle([bags[0]])
    assert flight.to_commit()[("t", 0)][0] == 2
    assert flight.to_commit() == {}  # nothing new settled: nothing to commit
    flight.settle([bags[2], bags[4]])
    assert flight.to_commit() == {("t", 0): (5, encode_metadata(5, 5, [], live=True, frontier=5))}


def test_a_stale_delivery_is_not_settled() -> None:
    flight = InFlight()
    flight.assign([("t", 0)], {})
    (first,) = _delivered(flight, "t", 0, range(1))
    again = flight.schedule(first, 0.0, redelivery)
    assert again is not None and again.deliveries == 2
    assert flight.settle([first]) == 0  # nacked: only the redelivery counts now
    assert flight.due(1.0, 10) == [again]
    flight.revoke([("t", 0)])
    assert flight.settle([again]) == 0  # revoked: the next owner redelivers it


def test_a_commit_the_group_applied_after_a_newer_one_is_made_again() -> None:
    """librdkafka sends a commit again when its connection dropped, after newer ones went
    out on the new connection: the group applies the older one last and its offset goes
    back. The outcomes arrive in the order the group applied them; the older position
    confirmed after the newer one puts the partition back to commit."""
    flight = InFlight()
    flight.assign([("t", 0)], {})
    bags = _delivered(flight, "t", 0, range(6))
    flight.settle(bags[:3])
    assert flight.to_commit()[("t", 0)][0] == 3  # sent, then its connection drops
    flight.settle(bags[3:])
    assert flight.to_commit()[("t", 0)][0] == 6
    flight.confirmed([(("t", 0), 6)])
    assert flight.to_commit() == {}
    flight.confirmed([(("t", 0), 3)])  # the older one, sent again, applied last
    assert flight.to_commit()[("t", 0)][0] == 6


class _Commits:
    """A consumer whose asynchronous commits are answered only by a later poll (as
    librdkafka's are); records every commit in the order the group applies them."""

    def __init__(self) -> None:
        self.applied: list[tuple[bool, list[int]]] = []
        self.unanswered: list[list[TopicPartition]] = []
        self.on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> Any:
        if asynchronous:
            self.unanswered.append(offsets)
            return None
        self.applied.append((False, [tp.offset for tp in offsets]))
        return offsets

    def poll(self, timeout: float) -> None:
        answered, self.unanswered = self.unanswered, []
        for offsets in answered:  # sent again after a dropped connection: applied now
            self.applied.append((True, [tp.offset for tp in offsets]))
            assert self.on_commit is not None
            self.on_commit(None, offsets)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", 0)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def close(self) -> None:
        self.poll(0)  # what is still out is answered, and applied, while it closes


def test_close_waits_for_the_asynchronous_commits_out_before_the_final_one() -> None:
    """The final commit of a clean close is the last one the group applies: an
    asynchronous commit still unanswered would otherwise land after it and put the
    group's offset back (seen in the dropped-connection scenario: 1,100 of 2,000 acked
    messages left for the next consumer)."""
    from qchan.adapters.kafka._consumer import Consuming

    flight = InFlight()
    flight.assign([("t", 0)], {})
    options = KafkaAdapter("t", bootstrap="127.0.0.1:1").options
    consuming = Consuming(options, cast(Any, None), flight, lambda e: None, lambda p: 0)
    fake = _Commits()
    fake.on_commit = consuming._committed
    consuming.consumer = cast(Any, fake)
    bags = _delivered(flight, "t", 0, range(6))
    flight.settle(bags[:3])
    consuming.try_commit()  # asynchronous, at 3: no answer yet
    flight.settle(bags[3:])
    consuming.close()
    assert fake.applied[-1][0] is False, fake.applied  # the final commit comes last
    assert fake.applied[-1][1] == [6]
    assert fake.applied[0] == (True, [3])


def test_close_gives_up_waiting_for_commits_that_are_never_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A commit whose answer never comes (the broker gone for good) holds close up for
    `admin_timeout` at most: it then says so and makes its final commit anyway."""
    from qchan.adapters.kafka._consumer import Consuming

    class Silent(_Commits):
        def poll(self, timeout: float) -> None:
            time.sleep(timeout)  # the poll's own wait: nothing ever answers

    flight = InFlight()
    flight.assign([("t", 0)], {})
    options = KafkaAdapter("t", bootstrap="127.0.0.1:1", admin_timeout=0.5).options
    consuming = Consuming(options, cast(Any, None), flight, lambda e: None, lambda p: 0)
    fake = Silent()
    consuming.consumer = cast(Any, fake)
    flight.settle(_delivered(flight, "t", 0, range(3)))
    consuming.try_commit()  # asynchronous, never answered
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="qchan.adapters.kafka"):
        consuming.close()
    assert time.monotonic() - began < 5.0
    assert fake.applied == [(False, [3])]  # the final commit was still made
    assert "unanswered" in caplog.text


@given(
    st.lists(st.booleans(), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_commit_position_is_first_unsettled_offset_in_any_ack_order(
    acked: list[bool], rnd: random.Random
) -> None:
    flight = InFlight()
    flight.assign([("t", 0)], {})
    bags = _delivered(flight, "t", 0, range(len(acked)))
    to_ack = [b for b, a in zip(bags, acked, strict=True) if a]
    rnd.shuffle(to_ack)
    for b in to_ack:
        flight.settle([b])
    position, metadata = flight.to_commit().get(("t", 0), (-1, ""))
    unacked = {i for i, a in enumerate(acked) if not a}
    if not to_ack:
        assert position == -1  # nothing settled, nothing to commit
        return
    assert position == min(unacked, default=len(acked))
    # The next owner skips exactly what was settled above the position.
    found = decode_metadata(position, metadata)
    assert {o for o in range(position, len(acked) + 2) if found.settled(o)} == {
        o for o in range(position, len(acked)) if acked[o]
    }
    assert (found.live, found.frontier, dict(found.counts)) == (True, len(acked), {})


def test_next_owner_skips_what_was_settled_above_the_commit() -> None:
    flight = InFlight()
    flight.assign([("t", 0)], {})
    bags = _delivered(flight, "t", 0, range(6))
    flight.settle([bags[1], bags[2], bags[4]])
    position, metadata = flight.revoke([("t", 0)])[("t", 0)]
    heir = InFlight()
    heir.assign([("t", 0)], {("t", 0): (position, metadata)})
    again = [Bag("c", b"", digest=Receipt("t", 0, o)) for o in range(position, 8)]
    assert [b.digest.offset for b in again if heir.deliver(b)] == [0, 3, 5, 6, 7]


def test_foreign_commit_metadata_is_ignored() -> None:
    assert decode_metadata(5, "written by another client") == Metadata()
    assert decode_metadata(5, "qchan:1:!!not base64") == Metadata()
    assert decode_metadata(5, "qchan:2:!!not base64") == Metadata()
    assert decode_metadata(5, None) == Metadata()


def _pack(prefix: str, text: str) -> str:
    """Metadata as qchan writes it (version 1 wrote "high-base:deltas" this way)."""
    return prefix + base64.b64encode(zlib.compress(text.encode())).decode()


def test_metadata_v2_carries_skips_counts_owner_and_frontier() -> None:
    meta = encode_metadata(
        10, 16, [12, 13], counts={10: 2, 13: 1, 20: 4, 9: 7}, live=True, frontier=16
    )
    assert meta.startswith("qchan:2:") and len(meta) <= METADATA_LIMIT
    found = decode_metadata(10, meta)
    assert found == Metadata(
        high=16,
        unsettled=frozenset({10, 12, 13}),
        counts={10: 2, 13: 1, 20: 4},  # only counts at or above the position
        live=True,
        frontier=16,
    )
    assert [o for o in range(10, 18) if found.settled(o)] == [11, 14, 15]
    # Nothing settled above the position: no skip information, every offset is unsettled.
    clean = decode_metadata(3, encode_metadata(3, 4, [], live=False, frontier=4))
    assert clean == Metadata(high=-1, unsettled=frozenset({3}), live=False, frontier=4)
    assert not any(clean.settled(o) for o in range(10))


def test_metadata_v1_reads_as_clean_with_no_counts() -> None:
    """A commit of the previous qchan version: its skips are kept, no owner is live."""
    found = decode_metadata(5, _pack("qchan:1:", "5:2,4"))
    assert found == Metadata(high=10, unsettled=frozenset({5, 7, 9}))
    assert inherit(5, found) == ({}, -1)  # nothing counted, no careful mode


@pytest.mark.parametrize(
    "text",
    [
        "o=2;f=0",  # o is 0 or 1
        "o=1;f=-1",  # a frontier below the position
        "o=1",  # no frontier
        "c=0*1,0*2;o=1;f=3",  # an offset twice
        "c=0*0;o=1;f=3",  # a count of 0
        "h=1;o=1;f=3",  # h=1 says nothing
        "h=5;u=1,-2;o=1;f=3",  # offsets going down
        "x",
    ],
)
def test_damaged_or_hostile_metadata_reads_as_clean(text: str) -> None:
    assert decode_metadata(7, _pack("qchan:2:", text)) == Metadata()


def test_metadata_that_inflates_too_far_reads_as_clean() -> None:
    bomb = _pack("qchan:2:", "o=1;f=0;" + "z" * (2 << 20))
    assert len(bomb) < 4096 and decode_metadata(0, bomb) == Metadata()


def test_metadata_too_large_for_the_broker_is_left_out() -> None:
    """Over METADATA_LIMIT: no metadata; the next owner redelivers from the position and
    the counts start again (documented)."""
    rnd = random.Random(3)
    unsettled = sorted(rnd.sample(range(1, 1_000_000), 5000))
    assert encode_metadata(0, 1_000_001, unsettled, live=True, frontier=0) == ""
    # Runs compress: 20,000 suspects counted once each still fit.
    counts = dict.fromkeys(range(20_000), 1)
    fits = encode_metadata(0, -1, [], counts=counts, live=True, frontier=20_000)
    assert fits and decode_metadata(0, fits).counts == counts


def test_a_live_previous_owner_counts_its_unsettled_offsets_below_its_frontier() -> None:
    """The owner that wrote o=1 died: every unsettled offset it may have handed out (from
    the position to its frontier) used one delivery; settled ones and those above the
    frontier did not. At f=position it handed nothing out: nothing counts (an owner
    commits f past its first hand-out before it makes it)."""
    found = decode_metadata(
        10, encode_metadata(10, 14, [12, 13], counts={12: 1, 30: 2}, live=True, frontier=16)
    )
    counts, end = inherit(10, found)
    assert counts == {10: 1, 12: 2, 13: 1, 14: 1, 15: 1, 30: 2}
    assert end == 16
    at_position = decode_metadata(10, encode_metadata(10, -1, [], live=True, frontier=10))
    assert inherit(10, at_position) == ({}, -1)
    # A clean revoke or close (o=0) counts nothing, and keeps the counts it carried.
    closed = decode_metadata(
        10, encode_metadata(10, -1, [], counts={11: 2}, live=False, frontier=16)
    )
    assert inherit(10, closed) == ({11: 2}, -1)


def _owner(
    found: tuple[int, str | None] | None, max_deliveries: int | None = None
) -> tuple[InFlight, int, str]:
    """A new owner of partition t/0 with the commit it found; (it, what it writes first)."""
    flight = InFlight(max_deliveries)
    writes = flight.assign([("t", 0)], {("t", 0): found} if found else {})
    if not writes:
        return flight, -1, ""
    ((position, metadata),) = writes.values()
    flight.secured({("t", 0): position})  # the broker confirmed it
    return flight, position, metadata


def _fresh(offsets: range) -> list[Bag]:
    return [Bag("c", b"", digest=Receipt("t", 0, o), id=f"t/0/{o}") for o in offsets]


def test_an_owner_dying_on_a_message_makes_the_next_one_count_it() -> None:
    """The crash loop, owner by owner: each writes o=1 and f=position before it hands out
    anything, then f past its first hand-out before it makes it (careful), so a death on
    the message at the position counts exactly once; with max_deliveries=3 the fourth
    owner keeps it from the kernel (doomed) and hands out the next message on its first
    delivery."""
    found: tuple[int, str | None] = (0, None)
    for deliveries in (1, 2, 3):
        flight, position, metadata = _owner(found, max_deliveries=3)
        assert position == 0 and decode_metadata(0, metadata).live
        assert decode_metadata(0, metadata).frontier == 0
        (poison,) = flight.deliver_all(_fresh(range(1)))
        assert poison.deliveries == deliveries
        assert flight.unsecured  # careful: the frontier is committed past it first
        (secure,) = flight.to_secure().values()
        assert decode_metadata(*secure).frontier == 1
        flight.secured({("t", 0): secure[0]})
        found = secure
        # ... and the process dies: no revoke, no close, no further commit.
    flight, _, metadata = _owner(found, max_deliveries=3)
    assert decode_metadata(0, metadata).counts == {0: 3}
    out = flight.deliver_all(_fresh(range(3)))
    assert [(b.digest.offset, b.deliveries) for b in out] == [(1, 1), (2, 1)]
    (doomed,) = flight.take_doomed()
    assert (doomed.digest.offset, doomed.deliveries) == (0, 4)
    assert flight.to_commit() == {}  # not settled until its dead-letter copy is confirmed
    assert flight.settle([doomed]) == 1
    assert flight.to_commit()[("t", 0)][0] == 1


def test_a_death_counts_nothing_of_a_partition_its_owner_handed_nothing_out_of() -> None:
    """Issue 25: a message never handed to an application is never counted. An owner
    that died before it handed anything out of a partition left f at the position there
    (its assignment's commit): the next owner counts nothing and is careful only for its
    own first hand-out, which ends once the broker has a position past it."""
    flight, position, metadata = _owner((4, None))
    assert (position, decode_metadata(4, metadata).frontier) == (4, 4)
    flight, _, metadata = _owner((position, metadata))  # the first owner died
    assert decode_metadata(4, metadata).counts == {}
    (first,) = flight.deliver_all(_fresh(range(4, 5)))
    assert first.deliveries == 1 and flight.unsecured
    ((_, meta),) = flight.to_secure().values()
    assert decode_metadata(4, meta).frontier == 5
    flight.secured({("t", 0): 4})
    flight.settle([first])
    ((committed, _),) = flight.to_commit().values()
    flight.confirmed([(("t", 0), committed)])
    flight.deliver_all(_fresh(range(5, 8)))
    assert not flight.unsecured and flight.to_secure() == {}  # careful mode is over


def test_careful_mode_commits_the_frontier_until_the_position_passes_the_suspects() -> None:
    died = encode_metadata(0, -1, [], live=True, frontier=2)  # it may have handed out 0, 1
    flight, _, metadata = _owner((0, died))
    assert decode_metadata(0, metadata).counts == {0: 1, 1: 1}
    a, b = flight.deliver_all(_fresh(range(2)))
    assert flight.unsecured
    ((position, meta),) = flight.to_secure().values()
    assert (position, decode_metadata(0, meta).frontier) == (0, 2)
    flight.secured({("t", 0): 0})
    assert not flight.deliver_all(_fresh(range(2, 3)))[0].deliveries > 1
    assert flight.unsecured  # 2 is above the frontier, and the position is still below 2
    ((_, meta),) = flight.to_secure().values()
    assert decode_metadata(0, meta).frontier == 3
    flight.secured({("t", 0): 0})
    flight.settle([a, b])
    ((position, _),) = flight.to_commit().values()
    flight.confirmed([(("t", 0), position)])  # the broker has the position past the suspects
    flight.deliver_all(_fresh(range(3, 6)))
    assert not flight.unsecured and flight.to_secure() == {}  # careful mode is over


def test_a_clean_end_counts_nothing_and_keeps_the_counts() -> None:
    """A revoke (rebalance) and a close write o=0 even with nothing new settled; the next
    owner counts no death. A failure nacked in memory is committed with its count, which
    the next owner continues from."""
    for end in ("revoke", "close"):
        flight, _, _ = _owner((0, None))
        bags = flight.deliver_all(_fresh(range(3)))
        again = flight.schedule(bags[1], 60.0, redelivery)  # failed once, waiting
        assert again is not None
        ((_, meta),) = flight.to_commit().values()
        assert decode_metadata(0, meta).counts == {1: 1}
        final = flight.revoke([("t", 0)]) if end == "revoke" else flight.finish()
        ((position, meta),) = final.values()
        assert not decode_metadata(position, meta).live
        heir, _, _ = _owner((position, meta))
        out = heir.deliver_all(_fresh(range(3)))
        assert [b.deliveries for b in out] == [1, 2, 1], end
        # No suspects: careful only for its own first hand-outs (f past them, first).
        ((_, meta),) = heir.to_secure().values()
        assert decode_metadata(0, meta).frontier == 3 and decode_metadata(0, meta).counts == {1: 1}


def test_an_owner_without_a_known_position_writes_nothing() -> None:
    """Nothing committed and no reset offset known: no write, no counts (as before)."""
    flight, position, metadata = _owner(None)
    assert (position, metadata) == (-1, "")
    assert [b.deliveries for b in flight.deliver_all(_fresh(range(2)))] == [1, 1]


# ------------------------------------------------------------ adapter level


@pytest.mark.integration
def test_round_trip_carries_body_headers_key_and_receipt(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    a = adapter(kafka_bootstrap, topic)
    adapters.append(a)
    sent = [bag(f"body {i}".encode()) for i in range(5)]
    keyed = Bag("Order", b"keyed", {"Category": "Order"}, key="customer-7")
    assert list(a.send_batch([*sent, keyed])) == [None] * 6
    got = receive_n(a, 6)
    by_body = {b.body: b for b in got}
    assert set(by_body) == {b.body for b in [*sent, keyed]}
    first = by_body[b"body 0"]
    assert first.category == "Order"
    assert dict(first.attributes) == dict(sent[0].attributes)
    assert first.deliveries == 1
    receipt = first.digest
    assert isinstance(receipt, Receipt) and receipt.topic == topic
    assert first.id == f"{topic}/{receipt.partition}/{receipt.offset}"
    assert by_body[b"keyed"].key == "customer-7"
    a.ack(got)


@pytest.mark.integration
def test_missing_topic_is_a_clear_error(kafka_bootstrap: str, adapters: list[KafkaAdapter]) -> None:
    a = adapter(kafka_bootstrap, f"qchan-missing-{uuid.uuid4().hex[:8]}")
    adapters.append(a)
    with pytest.raises(TopicNotFound, match="partitions=N"):
        a.send_batch([bag(b"x")])
    with pytest.raises(TopicNotFound, match="does not exist"):
        a.receive(10, 0.1)


@pytest.mark.integration
def test_partitions_option_creates_a_missing_topic(
    kafka_cluster: Cluster,
    kafka_bootstrap: str,
    adapters: list[KafkaAdapter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"qchan-created-{uuid.uuid4().hex[:8]}"
    # The mock cluster has no CreateTopics API: the adapter falls back to auto-creation.
    a = adapter(kafka_bootstrap, name, partitions=2, admin_timeout=1.0)
    adapters.append(a)
    with caplog.at_level(logging.WARNING, logger="qchan.adapters.kafka"):
        assert list(a.send_batch([bag(b"x")])) == [None]
    assert receive_n(a, 1)[0].body == b"x"
    if isinstance(kafka_cluster, MockCluster):  # no CreateTopics API there: the fallback ran
        assert any("auto-create" in r.getMessage() for r in caplog.records)
        assert any("4 partitions, not 2" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_out_of_order_acks_commit_only_the_contiguous_prefix(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    for p in range(PARTITIONS):
        produce_plain(kafka_bootstrap, topic, [f"{p}:{i}".encode() for i in range(10)], p)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(first)
    got = receive_n(first, 40)
    rnd = random.Random(6)
    # Partition 0 all acked, 1 none, 2 and 3 with holes (2 has one at offset 0).
    pattern = {0: set(range(10)), 1: set(), 2: {1, 2, 3, 5, 8, 9}, 3: {0, 1, 2, 4, 6, 7, 9}}
    acked = [b for b in got if b.digest.offset in pattern[b.digest.partition]]
    rnd.shuffle(acked)
    # Acks come in small out-of-order batches while the poller keeps polling, as in the kernel.
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            assert first.receive(10, 0.2) == []

    poller = start(poll, name="poller")
    try:
        for i in range(0, len(acked), 3):
            first.ack(acked[i : i + 3])
        # First un-acked offset (where nothing was acked: the assignment's commit, 0).
        expected = [
            min(set(range(10)) - pattern[p], default=10) if pattern[p] else 0
            for p in range(PARTITIONS)
        ]
        wait_for(
            lambda: committed(kafka_bootstrap, topic, group) == expected,
            timeout=15,
            what=f"committed offsets {expected}",
        )
    finally:
        stop.set()
        poller.outcome()
    first.close()
    adapters.remove(first)

    second = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(second)
    unacked = {b.body for b in got} - {b.body for b in acked}
    again = receive_n(second, len(unacked))
    assert {b.body for b in again} == unacked  # exactly the un-acked ones, no acked duplicates
    assert second.receive(50, 1.0) == []


@pytest.mark.integration
def test_poison_message_goes_to_the_dead_letter_topic_and_the_partition_moves_on(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    produce_plain(
        kafka_bootstrap, topic, [b"a", b"poison", b"c"], 0, headers=[("Category", b"Order")]
    )
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = adapter(kafka_bootstrap, topic, group=group, max_deliveries=3)
    adapters.append(a)
    deliveries = []
    while len(deliveries) < 3:
        for b in a.receive(10, 1.0):
            if b.body == b"poison":
                deliveries.append(b.deliveries)
                a.give_back([b], counted=True)
            else:
                a.ack([b])
    assert deliveries == [1, 2, 3]
    wait_for(lambda: committed(kafka_bootstrap, topic, group)[0] == 3, what="commit past poison")
    (dead,) = consume_plain(kafka_bootstrap, f"{topic}.dlq", 1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert dead.value() == b"poison"
    assert headers["Category"] == "Order"
    assert headers["Deliveries"] == "3"
    assert (headers["OriginTopic"], headers["OriginPartition"], headers["OriginOffset"]) == (
        topic,
        "0",
        "1",
    )
    assert "3 deliveries" in headers["Error"]
    produce_plain(kafka_bootstrap, topic, [b"d"], 0)
    a.ack(receive_n(a, 1))
    wait_for(lambda: committed(kafka_bootstrap, topic, group)[0] == 4, what="partition moving")


@pytest.mark.integration
def test_nack_delay_holds_the_redelivery_back(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    a = adapter(kafka_bootstrap, topic)
    adapters.append(a)
    a.send_batch([bag(b"later")])
    (first,) = receive_n(a, 1)
    nacked = time.monotonic()
    a.give_back([first], counted=True, delay=0.5)
    (again,) = receive_n(a, 1)
    assert time.monotonic() - nacked >= 0.5
    assert (again.body, again.deliveries, again.id) == (b"later", 2, first.id)
    a.ack([again])


@pytest.mark.integration
def test_undecodable_payload_is_dead_lettered_at_once(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    a = adapter(kafka_bootstrap, topic)
    adapters.append(a)
    a.send_batch([bag(b"\xff{not json")])
    (b,) = receive_n(a, 1)
    a.reject(b, DecodeError("cannot decode", b))
    (dead,) = consume_plain(kafka_bootstrap, f"{topic}.dlq", 1)
    assert dead.value() == b"\xff{not json"
    assert dict(dead.headers())["Error"] == b"cannot decode"
    assert a.receive(10, 0.5) == []


@pytest.mark.integration
def test_unroutable_messages_are_retried_then_dead_lettered_or_skipped(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = adapter(kafka_bootstrap, topic, group=group, redelivery_delay=0.05, max_deliveries=2)
    adapters.append(a)
    produce_plain(kafka_bootstrap, topic, [b"nobody"], 0, headers=[("Category", b"Nobody")])
    (b,) = receive_n(a, 1)
    assert b.category == "Nobody"
    a.reject(b, UnroutableError("no channel for 'Nobody'", b))
    (again,) = receive_n(a, 1)  # a channel may open meanwhile: it comes back after redelivery_delay
    assert again.deliveries == 2
    a.reject(again, UnroutableError("no channel for 'Nobody'", again))
    assert consume_plain(kafka_bootstrap, f"{topic}.dlq", 1)[0].value() == b"nobody"
    wait_for(lambda: committed(kafka_bootstrap, topic, group)[0] == 1, what="commit past it")

    skipping = adapter(kafka_bootstrap, topic, group=f"g-{uuid.uuid4().hex[:8]}", unroutable="skip")
    adapters.append(skipping)
    (b,) = receive_n(skipping, 1)
    skipping.reject(b, UnroutableError("not ours", b))
    group2 = skipping.options.group
    wait_for(lambda: committed(kafka_bootstrap, topic, group2)[0] == 1, what="skipped")


@pytest.mark.integration
def test_release_redelivers_now_and_after_close(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = adapter(kafka_bootstrap, topic, group=group, max_deliveries=1)
    adapters.append(a)
    a.send_batch([bag(b"held")])
    (b,) = receive_n(a, 1)
    a.give_back([b], counted=False)  # not an attempt: never dead-letters, even at max_deliveries
    (again,) = receive_n(a, 1)
    assert (again.body, again.deliveries) == (b"held", 1)
    assert again is not b  # a new delivery: acks of the released one are ignored
    a.give_back([again], counted=False)
    a.close()
    adapters.remove(a)
    heir = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(heir)
    (last,) = receive_n(heir, 1)
    assert last.body == b"held"
    heir.ack([last])


@pytest.mark.integration
def test_interop_plain_producer_to_adapter(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    produce_plain(
        kafka_bootstrap,
        topic,
        [b'{"id": "go-1"}'],
        key=b"k1",
        headers=[("Category", b"Order"), ("Source", b"go-service"), ("Raw", b"\xff\x00")],
    )
    produce_plain(kafka_bootstrap, topic, [b"no headers at all"])
    a = adapter(kafka_bootstrap, topic)
    adapters.append(a)
    got = {b.body: b for b in receive_n(a, 2)}
    go = got[b'{"id": "go-1"}']
    assert (go.category, go.key, go.attributes["Source"]) == ("Order", "k1", "go-service")
    assert go.attributes["Raw"].encode("utf-8", "surrogateescape") == b"\xff\x00"
    bare = got[b"no headers at all"]
    assert (bare.category, dict(bare.attributes), bare.key) == ("", {}, None)
    a.ack(list(got.values()))


@pytest.mark.integration
def test_interop_adapter_to_plain_consumer(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    a = adapter(kafka_bootstrap, topic, key="category")
    adapters.append(a)
    sent = bag(b'{"id": "py-1"}', Source="billing")
    assert list(a.send_batch([sent])) == [None]
    (m,) = consume_plain(kafka_bootstrap, topic, 1)
    assert m.value() == b'{"id": "py-1"}'
    assert m.key() == b"Order"  # key="category"
    assert {k: v.decode() for k, v in m.headers()} == dict(sent.attributes)


@pytest.mark.integration
def test_too_large_message_is_refused_alone(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    a = adapter(kafka_bootstrap, topic)
    adapters.append(a)
    outcomes = a.send_batch([bag(b"small"), bag(b"x" * 2_000_000), bag(b"also small")])
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], MessageTooLarge)


@pytest.mark.integration
def test_rebalance_revokes_partitions_and_the_new_owner_redelivers(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    for p in range(PARTITIONS):
        produce_plain(kafka_bootstrap, topic, [f"{p}:{i}".encode() for i in range(5)], p)
    group = f"g-{uuid.uuid4().hex[:8]}"
    one = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(one)
    held = receive_n(one, 20)  # all four partitions, nothing acked
    two = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(two)
    got_one: list[Bag] = []
    got_two: list[Bag] = []

    def split() -> bool:
        # Both poll, as their poller threads would, until the group has moved partitions
        # to `two` and `two` has every message of them (`one` never acked any).
        got_two.extend(two.receive(20, 0.1))
        got_one.extend(one.receive(20, 0.05))
        parts = {b.digest.partition for b in got_two}
        return bool(parts) and len(got_two) == 5 * len(parts) and bool(recorder(one).revoked)

    wait_for(split, timeout=30, what="a rebalance moving partitions to the second member")
    moved = {b.digest.partition for b in got_two}

    def revoked(b: Bag) -> bool:
        return any(predicate(b) for predicate in recorder(one).revoked)

    assert all(revoked(b) for b in held if b.digest.partition in moved)
    # Late acks from the old owner are ignored: they commit nothing of the moved partitions.
    one.ack(held + got_one)
    for _ in range(3):
        got_one.extend(one.receive(20, 0.1))
    offsets = committed(kafka_bootstrap, topic, group)
    assert all(offsets[p] < 5 for p in moved), offsets
    two.ack(got_two)

    def all_committed() -> bool:
        for a, got in ((one, got_one), (two, got_two)):
            more = list(a.receive(20, 0.05))
            got.extend(more)
            a.ack(more + got)  # acks of stale deliveries are ignored
        return committed(kafka_bootstrap, topic, group) == [5] * PARTITIONS

    wait_for(all_committed, timeout=30, what="every partition committed")


def commit_as(bootstrap: str, topic: str, group: str, offset: int, metadata: str) -> None:
    """Commit for partition 0 of `group` as a member that is gone would have left it."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, offset, metadata)], asynchronous=False)
    finally:
        c.close()


def commit_found(bootstrap: str, topic: str, group: str, partition: int = 0) -> Metadata:
    """What the group's commit of `partition` says (decoded as a new owner reads it)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (tp,) = c.committed([TopicPartition(topic, partition)], timeout=10)
        return decode_metadata(tp.offset, tp.metadata)
    finally:
        c.close()


@pytest.mark.integration
def test_a_message_consumers_died_on_is_dead_lettered_on_arrival(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    """The commit a consumer left when it died (o=1) with a frontier past offsets 0 and 1:
    both count that death. Offset 0, with two deliveries used before, has used up
    max_deliveries=3: it goes to the dead-letter topic without reaching the kernel. Offset
    1 comes with deliveries 2, and only once the frontier past it is committed (careful
    mode), so a death now counts it again; offset 2 was never handed out: 1."""
    produce_plain(
        kafka_bootstrap, topic, [b"poison", b"next", b"third"], 0, headers=[("Category", b"O")]
    )
    group = f"g-{uuid.uuid4().hex[:8]}"
    died = encode_metadata(0, -1, [], counts={0: 2}, live=True, frontier=2)
    commit_as(kafka_bootstrap, topic, group, 0, died)
    a = adapter(kafka_bootstrap, topic, group=group, max_deliveries=3)
    adapters.append(a)
    (second,) = receive_n(a, 1)
    assert (second.body, second.deliveries) == (b"next", 2)
    found = commit_found(kafka_bootstrap, topic, group)  # at 0, or at 1 once 0 is copied
    assert (found.live, found.frontier, found.counts[1]) == (True, 2, 1)
    (third,) = receive_n(a, 1)
    assert (third.body, third.deliveries) == (b"third", 1)
    (dead,) = consume_plain(kafka_bootstrap, f"{topic}.dlq", 1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert dead.value() == b"poison"
    assert headers["Deliveries"] == "3"
    assert headers["Error"].startswith("delivered 3 times without an ack: consumers died on it")
    assert headers["OriginOffset"] == "0"
    (report,) = [e for e in recorder(a).reports if isinstance(e, DeadLettered)]
    assert report.bag is not None and report.bag.body == b"poison"
    a.ack([second, third])
    wait_for(lambda: committed(kafka_bootstrap, topic, group)[0] == 3, what="commit past all")


@pytest.mark.integration
def test_a_clean_restart_counts_nothing_and_keeps_the_failures(
    kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    """close() writes o=0: the next owner counts no death (no false suspects), and a
    failure counted in memory carries over (its released delivery was not an attempt)."""
    produce_plain(kafka_bootstrap, topic, [b"a", b"b", b"c"], 0)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(first)
    got = receive_n(first, 3)
    first.give_back([got[1]], counted=True, delay=60.0)  # failed once; its redelivery waits
    first.give_back([got[0], got[2]], counted=False)
    first.close()
    adapters.remove(first)
    found = commit_found(kafka_bootstrap, topic, group)
    assert (found.live, dict(found.counts)) == (False, {1: 1})
    heir = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(heir)
    again = sorted(receive_n(heir, 3), key=lambda b: b.digest.offset)
    assert [(b.body, b.deliveries) for b in again] == [(b"a", 1), (b"b", 2), (b"c", 1)]
    heir.ack(again)


@pytest.mark.integration
def test_a_rebalance_to_a_second_member_counts_nothing(
    kafka_cluster: Cluster, kafka_bootstrap: str, topic: str, adapters: list[KafkaAdapter]
) -> None:
    """The partitions a revoke hands over carry o=0 and the failures counted so far: the
    new owner counts no death."""
    if GROUP_PROTOCOL == "classic" and isinstance(kafka_cluster, MockCluster):
        pytest.skip(
            "the mock refuses commits while a classic group rebalances (Kafka accepts them "
            "until the rebalance completes): the revoke's o=0 commit fails there"
        )
    for p in range(PARTITIONS):
        produce_plain(kafka_bootstrap, topic, [f"{p}:{i}".encode() for i in range(3)], p)
    group = f"g-{uuid.uuid4().hex[:8]}"
    one = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(one)
    held = receive_n(one, 3 * PARTITIONS)
    one.give_back(
        [b for b in held if b.digest.offset == 1], counted=True, delay=60.0
    )  # one failure per partition
    two = adapter(kafka_bootstrap, topic, group=group)
    adapters.append(two)
    got_two: list[Bag] = []

    def moved() -> bool:
        got_two.extend(two.receive(20, 0.1))
        one.receive(20, 0.05)
        parts = {b.digest.partition for b in got_two}
        return bool(parts) and len(got_two) == 3 * len(parts)

    wait_for(moved, timeout=30, what="a rebalance moving partitions to the second member")
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for b in got_two:
        by_partition.setdefault(b.digest.partition, []).append((b.digest.offset, b.deliveries))
    assert all(sorted(v) == [(0, 1), (1, 2), (2, 1)] for v in by_partition.values()), by_partition
    two.ack(got_two)


# ------------------------------------------------------------ broker loss


@pytest.mark.integration
def test_producer_survives_losing_every_broker(
    own_cluster: MockCluster, adapters: list[KafkaAdapter]
) -> None:
    topic = new_topic(own_cluster)
    a = adapter(own_cluster.bootstrap, topic)
    adapters.append(a)
    assert list(a.send_batch([bag(b"before")])) == [None]  # connected
    for broker in own_cluster.brokers:
        own_cluster.broker_down(broker)
    batch = [bag(f"during {i}".encode()) for i in range(50)]
    sender = start(a.send_batch, batch)
    wait_for(
        lambda: any("unreachable" in str(e) for e in recorder(a).reports),
        what="the producer noticing the loss",
    )
    assert sender.is_alive()  # still waiting for the brokers, not failing
    for broker in own_cluster.brokers:
        own_cluster.broker_up(broker)
    assert list(sender.outcome(60)) == [None] * 50
    values = [m.value() for m in consume_plain(own_cluster.bootstrap, topic, 51)]
    assert sorted(values) == sorted([b"before", *(b.body for b in batch)])  # once each


@pytest.mark.integration
def test_producer_reports_every_message_it_could_not_deliver_in_time(
    own_cluster: MockCluster, adapters: list[KafkaAdapter]
) -> None:
    topic = new_topic(own_cluster)
    # A short reconnect backoff, so that the producer finds the brokers soon after they return.
    a = adapter(
        own_cluster.bootstrap,
        topic,
        send_timeout=1.5,
        producer_config={"reconnect.backoff.max.ms": 200},
    )
    adapters.append(a)
    assert list(a.send_batch([bag(b"before")])) == [None]
    producer = a._producing.producer
    for broker in own_cluster.brokers:
        own_cluster.broker_down(broker)
    began = time.monotonic()
    outcomes = a.send_batch([bag(f"lost {i}".encode()) for i in range(20)])
    assert time.monotonic() - began < 1.5 + 6
    assert all(isinstance(o, KafkaSendError) for o in outcomes), outcomes
    for broker in own_cluster.brokers:
        own_cluster.broker_up(broker)
    # The same producer carries on once it has reconnected, which may take more than
    # one send_timeout: each try is a message of its own, failed or delivered.
    tries = iter(range(100))

    def send_after() -> bytes | None:
        value = f"after {next(tries)}".encode()
        return value if list(a.send_batch([bag(value)])) == [None] else None

    after = wait_for(send_after, timeout=30, what="a send once the brokers are back")
    assert a._producing.producer is producer
    got = consume_plain(
        own_cluster.bootstrap,
        topic,
        10,
        until=lambda got: {b"before", after} <= {m.value() for m in got},
    )
    assert not [m.value() for m in got if m.value().startswith(b"lost")]


# ------------------------------------------------------------ kernel level


@pytest.fixture
def kafka_queue(kafka_cluster: Cluster, topic: str) -> Iterator[Callable[..., Queue]]:
    """Open `Queue`s on the test's topic through `connect("kafka://...")`."""
    opened: list[Queue] = []

    def make(**options: Any) -> Queue:
        url = f"kafka://{kafka_cluster.bootstrap}/{topic}"
        q = connect(url, consumer_config=group_config(), **options)
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


@pytest.mark.integration
def test_enqueue_dequeue_over_a_kafka_url(kafka_queue: Callable[..., Queue]) -> None:
    q = kafka_queue(agent="billing", key="category")
    assert isinstance(q.adapter, KafkaAdapter) and q.adapter.options.key == "category"
    sent = [Order(str(i), float(i)) for i in range(50)]
    with enqueue(Order, q) as (out, dlq):
        for o in sent:
            out.send(o)
    assert len(dlq) == 0
    with dequeue(Order, q) as (rcv, ack):
        got = [rcv.recv(timeout=30) for _ in sent]
        for m in got:
            ack.send(m)
    assert [m.object for m in got] == sent  # one category, one key, one partition: in order
    assert got[0].attributes["Source"] == "billing"
    assert got[0].attributes["System"] == "kafka"


@pytest.mark.integration
@pytest.mark.parametrize("in_flight", [50, 500])
def test_a_slow_consumer_gets_every_message_once_in_partition_order(
    kafka_queue: Callable[..., Queue], in_flight: int
) -> None:
    """Issue 13 on Kafka: the kernel holds while the application is slow; nothing is
    redelivered or counted toward max_deliveries. One key: one partition, so in order."""
    errors: Chan[Exception] = Chan(1000)
    q = kafka_queue(key="category", max_deliveries=1, in_flight=in_flight, errors=errors)
    got = slow_consume(q, 2000, work=0.0005)
    assert got == [str(i) for i in range(2000)]
    assert q.stats().redelivered == 0
    assert len(errors) == 0


@pytest.mark.integration
def test_holding_longer_than_max_poll_interval_keeps_the_partitions(
    kafka_cluster: Cluster, topic: str
) -> None:
    """The kernel holds (in-flight limit reached) while the application works on what it
    has: the consumer must still poll within max.poll.interval.ms, or the group evicts
    it, revokes its partitions and redelivers what it holds. Adapter.hold polls with
    every partition paused, so it takes nothing and keeps its place."""
    # The classic protocol: the mock cluster's KIP-848 groups do not evict a member that
    # stops polling (measured: the old adapter passed there). 6 s is the smallest
    # session a stock broker accepts, and max.poll.interval.ms may not be below it.
    config = {
        "group.protocol": "classic",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 6000,
    }
    url = f"kafka://{kafka_cluster.bootstrap}/{topic}"
    with connect(url, consumer_config=config, key="category", in_flight=4) as q:
        with enqueue(Order, q) as (out, _):
            for i in range(8):
                out.send(Order(str(i), 1.0))
        got = []
        with dequeue(Order, q, capacity=0) as (rcv, ack):
            first = [rcv.recv(timeout=30) for _ in range(4)]  # the in-flight limit
            stall = time.monotonic() + 9.0  # a slow handler: beyond max.poll.interval.ms
            while time.monotonic() < stall:
                threading.Event().wait(0.1)
            for m in first:
                ack.send(m)
            got = [m.object.id for m in first]
            for _ in range(4):
                m = rcv.recv(timeout=30)
                got.append(m.object.id)
                ack.send(m)
        stats = q.stats()
    assert got == [str(i) for i in range(8)]
    assert stats.redelivered == 0


@pytest.mark.integration
def test_failed_messages_are_redelivered_then_dead_lettered_through_the_kernel(
    kafka_cluster: Cluster, topic: str, kafka_queue: Callable[..., Queue]
) -> None:
    errors: Chan[Exception] = Chan(16)
    q = kafka_queue(max_deliveries=2, errors=errors)
    with enqueue(Order, q) as (out, _):
        out.send(Order("bad", 1.0))
        out.send(Order("good", 2.0))
    attempts = []
    with dequeue(Order, q) as (rcv, ack):
        while len(attempts) < 2:
            m = rcv.recv(timeout=30)
            if m.object.id == "good":
                ack.send(m)
            else:
                attempts.append(m)
                ack.send(m.fail(ValueError("cannot bill")))
        (dead,) = consume_plain(kafka_cluster.bootstrap, f"{topic}.dlq", 1)
    assert attempts[0].bag is not None
    assert dead.value() == attempts[0].bag.body
    headers = dict(dead.headers())
    assert headers["Deliveries"] == b"2"
    assert headers["Error"] == b"failed 2 deliveries; the last: ValueError: cannot bill"


@pytest.mark.integration
def test_ordering_holds_per_key(kafka_queue: Callable[..., Queue]) -> None:
    q = kafka_queue()
    sent = [Order(f"{c}-{i}", float(i)) for i in range(20) for c in "abcd"]
    with enqueue(Order, q, key=lambda o: o.id.split("-")[0]) as (out, _):
        for o in sent:
            out.send(o)
    with dequeue(Order, q) as (rcv, ack):
        got = [rcv.recv(timeout=30) for _ in sent]
        for m in got:
            ack.send(m)
    for c in "abcd":
        mine = [m.object.id for m in got if m.object.id.startswith(c)]
        assert mine == [f"{c}-{i}" for i in range(20)]
    assert {m.bag.digest.partition for m in got if m.bag} != {got[0].bag.digest.partition}


class TestKafkaConformance(Peers, Conformance):
    """The shared adapter suite against the mock cluster (per-category order needs key=category)."""

    pytestmark = pytest.mark.integration
    patience = 30.0
    features = frozenset(FEATURES) - {"extend"}  # a partition is its member's: no timeout
    peer_max_deliveries = 5  # the adapter's default max_deliveries
    # A partition that moves to another member of the group is read again from its
    # committed offset: what was delivered and not yet acked arrives as a first delivery.
    peer_rebalances = True

    def dead_lettered(self, name: str) -> int:
        return topic_size(self.bootstrap, f"{name}.dlq")

    @pytest.fixture
    def missing_adapter_factory(self, kafka_cluster: Cluster) -> Callable[[str], Adapter]:
        def make(name: str) -> Adapter:
            return KafkaAdapter(
                name, bootstrap=kafka_cluster.bootstrap, consumer_config=group_config()
            )

        return make

    @pytest.fixture
    def adapter_factory(self, kafka_cluster: Cluster) -> Callable[[str], Adapter]:
        created: set[str] = set()
        self.bootstrap = kafka_cluster.bootstrap

        def make(name: str) -> Adapter:
            if name not in created:
                kafka_cluster.create_topic(name)
                kafka_cluster.create_topic(f"{name}.dlq")
                created.add(name)
            return KafkaAdapter(
                name,
                bootstrap=kafka_cluster.bootstrap,
                key="category",
                consumer_config=group_config(),
            )

        return make


@pytest.mark.integration
def test_serve_retries_with_a_delay_then_gives_up_to_the_dead_letter_topic(
    kafka_cluster: Cluster, topic: str, kafka_queue: Callable[..., Queue]
) -> None:
    """Issue 14: a failing handler's message is redelivered after the policy's delay
    (Kafka: from the adapter's memory, the offset uncommitted), and a give_up_on error
    copies it to <topic>.dlq at once."""
    calls, handle = outage_then_invalid()
    stop = threading.Event()

    q = kafka_queue(max_deliveries=5)
    with enqueue(Order, q) as (out, _):
        out.send(Order("x", 1.0))
    retries = Retries(delay=0.5, jitter=False, give_up_on=ValueError)
    worker = start(
        serve,
        handle,
        Order,
        q,
        workers=1,
        stop=stop,
        signals=(),
        retries=retries,
        close_queue=False,
    )
    (dead,) = consume_plain(kafka_cluster.bootstrap, f"{topic}.dlq", 1)
    stop.set()
    worker.outcome(30)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.45
    assert json.loads(dead.value())["id"] == "x"
    assert dict(dead.headers())["Error"].startswith(b"given up after 2 deliveries: ValueError")
