"""Transport URLs: which adapter a scheme opens, and passwords kept out of sight."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from .adapter import Adapter
from .errors import QchanError

__all__ = ["SECRET_KEY", "adapter_names", "open_adapter", "redact", "register_scheme"]

# scheme -> (module, extra to install). Each module defines
# `from_url(url: str, **options) -> Adapter`, which raises on an option it does
# not know, and `OPTIONS`, the names of its keyword options (for connect's
# "did you mean" across the kernel's options and the adapter's).
_BUILTIN: dict[str, tuple[str, str]] = {
    "mem": ("qchan.adapters.embedded", ""),
    "sqs": ("qchan.adapters.sqs", "sqs"),
    "sns": ("qchan.adapters.sns", "sns"),
    "eventbridge": ("qchan.adapters.eventbridge", "eventbridge"),
    "kafka": ("qchan.adapters.kafka", "kafka"),
    "amqp": ("qchan.adapters.rabbitmq", "rabbitmq"),
    "amqps": ("qchan.adapters.rabbitmq", "rabbitmq"),
    "redis": ("qchan.adapters.redis", "redis"),
    "rediss": ("qchan.adapters.redis", "redis"),
    "postgresql": ("qchan.adapters.postgres", "postgres"),
    "postgres": ("qchan.adapters.postgres", "postgres"),
}
_REGISTERED: dict[str, Callable[..., Adapter]] = {}


class URLError(QchanError, ValueError):
    """A queue URL that qchan cannot open (unknown scheme, malformed)."""


def register_scheme(scheme: str, factory: Callable[..., Adapter]) -> None:
    """Let `connect("scheme://...")` open your own adapter: `factory(url, **options)`."""
    _REGISTERED[scheme.lower()] = factory


#: Option names whose values are secrets (URL query parameters, client configs).
SECRET_KEY = re.compile(
    r"password|passwd|secret|token|credential|jaas|\.key\.pem|keystore\.key|"
    r"oauthbearer\.config|access_key|session_key",
    re.IGNORECASE,
)


_USERINFO = re.compile(r"^([^:/?#@]*):.*@([^/?#@]*)(?=[/?#]|$)", re.S)


def redact(url: str) -> str:
    """The URL with its password and secret query values replaced by `***`.

    For repr, logs and errors. A password holding an unencoded `/`, `?` or `#`
    (which ends the authority for a URL parser) is masked too: everything
    between the user's `:` and the `@` goes.
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        # user ':' password '@' host: the user has none of / ? # :, the password runs to
        # the last '@' that a host follows (so a password may hold '@', '/', '?', '#').
        rest = _USERINFO.sub(r"\1:***@\2", rest, count=1)
        url = f"{scheme}://{rest}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    if parts.query and SECRET_KEY.search(parts.query):
        query = "&".join(
            f"{k}=***" if SECRET_KEY.search(k) else f"{k}{eq}{v}"
            for k, eq, v in (item.partition("=") for item in parts.query.split("&"))
        )
        url = urlunsplit(SplitResult(*parts[:3], query, parts.fragment))
    return url


def adapter_names(url: str, which: str = "OPTIONS") -> frozenset[str] | None:
    """What the adapter of `url`'s scheme declares: its keyword options (`OPTIONS`) or the
    URL query keys it owns besides those (`QUERY_KEYS`, e.g. pika's `heartbeat`); None
    when it does not say (a registered scheme) or cannot be imported (open_adapter then
    says why)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    if scheme in _REGISTERED or scheme not in _BUILTIN:
        return None
    try:
        mod = importlib.import_module(_BUILTIN[scheme][0])
    except ImportError:
        return None
    names = getattr(mod, which, None)
    return frozenset(names) if names is not None else None


def open_adapter(url: str, **options: Any) -> Adapter:
    """The adapter for `url`, given the options that are the adapter's own."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as e:
        raise URLError(f"malformed queue URL {redact(url)!r}: {e}") from None
    if not scheme:
        raise URLError(
            f"queue URL {redact(url)!r} has no scheme; use one of "
            f"{', '.join(sorted({*_BUILTIN, *_REGISTERED}))}, e.g. mem://orders"
        )
    if scheme in _REGISTERED:
        return _REGISTERED[scheme](url, **options)
    if scheme not in _BUILTIN:
        raise URLError(
            f"unknown queue URL scheme {scheme!r} in {redact(url)!r}; known: "
            f"{', '.join(sorted({*_BUILTIN, *_REGISTERED}))} "
            f"(or register your adapter with qchan.register_scheme)"
        )
    module, extra = _BUILTIN[scheme]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if not extra:
            raise
        raise URLError(
            f"{scheme}:// needs the {extra} extra: pip install 'qchan[{extra}]' ({e})"
        ) from None
    factory: Callable[..., Adapter] = mod.from_url
    return factory(url, **options)
