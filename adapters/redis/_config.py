"""Redis Streams adapter options: the `redis://` URL and the validated options.

`RedisOptions` is the one place an option and its default are written: `parse_url`
parses a URL's query into it by the fields' own types, and docs/redis.md lists them.
Passwords stay out of `repr`, logs and errors (`RedisOptions.url`, `redact`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
from redis.backoff import NoBackoff
from redis.retry import Retry

from qchan.options import (
    QUEUE_URL_OPTIONS,
    OptionError,
    adapter_option,
    count_validator,
    parse_bool,
    parse_query,
    seconds_validator,
    url_parsers,
)
from qchan.urls import URLError, redact

__all__ = ["RedisOptions", "parse_url"]

#: Redis's own limit on one string is 512 MB; a queue that large starves the server of
#: memory long before. The default refuses more than 1 MiB per message (configurable).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


def _name(_: object, a: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise OptionError(f"redis option {a.name} must be a non-empty name, not {value!r}")


def _consumer_name() -> str:
    """One consumer name per adapter (connection pool): host, process, and a random part,
    so two queues of one process never share a pending entries list."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@attrs.frozen(kw_only=True)
class RedisOptions:
    """Validated adapter options (docs/redis.md describes each one)."""

    #: The stream (the queue): created on first use.
    stream: str = attrs.field(validator=_name)
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    #: TLS (`rediss://`); the ssl_* options pass through to redis-py.
    tls: bool = False
    #: The consumer group every consumer of the queue joins.
    group: str = adapter_option("qchan", _name, url=str)
    #: This consumer's name in the group (default: host, process id and a random part).
    consumer: str = adapter_option(attrs.Factory(_consumer_name), _name, url=str)
    #: Where messages go after `max_deliveries` deliveries or when the application gives
    #: up on them; "" in a URL (None here): nowhere, they are reported and acked.
    dlq: str | None = adapter_option(
        attrs.Factory(lambda o: f"{o.stream}.dlq", takes_self=True), _name, url=str
    )
    max_deliveries: int = adapter_option(5, count_validator(), url=int)
    #: Seconds a delivery stays with its consumer before another may claim it.
    visibility_timeout: float = adapter_option(30.0, seconds_validator(positive=True), url=float)
    #: Keep the stream to about this many entries (`XADD ... MAXLEN ~`); None: no trim.
    maxlen: int | None = adapter_option(None, count_validator(optional=True), url=int)
    max_message_size: int = adapter_option(DEFAULT_MAX_MESSAGE_SIZE, count_validator(), url=int)
    #: Seconds one `XREADGROUP` blocks waiting for messages.
    wait: float = adapter_option(1.0, seconds_validator(positive=True), url=float)
    #: The logical queue name (the `Queue` attribute); the stream by default.
    name: str = adapter_option(attrs.Factory(lambda o: o.stream, takes_self=True), _name, url=str)
    connect_timeout: float = adapter_option(5.0, seconds_validator(positive=True), url=float)
    #: Seconds a command may take (a blocking read adds its own wait to it).
    socket_timeout: float = adapter_option(10.0, seconds_validator(positive=True), url=float)
    ssl_ca_certs: str | None = adapter_option(None, url=str)
    ssl_certfile: str | None = adapter_option(None, url=str)
    ssl_keyfile: str | None = adapter_option(None, url=str, repr=False)
    ssl_cert_reqs: str | None = adapter_option(None, url=str)
    ssl_check_hostname: bool | None = adapter_option(None, url=parse_bool)

    def __attrs_post_init__(self) -> None:
        if self.dlq == self.stream:
            raise OptionError(
                f"redis dead-letter stream must differ from the stream {self.stream!r}"
            )

    def url(self) -> str:
        """A URL for repr and logs (never the password)."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}:***@" if self.username else ("***@" if self.password else "")
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}?stream={self.stream}"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis`."""
        out: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout + self.wait,
            "health_check_interval": 30,
            "client_name": f"qchan-{self.name}",
            # No retries inside redis-py: a failure reaches the kernel, whose policy
            # retries sends and backs off receives (and reports the outage once).
            "retry": Retry(NoBackoff(), 0),
        }
        if self.tls:
            out["ssl"] = True
            for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
                value = getattr(self, key)
                if value is not None:
                    out[key] = value
            if self.ssl_check_hostname is not None:
                out["ssl_check_hostname"] = self.ssl_check_hostname
        return out


#: The options a URL query may carry, parsed by each field's own parser.
URL_OPTIONS: dict[str, Callable[[str], Any]] = url_parsers(RedisOptions)
#: The keyword options of `from_url` (the URL itself gives host, port, db and stream).
OPTIONS = frozenset(a.name for a in attrs.fields(RedisOptions)) - {
    "host",
    "port",
    "db",
    "username",
    "password",
    "tls",
}


def parse_url(url: str) -> dict[str, Any]:
    """RedisOptions' keywords from `redis[s]://[user[:password]@]host[:port][/db]?stream=NAME&...`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise URLError(f"malformed redis URL {redact(url)!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise URLError(f"not a redis:// URL: {redact(url)!r}")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise URLError(
            f"redis URL {redact(url)!r}: the path is the database number, not {path!r}"
        ) from None
    ours, _ = parse_query(
        parse_qsl(parts.query, keep_blank_values=True),
        URL_OPTIONS | {"stream": str},
        theirs=lambda key: False,
        where=f"redis URL {redact(url)!r}",
        valid={*URL_OPTIONS, "stream", *QUEUE_URL_OPTIONS},
        bad_value=lambda key, value: f"redis URL option {key}={value!r} is not valid",
    )
    if not ours.get("stream"):
        raise URLError(
            f"redis URL {redact(url)!r} needs the stream: redis://host:6379/0?stream=orders"
        )
    options: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": port or 6379,
        "db": db,
        "tls": scheme == "rediss",
        **ours,
    }
    if options.get("dlq") == "":
        options["dlq"] = None
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    return options
