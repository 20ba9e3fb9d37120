"""Messages: `Bag` (raw, what adapters move) and `Msg[T]` (typed, what applications receive)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar, cast

import attrs

__all__ = ["ATTR_CATEGORY", "ATTR_ID", "ATTR_QUEUE", "ATTR_SOURCE", "ATTR_SYSTEM", "Bag", "Msg"]

T = TypeVar("T")

# Wire attributes (DESIGN.md section 4), carried as native broker metadata.
ATTR_CATEGORY = "Category"
ATTR_SOURCE = "Source"
ATTR_SYSTEM = "System"
ATTR_QUEUE = "Queue"
#: A message's own id where the broker's id is not it: the outbox relay stamps it on every
#: message it forwards (resent after a crash, the message keeps it), and SQS copies carry
#: the original's. Idempotent handlers key on it (`qchan.idempotency.message_key`).
ATTR_ID = "qchan-id"

_EMPTY: Mapping[str, str] = {}


@attrs.define(eq=False)
class Bag:
    """One raw message as the broker sees it: body bytes plus string attributes.

    On send the kernel fills `category`, `body`, `attributes` (with the wire
    attributes above), `id` (stable across retries, usable for
    de-duplication), `key` (ordering key, or None for the adapter's default)
    and `content_type` (the codec's MIME type, for brokers with a native
    field for it, such as AMQP). On receive the adapter fills every field it knows, including
    `digest`, the broker's receipt that `ack`/`nack` need, and `deliveries`,
    how many times the broker has delivered this message (1 the first time).

    Bags compare by identity: each received bag is one delivery. Treat them
    as immutable (make a new one rather than change one): they are not frozen
    only because two are built per message and a frozen class builds at half
    the speed.
    """

    category: str
    body: bytes
    attributes: Mapping[str, str] = _EMPTY
    id: str | None = None
    key: str | None = None
    content_type: str | None = None
    digest: Any = None
    deliveries: int = 1


@attrs.frozen(weakref_slot=False)  # a layout `received` can fill (below)
class Msg(Generic[T]):
    """A received message: the decoded `object` plus what the broker said about it.

    Acknowledge it with `ack.send(msg)`; refuse it (redeliver) with
    `ack.send(msg.fail(err))`, after a delay with `msg.fail(err, delay=s)` (or
    with a policy's: `ack.send(retries.failed(msg, err))`, see `qchan.Retries`);
    give up on it (to the dead-letter queue now) with `ack.send(msg.dead_letter(err))`.
    `digest` is the broker's receipt for this
    delivery; `attributes` are the message's string attributes (`Category`,
    `Source`, ...). On a dead-letter channel, `object` is what the application
    sent and `error` says why it was not delivered.
    """

    object: T
    category: str
    digest: Any = None
    attributes: Mapping[str, str] = _EMPTY
    error: BaseException | None = None
    delay: float | None = None
    bag: Bag | None = attrs.field(default=None, eq=False, repr=False)
    #: Set by `dead_letter`: the application gave up on this message.
    dead: bool = attrs.field(default=False, kw_only=True)

    @property
    def deliveries(self) -> int:
        """How many times the broker has delivered this message (1 the first time)."""
        return self.bag.deliveries if self.bag is not None else 1

    def dead_letter(self, err: BaseException) -> Msg[T]:
        """Give up: the message goes to the broker's dead-letter queue or topic now (where
        the transport has one; `broker(name).dead_letters` on mem://), not redelivered."""
        return attrs.evolve(self, error=err, delay=None, dead=True)

    def fail(self, err: BaseException, delay: float | None = None) -> Msg[T]:
        """A negative acknowledgement: redeliver this message, at once or after `delay` s."""
        if delay is not None and delay < 0:
            raise ValueError(f"nack delay must be >= 0 s, not {delay}")
        return attrs.evolve(self, error=err, delay=delay)


class _Filling(Generic[T]):
    """A `Msg` being filled: the same slots, in the same layout, but writable."""

    __slots__ = vars(Msg)["__slots__"]
    object: T
    category: str
    digest: Any
    attributes: Mapping[str, str]
    error: BaseException | None
    delay: float | None
    bag: Bag | None
    dead: bool


def received(obj: T, category: str, digest: Any, attributes: Mapping[str, str], bag: Bag) -> Msg[T]:
    """The `Msg` of a message received from the broker (the consumer builds one per message).

    The same as `Msg(obj, category, digest, attributes, bag=bag)` at under half the cost:
    a frozen class's `__init__` sets each field through `object.__setattr__`, while this
    fills a writable twin with plain stores and then makes it a `Msg` (`__class__`
    assignment, which CPython allows between classes of one layout; Msg has no
    `__weakref__` slot because CPython cannot compare a layout that has one). Measured
    with callgrind, per message: 12.5k instructions for `Msg(...)`, 5.0k for this.
    """
    m: _Filling[T] = _Filling()
    m.object = obj
    m.category = category
    m.digest = digest
    m.attributes = attributes
    m.error = None
    m.delay = None
    m.bag = bag
    m.dead = False
    m.__class__ = Msg  # type: ignore[assignment]
    return cast("Msg[T]", m)
