"""Amazon EventBridge adapter (boto3), send only: events as fogfish/swarm's EventBridge broker
writes them.

    q = qchan.connect("eventbridge://orders?region=eu-west-1")
    q = qchan.connect("eventbridge://arn:aws:events:eu-west-1:123456789012:event-bus/orders")

Each message is one PutEvents entry: `Source` = the queue's agent, `DetailType`
= the category, `Detail` = the body (a JSON object). EventBridge delivers
events to the targets of its rules, so `dequeue` on this queue raises
`qchan.SendOnlyError`: receive them from an SQS queue a rule targets, or in a
Lambda function. The wire format lives in `_wire`; the reference, with
credentials (boto3's chain, never in URLs, repr, logs or errors), is
docs/eventbridge.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Unpack

from botocore.exceptions import BotoCoreError, ClientError

from qchan.errors import ConnectionLost, RejectedError
from qchan.message import Bag
from qchan.urls import redact

from .. import _aws as aws
from . import _wire as wire

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

__all__ = ["OPTIONS", "BusNotFound", "EventBridgeAdapter", "EventBridgeError", "from_url"]


class EventBridgeError(aws.AWSError):
    """EventBridge refused a request or one event of a batch; `code` is its error code."""


class BusNotFound(EventBridgeError):
    """The event bus does not exist at this endpoint."""


# Error codes of a request refused for what it holds (resent entry by entry, so
# only the entry at fault fails) or of an entry that can never be accepted.
# Access errors are retried: a policy may still be propagating or being fixed.
_PERMANENT = frozenset(
    {
        "ValidationException",
        "InvalidArgument",
        "MalformedDetail",
        "InvalidAccountIdException",
        "RedactionFailure",
    }
)
_NOT_FOUND = frozenset({"ResourceNotFoundException"})


class EventBridgeAdapter(aws.Publisher["PutEventsRequestEntryTypeDef"]):
    """Sends to one EventBridge event bus (name or ARN). Use `from_url` to build one."""

    scheme = "eventbridge"
    service = aws.Service("EventBridge", "bus", EventBridgeError, _PERMANENT, _NOT_FOUND)

    def __init__(
        self,
        bus: str,
        *,
        max_request_bytes: int = wire.MAX_REQUEST_BYTES,
        **options: Unpack[aws.ClientOptions],
    ) -> None:
        name = bus.split(":event-bus/", 1)[-1] if bus.startswith("arn:") else bus
        super().__init__(name, max_request_bytes, wire.MAX_REQUEST_BYTES)
        #: The bus as PutEvents names it (a name or an ARN).
        self.bus = bus
        if options.get("region") is None:
            options["region"] = aws.arn_region(bus)
        #: The boto3 EventBridge client (thread-safe), for what qchan does not wrap.
        self.client: EventBridgeClient = aws.client("events", f"EventBridge bus {bus!r}", **options)
        self.endpoint = self.client.meta.endpoint_url
        self.region = self.client.meta.region_name

    def _look_up(self) -> None:
        """Check that the bus exists (BusNotFound); a sender without permission to describe
        it (only events:PutEvents) skips the check."""
        try:
            self.client.describe_event_bus(Name=self.bus)
        except (BotoCoreError, ClientError) as e:
            err = self._error("bus lookup", e)
            if isinstance(err, (BusNotFound, ConnectionLost)):
                raise err from None
            self.log.warning("bus %s: not checked (%s); sends will tell", self.name, err)

    def _target(self) -> str:
        return self.bus

    def _entry(self, index: int, bag: Bag) -> tuple[PutEventsRequestEntryTypeDef, int]:
        return wire.entry(bag, self.bus, limit=self.max_request_bytes)

    def _request(self, entries: list[PutEventsRequestEntryTypeDef]) -> list[BaseException | None]:
        """One PutEvents; an outcome per entry (the reply lists them in request order)."""
        results = self.client.put_events(Entries=entries).get("Entries", [])
        outcomes: list[BaseException | None] = []
        for k in range(len(entries)):
            result = results[k] if k < len(results) else {}
            code = result.get("ErrorCode", "")
            if result.get("EventId") and not code:
                outcomes.append(None)
                continue
            text = (
                f"EventBridge refused an event for bus {self.name}: "
                f"{code or 'no result'}: {result.get('ErrorMessage', '')}"
            )
            if code in _PERMANENT:
                outcomes.append(RejectedError(text))
            else:
                outcomes.append(EventBridgeError(text, code))
        return outcomes

    def _not_found(self, code: str) -> BusNotFound:
        return BusNotFound(
            f"event bus {self.bus!r} not found at {redact(self.endpoint)}; create it "
            f"(aws events create-event-bus) or name another",
            code,
        )


# -- URLs ---------------------------------------------------------------------

_QUERY: dict[str, Callable[[str], Any]] = {**aws.CLIENT_QUERY, "max_request_bytes": int}
#: The keyword options of `from_url`.
OPTIONS = frozenset({*_QUERY, *aws.CLIENT_KEYWORDS})


def from_url(url: str, **options: Any) -> EventBridgeAdapter:
    """The adapter for an `eventbridge://BUS` URL; keyword options override query parameters.

    BUS is a bus name (`default`, `orders`, a partner bus `aws.partner/...`) or
    its ARN, whose region is used unless `region` is given. The bus is looked up
    at once: a missing bus raises BusNotFound.
    """
    return aws.open_url(
        url,
        options,
        EventBridgeAdapter,
        kind="EventBridge",
        scheme="eventbridge",
        query=_QUERY,
        keywords=OPTIONS,
        example="eventbridge://default",
    )
