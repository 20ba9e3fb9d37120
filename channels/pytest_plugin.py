"""qchan's pytest plugin, for testing your own handlers (loaded by installing qchan).

Fixtures: `qchan_queue`, a fresh `mem://` queue per test, and `qchan_queue_factory`
for more of them or other options. Helpers, importable as plain functions too::

    from qchan.pytest_plugin import dead_letters, drain, enqueue_all, run_until_settled

`enqueue_all` sends and returns what ended on `dlq`; `drain` receives what a
test enqueued; `run_until_settled` runs a `serve` handler until every message
is acked or dead-lettered (dramatiq's `broker.join` plus `worker.join`);
`dead_letters` decodes what the broker dead-lettered. Only this module imports
pytest: `import qchan` never does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import attrs
import pytest

from .adapters.embedded import Broker, EmbeddedAdapter
from .codec import category_for, codec_for
from .endpoints import dequeue, enqueue
from .kernel.queue import Queue, connect
from .message import Bag, Msg
from .options import OptionError, check_count, check_seconds
from .retry import Retries
from .worker import _DEFAULT, _retries, serve

__all__ = [
    "Settled",
    "dead_bags",
    "dead_letters",
    "drain",
    "enqueue_all",
    "qchan_queue",
    "qchan_queue_factory",
    "run_until_settled",
]

T = TypeVar("T")


class _Unset:
    """The type of `_UNSET`: an argument not given (None means something)."""


_UNSET = _Unset()

# How often run_until_settled looks at the broker: it has no event to wait on.
_POLL = 0.005


@attrs.frozen
class Settled(Generic[T]):
    """What `run_until_settled` saw: handler calls that returned (acked) and raised
    (each failed delivery counts), the exceptions raised in order, and the `T` objects
    dead-lettered during the run."""

    handled: int
    failed: int
    errors: list[Exception]
    dead_letters: list[T]
    seconds: float


def _broker(q: Queue, call: str) -> Broker:
    adapter = q.adapter
    if not isinstance(adapter, EmbeddedAdapter):
        raise OptionError(
            f"{call} needs a mem:// queue (it watches the in-process broker), not {q!r}"
        )
    return adapter.broker


def enqueue_all(
    q: Queue, objects: Iterable[T], *, type_: type[T] | None = None, category: str | None = None
) -> list[Msg[T]]:
    """Send `objects` to `q` and wait until each is on the broker; return those that ended
    on `dlq` (empty when all were delivered), each with its `error`.

    `type_` defaults to the type of the first object.
    """
    items = list(objects)
    if not items:
        return []
    kind: type[T] = type_ if type_ is not None else type(items[0])
    sender = enqueue(kind, q, category=category)
    failed: list[Msg[T]] = []
    try:
        for obj in items:
            sender.out.send(obj)
    finally:
        failed = sender.close()  # returns what ended on dlq instead of raising
    return failed


def drain(
    q: Queue, type_: type[T], n: int, timeout: float = 5.0, *, category: str | None = None
) -> list[T]:
    """Receive and ack `n` `type_` messages from `q`, in the order received; fail the test
    (AssertionError) if fewer arrive within `timeout` seconds.

    Messages beyond the `n`th stay on the queue.
    """
    check_count("n", n, where="drain")
    check_seconds("timeout", timeout, where="drain")
    got: list[T] = []
    deadline = time.monotonic() + timeout
    with dequeue(type_, q, category=category, capacity=n) as (rcv, ack):
        while len(got) < n:
            try:
                msg = rcv.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(
                    f"drain: {len(got)} of {n} {category or category_for(type_)!r} message(s) "
                    f"arrived on {q.url} within {timeout} s: {got!r}"
                ) from None
            got.append(msg.object)
            ack.send(msg)
    return got


def dead_letters(q: Queue, type_: type[T], *, category: str | None = None) -> list[T]:
    """The `type_` messages (of its category) that `q`'s in-process broker dead-lettered,
    decoded, oldest first.

    A body that does not decode raises `qchan.DecodeError`. `dead_bags(q)` has them all raw.
    """
    wanted = category if category is not None else category_for(type_)
    codec = codec_for(type_)
    return [codec.decode(b.body) for b in dead_bags(q) if b.category == wanted]


def dead_bags(q: Queue) -> list[Bag]:
    """Every message `q`'s in-process broker dead-lettered, as received (any category)."""
    return list(_broker(q, "dead_bags").dead_letters)


def run_until_settled(
    handler: Callable[[T], object] | Callable[[Msg[T]], object],
    type_: type[T],
    q: Queue,
    *,
    timeout: float = 10.0,
    workers: int = 1,
    retry_delay: float | None = 0.0,
    retries: Retries | None = None,
    max_deliveries: int | _Unset | None = _UNSET,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    category: str | None = None,
    with_msg: bool = False,
) -> Settled[T]:
    """Run `handler` under `qchan.serve` on `q` (a mem:// queue) until every message is
    settled: none waiting, none in flight or waiting for a retry, none held by the kernel.

    Send first and wait for the sends (`enqueue_all`, `enqueue_sync`, or leave the
    `with enqueue(...)` block): a message still in the emitter is not on the broker yet.
    `retries` or the shorthands `max_deliveries`, `retry_on`, `give_up_on` are serve's
    policy; `retry_delay` replaces its delays between deliveries (default 0: a failed
    message is retried at once, so a test does not wait minutes of backoff; None keeps
    the policy's own). Fails the test (AssertionError) if the queue has not settled
    within `timeout` seconds, after stopping the handler. The queue stays open.
    """
    check_seconds("timeout", timeout, where="run_until_settled")
    check_seconds("retry_delay", retry_delay, optional=True, where="run_until_settled")
    policy = _policy(retries, max_deliveries, retry_on, give_up_on, retry_delay)
    broker = _broker(q, "run_until_settled")
    dead_before = len(broker.dead_letters)
    errors: list[Exception] = []
    errors_lock = threading.Lock()

    def recording(arg: Any) -> object:
        try:
            return handler(arg)
        except Exception as e:
            with errors_lock:
                errors.append(e)
            raise

    stop = threading.Event()
    timed_out = threading.Event()
    watcher = threading.Thread(
        target=_watch,
        args=(q, broker, stop, timed_out, time.monotonic() + timeout),
        name=f"qchan-settle-{q.name}",
        daemon=True,
    )
    watcher.start()
    try:
        served = serve(
            recording,
            type_,
            q,
            workers=workers,
            category=category,
            with_msg=with_msg,
            stop=stop,
            signals=(),
            close_queue=False,
            retries=policy,
        )
    finally:
        stop.set()
        watcher.join()
    if timed_out.is_set():
        stats = q.stats()
        raise AssertionError(
            f"run_until_settled: {q.url} not settled within {timeout} s: {broker.depth} "
            f"message(s) waiting, {broker.in_flight} in flight or waiting for a retry, "
            f"{stats.in_flight} held by the kernel; handled {served.handled}, failed "
            f"{served.failed} (a category no handler takes never settles; a slow retry "
            f"policy needs retry_delay=0)"
        )
    codec = codec_for(type_)
    wanted = category if category is not None else category_for(type_)
    dead = [codec.decode(b.body) for b in broker.dead_letters[dead_before:] if b.category == wanted]
    return Settled(served.handled, served.failed, errors, dead, served.seconds)


def _policy(
    retries: Retries | None,
    max_deliveries: int | _Unset | None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None,
    give_up_on: type[BaseException] | tuple[type[BaseException], ...] | None,
    retry_delay: float | None,
) -> Retries:
    deliveries = _DEFAULT if isinstance(max_deliveries, _Unset) else max_deliveries
    policy = _retries(retries, deliveries, retry_on, give_up_on, where="run_until_settled")
    if retry_delay is None:
        return policy
    return attrs.evolve(policy, delay=retry_delay, max_delay=retry_delay, jitter=False)


def _watch(
    q: Queue, broker: Broker, stop: threading.Event, timed_out: threading.Event, deadline: float
) -> None:
    """Set `stop` once the queue is settled, or `timed_out` and `stop` at the deadline."""
    while not stop.wait(_POLL):
        if broker.pending == 0 and q.stats().in_flight == 0:
            break
        if time.monotonic() > deadline:
            timed_out.set()
            break
    stop.set()


@pytest.fixture
def qchan_queue_factory() -> Iterator[Callable[..., Queue]]:
    """Make fresh `mem://` queues: `qchan_queue_factory(**connect_options)`; each closed and
    emptied after the test."""
    made: list[Queue] = []

    def make(**options: Any) -> Queue:
        q = connect(f"mem://qchan-test-{uuid.uuid4().hex[:12]}", **options)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()
        _broker(q, "qchan_queue_factory").purge()


@pytest.fixture
def qchan_queue(qchan_queue_factory: Callable[..., Queue]) -> Queue:
    """A fresh `mem://` queue of its own for this test, closed and emptied after it."""
    return qchan_queue_factory()
