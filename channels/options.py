"""Checked options: each layer declares its options once, and every mistake is named.

`QueueOptions` is the kernel's layer (what `Queue` and `connect` take); each
adapter module lists its own in `OPTIONS`. A misspelt name raises `OptionError`
listing the valid names and suggesting the nearest one; a value of the wrong
type or out of range raises `OptionError` naming the option, at the call that
gave it. The same for URL query keys (as `URLError`, which is a ValueError too).
"""

from __future__ import annotations

import difflib
import math
import os
import sys
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, TypedDict
from urllib.parse import unquote_plus

import attrs

from .chan import Chan, SendChan
from .errors import QchanError
from .retry import Backoff
from .urls import URLError, redact

__all__ = [
    "QUEUE_OPTIONS",
    "QUEUE_URL_OPTIONS",
    "OptionError",
    "QueueKeywords",
    "QueueOptions",
    "URLOptionError",
    "adapter_option",
    "check_count",
    "check_seconds",
    "count_validator",
    "parse_bool",
    "parse_query",
    "renamed",
    "seconds_validator",
    "split_query",
    "unknown",
    "url_parsers",
]


class OptionError(QchanError, TypeError, ValueError):
    """An option that is unknown, of the wrong type, or out of range (the message names it).

    A TypeError (Python's error for a wrong keyword) and a ValueError alike, so
    code that catches either keeps working.
    """


class URLOptionError(URLError, OptionError):
    """An unknown or bad key in a queue URL's query: a `URLError` and an `OptionError`."""


def unknown(
    where: str,
    names: Iterable[str],
    valid: Collection[str],
    error: type[Exception] = OptionError,
    noun: str = "option",
) -> Exception:
    """The error for unknown option `names` given to `where`: each with the nearest valid
    name (difflib), then every valid one."""
    said = []
    names = sorted(names)
    for name in names:
        near = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
        said.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    plural = "s" if len(names) > 1 else ""
    return error(
        f"{where}: unknown {noun}{plural} {', '.join(said)}; valid: {', '.join(sorted(valid))}"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seconds(
    name: str,
    value: object,
    *,
    positive: bool = False,
    optional: bool = False,
    where: str = "",
) -> None:
    """`value` must be a number of seconds (>= 0, or > 0 with `positive`; None if `optional`)."""
    if value is None and optional:
        return
    prefix = f"{where}: " if where else ""
    if not _is_number(value):
        raise OptionError(
            f"{prefix}{name} must be a number of seconds (e.g. 0.005 for 5 ms)"
            f"{' or None' if optional else ''}, not {value!r}"
        )
    assert isinstance(value, (int, float))
    if not math.isfinite(value):
        raise OptionError(f"{prefix}{name} must be a finite number of seconds, not {value!r}")
    if positive and value <= 0:
        raise OptionError(f"{prefix}{name} must be > 0 s, not {value!r}")
    if value < 0:
        raise OptionError(f"{prefix}{name} must be >= 0 s, not {value!r}")


def check_count(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    optional: bool = False,
    where: str = "",
) -> None:
    """`value` must be an int >= `minimum` (None if `optional`)."""
    if value is None and optional:
        return
    prefix = f"{where}: " if where else ""
    if not isinstance(value, int) or isinstance(value, bool):
        raise OptionError(
            f"{prefix}{name} must be an int >= {minimum}{' or None' if optional else ''}, "
            f"not {value!r}"
        )
    if value < minimum:
        raise OptionError(f"{prefix}{name} must be >= {minimum}, not {value!r}")


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def seconds_validator(positive: bool = False, optional: bool = False) -> _Validator:
    """An attrs validator: `check_seconds` on the field (kernel and adapter options)."""

    def check(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
        check_seconds(a.name, value, positive=positive, optional=optional)

    return check


def count_validator(minimum: int = 1, optional: bool = False) -> _Validator:
    """An attrs validator: `check_count` on the field (kernel and adapter options)."""

    def check(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
        check_count(a.name, value, minimum=minimum, optional=optional)

    return check


def parse_bool(text: str) -> bool:
    """A URL query's yes or no (1/true/yes/on, 0/false/no/off); ValueError otherwise."""
    value = {"1": True, "true": True, "yes": True, "on": True}.get(text.lower())
    if value is None and text.lower() not in ("0", "false", "no", "off"):
        raise ValueError(text)
    return bool(value)


def adapter_option(
    default: Any,
    validator: _Validator | None = None,
    *,
    url: Callable[[str], Any] | None = None,
    **kw: Any,
) -> Any:
    """One option of an adapter's attrs options class: its default, its check and, for those a
    URL query may carry, the parser of its text (`url`; see `url_parsers`)."""
    return attrs.field(default=default, validator=validator, metadata={"url": url}, **kw)


def url_parsers(options_class: type) -> dict[str, Callable[[str], Any]]:
    """{option: parser} for the options of `options_class` a URL query may carry."""
    return {
        a.name: a.metadata["url"]
        for a in attrs.fields(options_class)
        if a.metadata.get("url") is not None
    }


def _text(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise OptionError(f"{a.name} must be a non-empty str or None, not {value!r}")


def _backoff(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Backoff):
        raise OptionError(
            f"retry must be a qchan.Backoff policy (e.g. qchan.Exponential(max_attempts=3)), "
            f"not {value!r}"
        )


def _errors_chan(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, (Chan, SendChan)):
        raise OptionError(
            f"errors must be a qchan.Chan (give it a buffer, e.g. Chan(100)) or its send "
            f"side, not {value!r}"
        )


def _option(
    default: Any, validator: _Validator, doc: str, *, url: Callable[[str], Any] | None = None
) -> Any:
    """One option of `QueueOptions`: its default, its check, what it means (`doc`, from
    which `Queue`'s docstring and docs/options.md's table are made) and, for those a URL
    query may carry, the parser of its text (`url`)."""
    return attrs.field(default=default, validator=validator, metadata={"doc": doc, "url": url})


@attrs.frozen(kw_only=True)
class QueueOptions:
    """The kernel's options: what `Queue(...)` and `connect(url, ...)` take.

    Each option is written here once: its name, type, default, check and meaning.
    `Queue` and `connect` take them as keywords (and from a URL query, those with a
    parser), the kernel's threads read them from the queue's resolved options, and
    `Queue`'s docstring and docs/options.md's table are made from this class.
    """

    agent: str | None = _option(
        None,
        _text,
        "the `Source` attribute of what this queue sends (default: the program's name)",
        url=str,
    )
    system: str | None = _option(
        None,
        _text,
        "the `System` attribute of what this queue sends (default: the transport's scheme)",
        url=str,
    )
    batch_size: int | None = _option(
        None,
        count_validator(1, optional=True),
        "the emitter sends up to this many messages at once (default: the adapter's limit)",
        url=int,
    )
    linger: float = _option(
        0.005, seconds_validator(), "seconds the emitter waits at most to fill a batch", url=float
    )
    retry: Backoff | None = _option(  # noqa: RUF009 - an attrs.field
        None,
        _backoff,
        "the emitter's `Backoff` policy (default: exponential with full jitter, 8 attempts, "
        "at most 60 s); when it gives up, the object goes to its channel's dlq",
    )
    poll_wait: float | None = _option(
        None,
        seconds_validator(optional=True),
        "seconds one receive may wait for messages (default: the adapter's)",
        url=float,
    )
    in_flight: int = _option(
        500,
        count_validator(1),
        "most messages the queue holds, received and not yet settled; what it takes from "
        "the broker follows demand below that (docs/reliability.md)",
        url=int,
    )
    time_to_flight: float = _option(
        30.0,
        seconds_validator(positive=True),
        "seconds the application may hold a message it received before it counts as "
        "nacked; the clock starts when it leaves rcv's buffer (checked at least once a "
        "second)",
        url=float,
    )
    ack_linger: float = _option(
        0.01,
        seconds_validator(),
        "seconds acks are batched at most; a batch goes sooner once it holds half of "
        "in_flight (or the adapter's max_batch)",
        url=float,
    )
    extend_every: float | None = _option(
        None,
        seconds_validator(positive=True, optional=True),
        "seconds between visibility extensions of the messages the queue holds (waiting "
        "in a buffer or held by the application); by default a third of the broker's "
        "visibility timeout where it has one (SQS, mem://), so none is delivered again "
        "for waiting. Give it to override the interval: it must be shorter than half the "
        "timeout (a message is first extended at the second beat after it arrives). "
        "Formerly `heartbeat=`, a name that means the AMQP connection heartbeat on amqp://",
        url=float,
    )
    errors: Chan[Exception] | SendChan[Exception] | None = _option(  # noqa: RUF009 - an attrs.field
        None,
        _errors_chan,
        "a channel for everything the workers cannot hand to a specific channel (poison "
        "messages, connection loss); when absent they are logged. Give it a buffer: a "
        "full errors channel falls back to logging",
    )
    close_timeout: float = _option(
        10.0, seconds_validator(), "seconds `close()` waits for the emitter to flush", url=float
    )

    @classmethod
    def of(cls, where: str, given: Mapping[str, Any]) -> QueueOptions:
        """The options `given` as keywords to `where`, checked: an unknown name (with the
        nearest valid one), a wrong type or a value out of range raises `OptionError`;
        `heartbeat=` is taken, with a DeprecationWarning, as `extend_every=`."""
        options = dict(given)
        renamed(
            where,
            options,
            "heartbeat",
            "extend_every",
            "on amqp:// `heartbeat` is the AMQP connection heartbeat, a different thing",
        )
        check_keywords(where, options, QUEUE_OPTIONS)
        try:
            return cls(**options)
        except OptionError as e:
            raise OptionError(f"{where}: {e}") from None

    @classmethod
    def table(cls) -> str:
        """Every option as a row of a Markdown table (docs/options.md holds it; a test
        keeps it in step)."""
        rows = [
            "| option | default | in a URL query | meaning |",
            "|---|---|---|---|",
        ]
        for a in attrs.fields(cls):
            default = "" if a.default is None else f"`{a.default!r}`"
            parser = a.metadata["url"]
            url = "" if parser is None else "a name" if parser is str else "a number"
            rows.append(f"| `{a.name}` | {default} | {url} | {a.metadata['doc']} |")
        return "\n".join(rows)

    @classmethod
    def describe(cls) -> str:
        """Every option with its default and meaning, a paragraph each (for docstrings)."""
        lines = []
        for a in attrs.fields(cls):
            default = "" if a.default is None else f" (default {a.default!r})"
            lines.append(f"- {a.name}{default}: {a.metadata['doc']}.")
        return "\n".join(lines)


QUEUE_OPTIONS: frozenset[str] = frozenset(a.name for a in attrs.fields(QueueOptions))

# The options a URL query may carry (numbers and names), with their parsers.
_URL_PARSERS: dict[str, Callable[[str], Any]] = {
    a.name: a.metadata["url"] for a in attrs.fields(QueueOptions) if a.metadata["url"]
}
QUEUE_URL_OPTIONS: frozenset[str] = frozenset(_URL_PARSERS)
_URL_PARSERS["heartbeat"] = float  # extend_every's deprecated name (not on amqp://)


class QueueKeywords(TypedDict, total=False):
    """`QueueOptions` as keywords, for type checkers (`Queue(adapter, **options)`); a test
    keeps the two in step."""

    agent: str | None
    system: str | None
    batch_size: int | None
    linger: float
    retry: Backoff | None
    poll_wait: float | None
    in_flight: int
    time_to_flight: float
    ack_linger: float
    extend_every: float | None
    errors: Chan[Exception] | SendChan[Exception] | None
    close_timeout: float
    heartbeat: float | None  # deprecated: extend_every


def split_query(url: str, reserved: Collection[str] = ()) -> tuple[str, dict[str, Any]]:
    """(`url` without the kernel's query keys, those keys' values parsed).

    The rest of the query is left byte for byte as it was, for the adapter, and so
    are `reserved` keys (the adapter's own, where a name is both: pika's
    `heartbeat`). Raises `URLError` for a value that does not parse.
    """
    base, sep, rest = url.partition("?")
    if not sep:
        return url, {}
    query, hash_, fragment = rest.partition("#")
    kept: list[str] = []
    found: dict[str, Any] = {}
    for item in query.split("&"):
        key, _, value = item.partition("=")
        name = unquote_plus(key)
        if name in _URL_PARSERS and name not in reserved:
            text = unquote_plus(value)
            try:
                found[name] = _URL_PARSERS[name](text)
            except ValueError:
                raise URLOptionError(
                    f"bad value {text!r} for {name}= in {redact(url)!r}: "
                    f"{'a number' if _URL_PARSERS[name] is not str else 'a name'} is needed"
                ) from None
        else:
            kept.append(item)
    if not found:
        return url, {}
    new = base + ("?" + "&".join(kept) if kept else "") + (hash_ + fragment)
    return new, found


def parse_query(
    query: Iterable[tuple[str, str]],
    parsers: Mapping[str, Callable[[str], Any]],
    *,
    theirs: Callable[[str], bool],
    where: str,
    valid: Collection[str],
    bad_value: Callable[[str, str], str],
    noun: str = "option",
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(the adapter's options, parsed; the client library's keys, as given) from a URL query.

    `theirs(key)` says which keys are the library's. A key neither theirs nor in
    `parsers` raises `URLOptionError` (see `unknown`); a value its parser refuses,
    `URLError` saying `bad_value(key, value)`.
    """
    ours: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    for key, value in query:
        if theirs(key):
            kept.append((key, value))
        elif key in parsers:
            try:
                ours[key] = parsers[key](value)
            except ValueError:
                raise URLError(bad_value(key, value)) from None
        else:
            raise unknown(where, [key], valid, URLOptionError, noun=noun)
    return ours, kept


def check_keywords(where: str, given: Mapping[str, Any], valid: Collection[str]) -> None:
    """Raise `OptionError` if `given` holds a name that is not in `valid`."""
    bad = [k for k in given if k not in valid]
    if bad:
        raise unknown(where, bad, valid)


def _outside_qchan() -> int:
    """The stacklevel of the first frame outside qchan (so a warning names the user's line)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module != "qchan" and not module.startswith("qchan."):
            break
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def renamed(
    where: str,
    options: dict[str, Any],
    old: str,
    new: str,
    why: str = "the one name for the dead-letter threshold on every transport",
) -> None:
    """Accept the deprecated name `old` of option `new` in `options` (in place), with a
    DeprecationWarning that points at the caller's line; `why` says why it was renamed."""
    if old not in options:
        return
    if new in options:
        raise OptionError(f"{where}: give {new}= only ({old}= is its deprecated name)")
    warnings.warn(
        f"{where}: {old}= is deprecated, use {new}= ({why})",
        DeprecationWarning,
        stacklevel=_outside_qchan(),
    )
    options[new] = options.pop(old)


def program() -> str:
    """The running program's name: the default `agent` (the `Source` attribute)."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
