"""Kafka messages on the wire: headers as attributes, the dead-letter copy's headers,
and what a librdkafka error code means for qchan."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError

from qchan.errors import MessageError, MessageTooLarge, QchanError, RejectedError
from qchan.message import Bag

from ._inflight import Receipt

if TYPE_CHECKING:
    from confluent_kafka._types import HeadersType

__all__ = [
    "DLQ_HEADERS",
    "NO_TOPIC",
    "UNREACHABLE",
    "DeadLettered",
    "KafkaSendError",
    "TopicNotFound",
    "attributes",
    "dead_letter_headers",
    "header_text",
    "key_bytes",
    "send_error",
]

#: Headers the dead-letter copy adds (an earlier copy's are replaced).
DLQ_HEADERS = ("Error", "Deliveries", "OriginTopic", "OriginPartition", "OriginOffset")

# librdkafka errors that mean "cannot reach the cluster now" (it reconnects by itself).
UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._SSL,
        KafkaError._AUTHENTICATION,
    }
)
TOO_LARGE = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
REFUSED = frozenset(
    {
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.INVALID_REQUIRED_ACKS,
    }
)
NO_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})

NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


class TopicNotFound(QchanError):
    """The topic does not exist and the adapter was not asked to create it."""


class DeadLettered(MessageError):
    """A message went to the dead-letter topic without reaching the application: consumers
    died on it (their process ended before it was settled) `max_deliveries` times."""


class KafkaSendError(QchanError):
    """The broker did not confirm a message; the kernel retries it."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        #: The producer hit a fatal error (idempotence state lost) and is replaced.
        self.fatal = fatal


def send_error(err: KafkaError, topic: str) -> BaseException:
    """What a failed produce of a message for `topic` means for the kernel."""
    code = err.code()
    text = f"kafka rejected a message for {topic!r}: {err.str()}"
    if code in TOO_LARGE:
        return MessageTooLarge(
            f"{text} (raise message.max.bytes on the producer and the topic, "
            "or send smaller objects)"
        )
    if code in REFUSED:
        return RejectedError(text)
    if code in NO_TOPIC:
        return TopicNotFound(f"{text}; create the topic or pass partitions=N")
    return KafkaSendError(
        f"kafka did not confirm a message for {topic!r}: {err.str()}", fatal=err.fatal()
    )


def attributes(headers: HeadersType) -> dict[str, str]:
    """Headers as attributes, whatever their shape (None values, str, a dict)."""
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {k: header_text(v) for k, v in pairs}


def key_bytes(key: str | bytes | None) -> bytes | None:
    """A key as the broker reports it back."""
    return key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key


def header_text(value: str | bytes | None) -> str:
    """A header value as text; bytes that are not UTF-8 survive as surrogate escapes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else value


def dead_letter_headers(
    bag: Bag, reason: str, deliveries: int | None = None
) -> list[tuple[str, str | bytes | None]]:
    """The headers of `bag`'s copy on the dead-letter topic: its own, and where it came
    from and why; `Deliveries` is `deliveries`, or `bag.deliveries` if None."""
    receipt: Receipt = bag.digest
    headers: list[tuple[str, str | bytes | None]] = [
        (k, v.encode("utf-8", "surrogateescape"))
        for k, v in bag.attributes.items()
        if k not in DLQ_HEADERS
    ]
    headers += [
        ("Error", reason),
        ("Deliveries", str(bag.deliveries if deliveries is None else deliveries)),
        ("OriginTopic", receipt.topic),
        ("OriginPartition", str(receipt.partition)),
        ("OriginOffset", str(receipt.offset)),
    ]
    return headers
