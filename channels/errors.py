"""qchan's exception hierarchy: everything qchan raises on purpose is a `QchanError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class QchanError(Exception):
    """Base class of every error qchan raises on purpose."""


class ChannelClosed(QchanError):
    """The channel is closed: nothing more can be sent, or nothing is left to receive."""


class QueueFailed(QchanError):
    """A worker thread of the queue failed unexpectedly, so the queue stopped.

    Raised by every call blocked on (or made on) one of the queue's channels;
    `__cause__` is the original error. Messages sent and not known to be
    delivered are named by the `EnqueueError` that leaving `with enqueue(...)`
    or `q.close()` raises; messages received and not acked stay on the broker,
    which redelivers them.
    """


class EnqueueError(QchanError):
    """Messages could not be handed to the broker.

    `failed` holds the messages that were not delivered (each a `Msg` whose
    `object` is what the application sent and whose `error` says why), so a
    caller that catches this error still has every one of them.
    """

    def __init__(self, message: str, failed: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.failed: list[Any] = list(failed)


class RejectedError(EnqueueError):
    """The broker refused a message for good (too large, invalid): retrying cannot help."""


class MessageTooLarge(RejectedError):
    """The encoded message is larger than the broker accepts."""


class SendOnlyError(QchanError):
    """The queue's transport only sends (EventBridge, SNS): `dequeue` where it delivers to."""


class NotSupported(QchanError):
    """The transport cannot do this operation (an optional one: `Adapter.depth`, `purge`)."""


class MessageError(QchanError):
    """A received message that could not be handed to the application.

    `bag` is the raw message (body bytes and attributes) exactly as received.
    """

    def __init__(self, message: str, bag: Any) -> None:
        super().__init__(message)
        self.bag = bag


class DecodeError(MessageError):
    """A received payload does not decode into the channel's type."""


class UnroutableError(MessageError):
    """A received message names a category that no open channel receives."""


class ConnectionLost(QchanError):
    """A worker lost its connection to the broker; it reconnects and carries on."""


def describe(error: BaseException, limit: int = 500) -> str:
    """`Type: message` of an application's error, cut to `limit` characters for a header
    or a log line (its text may be long, or come from a hostile message)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
