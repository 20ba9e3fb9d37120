"""The slice of pika the RabbitMQ adapter uses, typed (pika ships no `py.typed`).

pika 1.x has inline annotations but no PEP 561 marker, so mypy sees it as
untyped. Rather than depend on stale third-party stubs (types-pika stops at
1.2 betas), this module imports pika once and declares small Protocols for
exactly the calls the adapter makes; every other adapter module imports pika
objects from here, so a typo in a pika call is a type error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]
from pika.adapters.select_connection import SelectConnection  # type: ignore[import-untyped]

__all__ = [
    "AMQPChannelError",
    "AMQPConnectionError",
    "AMQPError",
    "AsyncChannel",
    "BasicProperties",
    "BlockingChannel",
    "BlockingConnection",
    "ChannelClosedByBroker",
    "ConfirmFrame",
    "Deliver",
    "IOLoop",
    "Parameters",
    "ReturnMethod",
    "SelectConn",
    "blocking_connection",
    "is_nack",
    "parameters_from_url",
    "properties",
    "select_connection",
]

AMQPError: type[Exception] = pika.exceptions.AMQPError
AMQPConnectionError: type[Exception] = pika.exceptions.AMQPConnectionError
AMQPChannelError: type[Exception] = pika.exceptions.AMQPChannelError
ChannelClosedByBroker: type[Exception] = pika.exceptions.ChannelClosedByBroker
ConnectionClosedByClient: type[Exception] = pika.exceptions.ConnectionClosedByClient


class Parameters(Protocol):
    """`pika.ConnectionParameters` (we only set a few fields after parsing the URL)."""

    heartbeat: int | None
    ssl_options: Any
    client_properties: dict[str, Any] | None


class BasicProperties(Protocol):
    content_type: str | None
    message_id: str | None
    headers: dict[str, Any] | None
    delivery_mode: int | None


class Deliver(Protocol):
    """`Basic.Deliver`: what the broker says about one delivery."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    routing_key: str


class ReturnMethod(Protocol):
    """`Basic.Return`: a mandatory publish that no queue took."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str


class ConfirmMethod(Protocol):
    delivery_tag: int
    multiple: bool


class ConfirmFrame(Protocol):
    """The frame a publisher confirm (`Basic.Ack` / `Basic.Nack`) arrives in."""

    method: ConfirmMethod


class DeclareOk(Protocol):
    message_count: int
    consumer_count: int


class DeclareFrame(Protocol):
    method: DeclareOk


class _Channel(Protocol):
    """What the blocking and the asynchronous channel share."""

    is_open: bool

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None: ...


class BlockingChannel(_Channel, Protocol):
    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0) -> None: ...

    def basic_consume(
        self,
        queue: str,
        on_message_callback: Callable[[Any, Deliver, BasicProperties, bytes], None],
        auto_ack: bool = False,
    ) -> str: ...

    def basic_cancel(self, consumer_tag: str) -> Any: ...

    def add_on_cancel_callback(self, callback: Callable[[Any], None]) -> None: ...

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None: ...

    def queue_purge(self, queue: str) -> Any: ...

    def basic_nack(
        self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True
    ) -> None: ...

    def queue_declare(
        self,
        queue: str,
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> DeclareFrame: ...

    def exchange_declare(
        self,
        exchange: str,
        *,
        exchange_type: str = "direct",
        passive: bool = False,
        durable: bool = False,
    ) -> Any: ...

    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = None) -> Any: ...

    def confirm_delivery(self) -> None: ...

    def close(self) -> None: ...


class BlockingConnection(Protocol):
    is_open: bool
    is_closed: bool

    def channel(self) -> BlockingChannel: ...

    def process_data_events(self, time_limit: float | None = 0) -> None: ...

    def add_callback_threadsafe(self, callback: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


class IOLoop(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def remove_timeout(self, handle: object) -> None: ...

    def close(self) -> None: ...


class AsyncChannel(_Channel, Protocol):
    def confirm_delivery(
        self,
        ack_nack_callback: Callable[[ConfirmFrame], None],
        callback: Callable[[Any], None] | None = None,
    ) -> None: ...

    def add_on_return_callback(
        self, callback: Callable[[Any, ReturnMethod, BasicProperties, bytes], None]
    ) -> None: ...

    def add_on_close_callback(self, callback: Callable[[Any, Exception], None]) -> None: ...


class SelectConn(Protocol):
    ioloop: IOLoop
    is_open: bool
    is_closed: bool
    is_closing: bool

    def channel(self, on_open_callback: Callable[[AsyncChannel], None]) -> AsyncChannel: ...

    def close(self) -> None: ...


def parameters_from_url(url: str) -> Parameters:
    """pika's own URL parser: it knows heartbeat=, ssl_options=, socket_timeout= and friends."""
    return cast(Parameters, pika.URLParameters(url))


def blocking_connection(params: Parameters) -> BlockingConnection:
    return cast(BlockingConnection, pika.BlockingConnection(params))


def select_connection(
    params: Parameters,
    on_open: Callable[[SelectConn], None],
    on_open_error: Callable[[SelectConn, BaseException | str], None],
    on_close: Callable[[SelectConn, BaseException], None],
) -> SelectConn:
    return cast(
        SelectConn,
        SelectConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
        ),
    )


def properties(
    *, content_type: str | None, message_id: str, headers: dict[str, Any]
) -> BasicProperties:
    """Persistent message properties (delivery_mode 2 survives a broker restart)."""
    return cast(
        BasicProperties,
        pika.BasicProperties(
            content_type=content_type,
            message_id=message_id,
            headers=headers,
            delivery_mode=pika.DeliveryMode.Persistent,
        ),
    )


#: BasicProperties fields a copy keeps (user_id goes: the broker checks it against the
#: publishing connection's user, and the copy is published by ours).
_COPIED = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)


def copied(props: BasicProperties, headers: dict[str, Any]) -> BasicProperties:
    """`props` for a copy of a delivered message, with `headers` instead of its own."""
    fields = {name: getattr(props, name, None) for name in _COPIED}
    return cast(BasicProperties, pika.BasicProperties(headers=headers, **fields))


def is_nack(frame: ConfirmFrame) -> bool:
    """True for a publisher `Basic.Nack` (the broker could not take the message)."""
    return isinstance(frame.method, pika.spec.Basic.Nack)


def ssl_options(context: Any, server_hostname: str | None) -> Any:
    return pika.SSLOptions(context, server_hostname)
