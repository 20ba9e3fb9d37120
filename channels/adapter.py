"""The adapter contract: what a transport implements (bring your own broker).

An adapter talks to one broker about one queue and nothing else. It starts no
threads and owns no channels, batching policy, retries, routing or
acknowledgement bookkeeping: the kernel (`qchan.Queue`) does all of that and
calls the adapter from its worker threads. The contract has three sides; a
transport declares which it has by the classes it subclasses:

| side | class | required | optional |
|---|---|---|---|
| send (all) | `Adapter` | `send_batch` | `submit`, `pipeline`, `bind`, `close` |
| receive | `ReceivingAdapter` | `receive`, `ack`, `give_back` | see below |
| operate | `Operations` (mixin) | `depth`, `purge` | |

`ReceivingAdapter` is an `Adapter` (every transport sends); its optional methods
are `dead_letter`, `reject`, `extend` and `visibility` (settling), and `hold`,
`idle` and `wakeup` (flow control).

A send-only transport (SNS, EventBridge: the broker delivers elsewhere)
subclasses `Adapter` alone: `dequeue` on its queue raises `SendOnlyError` at the
call, and no consumer thread starts. The operator's side is for `qchan stats` and
`qchan purge`, not for the kernel: called on an adapter no queue's threads use,
from one thread; the commands refuse a transport without it (`NotSupported`).

Threads:

| method | called from | may run at the same time as |
|---|---|---|
| `send_batch`, `submit` | the emitter thread | the receive side |
| `receive`, `hold`, `idle` | the consumer thread (*) | `send_batch`, `submit` |
| `ack`, `give_back`, `dead_letter`, `reject`, `extend` | the consumer thread | the send side |

(*) `receive` on a helper thread if the adapter does not declare `wakes`: it may
then run at the same time as the settling calls.
| `wakeup` | any thread | anything |
| `close` | the thread closing the queue, after the workers stopped | nothing |

So an adapter whose client is not thread-safe (pika) keeps one connection per
calling thread, or hands work to the thread that owns the connection (for
pika, `add_callback_threadsafe`).

Sending: `send_batch` reports one outcome per bag (None for accepted). Raise
`qchan.RejectedError` (or `MessageTooLarge`) for a bag the broker will never
accept: the kernel dead-letters it without retrying. Any other exception is
retried with the queue's backoff policy. An exception raised by the method
itself (connection refused) counts as a failure of every bag in the call. The
kernel fills every field of a sent `Bag` but `digest` and `deliveries`; `id` is
stable across retries (use it for the broker's de-duplication where it has one).

Receiving: `receive` returns `Bag`s with every field the broker knows, and two
that are the adapter's own: `digest`, whatever the adapter needs later to
settle this delivery (a receipt handle, a delivery tag; the kernel never looks
inside it), and `deliveries`, how many times this message has been delivered to
the application, this time included (1 the first time; see Counting). The
kernel settles each received bag exactly once: `ack`, `give_back` or
`dead_letter` (`reject` for one it could not decode or route); an adapter must
still survive a settlement the broker no longer accepts (a receipt that expired,
a partition that moved) by reporting it (`hooks.report`), never by raising.
`receive` may raise: the kernel reports the error, backs off and polls again.

Flow control: the consumer thread tells the adapter which of three states the
queue is in, by which method it calls, and never by `wakeup` alone:

- demand (a channel is open, the consumers can use more, fewer than
  `hooks.in_flight` messages are out): `receive`, which takes up to
  `max_items`: what the consumers can use now (the receivers waiting plus the
  free buffer, DESIGN.md section 9). An adapter whose broker pushes ahead
  (RabbitMQ's `basic.qos`) takes no more ahead than that, so that several
  consumers of a queue share a waiting backlog and a consumer that closes has
  little to give back;
- hold (no demand: the application is slower than the broker; or the in-flight
  limit is reached): `hold`, which keeps what the adapter has taken or
  prefetched, takes nothing new, and neither gives back, requeues nor
  dead-letters anything. The application has not refused those messages, and
  a message it has not received is never a delivery attempt;
- nobody listens (no channel open: before the first `dequeue`, after the
  last one closed): `idle`, which may give back what was prefetched, so that
  other consumers get it.

`wakeup` only interrupts a `receive`, `hold` or `idle` in progress so the
kernel can look at the state again (a channel opened or closed, acks came in,
a receiver took a message, the queue is closing); it says nothing about
which state comes next. Declare `wakes = True` if it does cut a call short,
and is sticky: the kernel then makes every receive-side call on its one
consumer thread and settles between them. Without it, the kernel runs
`receive` on a helper thread, so that acks and a closing `dequeue` never
wait for a long poll.

Counting: `Bag.deliveries` counts deliveries to the application. A failure
(`give_back(..., counted=True)`) is one; a release (`counted=False`: a consumer
closing with messages it never handed out, a `qchan peek`) is not, nor is what
`idle` gives back: an adapter whose broker counts every return (SQS's receive
count, a quorum queue's `x-delivery-count` before RabbitMQ 4.3) gives such
messages back as copies that carry the count. Where the broker has a visibility
timeout, the adapter says so (`visibility`) and the kernel keeps what it holds
invisible with `extend`.

Pipelining (optional): an adapter whose client sends asynchronously (Kafka)
sets `pipeline` above 1 and overrides `submit`, which starts sending a batch
and returns a `Sending` at once; the emitter then gathers and submits the
next batches while earlier ones are on the wire, up to `pipeline` of them,
and collects their outcomes in order. Outcomes mean what they mean for
`send_batch`; the kernel retries failures with `send_batch`.

URLs: `qchan.register_scheme("mybroker", factory)` lets `connect("mybroker://...")`
call `factory(url, **options)`, which returns the adapter. `qchan.testing.Conformance`
is the suite that says whether an adapter keeps the contract (its docstring says how to
run it against a new adapter).

The smallest two-way adapter, an in-process list (`qchan.adapters.embedded` is the
complete one, with visibility timeouts; tests/core/test_adapter_example.py runs this one):

    class ListAdapter(qchan.ReceivingAdapter):
        scheme = "list"

        def __init__(self, name):
            super().__init__(name)
            self.items, self.ready = collections.deque(), threading.Condition()

        def send_batch(self, bags):
            with self.ready:
                self.items.extend(bags)
                self.ready.notify_all()
            return [None] * len(bags)

        def receive(self, max_items, wait):
            with self.ready:  # a long poll: wait up to `wait` s for a first item
                self.ready.wait_for(lambda: self.items, wait)
                n = min(max_items, len(self.items))
                got = [self.items.popleft() for _ in range(n)]
            return [attrs.evolve(b, digest=b) for b in got]

        def ack(self, bags):
            pass  # received means removed here

        def give_back(self, bags, *, counted, delay=0.0, errors=()):
            # (a real one keeps them invisible for `delay` s first)
            self.send_batch(
                [attrs.evolve(b, deliveries=b.deliveries + counted) for b in bags]
            )
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from typing import TypeAlias

import attrs

from .errors import MessageError
from .message import Bag

__all__ = [
    "Adapter",
    "Bags",
    "Depth",
    "Errors",
    "Hooks",
    "Operations",
    "ReceivingAdapter",
    "Sending",
]

log = logging.getLogger("qchan.adapter")

#: The bags of one call, and one error per bag (`give_back`, `dead_letter`).
Bags: TypeAlias = Sequence[Bag]
Errors: TypeAlias = Sequence[BaseException]


class Hooks:
    """What an adapter may tell the kernel between calls (the kernel binds its own)."""

    #: The most messages the kernel keeps received and not yet acked for this queue (the
    #: queue's `in_flight` option); an adapter that prefetches stays at or below it.
    in_flight: int = 500

    def report(self, error: BaseException) -> None:
        """Report an error no single message owns (a lost connection, a failed commit)."""
        log.error("%s", error, exc_info=error)

    def revoke(self, predicate: Callable[[Bag], bool]) -> int:
        """Forget received bags the adapter no longer owns (e.g. Kafka partitions revoked).

        The kernel stops handing them to the application and ignores later
        acks for them; returns how many it dropped. Only the adapter's own
        threads call this (from within `receive`, say).
        """
        return 0


class Sending:
    """A batch on its way to the broker (what `Adapter.submit` returns).

    This one is already complete (the default `submit` sends synchronously);
    asynchronous adapters subclass it.
    """

    __slots__ = ("_outcomes",)

    def __init__(self, outcomes: Sequence[BaseException | None] = ()) -> None:
        self._outcomes = outcomes

    def result(self, wait: float | None) -> Sequence[BaseException | None] | None:
        """One outcome per bag, in order, once every one is known; None if `wait` seconds
        pass first (0: only look). `wait=None` waits as long as the adapter's own send
        timeout, then reports what is still unknown as failed."""
        return self._outcomes


@attrs.frozen
class Depth:
    """How many messages a queue holds, as its broker tells (`Adapter.depth`); None: not told.

    `ready`: waiting to be received (for Kafka, the consumer group's lag); `in_flight`:
    received and not settled yet; `delayed`: sent or nacked with a delay, not visible yet.
    Brokers count some of these approximately (SQS says so in its names).
    """

    ready: int | None
    in_flight: int | None = None
    delayed: int | None = None


class Adapter(abc.ABC):
    """A transport's send side, and what every transport has: subclass it (a send-only
    transport), or `ReceivingAdapter` (one qchan also receives from)."""

    #: URL scheme and default `System` attribute ("mem", "sqs", "kafka", "amqp").
    scheme: str = ""
    #: Most bags the kernel passes to one `send_batch` (the adapter may split further).
    max_batch: int = 10
    #: Most submitted batches the emitter keeps in flight (1: one `send_batch` at a time).
    pipeline: int = 1

    def __init__(self, name: str) -> None:
        #: The logical queue name (the `Queue` attribute on the wire).
        self.name = name
        self.hooks = Hooks()

    @abc.abstractmethod
    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        """Send the bags; return one outcome per bag, in order (None: the broker accepted it)."""

    def submit(self, bags: Sequence[Bag]) -> Sending:
        """Start sending the bags and return without waiting for the broker (see `pipeline`).

        The default sends synchronously. An exception raised here counts as the
        failure of every bag, as for `send_batch`.
        """
        return Sending(self.send_batch(bags))

    def bind(self, hooks: Hooks) -> None:
        """Called once by the kernel before any other call."""
        self.hooks = hooks

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once, after the kernel's workers stopped."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.scheme}://{self.name}>"


class ReceivingAdapter(Adapter):
    """A transport qchan also receives from: the send side plus `receive`, `ack` and
    `give_back` (the rest is optional; see the module docstring)."""

    #: Most bags one `receive` is asked for.
    max_receive: int = 10
    #: Default seconds a `receive` may wait for messages (long polling).
    poll_wait: float = 1.0
    #: Whether `wakeup` cuts a `receive`, `hold` or `idle` in progress short, and is sticky
    #: (a wakeup just before the call starts cuts that call short). The kernel then makes
    #: every broker call on its one consumer thread and wakes it for work (an ack, a
    #: channel closing); without it (the default; SQS, whose long poll boto3 cannot
    #: cancel) it runs `receive` on a helper thread, so that work never waits for a poll.
    wakes: bool = False

    @property
    def visibility(self) -> float | None:
        """Seconds the broker keeps a received, unsettled message from other consumers before
        it delivers it again (SQS's VisibilityTimeout, mem://'s visibility_timeout); None
        where the broker has no such clock (the default).

        The kernel then calls `extend` on what it holds every third of it (the queue's
        `extend_every` overrides the interval), so a message waiting in a buffer or held by
        the application is never delivered twice for being slow.
        """
        return None

    # -- required ----------------------------------------------------------------

    @abc.abstractmethod
    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        """Up to `max_items` bags, waiting at most `wait` seconds for the first one."""

    @abc.abstractmethod
    def ack(self, bags: Sequence[Bag]) -> None:
        """Remove these deliveries from the broker for good."""

    @abc.abstractmethod
    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        """Make these deliveries available again, after `delay` seconds (0: at once).

        `counted=True`: the application failed them (`ack.send(msg.fail(err))`, a
        handler that raised, `time_to_flight` ran out); this delivery counts, and
        `errors[i]` says why `bags[i]` failed (for an adapter that dead-letters after
        `max_deliveries` and says why, as Kafka's `Error` header). `counted=False`: a
        release, given back unhandled (a `dequeue` closing with messages it never
        handed out, a `qchan peek`); never a delivery attempt, so it must not move
        toward the broker's dead-letter threshold (delay is 0, errors empty). Where
        the broker counts every return, give such a message back as a copy that
        carries its count (module docstring, Counting).
        """

    # -- settling beyond the required ones -----------------------------------------

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """Deliveries the application gave up on (`ack.send(msg.dead_letter(err))`: a
        `give_up_on` error in `serve`, or `max_deliveries` reached): move them to the
        broker's dead-letter queue or topic now; `errors[i]` says why for `bags[i]`.

        The default, for a broker without one, is a counted `give_back`: the broker's
        own threshold (a redrive policy) dead-letters them later.
        """
        self.give_back(bags, counted=True, errors=errors)

    def reject(self, bag: Bag, error: MessageError) -> None:
        """The poison policy for a bag that cannot be decoded or routed (`error` says which).

        The kernel has reported it already. The default does nothing: the
        broker redelivers it by its own rules (visibility timeout, redrive
        policy to a dead-letter queue).
        """

    def extend(self, bags: Sequence[Bag]) -> None:
        """Keep these deliveries invisible to other consumers a while longer (a heartbeat).

        Called for every message the queue holds (waiting in a buffer or held by the
        application) every third of `visibility`, or every `extend_every` seconds when
        that queue option is given; the adapter decides by how much (its visibility
        timeout). Brokers without visibility timeouts ignore it.
        """

    # -- flow control: the consumer's three states (see the module docstring) ----------

    def hold(self, wait: float) -> bool:
        """Called on the consumer thread instead of `receive` while there is no demand or the
        in-flight limit is reached: the application has not settled enough of what it
        was given.

        Keep every message taken or prefetched so far (a later `receive` hands it
        out); take nothing new; do not requeue, release or dead-letter anything, and
        do not count anything as a delivery. An adapter whose connection does I/O
        only inside calls on its own thread (pika's BlockingConnection) services
        it here for up to `wait` seconds: settlements the adapter queued,
        heartbeats. Return False when there is nothing to service
        (the default): the kernel then waits without calling it until the state
        changes.
        """
        return False

    def idle(self, wait: float) -> bool:
        """Called on the consumer thread instead of `receive` while nobody listens: no channel
        is open on the queue (before the first `dequeue`, or after the last one closed).

        The adapter may give back what it prefetched (other consumers of the
        queue get it) and services its connection for up to `wait` seconds, as
        in `hold`. Return False when there is nothing to service (the default).
        """
        return False

    def wakeup(self) -> None:
        """Make a `receive`, `hold` or `idle` blocked in another thread return soon
        (declare `wakes = True` when it does, and is sticky).

        Only an interrupt: the kernel then calls whichever of the three fits the
        queue's state. It is sticky where it can be (a wakeup just before the call
        starts still cuts it short) and must never be read as "give back". A
        `receive` cut short returns what it has (or [])."""


class Operations(abc.ABC):
    """The operator's side (`qchan stats`, `qchan purge`), for a transport whose broker
    tells a queue's depth and can empty it: mix it into the adapter class."""

    @abc.abstractmethod
    def depth(self) -> Depth:
        """How many messages the queue holds now, as far as the broker tells."""

    @abc.abstractmethod
    def purge(self) -> int | None:
        """Delete every message of the queue; how many were deleted (None: the broker does
        not say)."""
