"""Connecting and declaring: the queue, its dead-letter queue, and an optional exchange.

Both the consumer and the publisher declare the same topology when they
connect (declarations are idempotent), so whichever side starts first finds
the queue in place. `declare="passive"` only checks that the queue (and the
exchange) exist; `declare="none"` trusts the existing topology entirely.
"""

from __future__ import annotations

import logging
from typing import Any

from qchan.errors import ConnectionLost, QchanError

from . import _rabbitmq_pika as pk
from ._rabbitmq_config import Role, Settings, connection_parameters

__all__ = ["MissingQueue", "TopologyError", "connect_blocking", "declare"]

log = logging.getLogger("qchan.adapters.rabbitmq")


class TopologyError(QchanError):
    """The broker refused a declaration (the queue exists with other arguments, say)."""


class MissingQueue(TopologyError):
    """`declare="passive"` (or an exchange check) found no such queue or exchange."""


def queue_arguments(s: Settings) -> dict[str, Any]:
    """The x-arguments the queue is declared with (they must match an existing queue's)."""
    args: dict[str, Any] = {"x-queue-type": s.queue_type}
    if s.dead_letter:
        # The default exchange routes by queue name, so no exchange is needed
        # for dead letters to reach the DLQ.
        args["x-dead-letter-exchange"] = ""
        args["x-dead-letter-routing-key"] = s.dead_letter
        if s.queue_type == "quorum":
            # Quorum queues then keep a dead letter until the DLQ confirms it.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
    args.update(s.queue_arguments)
    return args


def declare(ch: pk.BlockingChannel, s: Settings) -> None:
    """Declare (or check) the topology on a fresh channel; raise TopologyError if refused."""
    if s.declare == "none":
        return
    if s.declare == "passive":
        _passive(ch, s)
        return
    what = ""
    try:
        if s.dead_letter:
            what = f"dead-letter queue {s.dead_letter!r}"
            ch.queue_declare(
                s.dead_letter, durable=True, arguments={"x-queue-type": s.queue_type}
            )
        what = f"queue {s.queue!r}"
        ch.queue_declare(s.queue, durable=True, arguments=queue_arguments(s))
        if s.exchange:
            what = f"exchange {s.exchange!r}"
            ch.exchange_declare(s.exchange, exchange_type=s.exchange_type, durable=True)
            for key in s.binding_keys():
                what = f"binding {key!r} of queue {s.queue!r} to exchange {s.exchange!r}"
                ch.queue_bind(s.queue, s.exchange, routing_key=key)
    except pk.ChannelClosedByBroker as e:
        code, text = _reply(e)
        hint = ""
        if code == 406:
            hint = (
                "; it exists with other arguments: match them "
                "(queue_type=, dead_letter=, queue_arguments=, exchange_type=) or use "
                "declare='passive' or 'none'"
            )
        raise TopologyError(
            f"RabbitMQ refused to declare {what} at {s.display_url}: {code} {text}{hint}"
        ) from None


def _passive(ch: pk.BlockingChannel, s: Settings) -> None:
    what = f"queue {s.queue!r}"
    try:
        ch.queue_declare(s.queue, passive=True)
        if s.exchange:
            what = f"exchange {s.exchange!r}"
            ch.exchange_declare(s.exchange, passive=True)
    except pk.ChannelClosedByBroker as e:
        code, text = _reply(e)
        if code == 404:
            raise MissingQueue(
                f"{what} does not exist at {s.display_url} (declare='passive' only checks); "
                f"create it, or use declare='declare'"
            ) from None
        raise TopologyError(f"checking {what} at {s.display_url} failed: {code} {text}") from None


def _reply(e: BaseException) -> tuple[int, str]:
    args: tuple[Any, ...] = getattr(e, "args", ())
    if len(args) >= 2:
        return int(args[0]), str(args[1])
    return 0, str(e)


def _why(e: BaseException) -> str:
    """pika's connection errors print as nothing: dig out the innermost cause."""
    cause: Any = e
    while not str(cause) or getattr(cause, "exceptions", None):
        inner = getattr(cause, "exceptions", None) or getattr(cause, "args", ())
        if not inner:
            break
        cause = inner[-1]
    text = str(cause) or repr(cause)
    name = type(cause).__name__
    return text if isinstance(cause, str) or text.startswith(name) else f"{name}: {text}"


def connect_blocking(s: Settings, role: Role) -> pk.BlockingConnection:
    """A BlockingConnection, or ConnectionLost saying why not (never with the password)."""
    try:
        return pk.blocking_connection(connection_parameters(s, role))
    except pk.AMQPError as e:
        raise ConnectionLost(
            f"cannot connect to RabbitMQ at {s.display_url} for queue {s.queue!r}: "
            + s.scrub(_why(e))
        ) from None
    except OSError as e:  # TLS handshake and resolver failures surface as OSError
        raise ConnectionLost(
            f"cannot connect to RabbitMQ at {s.display_url} for queue {s.queue!r}: "
            + s.scrub(str(e))
        ) from None


def setup(s: Settings) -> None:
    """Declare or check the topology over a short-lived connection of its own."""
    if s.declare == "none":
        return
    conn = connect_blocking(s, "setup")
    try:
        declare(conn.channel(), s)
    finally:
        try:
            conn.close()
        except pk.AMQPError:
            pass
