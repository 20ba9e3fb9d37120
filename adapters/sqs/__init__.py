"""AWS SQS adapter (boto3): standard and FIFO queues, wire-compatible with fogfish/swarm.

    q = qchan.connect("sqs://orders?region=eu-west-1")
    q = qchan.connect("sqs://orders.fifo?endpoint=http://127.0.0.1:4566&region=us-east-1")
    q = qchan.connect("sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders")

The adapter only talks to SQS; the kernel owns threads, batching, retries and
acknowledgement bookkeeping (see qchan.adapter). The wire format lives in
`_wire`; the full reference, with every option, is docs/sqs.md.

Credentials come from boto3's normal chain (environment, profile, instance or
task role, ...); they never appear in URLs, repr, logs or errors.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from qchan.adapter import Bags, Depth, Errors, Operations, ReceivingAdapter
from qchan.errors import MessageError, QchanError, describe
from qchan.message import Bag
from qchan.options import OptionError, check_keywords
from qchan.urls import URLError, redact

from .. import _aws as aws
from . import _wire as wire

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeFilterType
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

__all__ = ["QueueNotFound", "SQSAdapter", "SQSError", "from_url"]

log = logging.getLogger("qchan.adapters.sqs")

#: Seconds a receive long-polls by default (WaitTimeSeconds). An idle consumer
#: makes one request per period; close can take up to this long (docs/sqs.md).
DEFAULT_WAIT = 5.0

# Error codes that say "this request can never succeed as sent"; anything
# else (throttling, 5xx, access still propagating, ...) is worth retrying.
# On SQS's JSON protocol botocore reports the query-compatible code where SQS
# has one (AWS.SimpleQueueService.X, as AWS, moto and LocalStack send it).
_PERMANENT_CODES = frozenset(
    {
        "InvalidParameterValue",
        "InvalidMessageContents",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "MessageTooLong",
        "BatchRequestTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "UnsupportedOperation",
        "MissingParameter",
        "AWS.SimpleQueueService.UnsupportedOperation",
    }
)
# What SQS says of a receipt handle that has expired (the message was received again).
_EXPIRED_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "AWS.SimpleQueueService.ReceiptHandleIsInvalid"}
)
_NOT_FOUND_CODES = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
    }
)


class SQSError(aws.AWSError):
    """SQS refused a request or one entry of a batch; `code` is SQS's error code."""


class QueueNotFound(SQSError):
    """The queue does not exist at this endpoint (and `create` is off)."""


class SQSAdapter(
    aws.AWSAdapter["SendMessageBatchRequestEntryTypeDef"], ReceivingAdapter, Operations
):
    """One SQS queue, standard or FIFO (name ends in `.fifo`). Use `from_url` to build one."""

    scheme = "sqs"
    service = aws.Service("SQS", "queue", SQSError, _PERMANENT_CODES, _NOT_FOUND_CODES)
    max_batch = wire.MAX_BATCH_ENTRIES
    max_receive = wire.MAX_BATCH_ENTRIES
    poll_wait = DEFAULT_WAIT

    def __init__(
        self,
        name: str,
        *,
        queue_url: str | None = None,
        endpoint: str | None = None,
        region: str | None = None,
        create: bool = False,
        queue_attributes: Mapping[str, str] | None = None,
        owner: str | None = None,
        wait: float = DEFAULT_WAIT,
        visibility_timeout: int | None = None,
        content_dedup: bool | None = None,
        group_id: Callable[[Bag], str] | None = None,
        max_request_bytes: int = wire.DEFAULT_MAX_REQUEST_BYTES,
        session: boto3.session.Session | None = None,
        profile: str | None = None,
        verify: bool | str | None = None,
        client_cert: str | tuple[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        max_pool_connections: int = 10,
        unwrap: bool = True,
    ) -> None:
        super().__init__(name)
        if not isinstance(unwrap, bool):
            raise OptionError(
                f"sqs://{name}: option 'unwrap' must be True or False, not {unwrap!r}"
            )
        if not 0 <= wait <= wire.MAX_WAIT_SECONDS:
            raise OptionError(
                f"sqs://{name}: wait must be 0 to {wire.MAX_WAIT_SECONDS} s, not {wait}"
            )
        if visibility_timeout is not None and not (
            0 <= visibility_timeout <= wire.MAX_VISIBILITY_SECONDS
        ):
            raise OptionError(
                f"sqs://{name}: visibility_timeout must be 0 to {wire.MAX_VISIBILITY_SECONDS} s, "
                f"not {visibility_timeout}"
            )
        if max_request_bytes < 1024:
            raise OptionError(
                f"sqs://{name}: max_request_bytes must be at least 1024, not {max_request_bytes}"
            )
        self.fifo = name.endswith(".fifo")
        self.poll_wait = wait
        self.visibility_timeout = visibility_timeout
        self.max_request_bytes = max_request_bytes
        #: Receive EventBridge and SNS envelopes as the message inside (docs/sqs.md).
        self.unwrap = unwrap
        # Unwrapped bag -> the SQS message as received, which a dead letter copies.
        # Weak: an entry goes with its bag once the kernel has settled it.
        self._envelopes: weakref.WeakKeyDictionary[Bag, Bag] = weakref.WeakKeyDictionary()
        self._envelopes_lock = threading.Lock()
        self._create = create
        self._queue_attributes = dict(queue_attributes or {})
        self._owner = owner
        self._content_dedup = content_dedup
        self._group_id = group_id
        self._queue_url = queue_url
        self._woken = threading.Event()
        # Filled in by _look_up from the queue's attributes.
        self._max_message_bytes = wire.DEFAULT_MAX_REQUEST_BYTES
        self._queue_visibility = 30
        self._dead_letter_arn: str | None = None  # from the queue's RedrivePolicy
        self._dead_letter_url: str | None = None
        self._max_receives: int | None = None  # the RedrivePolicy's maxReceiveCount

        common: aws.ClientOptions = {
            "session": aws.session_for(session, profile),
            "endpoint": endpoint,
            "region": region,
            "verify": verify,
            "client_cert": client_cert,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_attempts": max_attempts,
            "max_pool_connections": max_pool_connections,
        }
        what = f"SQS queue {name!r}"
        self._client: SQSClient = aws.client("sqs", what, **common)
        # Long polls hold a request open for up to WaitTimeSeconds: they get
        # their own client so the read timeout of every other call stays short.
        poll = common.copy()
        poll["read_timeout"] = wire.MAX_WAIT_SECONDS + read_timeout
        self._poll_client: SQSClient = aws.client("sqs", what, **poll)
        # boto3 >= 1.34.x names the system attributes MessageSystemAttributeNames;
        # older releases (the extra allows 1.28) only know the deprecated name.
        shape = self._poll_client.meta.service_model.operation_model("ReceiveMessage").input_shape
        members = shape.members if shape is not None else {}
        self._system_names = (
            "MessageSystemAttributeNames"
            if "MessageSystemAttributeNames" in members
            else "AttributeNames"
        )
        self.endpoint: str = self._client.meta.endpoint_url
        self.region: str = self._client.meta.region_name

    # -- public helpers ------------------------------------------------------

    @property
    def client(self) -> SQSClient:
        """The boto3 SQS client (thread-safe), for what qchan does not wrap."""
        return self._client

    @property
    def queue_url(self) -> str:
        """The queue's URL (resolves the queue on first use)."""
        self._prepare()
        assert self._queue_url is not None
        return self._queue_url

    def open(self) -> None:
        """Look the queue up now, so a missing queue fails at open, not at first send.

        If the endpoint cannot be reached, the lookup is left to the first
        send or receive (whose outcomes are then errors the kernel retries).
        """
        self._check_now(self._prepare)

    # -- the contract --------------------------------------------------------

    @property
    def visibility(self) -> float:
        """The visibility timeout receives get: `visibility_timeout`, else the queue's own."""
        if self.visibility_timeout is not None:
            return float(self.visibility_timeout)
        return float(self._queue_visibility)

    def receive(self, max_items: int, wait: float) -> Sequence[Bag]:
        if self._woken.is_set():
            self._woken.clear()
            return []
        self._prepare()
        request: dict[str, Any] = {
            "QueueUrl": self._queue_url,
            # A FIFO queue hands out one receive's worth of a message group until it is
            # settled: asked for 1, a consumer that holds it while it waits for the
            # group's next message would wait for ever (what it holds is kept invisible).
            "MaxNumberOfMessages": (
                wire.MAX_BATCH_ENTRIES
                if self.fifo
                else max(1, min(max_items, wire.MAX_BATCH_ENTRIES))
            ),
            "WaitTimeSeconds": _wait_seconds(wait),
            "MessageAttributeNames": ["All"],
            self._system_names: ["ApproximateReceiveCount", "MessageGroupId"],
        }
        if self.visibility_timeout is not None:
            request["VisibilityTimeout"] = self.visibility_timeout
        try:
            reply = self._poll_client.receive_message(**request)
        except (BotoCoreError, ClientError) as e:
            raise self._error("receive", e) from e
        bags = [self._received(wire.bag_from_message(m)) for m in reply.get("Messages", [])]
        limit = self._max_receives
        if limit is None or all(b.deliveries <= limit for b in bags):
            return bags
        # Past the redrive policy's maxReceiveCount: only a copy gets here (SQS counts the
        # copy's receives from 0), delivered that often without an ack: consumers die on it.
        over = [b for b in bags if b.deliveries > limit]
        self.dead_letter(
            over,
            [QchanError(f"delivered {b.deliveries - 1} times without an ack") for b in over],
        )
        return [b for b in bags if b.deliveries <= limit]

    def _received(self, bag: Bag) -> Bag:
        if not self.unwrap:
            return bag
        inner = wire.unwrapped(bag)
        if inner is None:
            return bag
        with self._envelopes_lock:
            self._envelopes[inner] = bag
        return inner

    def ack(self, bags: Sequence[Bag]) -> None:
        for chunk in _batches(bags):
            entries = [{"Id": str(i), "ReceiptHandle": b.digest} for i, b in enumerate(chunk)]
            try:
                reply = self._client.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=entries,  # type: ignore[arg-type]
                )
            except (BotoCoreError, ClientError, QchanError) as e:
                self._report_call("ack (DeleteMessageBatch)", len(chunk), e)
                continue
            self._report_failed("ack (DeleteMessageBatch)", reply.get("Failed", []))

    def _nack(self, bags: Sequence[Bag], delay: float = 0.0) -> None:
        if delay < 0:
            raise ValueError(f"nack delay must be >= 0 s, not {delay}")
        self._change_visibility(bags, min(math.ceil(delay), wire.MAX_VISIBILITY_SECONDS), "nack")

    def give_back(
        self, bags: Bags, *, counted: bool, delay: float = 0, errors: Errors = ()
    ) -> None:
        """A failure (`counted`): see `_failed`; a release: see `_release`."""
        if counted:
            self._failed(bags, errors, delay)
        else:
            self._release(bags)

    def _failed(self, bags: Sequence[Bag], errors: Sequence[BaseException], delay: float) -> None:
        """Visible again after `delay`; a delivery that used up the redrive policy's
        maxReceiveCount goes to the dead-letter queue now (a copy qchan gave back counts
        its deliveries on: SQS would count its receives from 0)."""
        limit = self._max_receives
        spent = [] if limit is None else [i for i, b in enumerate(bags) if b.deliveries >= limit]
        if spent:
            why = [
                errors[i] if errors else QchanError(f"failed {bags[i].deliveries} deliveries")
                for i in spent
            ]
            self.dead_letter([bags[i] for i in spent], why)
            bags = [b for i, b in enumerate(bags) if i not in spent]
        if bags:
            self._nack(bags, delay)

    def _release(self, bags: Sequence[Bag]) -> None:
        """Give back unhandled bags without counting a delivery: SQS counted the receive, so
        on a standard queue each goes back as a copy carrying its count and id, and the
        original is deleted; a copy that fails, and a FIFO queue's message (a copy would
        go behind the rest of its group), is made visible again instead (counted)."""
        if self.fifo or not bags:
            self._change_visibility(bags, 0, "release")
            return
        received = [self._as_received(b) for b in bags]
        try:
            outcomes = self.send_batch([wire.give_back(b, b.deliveries - 1) for b in received])
        except Exception as e:  # noqa: BLE001 - the originals become visible again below
            outcomes = [e] * len(bags)
        copied = [b for b, o in zip(bags, outcomes, strict=True) if o is None]
        failed = [b for b, o in zip(bags, outcomes, strict=True) if o is not None]
        if copied:
            self.ack(copied)
        if failed:
            log.info(
                "queue %s: %d message(s) could not be given back as copies (%s); made visible "
                "again, which SQS counts as a receive",
                self.name,
                len(failed),
                next(o for o in outcomes if o is not None),
            )
            self._change_visibility(failed, 0, "release")

    def _as_received(self, bag: Bag) -> Bag:
        """The SQS message as received (an unwrapped bag's envelope), with the bag's count."""
        with self._envelopes_lock:
            received = self._envelopes.get(bag, bag)
        return received

    def dead_letter(self, bags: Sequence[Bag], errors: Sequence[BaseException]) -> None:
        """The application gave up: copy each to the queue's redrive dead-letter queue, then
        delete it here (a copy that fails leaves the message to be redelivered). Without a
        redrive policy, the messages are nacked: they come back until the retention ends.
        An unwrapped message is copied as it was received, envelope and all, as SQS's
        own redrive would move it."""
        target = self._dead_letter_queue()
        if target is None:
            self.hooks.report(
                QchanError(
                    f"queue {self.name}: no RedrivePolicy, so {len(bags)} message(s) given up on "
                    f"cannot be dead-lettered; they are redelivered"
                )
            )
            self._nack(bags)
            return
        fifo = target.endswith(".fifo")
        copied: list[Bag] = []
        for bag, error in zip(bags, errors, strict=True):
            received = self._as_received(bag)
            try:
                entry, _ = wire.entry(
                    received,
                    "0",
                    limit=wire.DEFAULT_MAX_REQUEST_BYTES,
                    fifo=fifo,
                    group=self._group(received),
                    dedup=bag.id,
                )
                message: dict[str, Any] = {k: v for k, v in entry.items() if k != "Id"}
                self._client.send_message(QueueUrl=target, **message)
            except (BotoCoreError, ClientError, QchanError) as e:
                self._report_call("dead-letter (SendMessage)", 1, e)
                continue
            log.warning(
                "queue %s: message %s moved to its dead-letter queue: %s",
                self.name,
                bag.id,
                describe(error),
            )
            copied.append(bag)
        if copied:
            self.ack(copied)
        rest = [b for b in bags if b not in copied]
        if rest:
            self._nack(rest)

    def _dead_letter_queue(self) -> str | None:
        if self._dead_letter_url is None and self._dead_letter_arn:
            # arn:aws:sqs:REGION:ACCOUNT:NAME
            parts = self._dead_letter_arn.split(":")
            try:
                self._dead_letter_url = self._client.get_queue_url(
                    QueueName=parts[-1], QueueOwnerAWSAccountId=parts[-2]
                )["QueueUrl"]
            except (BotoCoreError, ClientError, IndexError) as e:
                log.warning(
                    "queue %s: dead-letter queue %s not found: %s",
                    self.name,
                    self._dead_letter_arn,
                    e,
                )
        return self._dead_letter_url

    def extend(self, bags: Sequence[Bag]) -> None:
        timeout = self.visibility_timeout
        if timeout is None:
            timeout = self._queue_visibility
        self._change_visibility(bags, timeout, "extend")

    def reject(self, bag: Bag, error: MessageError) -> None:
        """Leave a poison message alone: SQS redelivers it after the visibility timeout.

        After the queue's maxReceiveCount deliveries its redrive policy moves
        it to the dead-letter queue. Without a redrive policy it comes back
        until the retention period ends (docs/sqs.md).
        """
        log.debug(
            "queue %s: leaving poison message %s for the redrive policy (%s)",
            self.name,
            bag.id,
            error,
        )

    def depth(self) -> Depth:
        """SQS's ApproximateNumberOfMessages (ready), ...NotVisible (in flight) and
        ...Delayed: estimates, eventually consistent (a minute or so on AWS)."""
        got = self._attributes(
            self.queue_url,
            "GetQueueAttributes",
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )

        def number(value: str | None) -> int | None:
            return None if value is None else int(value)

        return Depth(
            ready=number(got.get("ApproximateNumberOfMessages")),
            in_flight=number(got.get("ApproximateNumberOfMessagesNotVisible")),
            delayed=number(got.get("ApproximateNumberOfMessagesDelayed")),
        )

    def purge(self) -> None:
        """PurgeQueue: SQS deletes every message, in flight too, within about 60 s, and
        allows one purge per queue every 60 s. It does not say how many (None)."""
        try:
            self._client.purge_queue(QueueUrl=self.queue_url)
        except (BotoCoreError, ClientError) as e:
            raise self._error("PurgeQueue", e) from e

    def wakeup(self) -> None:
        # A long poll in flight cannot be cut short (boto3 has no
        # cancellation); this makes the next receive return at once.
        self._woken.set()

    def close(self) -> None:
        self._client.close()
        self._poll_client.close()

    def __repr__(self) -> str:
        return (
            f"<SQSAdapter sqs://{self.name} endpoint={redact(self.endpoint)} "
            f"region={self.region}{' fifo' if self.fifo else ''}>"
        )

    # -- internals -----------------------------------------------------------

    def _group(self, bag: Bag) -> str | None:
        return wire.group_id(bag, self._group_id) if self.fifo else None

    def _dedup(self, bag: Bag) -> str | None:
        """The message id, whatever the queue's ContentBasedDeduplication (SQS would drop
        distinct messages with equal bodies); none only with content_dedup=True."""
        if not self.fifo:
            return None
        return wire.dedup_id(bag, self._content_dedup is True)

    def _entry(self, index: int, bag: Bag) -> tuple[SendMessageBatchRequestEntryTypeDef, int]:
        return wire.entry(
            bag,
            str(index),
            limit=self._max_message_bytes,
            fifo=self.fifo,
            group=self._group(bag),
            dedup=self._dedup(bag),
        )

    def _request(
        self, entries: list[SendMessageBatchRequestEntryTypeDef]
    ) -> list[BaseException | None]:
        """One SendMessageBatch; an outcome per entry."""
        reply = self._client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        failed = aws.failed_entries(
            reply.get("Failed", []), f"SQS refused message for queue {self.name}", SQSError
        )
        return [failed.get(e["Id"]) for e in entries]

    def _change_visibility(self, bags: Sequence[Bag], timeout: int, what: str) -> None:
        for chunk in _batches(bags):
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": b.digest, "VisibilityTimeout": timeout}
                for i, b in enumerate(chunk)
            ]
            try:
                reply = self._client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except (BotoCoreError, ClientError, QchanError) as e:
                self._report_call(f"{what} (ChangeMessageVisibilityBatch)", len(chunk), e)
                continue
            self._report_failed(f"{what} (ChangeMessageVisibilityBatch)", reply.get("Failed", []))

    def _report_call(self, what: str, count: int, e: BaseException) -> None:
        """Report a failed call; SQS makes the messages visible again at their timeout."""
        self.hooks.report(e if isinstance(e, QchanError) else self._error(f"{what} of {count}", e))

    def _report_failed(self, what: str, failed: Sequence[Mapping[str, Any]]) -> None:
        for f in failed:
            expired = f.get("Code", "") in _EXPIRED_CODES or "ReceiptHandle" in f.get("Message", "")
            if what.startswith(("release", "nack")) and expired:
                # The receipt expired first: the message is visible again already, which
                # is what a release or a nack asked for. A race that ends well.
                log.info(
                    "queue %s: %s of an expired receipt (%s); the message is visible already",
                    self.name,
                    what,
                    f.get("Code", ""),
                )
                continue
            self.hooks.report(
                SQSError(
                    f"{what} failed for a message of queue {self.name}: "
                    f"{f.get('Code', '')}: {f.get('Message', '')}",
                    f.get("Code", ""),
                )
            )

    def _not_found(self, code: str) -> QchanError:
        return QueueNotFound(self._missing(), code)

    def _missing(self) -> str:
        return (
            f"queue {self.name!r} not found at {redact(self.endpoint)}; "
            f"create it or pass create=True"
        )

    def _attributes(self, url: str, what: str, *names: QueueAttributeFilterType) -> dict[str, str]:
        """The queue's attributes `names` (a failed call raised as `what` failing)."""
        try:
            reply = self._client.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))
        except (BotoCoreError, ClientError) as e:
            raise self._error(what, e) from e
        return {str(k): v for k, v in reply.get("Attributes", {}).items()}

    def _look_up(self) -> None:
        """Find (or create) the queue and read the attributes the adapter needs."""
        try:
            if self._queue_url is None:
                self._queue_url = self._lookup()
        except (BotoCoreError, ClientError) as e:
            raise self._error("queue lookup", e) from e
        attrs = self._attributes(
            self._queue_url,
            "queue lookup",
            "MaximumMessageSize",
            "VisibilityTimeout",
            "RedrivePolicy",
        )
        self._max_message_bytes = int(
            attrs.get("MaximumMessageSize", wire.DEFAULT_MAX_REQUEST_BYTES)
        )
        self._queue_visibility = int(attrs.get("VisibilityTimeout", 30))
        try:
            redrive = json.loads(attrs.get("RedrivePolicy") or "{}")
            self._dead_letter_arn = redrive.get("deadLetterTargetArn") or None
            count = int(redrive.get("maxReceiveCount", 0))
            self._max_receives = count if count > 0 and self._dead_letter_arn else None
        except (ValueError, AttributeError, TypeError):
            self._dead_letter_arn = None
            self._max_receives = None
        log.debug(
            "queue %s: resolved to %s (max message %d bytes, visibility %d s)",
            self.name,
            self._queue_url,
            self._max_message_bytes,
            self._queue_visibility,
        )

    def _lookup(self) -> str:
        request: dict[str, Any] = {"QueueName": self.name}
        if self._owner:
            request["QueueOwnerAWSAccountId"] = self._owner
        try:
            url: str = self._client.get_queue_url(**request)["QueueUrl"]
            return url
        except ClientError as e:
            if aws.code_of(e) not in _NOT_FOUND_CODES:
                raise
            if not self._create:
                raise QueueNotFound(self._missing(), aws.code_of(e)) from None
        attributes = dict(self._queue_attributes)
        if self.fifo:
            attributes.setdefault("FifoQueue", "true")
        log.info("queue %s: creating it at %s", self.name, redact(self.endpoint))
        created: str = self._client.create_queue(
            QueueName=self.name,
            Attributes=attributes,  # type: ignore[arg-type]
        )["QueueUrl"]
        return created


def _batches(bags: Sequence[Bag]) -> Iterator[Sequence[Bag]]:
    for start in range(0, len(bags), wire.MAX_BATCH_ENTRIES):
        yield bags[start : start + wire.MAX_BATCH_ENTRIES]


def _wait_seconds(wait: float) -> int:
    """SQS's whole-second WaitTimeSeconds for `wait`: rounded up, so 0 < wait never busy-polls."""
    if wait <= 0:
        return 0
    return min(wire.MAX_WAIT_SECONDS, math.ceil(wait))


# -- URLs ---------------------------------------------------------------------

_QUERY: dict[str, Callable[[str], Any]] = {
    **aws.CLIENT_QUERY,
    "create": lambda v: aws.BOOL[v.lower()],
    "owner": str,
    "wait": float,
    "visibility_timeout": int,
    "content_dedup": lambda v: aws.BOOL[v.lower()],
    "max_request_bytes": int,
    "unwrap": lambda v: aws.BOOL[v.lower()],
}
_KEYWORDS = frozenset({*_QUERY, *aws.CLIENT_KEYWORDS, "queue_attributes", "group_id"})
#: The keyword options of `from_url`.
OPTIONS = _KEYWORDS


def from_url(url: str, **options: Any) -> SQSAdapter:
    """The adapter for an `sqs://` URL; keyword options override query parameters.

    Forms: `sqs://NAME?endpoint=...&region=...` or, by queue URL,
    `sqs://HOST/ACCOUNT/NAME` (https unless `endpoint` gives the scheme and
    host), e.g. `sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders`.
    A plain `https://...` queue URL is accepted here too. The queue is looked
    up at once: a missing queue raises QueueNotFound (unless create=True); an
    unreachable endpoint is logged and retried on first use.
    """
    check_keywords("sqs://", options, _KEYWORDS)
    name, params = _parse(url)
    params.update(options)
    adapter = SQSAdapter(name, **params)
    adapter.open()
    return adapter


def _parse(url: str) -> tuple[str, dict[str, Any]]:
    parts, params = aws.parse_url(url, "SQS", ("sqs", "http", "https"), _QUERY)
    path = parts.path.strip("/")
    if not path:
        if parts.scheme != "sqs" or not parts.netloc:
            raise URLError(f"SQS URL {redact(url)!r} names no queue; e.g. sqs://orders")
        return parts.netloc, params
    # A queue URL: HOST/ACCOUNT/NAME.
    segments = path.split("/")
    if len(segments) != 2 or not all(segments):
        raise URLError(f"SQS queue URL {redact(url)!r} is not of the form HOST/ACCOUNT/NAME")
    scheme = "https" if parts.scheme == "sqs" else parts.scheme
    endpoint = params.get("endpoint") or f"{scheme}://{parts.netloc}"
    params.setdefault("endpoint", endpoint)
    params["queue_url"] = f"{endpoint.rstrip('/')}/{path}"
    if "region" not in params:
        region = _region_of(parts.hostname or "")
        if region:
            params["region"] = region
    return segments[1], params


def _region_of(host: str) -> str | None:
    """The region in an AWS SQS host name (sqs.REGION.amazonaws.com, REGION.queue.amazonaws.com)."""
    labels = host.split(".")
    if len(labels) >= 4 and labels[0] == "sqs":
        return labels[1]
    if len(labels) >= 4 and labels[1] == "queue":
        return labels[0]
    return None
