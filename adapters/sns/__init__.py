"""Amazon SNS adapter (boto3), send only: standard and FIFO topics.

    q = qchan.connect("sns://orders?region=eu-west-1")
    q = qchan.connect("sns://arn:aws:sns:eu-west-1:123456789012:orders.fifo")

Messages are published with PublishBatch as they are sent to SQS: the body as
text, the four qchan attributes (`Category`, `Source`, `System`, `Queue`) as
String message attributes, and on a FIFO topic (`.fifo`) the MessageGroupId and
MessageDeduplicationId an SQS FIFO queue would get. SNS delivers to its
subscriptions, so `dequeue` on this queue raises `qchan.SendOnlyError`: receive
from an SQS queue subscribed to the topic, or in a Lambda function. The wire
format lives in `_wire`; the reference is docs/sns.md (credentials: boto3's
chain, never in URLs, repr, logs or errors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

from botocore.exceptions import BotoCoreError, ClientError

from qchan.message import Bag
from qchan.urls import redact

from .. import _aws as aws
from ..sqs import _wire as sqs_wire
from . import _wire as wire

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import PublishBatchRequestEntryTypeDef

__all__ = ["OPTIONS", "SNSAdapter", "SNSError", "TopicNotFound", "from_url"]


class SNSError(aws.AWSError):
    """SNS refused a request or one message of a batch; `code` is its error code."""


class TopicNotFound(SNSError):
    """The topic does not exist at this endpoint (and `create` is off)."""


_NOT_FOUND = frozenset({"NotFound", "NotFoundException", "ResourceNotFound"})


class SNSAdapter(aws.Publisher["PublishBatchRequestEntryTypeDef"]):
    """Publishes to one SNS topic, standard or FIFO (name ends in `.fifo`). Use `from_url`."""

    scheme = "sns"
    # Error codes of a request refused for what it holds: resent entry by entry, so
    # only the entry at fault fails (a RejectedError). Access errors are retried.
    _permanent = frozenset(
        {
            "InvalidParameter",
            "InvalidParameterValue",
            "ValidationError",
            "BatchRequestTooLong",
            "BatchEntryIdsNotDistinct",
            "InvalidBatchEntryId",
            "TooManyEntriesInBatchRequest",
            "EmptyBatchRequest",
        }
    )
    service = aws.Service("SNS", "topic", SNSError, _permanent, _NOT_FOUND)

    def __init__(
        self,
        topic: str,
        *,
        account: str | None = None,
        create: bool = False,
        topic_attributes: Mapping[str, str] | None = None,
        content_dedup: bool | None = None,
        group_id: Callable[[Bag], str] | None = None,
        max_request_bytes: int = wire.DEFAULT_MAX_REQUEST_BYTES,
        **options: Unpack[aws.ClientOptions],
    ) -> None:
        arn = topic if topic.startswith("arn:") else None
        super().__init__(topic.rsplit(":", 1)[-1], max_request_bytes, wire.MAX_REQUEST_BYTES)
        self.fifo = self.name.endswith(".fifo")
        self._arn = arn
        self._account = account
        self._create = create
        self._topic_attributes = dict(topic_attributes or {})
        self._content_dedup = content_dedup
        self._group_id = group_id
        if options.get("region") is None:
            options["region"] = aws.arn_region(topic)
        self._options = options
        #: The boto3 SNS client (thread-safe), for what qchan does not wrap.
        self.client: SNSClient = aws.client("sns", f"SNS topic {topic!r}", **options)
        self.endpoint = self.client.meta.endpoint_url
        self.region = self.client.meta.region_name

    def _target(self) -> str:
        return self._arn or self.name

    def _entry(self, index: int, bag: Bag) -> tuple[PublishBatchRequestEntryTypeDef, int]:
        limit = self.max_request_bytes
        fifo = self._fifo(bag)
        message, size = sqs_wire.entry(bag, str(index), limit=limit, limit_name=wire.LIMIT, **fifo)
        return wire.entry(message), size

    def _fifo(self, bag: Bag) -> dict[str, Any]:
        """The FIFO keywords of `sqs_wire.entry` for `bag` (as an SQS FIFO queue gets them):
        the message id as MessageDeduplicationId whatever the topic's
        ContentBasedDeduplication; none only with content_dedup=True."""
        if not self.fifo:
            return {"fifo": False, "group": None, "dedup": None}
        group = sqs_wire.group_id(bag, self._group_id)
        dedup = sqs_wire.dedup_id(bag, self._content_dedup is True)
        return {"fifo": True, "group": group, "dedup": dedup}

    def _request(
        self, entries: list[PublishBatchRequestEntryTypeDef]
    ) -> list[BaseException | None]:
        """One PublishBatch; an outcome per entry."""
        reply = self.client.publish_batch(
            TopicArn=self._target(), PublishBatchRequestEntries=entries
        )
        failed = aws.failed_entries(
            reply.get("Failed", []), f"SNS refused a message for topic {self.name}", SNSError
        )
        return [failed.get(e["Id"]) for e in entries]

    def _not_found(self, code: str) -> TopicNotFound:
        return TopicNotFound(
            f"topic {self._arn or self.name!r} not found at {redact(self.endpoint)}; "
            f"create it or pass create=True",
            code,
        )

    def _look_up(self) -> None:
        """Find (or create) the topic's ARN and check that the topic exists."""
        try:
            if self._arn is None:
                self._arn = self._lookup()
            self.client.get_topic_attributes(TopicArn=self._arn)
        except (BotoCoreError, ClientError) as e:
            err = self._error("topic lookup", e)
            if type(err) is not SNSError or self._arn is None:
                raise err from None
            # A publisher may lack sns:GetTopicAttributes; it can still publish.
            self.log.warning("topic %s: attributes not read (%s)", self.name, err)

    def _lookup(self) -> str:
        """The ARN of the topic by name: made by create_topic (idempotent) if `create`, else
        from the region and the account (`account=`, else STS GetCallerIdentity)."""
        if self._create:
            attributes = dict(self._topic_attributes)
            if self.fifo:
                attributes.setdefault("FifoTopic", "true")
            self.log.info("topic %s: creating it at %s", self.name, redact(self.endpoint))
            arn: str = self.client.create_topic(Name=self.name, Attributes=attributes)["TopicArn"]
            return arn
        account = self._account
        if account is None:
            # STS is asked at `endpoint` too (an emulator serves both); pass account= or
            # the topic's ARN where it is SNS's alone.
            sts = aws.client("sts", f"SNS topic {self.name!r}", **self._options)
            try:
                account = str(sts.get_caller_identity()["Account"])
            finally:
                sts.close()
        partition = self.client.meta.partition
        return f"arn:{partition}:sns:{self.region}:{account}:{self.name}"


# -- URLs ---------------------------------------------------------------------

_QUERY: dict[str, Callable[[str], Any]] = {
    **aws.CLIENT_QUERY,
    "account": str,
    "create": lambda v: aws.BOOL[v.lower()],
    "content_dedup": lambda v: aws.BOOL[v.lower()],
    "max_request_bytes": int,
}
#: The keyword options of `from_url`.
OPTIONS = frozenset({*_QUERY, *aws.CLIENT_KEYWORDS, "topic_attributes", "group_id"})


def from_url(url: str, **options: Any) -> SNSAdapter:
    """The adapter for an `sns://TOPIC` URL; keyword options override query parameters.

    TOPIC is a topic name or its ARN (whose region is used unless `region` is
    given). The topic is looked up at once: a missing one raises TopicNotFound
    (unless create=True); an unreachable endpoint is logged and retried on first use.
    """
    return aws.open_url(
        url,
        options,
        SNSAdapter,
        kind="SNS",
        scheme="sns",
        query=_QUERY,
        keywords=OPTIONS,
        example="sns://orders",
    )
