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
import sys
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any
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
    "QueueOptions",
    "URLOptionError",
    "check_count",
    "check_seconds",
    "parse_query",
    "renamed",
    "split_query",
    "unknown",
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


def _seconds(positive: bool = False, optional: bool = False) -> _Validator:
    def check(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
        check_seconds(a.name, value, positive=positive, optional=optional)

    return check


def _count(minimum: int = 1, optional: bool = False) -> _Validator:
    def check(_: Any, a: attrs.Attribute[Any], value: Any) -> None:
        check_count(a.name, value, minimum=minimum, optional=optional)

    return check


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


@attrs.frozen(kw_only=True)
class QueueOptions:
    """The kernel's options: what `Queue(...)` and `connect(url, ...)` take (see `Queue`).

    Adding one is one line here (and its use in the kernel); `connect` then takes
    it as a keyword, and from the URL query when it is a number or a name.
    """

    agent: str | None = attrs.field(default=None, validator=_text)
    system: str | None = attrs.field(default=None, validator=_text)
    batch_size: int | None = attrs.field(default=None, validator=_count(1, optional=True))
    linger: float = attrs.field(default=0.005, validator=_seconds())
    retry: Backoff | None = attrs.field(default=None, validator=_backoff)
    poll_wait: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    in_flight: int = attrs.field(default=500, validator=_count(1))
    time_to_flight: float = attrs.field(default=30.0, validator=_seconds(positive=True))
    ack_linger: float = attrs.field(default=0.01, validator=_seconds())
    heartbeat: float | None = attrs.field(
        default=None, validator=_seconds(positive=True, optional=True)
    )
    errors: Chan[Exception] | SendChan[Exception] | None = attrs.field(
        default=None, validator=_errors_chan
    )
    close_timeout: float = attrs.field(default=10.0, validator=_seconds())


QUEUE_OPTIONS: frozenset[str] = frozenset(a.name for a in attrs.fields(QueueOptions))

# The options a URL query may carry (numbers and names), with their parsers.
_URL_PARSERS: dict[str, Callable[[str], Any]] = {
    "agent": str,
    "system": str,
    "batch_size": int,
    "linger": float,
    "poll_wait": float,
    "in_flight": int,
    "time_to_flight": float,
    "ack_linger": float,
    "heartbeat": float,
    "close_timeout": float,
}
QUEUE_URL_OPTIONS: frozenset[str] = frozenset(_URL_PARSERS)


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
