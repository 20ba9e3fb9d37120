"""PostgreSQL adapter options: the `postgresql://` URL and the validated options.

`PostgresOptions` is the one place an option and its default are written: `parse_url`
parses a URL's query by the fields' own parsers, and docs/postgres.md lists them. The
connection part of the URL (user, password, host, port, database, and libpq's own query
keys such as `sslmode`) goes to psycopg as a conninfo string and never into `repr`, logs
or errors (`PostgresOptions.url`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from qchan.options import QUEUE_URL_OPTIONS, OptionError, parse_query
from qchan.urls import URLError, redact

__all__ = ["OPTIONS", "PostgresOptions", "parse_url"]

Declare = Literal["create", "passive", "none"]
#: PostgreSQL's longest identifier, in bytes.
MAX_IDENTIFIER = 63
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
#: libpq's connection parameters a URL query may carry (they go to psycopg as they are).
LIBPQ_KEYS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "sslcompression",
        "sslsni",
        "application_name",
        "connect_timeout",
        "options",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "channel_binding",
        "gssencmode",
    }
)


def _positive(_: object, a: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise OptionError(f"postgres option {a.name} must be a number > 0, not {value!r}")


def _count(_: object, a: attrs.Attribute[Any], value: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"postgres option {a.name} must be an int >= 1, not {value!r}")


def _identifier(_: object, a: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or "\x00" in value:
        raise OptionError(f"postgres option {a.name} must be a non-empty name, not {value!r}")
    if len(value.encode()) > MAX_IDENTIFIER - 4:  # room for "_dlq"
        raise OptionError(
            f"postgres option {a.name}: {value!r} is longer than {MAX_IDENTIFIER - 4} bytes "
            f"(PostgreSQL names hold {MAX_IDENTIFIER}, and the dead-letter table adds _dlq)"
        )


def _one_of(_: object, a: attrs.Attribute[Any], value: Any) -> None:
    if value not in get_args(Declare):
        raise OptionError(
            f"postgres option {a.name} must be one of {get_args(Declare)}, not {value!r}"
        )


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _field(default: Any, validator: Any = None, *, url: Callable[[str], Any] | None) -> Any:
    """An option; `url` parses its value from a URL query (None: not a URL option)."""
    return attrs.field(default=default, validator=validator, metadata={"url": url})


@attrs.frozen(kw_only=True)
class PostgresOptions:
    """Validated adapter options (docs/postgres.md describes each one)."""

    #: The queue: a table of that name in `schema`.
    queue: str = attrs.field(validator=_identifier)
    #: libpq's connection string (a URL without the queue's options); holds the password.
    conninfo: str = attrs.field(repr=False)
    schema: str = _field("qchan", _identifier, url=str)
    #: create: the schema, tables, index and trigger on first use; passive: they must
    #: exist (QueueNotFound otherwise); none: assume they do.
    declare: Declare = attrs.field(default="create", validator=_one_of, metadata={"url": str})
    #: The dead-letter table (in `schema`); "" in a URL (None here): none, a message that
    #: would go there is reported and deleted.
    dlq: str | None = _field(
        attrs.Factory(lambda o: f"{o.queue}_dlq", takes_self=True), _identifier, url=str
    )
    max_deliveries: int = _field(5, _count, url=int)
    #: Seconds a delivery is leased to its consumer before another may take it.
    visibility_timeout: float = _field(30.0, _positive, url=float)
    #: Keep acked rows in `<queue>_archive` instead of deleting them.
    archive: bool = _field(False, url=_bool)
    #: LISTEN for the queue's NOTIFY (sent by a trigger on every insert), so an idle
    #: consumer wakes at once; polling every `wait` s is the fallback.
    notify: bool = _field(True, url=_bool)
    #: Seconds a receive waits (for a notification) when nothing is ready.
    wait: float = _field(1.0, _positive, url=float)
    max_message_size: int = _field(DEFAULT_MAX_MESSAGE_SIZE, _count, url=int)
    #: The logical queue name (the `Queue` attribute); the table by default.
    name: str = _field(attrs.Factory(lambda o: o.queue, takes_self=True), None, url=str)

    def __attrs_post_init__(self) -> None:
        if self.dlq == self.queue:
            raise OptionError(f"postgres dead-letter table must differ from {self.queue!r}")

    def url(self) -> str:
        """A URL for repr and logs (never the password)."""
        return f"{redact(self.conninfo).split('?')[0]}?queue={self.queue}"


#: The options a URL query may carry, parsed by each field's own parser.
URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    a.name: a.metadata["url"] for a in attrs.fields(PostgresOptions) if a.metadata.get("url")
}
#: The keyword options of `from_url` (the URL gives the queue and the connection).
OPTIONS = frozenset(a.name for a in attrs.fields(PostgresOptions)) - {"queue", "conninfo"}


def parse_url(url: str) -> dict[str, Any]:
    """PostgresOptions' keywords from `postgres[ql]://user[:password]@host[:port]/db?queue=NAME`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as e:
        raise URLError(f"malformed postgres URL {redact(url)!r}: {e}") from None
    if parts.scheme.lower() not in ("postgres", "postgresql"):
        raise URLError(f"not a postgresql:// URL: {redact(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours, libpq = parse_query(
        query,
        URL_OPTIONS | {"queue": str},
        theirs=lambda key: key in LIBPQ_KEYS,
        where=f"postgres URL {redact(url)!r} (libpq's own keys pass through)",
        valid={*URL_OPTIONS, "queue", *QUEUE_URL_OPTIONS, *LIBPQ_KEYS},
        bad_value=lambda key, value: f"postgres URL option {key}={value!r} is not valid",
    )
    if not ours.get("queue"):
        raise URLError(
            f"postgres URL {redact(url)!r} needs the queue: "
            "postgresql://user@host:5432/db?queue=orders"
        )
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), ""))
    options: dict[str, Any] = {"conninfo": conninfo, **ours}
    if options.get("dlq") == "":
        options["dlq"] = None
    return options
