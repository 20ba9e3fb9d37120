"""Kafka adapter options: the `kafka://` URL, validated options, librdkafka configurations.

Everything here is pure (no broker): `parse_url` splits a URL into adapter
options and librdkafka properties, `KafkaOptions` validates them, and
`producer_config`/`consumer_config`/`admin_config` build what the clients get.
Secret properties never leave this module in clear: `redact_config` and
`scrub` replace them in anything that may be logged or raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from qchan.logs import client_logger
from qchan.message import Bag
from qchan.options import QUEUE_URL_OPTIONS, parse_query
from qchan.urls import SECRET_KEY, URLError, redact

__all__ = [
    "KafkaOptions",
    "KeyPolicy",
    "admin_config",
    "consumer_config",
    "parse_url",
    "producer_config",
    "redact_config",
    "scrub",
]

#: How a message key is chosen when the kernel left `Bag.key` empty.
KeyPolicy = Literal["none", "category"] | Callable[[Bag], str | bytes | None]
Unroutable = Literal["retry", "skip", "dlq"]
OffsetReset = Literal["earliest", "latest", "error"]

_SECRET = SECRET_KEY  # the one list of secret option names, shared with qchan.urls.redact

# Options a URL query may carry, with the type they are parsed into.
_QUERY_TYPES: dict[str, Callable[[str], Any]] = {
    "group": str,
    "dlq": str,
    "max_deliveries": int,
    "max_attempts": int,  # deprecated: max_deliveries
    "key": str,
    "partitions": int,
    "replication": int,
    "offset_reset": str,
    "unroutable": str,
    "redelivery_delay": float,
    "retry_delay": float,  # deprecated: redelivery_delay
    "send_timeout": float,
    "admin_timeout": float,
    "name": str,
}


def _dlq_name(o: KafkaOptions) -> str:
    return f"{o.topic}.dlq"


def _positive(_: object, a: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"kafka option {a.name} must be > 0, not {value!r}")


def _not_negative(_: object, a: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"kafka option {a.name} must be >= 0, not {value!r}")


def _one_of(choices: tuple[str, ...]) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_: object, a: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"kafka option {a.name} must be one of {choices}, not {value!r}")

    return check


def _key_policy(_: object, a: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value) and value not in ("none", "category"):
        raise ValueError(f"kafka option key must be 'none', 'category' or a function: {value!r}")


def _config_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@attrs.frozen(kw_only=True)
class KafkaOptions:
    """Validated adapter options (see docs/kafka.md for each one)."""

    topic: str = attrs.field(validator=attrs.validators.min_len(1))
    bootstrap: str = attrs.field(validator=attrs.validators.min_len(1))
    group: str = attrs.field(default=attrs.Factory(lambda o: f"qchan-{o.topic}", takes_self=True))
    #: Dead-letter topic; None: poison messages are reported and skipped.
    dlq: str | None = attrs.field(default=attrs.Factory(_dlq_name, takes_self=True))
    #: Deliveries before a failing message goes to the dead-letter topic.
    max_deliveries: int = attrs.field(default=5, validator=_positive)
    key: KeyPolicy = attrs.field(default="none", validator=_key_policy)
    #: Create missing topics with this many partitions (None: a missing topic is an error).
    partitions: int | None = attrs.field(default=None, validator=_positive)
    replication: int = -1
    offset_reset: OffsetReset = attrs.field(
        default="earliest", validator=_one_of(get_args(OffsetReset))
    )
    unroutable: Unroutable = attrs.field(default="retry", validator=_one_of(get_args(Unroutable)))
    redelivery_delay: float = attrs.field(default=5.0, validator=_not_negative)
    send_timeout: float = attrs.field(default=30.0, validator=_positive)
    admin_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: The logical queue name (`Queue` attribute); the topic by default.
    name: str = attrs.field(default=attrs.Factory(lambda o: o.topic, takes_self=True))
    config: dict[str, Any] = attrs.field(factory=dict, converter=_config_dict)
    producer_config: dict[str, Any] = attrs.field(factory=dict, converter=_config_dict)
    consumer_config: dict[str, Any] = attrs.field(factory=dict, converter=_config_dict)

    def __attrs_post_init__(self) -> None:
        if self.dlq == self.topic:
            raise ValueError(f"kafka dead-letter topic must differ from the topic {self.topic!r}")
        for conf in (self.config, self.consumer_config):
            if str(conf.get("enable.auto.commit", "false")).lower() in ("true", "1"):
                raise ValueError(
                    "enable.auto.commit=true would commit past messages that are still "
                    "being processed or failed; qchan commits acked offsets itself"
                )

    def url(self) -> str:
        """A URL for repr and logs (no credentials: they live in the config)."""
        return f"kafka://{self.bootstrap}/{self.topic}?group={self.group}"


def parse_url(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter options, librdkafka properties) from `kafka://[user:pass@]h:p[,h:p]/topic?...`.

    Query parameters with a dot in their name (`security.protocol=SSL`) are
    librdkafka properties; the others are adapter options. Credentials in the
    URL become `sasl.username`/`sasl.password` (with `SASL_SSL` and `PLAIN`
    unless the query says otherwise).
    """
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise URLError(f"malformed kafka URL {redact(url)!r}: {e}") from None
    if parts.scheme.lower() != "kafka":
        raise URLError(f"not a kafka:// URL: {redact(url)!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    topic = unquote(parts.path.lstrip("/"))
    if not hosts or not topic or "/" in topic:
        raise URLError(
            f"kafka URL {redact(url)!r} needs brokers and one topic: "
            "kafka://host:9092[,host2:9092]/topic?group=name"
        )
    ours, theirs = parse_query(
        parse_qsl(parts.query, keep_blank_values=True),
        _QUERY_TYPES,
        theirs=lambda name: "." in name,
        where=f"kafka URL {redact(url)!r} (librdkafka properties contain a dot)",
        valid={*_QUERY_TYPES, *QUEUE_URL_OPTIONS},
        bad_value=lambda key, value: f"kafka URL option {key}={value!r} is not valid",
    )
    options: dict[str, Any] = {"topic": topic, "bootstrap": hosts, **ours}
    config: dict[str, Any] = dict(theirs)
    if options.get("dlq") == "":
        options["dlq"] = None
    if userinfo:
        user, _, password = userinfo.partition(":")
        config["sasl.username"] = unquote(user)
        config["sasl.password"] = unquote(password)
        config.setdefault("security.protocol", "SASL_SSL")
        config.setdefault("sasl.mechanism", "PLAIN")
    return options, config


def _common(o: KafkaOptions, log: logging.Logger, side: Mapping[str, Any]) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": o.bootstrap,
        "client.id": f"qchan-{o.name}",
        # librdkafka's own log lines go through `logging` (served by poll()), at DEBUG
        # under qchan.client.kafka: what matters reaches error_cb, reported once.
        "logger": client_logger("kafka"),
    }
    conf.update(o.config)
    conf.update(side)
    return conf


def producer_config(
    o: KafkaOptions, log: logging.Logger, error_cb: Callable[[Any], None]
) -> dict[str, Any]:
    """Idempotent, acks=all, no topic auto-creation, failed by librdkafka at `send_timeout`."""
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "allow.auto.create.topics": False,
        "delivery.timeout.ms": int(o.send_timeout * 1000),
        "error_cb": error_cb,
    }
    conf.update(_common(o, log, o.producer_config))
    return conf


def consumer_config(
    o: KafkaOptions,
    log: logging.Logger,
    error_cb: Callable[[Any], None],
    on_commit: Callable[[Any, Any], None],
) -> dict[str, Any]:
    """A group member that never commits on its own."""
    conf = {
        "group.id": o.group,
        "enable.auto.commit": False,
        "auto.offset.reset": o.offset_reset,
        "allow.auto.create.topics": False,
        "enable.partition.eof": False,
        "error_cb": error_cb,
        "on_commit": on_commit,
    }
    conf.update(_common(o, log, o.consumer_config))
    conf["enable.auto.commit"] = False
    return conf


def admin_config(o: KafkaOptions, log: logging.Logger) -> dict[str, Any]:
    conf = _common(o, log, {})
    for name in ("allow.auto.create.topics", "enable.idempotence", "acks", "group.id"):
        conf.pop(name, None)
    return conf


def redact_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """`conf` with secret values replaced by `***` (for logs and repr)."""
    return {k: ("***" if _SECRET.search(k) else v) for k, v in conf.items()}


def scrub(text: str, *confs: Mapping[str, Any]) -> str:
    """`text` with every secret value of `confs` replaced by `***` (for error messages)."""
    for conf in confs:
        for k, v in conf.items():
            if _SECRET.search(k) and isinstance(v, str) and v:
                text = text.replace(v, "***")
    return text
