"""RabbitMQ adapter settings: the `amqp://` / `amqps://` URL and keyword options, validated once.

The URL's userinfo, host, port and vhost path, and pika's own query keys
(`heartbeat`, `socket_timeout`, `ssl_options`, ...) go to pika unchanged;
the keys in `_OPTIONS` are ours. A keyword option overrides the same key in
the query string. See docs/rabbitmq.md for the reference.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from qchan.options import QUEUE_URL_OPTIONS, OptionError, check_keywords, parse_query, renamed
from qchan.urls import URLError, redact

from . import _pika as pk

__all__ = ["Settings", "connection_parameters", "settings_from_url"]

QueueType = Literal["quorum", "classic"]
Declare = Literal["declare", "passive", "none"]
Role = Literal["consumer", "publisher", "setup"]

#: RabbitMQ's default `max_message_size` (3.8+): 128 MiB.
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024

# Query keys pika.URLParameters understands; everything else in the query is ours.
_PIKA_KEYS = frozenset(
    {
        "blocked_connection_timeout",
        "channel_max",
        "client_properties",
        "connection_attempts",
        "frame_max",
        "heartbeat",
        "locale",
        "retry_delay",
        "socket_timeout",
        "ssl_options",
        "stack_timeout",
        "tcp_options",
    }
)

_DEFAULT_DLQ = "\0default"  # sentinel: "<queue>.dlq"


def _opt_float(v: str) -> float:
    return float(v)


def _opt_int_or_none(v: str) -> int | None:
    return None if v.lower() in ("", "none", "0") else int(v)


def _opt_str_or_none(v: str) -> str | None:
    return None if v.lower() in ("", "none") else v


def _opt_list(v: str) -> tuple[str, ...]:
    return tuple(k for k in v.split(","))


# Our options that may appear in the query string, with their parsers.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "queue": str,
    "queue_type": str,
    "declare": str,
    "exchange": str,
    "exchange_type": str,
    "routing_key": _opt_str_or_none,
    "bindings": _opt_list,
    "dead_letter": _opt_str_or_none,
    "max_deliveries": _opt_int_or_none,
    "max_attempts": _opt_int_or_none,  # deprecated: max_deliveries
    "prefetch": int,
    "reject_delay": _opt_float,
    "confirm_timeout": _opt_float,
    "max_batch": int,
    "max_message_size": int,
    "connection_name": str,
    "cafile": str,
    "certfile": str,
    "keyfile": str,
    "server_hostname": str,
}
# Options that only make sense as Python objects.
_KW_ONLY = frozenset({"queue_arguments", "ssl_context"})
#: The keyword options of `from_url`.
OPTIONS = frozenset({*_OPTIONS, *_KW_ONLY})
#: The URL query keys pika owns (`heartbeat` is pika's there, not the queue's).
QUERY_KEYS = frozenset(_PIKA_KEYS)


@attrs.frozen
class Settings:
    """Everything the adapter needs to know, checked at construction (not at first use)."""

    #: The URL with the password replaced by ***: the only form ever shown.
    display_url: str
    queue: str
    queue_type: QueueType = "quorum"
    declare: Declare = "declare"
    exchange: str = ""
    exchange_type: str = "topic"
    routing_key: str | None = None
    bindings: tuple[str, ...] | None = None
    dead_letter: str | None = None
    max_deliveries: int | None = 10
    prefetch: int = 500
    reject_delay: float = 5.0
    confirm_timeout: float = 30.0
    max_batch: int = 500
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    connection_name: str = "qchan"
    queue_arguments: Mapping[str, Any] = attrs.field(factory=dict)
    #: The pika URL (with the password): never printed, hence repr=False.
    pika_url: str = attrs.field(default="", repr=False)
    heartbeat_in_url: bool = False
    tls: bool = False
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)
    server_hostname: str | None = None

    def scrub(self, text: str) -> str:
        """`text` (an error message from pika, say) with the password masked, just in case."""
        password = urlsplit(self.pika_url).password
        if password and len(password) > 2:
            text = text.replace(password, "***")
        return text

    def routing_key_for(self, category: str) -> str:
        """Default exchange: the queue name. Named exchange: the fixed key, else the category."""
        if not self.exchange:
            return self.queue
        return self.routing_key if self.routing_key is not None else category

    def binding_keys(self) -> tuple[str, ...]:
        """Keys that bind the queue to a named exchange when we declare the topology."""
        if self.bindings is not None:
            return self.bindings
        if self.exchange_type == "topic":
            return ("#",)
        if self.exchange_type in ("fanout", "headers"):
            return ("",)
        if self.routing_key is not None:
            return (self.routing_key,)
        raise ValueError(
            f"a {self.exchange_type!r} exchange routes by category here; pass "
            f"bindings=[...] with the categories queue {self.queue!r} should receive"
        )


def settings_from_url(url: str, options: Mapping[str, Any]) -> Settings:
    """Parse and validate; TypeError for an unknown keyword, URLError/ValueError for bad values."""
    check_keywords("amqp://", options, OPTIONS)
    shown = redact(url)
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as e:
        raise URLError(f"malformed RabbitMQ URL {shown!r}: {e}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise URLError(f"RabbitMQ URLs start with amqp:// or amqps://, not {shown!r}")

    ours, theirs = parse_query(
        query,
        _OPTIONS,
        theirs=_PIKA_KEYS.__contains__,
        where=f"RabbitMQ URL {shown!r}",
        valid={*_OPTIONS, *QUEUE_URL_OPTIONS, *_PIKA_KEYS},
        bad_value=lambda key, value: f"bad value {value!r} for {key}= in {shown!r}",
        noun="query key",
    )
    ours.update(options)
    renamed(f"RabbitMQ URL {shown!r}", ours, "max_attempts", "max_deliveries")

    queue = ours.pop("queue", None)
    if not queue:
        raise URLError(f"RabbitMQ URL {shown!r} names no queue: add ?queue=NAME")
    pika_url = urlunsplit(parts._replace(query=urlencode(theirs)))
    try:
        pk.parameters_from_url(pika_url)
    except ValueError as e:
        raise URLError(f"bad RabbitMQ URL {shown!r}: {e}") from None

    tls = parts.scheme == "amqps"
    cafile, certfile, keyfile = (ours.pop(k, None) for k in ("cafile", "certfile", "keyfile"))
    context: ssl.SSLContext | None = ours.pop("ssl_context", None)
    hostname: str | None = ours.pop("server_hostname", None)
    if (cafile or certfile or context is not None or hostname) and not tls:
        raise URLError(f"TLS options need an amqps:// URL, not {shown!r}")
    if context is None and (cafile or certfile):
        context = ssl.create_default_context(cafile=cafile)
        if certfile:
            context.load_cert_chain(certfile, keyfile)
    elif keyfile and not certfile:
        raise URLError("keyfile= needs certfile= as well")

    dead_letter = ours.pop("dead_letter", _DEFAULT_DLQ)
    if dead_letter == _DEFAULT_DLQ:
        dead_letter = f"{queue}.dlq"
    bindings = ours.pop("bindings", None)
    settings = Settings(
        display_url=shown,
        queue=queue,
        dead_letter=dead_letter,
        bindings=tuple(bindings) if bindings is not None else None,
        pika_url=pika_url,
        heartbeat_in_url=any(k == "heartbeat" for k, _ in theirs),
        tls=tls,
        ssl_context=context,
        server_hostname=hostname,
        **ours,
    )
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    def bad(msg: str) -> OptionError:
        return OptionError(f"RabbitMQ queue {s.queue!r}: {msg}")

    if s.queue_type not in ("quorum", "classic"):
        raise bad(f"queue_type must be 'quorum' or 'classic', not {s.queue_type!r}")
    if s.declare not in ("declare", "passive", "none"):
        raise bad(f"declare must be 'declare', 'passive' or 'none', not {s.declare!r}")
    if not 1 <= s.prefetch <= 65535:
        raise bad(f"prefetch must be 1..65535, not {s.prefetch}")
    if s.max_deliveries is not None and s.max_deliveries < 1:
        raise bad(f"max_deliveries must be >= 1 or None, not {s.max_deliveries}")
    if not 1 <= s.max_batch <= 10000:
        raise bad(f"max_batch must be 1..10000, not {s.max_batch}")
    if s.confirm_timeout <= 0 or s.reject_delay < 0:
        raise bad("confirm_timeout must be > 0 and reject_delay >= 0")
    if s.declare == "declare" and s.dead_letter is None and s.max_deliveries is not None:
        raise bad(
            "max_deliveries without a dead-letter queue would make RabbitMQ discard poison "
            "messages; give dead_letter='NAME' or set max_deliveries=None (requeue forever)"
        )
    if s.dead_letter == s.queue:
        raise bad("dead_letter must not be the queue itself")
    if s.exchange and s.declare == "declare":
        s.binding_keys()  # raises for a direct exchange without bindings


def connection_parameters(s: Settings, role: Role) -> pk.Parameters:
    """Fresh pika parameters for one connection (each connection gets its own object).

    The publisher's connection runs its I/O loop only inside `send_batch`, so it
    could not answer heartbeats while the emitter is idle; it asks for none
    (heartbeat=0) unless the URL sets `heartbeat=`. A dead publisher connection
    still shows up as a failed publish or a missing confirm (`confirm_timeout`).
    """
    params = pk.parameters_from_url(s.pika_url)
    if s.ssl_context is not None or s.server_hostname:
        context = s.ssl_context or cast(Any, params.ssl_options).context
        params.ssl_options = pk.ssl_options(context, s.server_hostname)
    if role == "publisher" and not s.heartbeat_in_url:
        params.heartbeat = 0
    props = dict(params.client_properties or {})
    props.setdefault("connection_name", f"{s.connection_name} {role} {s.queue}")
    params.client_properties = props
    return params
