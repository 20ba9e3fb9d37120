"""The peer suite: what a Go Pub/Sub library's conformance suite checks, on qchan's model.

The behaviours are those of watermill's Pub/Sub test suite (ThreeDotsLabs/watermill,
`pubsub/tests/test_pubsub.go`), written anew for qchan: a topic is a queue URL, a
subscriber a `Queue` of its own (its own connection) with a `dequeue` on it, an Ack
`ack.send(msg)`, a Nack `ack.send(msg.fail(err))`, and closing a subscriber means leaving
`with dequeue(...)` and closing its `Queue`. Consumers of one queue compete for its
messages (a queue, not a fan-out topic), so "every subscriber receives every message"
becomes "the consumers between them receive every message".

Mix it into an adapter's conformance class, whose fixtures (`open_queue`,
`adapter_factory`, `queue_name`) and class attributes (`ordered`, `patience`, `quiet`,
`features`) it uses::

    class TestMyBroker(Peers, Conformance):
        peer_max_deliveries = 10         # the adapter's dead-letter threshold

        def dead_lettered(self, name: str) -> int:
            return my_dead_letter_queue_depth(name)

Class attributes scale it (`peer_messages`, `peer_consumers`, `peer_close_messages`,
`peer_batches`, `peer_restarts`, `peer_restart_take`, `peer_nacking_consumers`,
`peer_keys`) and describe the broker: `peer_max_deliveries` (deliveries before the
broker or the adapter dead-letters a message; the suite never legitimately reaches it)
and `peer_rebalances` (True where a consumer group hands a partition's un-committed
messages to another member as first deliveries: Kafka). A message received twice must
otherwise say it was redelivered (`bag.deliveries > 1`), where the adapter counts
deliveries (feature `delivery_count`).

`dead_lettered(name)` returns how many messages the broker holds as dead letters of
queue `name`; the default, 0, is for adapters without dead letters. Overriding it lets
the suite check that closing consumers never dead-letters anything.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import attrs
import pytest

from ..chan import Chan, RecvChan, SendChan
from ..endpoints import AT_MOST_ONCE, dequeue, enqueue
from ..errors import ChannelClosed
from ..kernel.queue import Queue
from ..message import Msg
from ..select import select

__all__ = ["Parcel", "Peers"]

OpenQueue = Callable[..., Queue]


@attrs.frozen
class Parcel:
    """What the peer suite sends: a unique id, a number, and metadata of its own (the
    attributes a watermill message carries per message travel in the object here)."""

    id: str
    n: int
    meta: dict[str, str] = attrs.Factory(dict)


def _parcels(count: int, tag: str = "") -> list[Parcel]:
    return [Parcel(f"{tag}{uuid.uuid4().hex}", i, {"test": uuid.uuid4().hex}) for i in range(count)]


class _Thread(threading.Thread):
    """A thread that keeps its target's exception for the test to raise."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            self.error = e


def _run_all(targets: Iterable[Callable[[], object]], timeout: float, what: str) -> None:
    """Run each target in a thread of its own at once; join them within `timeout` s and
    raise the first error one of them raised."""
    threads = [_Thread(t, f"peer-{what}-{i}") for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"{what}: {alive} still running after {timeout} s"
    for t in threads:
        if t.error is not None:
            raise t.error


def _send(q: Queue, parcels: Sequence[Parcel]) -> None:
    """Send `parcels` through `q` and return once the broker has every one (leaving
    `enqueue` raises EnqueueError for any it could not deliver)."""
    with enqueue(Parcel, q) as (out, _):
        for p in parcels:
            out.send(p)


def _publish(open_queue: OpenQueue, parcels: Sequence[Parcel]) -> None:
    """`_send` through a queue of its own, closed after."""
    publisher = open_queue()
    _send(publisher, parcels)
    publisher.close()


def _turn(
    open_queue: OpenQueue,
    *,
    new: int,
    seen: set[str],
    log: list[Msg[Parcel]],
    timeout: float,
    everything: int | None = None,
) -> int:
    """One consumer's turn: a queue of its own and one `dequeue` that runs `_consume`,
    the queue closed after; returns how many were new."""
    consumer = open_queue()
    with dequeue(Parcel, consumer) as (rcv, ack):
        got = _consume(
            rcv, ack, new=new, seen=seen, log=log, timeout=timeout, everything=everything
        )
    consumer.close()
    return got


def _consume(
    rcv: RecvChan[Msg[Parcel]],
    ack: SendChan[Msg[Parcel]],
    *,
    new: int,
    seen: set[str],
    log: list[Msg[Parcel]],
    timeout: float,
    everything: int | None = None,
) -> int:
    """Receive and ack until `new` messages not in `seen` arrived (added to it), `seen`
    holds `everything` ids, or nothing arrived for `timeout` s. Every message received,
    duplicates included, goes to `log`; returns how many were new."""
    added = 0
    while added < new and (everything is None or len(seen) < everything):
        try:
            m = rcv.recv(timeout=timeout)
        except TimeoutError:
            break
        ack.send(m)
        log.append(m)
        if m.object.id not in seen:
            seen.add(m.object.id)
            added += 1
    return added


class Peers:
    """The peer suite, a mixin for a `qchan.testing.Conformance` subclass (module docstring)."""

    # Given by Conformance (declared here for the type checker only).
    ordered: ClassVar[bool]
    patience: ClassVar[float]
    quiet: ClassVar[float]
    features: ClassVar[frozenset[str]]

    #: Messages of the publish/subscribe, concurrent, resend and publisher-close tests.
    peer_messages: ClassVar[int] = 100
    #: Consumers (each a Queue with its own connection) sharing one queue.
    peer_consumers: ClassVar[int] = 10
    #: Messages of the continue-after-close and restart tests.
    peer_close_messages: ClassVar[int] = 300
    #: Continue-after-close: batches of peer_close_messages / peer_batches per consumer.
    peer_batches: ClassVar[int] = 5
    #: Restarts: consumers in turn, each acking peer_restart_take messages.
    peer_restarts: ClassVar[int] = 15
    peer_restart_take: ClassVar[int] = 5
    #: Continue-after-errors: consumers that only nack, then close.
    peer_nacking_consumers: ClassVar[int] = 3
    #: Ordered test: interleaved categories (Kafka keys).
    peer_keys: ClassVar[int] = 16
    #: The deliveries after which the broker or the adapter dead-letters a message.
    peer_max_deliveries: ClassVar[int] = 10
    #: A consumer group may hand another member un-committed messages as first deliveries.
    peer_rebalances: ClassVar[bool] = False

    def dead_lettered(self, name: str) -> int:
        """How many messages the broker holds as dead letters of queue `name` (override it
        where the adapter has a dead-letter queue; 0 where it has none)."""
        return 0

    # -- helpers -------------------------------------------------------------------

    def _unexplained_duplicates(self, log: Sequence[Msg[Parcel]]) -> dict[str, list[int]]:
        """Ids received more than once where the copies do not show a redelivery: at most
        one copy may be a first delivery (`deliveries == 1`). Empty where the adapter does
        not count deliveries or a rebalance may hand a message out again as new."""
        if self.peer_rebalances or "delivery_count" not in self.features:
            return {}
        copies: dict[str, list[int]] = {}
        for m in log:
            copies.setdefault(m.object.id, []).append(m.bag.deliveries if m.bag else 1)
        return {i: d for i, d in copies.items() if len(d) > 1 and d.count(1) > 1}

    def _check_payloads(self, sent: Sequence[Parcel], log: Sequence[Msg[Parcel]]) -> None:
        by_id = {p.id: p for p in sent}
        changed = [m.object for m in log if by_id.get(m.object.id) != m.object]
        assert not changed, f"{len(changed)} message(s) differ from what was sent: {changed[:3]}"

    def _report(
        self, sent: Sequence[Parcel], seen: set[str], log: Sequence[Msg[Parcel]], name: str
    ) -> str:
        missing = len({p.id for p in sent} - seen)
        return (
            f"received {len(seen)} of {len(sent)} distinct messages, {missing} missing, "
            f"{len(log) - len(seen)} duplicate deliveries, {self.dead_lettered(name)} "
            f"dead-lettered"
        )

    def _only_redeliveries_repeat(self, log: Sequence[Msg[Parcel]]) -> None:
        dups = self._unexplained_duplicates(log)
        assert not dups, f"received again without a redelivery (deliveries per copy): {dups}"

    # -- the tests -----------------------------------------------------------------

    def test_peer_publish_subscribe(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Every message published arrives, with its payload and its own metadata; leaving
        the consumer closes its channel.
        (watermill: TestPublishSubscribe)
        """
        sent = _parcels(self.peer_messages)
        _publish(open_queue, sent)
        consumer = open_queue()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        with dequeue(Parcel, consumer) as (rcv, ack):
            _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
        consumer.close()
        assert seen == {p.id for p in sent}, self._report(sent, seen, log, queue_name)
        self._check_payloads(sent, log)
        assert all(m.category == "Parcel" for m in log)
        assert rcv.closed, "the receive channel is still open after leaving dequeue"
        with pytest.raises(ChannelClosed):
            rcv.recv(timeout=0)
        self._only_redeliveries_repeat(log)

    def test_peer_concurrent_subscribe(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Consumers on separate connections share the queue's messages: between them
        they receive every one, a message received twice only as a redelivery.
        (watermill: TestConcurrentSubscribe)
        """
        sent = _parcels(self.peer_messages)
        want = {p.id for p in sent}
        _publish(open_queue, sent)
        consumers = [open_queue() for _ in range(self.peer_consumers)]
        lock = threading.Lock()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        done: Chan[None] = Chan(0, name="peer-done")
        deadline = time.monotonic() + 2 * self.patience

        def consume(q: Queue) -> None:
            with dequeue(Parcel, q) as (rcv, ack):
                while (left := deadline - time.monotonic()) > 0:
                    got = select(rcv, done, timeout=left)
                    if got is None or got.index == 1 or not got.ok:
                        break
                    m: Msg[Parcel] = got.value
                    ack.send(m)
                    with lock:
                        log.append(m)
                        seen.add(m.object.id)
                        if seen >= want:
                            done.close()
            q.close()

        _run_all(
            [functools.partial(consume, q) for q in consumers], 2 * self.patience + 30.0, "consumer"
        )
        assert seen == want, self._report(sent, seen, log, queue_name)
        self._only_redeliveries_repeat(log)

    def test_peer_resend_on_error(self, open_queue: OpenQueue, queue_name: str) -> None:
        """The first two messages received are nacked; every message still arrives.
        (watermill: TestResendOnError)
        """
        sent = _parcels(self.peer_messages)
        _publish(open_queue, sent)
        consumer = open_queue()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        nacked: list[str] = []
        with dequeue(Parcel, consumer) as (rcv, ack):
            for _ in range(2):
                m = rcv.recv(timeout=self.patience)
                nacked.append(m.object.id)
                ack.send(m.fail(RuntimeError("peer suite: nack")))
            _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
        consumer.close()
        assert seen == {p.id for p in sent}, self._report(sent, seen, log, queue_name)
        assert set(nacked) <= seen, "a nacked message never came back"
        self._check_payloads(sent, log)

    def test_peer_continue_after_subscribe_close(
        self, open_queue: OpenQueue, queue_name: str
    ) -> None:
        """Consumers in turn each ack one batch and close: between them they ack every
        message, and closing a consumer dead-letters nothing.
        (watermill: TestContinueAfterSubscribeClose)
        """
        total, batches = self.peer_close_messages, self.peer_batches
        batch = total // batches
        sent = _parcels(total)
        _publish(open_queue, sent)
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        per_consumer: list[int] = []
        for _ in range(batches * 4):
            got = _turn(
                open_queue, new=batch, seen=seen, log=log, timeout=self.patience, everything=total
            )
            per_consumer.append(got)
            if len(seen) >= total or got < batch:
                break  # done, or nothing more came in `patience`: another would wait in vain
        dead = self.dead_lettered(queue_name)
        assert (len(seen), dead) == (total, 0), (
            f"{self._report(sent, seen, log, queue_name)}; new messages per consumer "
            f"(batches of {batch}): {per_consumer}"
        )
        self._only_redeliveries_repeat(log)

    def test_peer_restarts_lose_nothing(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Consumers in turn each ack a few messages and close; the rest stay on the queue
        for the next consumer, none dead-lettered, however many consumers came and went."""
        total, take, restarts = (
            self.peer_close_messages,
            self.peer_restart_take,
            self.peer_restarts,
        )
        sent = _parcels(total)
        _publish(open_queue, sent)
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        per_consumer: list[int] = []
        for _ in range(restarts):
            per_consumer.append(
                _turn(open_queue, new=take, seen=seen, log=log, timeout=self.patience)
            )
            if per_consumer[-1] < take:
                break  # nothing more came in `patience`: the rest is gone (no need to wait more)
        taken = len(seen)
        final: int | None = None  # the final consumer runs only if every one before had more
        if per_consumer[-1] == take:
            final = _turn(
                open_queue, new=total, seen=seen, log=log, timeout=self.patience, everything=total
            )
        dead = self.dead_lettered(queue_name)
        ended = (
            f"the final consumer received {final} of the {total - taken} left"
            if final is not None
            else f"consumer {len(per_consumer)} found nothing more in {self.patience} s"
        )
        assert (per_consumer, final, dead) == ([take] * restarts, total - take * restarts, 0), (
            f"consumers in turn acked {per_consumer} (total {taken}); {ended}; "
            f"{self._report(sent, seen, log, queue_name)}"
        )
        self._only_redeliveries_repeat(log)

    def test_peer_concurrent_close(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Ten consumers opened and closed at once from threads disturb nothing: messages
        sent afterwards all reach a fresh consumer.
        (watermill: TestConcurrentClose)
        """
        open_queue().close()  # the queue (topic) exists before the threads race for it

        def open_and_close() -> None:
            q = open_queue()
            with dequeue(Parcel, q):
                pass
            q.close()

        _run_all([open_and_close] * 10, self.patience + 30.0, "open-and-close")
        sent = _parcels(self.peer_messages // 2)
        _publish(open_queue, sent)
        consumer = open_queue()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        with dequeue(Parcel, consumer) as (rcv, ack):
            _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
        consumer.close()
        assert seen == {p.id for p in sent}, self._report(sent, seen, log, queue_name)

    def test_peer_continue_after_errors(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Consumers that only nack, then close, lose nothing: a fresh consumer receives
        every message, none dead-lettered. Fewer nacks than `peer_max_deliveries` in all,
        so even one message nacked every time could not legitimately be dead-lettered.
        (watermill: TestContinueAfterErrors)
        """
        consumers = self.peer_nacking_consumers
        nacks = max(1, (self.peer_max_deliveries - 1) // consumers)
        assert consumers * nacks < self.peer_max_deliveries, "scale the class attributes"
        sent = _parcels(self.peer_messages // 2)
        _publish(open_queue, sent)
        for i in range(consumers):
            nacker = open_queue()
            with dequeue(Parcel, nacker) as (rcv, ack):
                for j in range(nacks):
                    try:
                        m = rcv.recv(timeout=self.patience)
                    except TimeoutError:
                        raise AssertionError(
                            f"nacking consumer {i}: no message for its nack {j} in "
                            f"{self.patience} s"
                        ) from None
                    ack.send(m.fail(RuntimeError("peer suite: nack")))
            nacker.close()
        consumer = open_queue()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        with dequeue(Parcel, consumer) as (rcv, ack):
            _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
        consumer.close()
        dead = self.dead_lettered(queue_name)
        assert (len(seen), dead) == (len(sent), 0), (
            f"after {consumers} consumers nacked {nacks} each: "
            f"{self._report(sent, seen, log, queue_name)}"
        )

    def test_peer_publish_subscribe_in_order(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Messages of `peer_keys` categories, sent interleaved, reach one consumer in the
        order sent within each category (Kafka: key=category, one partition per key).
        (watermill: TestPublishSubscribeInOrder)
        """
        if not self.ordered:
            pytest.skip("this broker does not keep order")
        keys = [f"key-{k}" for k in range(self.peer_keys)]
        sent = _parcels(self.peer_messages)
        publisher = open_queue()
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(enqueue(Parcel, publisher, category=k)).out for k in keys]
            for i, p in enumerate(sent):
                outs[i % len(keys)].send(p)
        publisher.close()
        consumer = open_queue()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        with dequeue(Parcel, consumer, category="*") as (rcv, ack):
            _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
        consumer.close()
        assert seen == {p.id for p in sent}, self._report(sent, seen, log, queue_name)
        expected = {k: [p.id for i, p in enumerate(sent) if keys[i % len(keys)] == k] for k in keys}
        received: dict[str, list[str]] = {k: [] for k in keys}
        for m in log:
            ids = received[m.category]
            if m.object.id not in ids:  # the first copy's place counts
                ids.append(m.object.id)
        wrong = [k for k in keys if received[k] != expected[k]]
        assert not wrong, f"order broken within {wrong}"

    def test_peer_publisher_close(self, open_queue: OpenQueue, queue_name: str) -> None:
        """Ten threads send through one buffered channel; closing the sending Queue
        delivers everything they sent.
        (watermill: TestPublisherClose)
        """
        sent = _parcels(self.peer_messages)
        publisher = open_queue()
        out, _ = enqueue(Parcel, publisher, policy=AT_MOST_ONCE, capacity=len(sent))
        shares = [sent[i::10] for i in range(10)]

        def send(share: list[Parcel]) -> None:
            for p in share:
                out.send(p)

        _run_all([functools.partial(send, s) for s in shares], self.patience, "publisher")
        publisher.close()  # everything buffered is sent before close returns
        consumer = open_queue()
        seen: set[str] = set()
        log: list[Msg[Parcel]] = []
        with dequeue(Parcel, consumer) as (rcv, ack):
            _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
        consumer.close()
        assert seen == {p.id for p in sent}, self._report(sent, seen, log, queue_name)
        self._check_payloads(sent, log)

    def test_peer_new_subscriber_receives_old_messages(
        self, open_queue: OpenQueue, queue_name: str
    ) -> None:
        """Messages sent while no consumer exists (the first before any consumer ever did)
        reach the next consumer, round after round.
        (watermill: TestNewSubscriberReceivesOldMessages)
        """
        for round_ in range(3):
            sent = _parcels(5, tag=f"round-{round_}-")
            _publish(open_queue, sent)
            consumer = open_queue()
            seen: set[str] = set()
            log: list[Msg[Parcel]] = []
            with dequeue(Parcel, consumer) as (rcv, ack):
                _consume(rcv, ack, new=len(sent), seen=seen, log=log, timeout=self.patience)
            consumer.close()
            assert seen == {p.id for p in sent}, (
                f"round {round_}: {self._report(sent, seen, log, queue_name)}"
            )
