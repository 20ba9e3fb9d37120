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

from . import _pika as pk
from ._config import Role, Settings, connection_parameters

__all__ = ["MissingQueue", "TopologyError", "connect_blocking", "count", "declare"]

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


# (URL, queue) pairs adopted in this process: the warning is given once for each.
_ADOPTED: set[tuple[str, str]] = set()


def declare(conn: pk.BlockingConnection, s: Settings) -> tuple[pk.BlockingChannel, bool]:
    """Declare (or check) the topology; a usable channel, and whether the queue was adopted.

    A queue (or dead-letter queue) that exists with other arguments than ours
    (declared by another service, say) is adopted as it is, with one warning:
    RabbitMQ refuses the declaration (406) and closes the channel, so a fresh
    channel checks that it exists (passive). Anything else refused raises
    TopologyError.
    """
    ch = conn.channel()
    if s.declare == "none":
        return ch, False
    if s.declare == "passive":
        _passive(ch, s)
        return ch, False
    if s.dead_letter:
        ch, _ = _declare_or_adopt(conn, ch, s, s.dead_letter, {"x-queue-type": s.queue_type})
    ch, adopted = _declare_or_adopt(conn, ch, s, s.queue, queue_arguments(s))
    what = ""
    try:
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
            hint = "; it exists with another type: match it (exchange_type=) or use declare='none'"
        raise TopologyError(
            f"RabbitMQ refused to declare {what} at {s.display_url}: {code} {text}{hint}"
        ) from None
    return ch, adopted


def _declare_or_adopt(
    conn: pk.BlockingConnection,
    ch: pk.BlockingChannel,
    s: Settings,
    name: str,
    arguments: dict[str, Any],
) -> tuple[pk.BlockingChannel, bool]:
    try:
        ch.queue_declare(name, durable=True, arguments=arguments)
        return ch, False
    except pk.ChannelClosedByBroker as e:
        code, text = _reply(e)
        if code != 406:
            raise TopologyError(
                f"RabbitMQ refused to declare queue {name!r} at {s.display_url}: {code} {text}"
            ) from None
        refused = text
    ch = conn.channel()  # the broker closed the one that tried
    try:
        ch.queue_declare(name, passive=True)
    except pk.ChannelClosedByBroker as e:
        code, text = _reply(e)
        raise TopologyError(
            f"queue {name!r} at {s.display_url} refused our arguments ({refused}) and then "
            f"could not be checked: {code} {text}"
        ) from None
    if (s.display_url, name) not in _ADOPTED:
        _ADOPTED.add((s.display_url, name))
        ours = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        extra = (
            ""
            if name != s.queue
            else (
                " On it: deliveries are counted exactly only if it is a quorum queue (a classic "
                "queue says 1, or 2 once redelivered, so max_deliveries above 2 never triggers); "
                + (
                    f"qchan dead-letters by copying a message to {s.dead_letter!r} (confirmed) "
                    f"and then acking it, since it cannot see the queue's own dead-letter exchange."
                    if s.dead_letter
                    else "without dead_letter= a message given up on is requeued, never dropped."
                )
            )
        )
        log.warning(
            "queue %s at %s exists with other arguments than qchan declares (%s; RabbitMQ "
            "said %s): using it as it is (declare='passive' does so without this warning).%s",
            name,
            s.display_url,
            ours,
            refused,
            extra,
        )
    return ch, True


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
        declare(conn, s)
    finally:
        try:
            conn.close()
        except pk.AMQPError:
            pass


def count(s: Settings, purge: bool = False) -> int:
    """The queue's ready messages (a passive declare's message_count), or, with `purge`,
    how many `queue.purge` deleted; over a short-lived connection of its own. Never
    declares: a missing queue is MissingQueue."""
    conn = connect_blocking(s, "setup")
    try:
        ch = conn.channel()
        try:
            ok = ch.queue_declare(s.queue, passive=True)
            if purge:
                return int(ch.queue_purge(s.queue).method.message_count)
            return int(ok.method.message_count)
        except pk.ChannelClosedByBroker as e:
            code, text = _reply(e)
            if code == 404:
                raise MissingQueue(f"queue {s.queue!r} does not exist at {s.display_url}") from None
            raise TopologyError(
                f"{'purging' if purge else 'checking'} queue {s.queue!r} at {s.display_url} "
                f"failed: {code} {text}"
            ) from None
        except pk.AMQPError as e:
            raise ConnectionLost(
                f"RabbitMQ at {s.display_url}, queue {s.queue!r}: " + s.scrub(_why(e))
            ) from None
    finally:
        try:
            conn.close()
        except pk.AMQPError:
            pass
