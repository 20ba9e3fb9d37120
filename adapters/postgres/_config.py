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


@attrs.frozen(kw_only=True)
class PostgresOptions:
    """Validated adapter options (docs/postgres.md describes each one)."""

    #: The queue: a table of that name in `schema`.
    queue: str = attrs.field(validator=_identifier)
    #: libpq's connection string (a URL without the queue's options); holds the password.
    conninfo: str = attrs.field(repr=False)
    schema: str = adapter_option("qchan", _identifier, url=str)
    #: create: the schema, tables, index and trigger on first use; passive: they must
    #: exist (QueueNotFound otherwise); none: assume they do.
    declare: Declare = adapter_option("create", _one_of, url=str)
    #: The dead-letter table (in `schema`); "" in a URL (None here): none, a message that
    #: would go there is reported and deleted.
    dlq: str | None = adapter_option(
        attrs.Factory(lambda o: f"{o.queue}_dlq", takes_self=True), _identifier, url=str
    )
    max_deliveries: int = adapter_option(5, count_validator(), url=int)
    #: Seconds a delivery is leased to its consumer before another may take it.
    visibility_timeout: float = adapter_option(30.0, seconds_validator(positive=True), url=float)
    #: Keep acked rows in `<queue>_archive` instead of deleting them.
    archive: bool = adapter_option(False, url=parse_bool)
    #: LISTEN for the queue's NOTIFY (sent by a trigger on every insert), so an idle
    #: consumer wakes at once; polling every `wait` s is the fallback.
    notify: bool = adapter_option(True, url=parse_bool)
    #: Seconds a receive waits (for a notification) when nothing is ready.
    wait: float = adapter_option(1.0, seconds_validator(positive=True), url=float)
    max_message_size: int = adapter_option(DEFAULT_MAX_MESSAGE_SIZE, count_validator(), url=int)
    #: The logical queue name (the `Queue` attribute); the table by default.
    name: str = adapter_option(attrs.Factory(lambda o: o.queue, takes_self=True), None, url=str)

    def __attrs_post_init__(self) -> None:
        if self.dlq == self.queue:
            raise OptionError(f"postgres dead-letter table must differ from {self.queue!r}")

    def url(self) -> str:
        """A URL for repr and logs (never the password)."""
        return f"{redact(self.conninfo).split('?')[0]}?queue={self.queue}"


#: The options a URL query may carry, parsed by each field's own parser.
URL_OPTIONS: dict[str, Callable[[str], Any]] = url_parsers(PostgresOptions)
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
