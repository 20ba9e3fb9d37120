"""What the AWS adapters (SQS, SNS, EventBridge) share: the boto3 client, URLs, errors, batches.

- `client` builds a botocore client with qchan's timeouts and a short retry
  budget (the kernel retries sends with its own backoff).
- `parse_url` checks a transport URL: no credentials in it, known query keys
  (an unknown one is a URLOptionError with a suggestion), typed values.
- `AWSAdapter` sends entries in requests of at most N entries and B bytes, in
  order, with one outcome per bag, and turns a botocore failure into the qchan
  error the kernel acts on: RejectedError/MessageTooLarge (dead-lettered at
  once), ConnectionLost, or the transport's own `AWSError` (retried). No
  message holds credentials.
- `Publisher` is an `AWSAdapter` that only sends (EventBridge, SNS).
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import attrs
import boto3
import botocore.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
)

from qchan.adapter import Adapter
from qchan.errors import ConnectionLost, MessageTooLarge, QchanError, RejectedError
from qchan.message import Bag
from qchan.options import QUEUE_URL_OPTIONS, URLOptionError, check_keywords, unknown
from qchan.urls import URLError, redact

__all__ = [
    "BOOL",
    "CLIENT_KEYWORDS",
    "CLIENT_QUERY",
    "THROTTLING_CODES",
    "AWSAdapter",
    "AWSError",
    "ClientOptions",
    "Publisher",
    "Service",
    "arn_region",
    "client",
    "code_of",
    "failed_entries",
    "open_url",
    "parse_url",
    "session_for",
    "too_long",
]

E = TypeVar("E")

#: Error codes that mean "slow down" or "our side failed": worth retrying even when
#: the service says the sender was at fault.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "KmsThrottled",
        "KMS.ThrottlingException",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
    }
)

BOOL = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}

#: URL query keys every AWS transport takes: where the service is and how the client behaves.
CLIENT_QUERY: dict[str, Callable[[str], Any]] = {
    "endpoint": str,
    "region": str,
    "profile": str,
    "verify": lambda v: BOOL.get(v.lower(), v),
    "connect_timeout": float,
    "read_timeout": float,
    "max_attempts": int,
    "max_pool_connections": int,
}


class AWSError(QchanError):
    """An AWS service refused a request or one entry of a batch; `code` is its error code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Service:
    """An AWS service as an adapter's errors name it, and what its error codes mean."""

    #: As errors name the service and what the adapter sends to ("SQS", "queue").
    name: str
    noun: str
    #: The adapter's error for what is worth retrying.
    error: type[AWSError]
    #: Codes of a request refused for what an entry holds (resent entry by entry, so only
    #: the entry at fault fails: a RejectedError), and of an entry never accepted.
    permanent: frozenset[str] = frozenset()
    #: Codes that say the target does not exist (the adapter's `_not_found`).
    not_found: frozenset[str] = frozenset()


class ClientOptions(TypedDict, total=False):
    """The keyword options of every AWS adapter that configure its boto3 client."""

    #: The service's URL (a local emulator, a VPC endpoint); default: AWS's for the region.
    endpoint: str | None
    region: str | None
    #: A boto3 Session to take credentials from; else one for `profile` (else the default chain).
    session: boto3.session.Session | None
    profile: str | None
    #: TLS: False to skip verification, or a CA bundle's path.
    verify: bool | str | None
    client_cert: str | tuple[str, str] | None
    connect_timeout: float
    read_timeout: float
    #: botocore's own attempts per call (the kernel retries failed sends on top).
    max_attempts: int
    max_pool_connections: int


#: The keyword options of `client` (the query keys plus those a URL cannot carry).
CLIENT_KEYWORDS = frozenset(ClientOptions.__annotations__)


def session_for(session: boto3.session.Session | None, profile: str | None) -> Any:
    """The boto3 session to make clients from: the one given, or one for `profile`."""
    return session or boto3.session.Session(profile_name=profile)


def client(service: str, what: str, **options: Unpack[ClientOptions]) -> Any:
    """A botocore client for `service`; ValueError naming `what` if no region is known.

    botocore only gets a short retry budget for transient errors (throttling, 5xx, a
    dropped connection): the kernel retries sends with its own backoff.
    """
    config: dict[str, Any] = {
        "connect_timeout": options.get("connect_timeout", 5.0),
        "read_timeout": options.get("read_timeout", 10.0),
        "retries": {"mode": "standard", "total_max_attempts": options.get("max_attempts", 3)},
        "max_pool_connections": options.get("max_pool_connections", 10),
    }
    if options.get("client_cert") is not None:
        config["client_cert"] = options["client_cert"]
    kwargs: dict[str, Any] = {
        "region_name": options.get("region"),
        "endpoint_url": options.get("endpoint"),
    }
    if options.get("verify") is not None:
        kwargs["verify"] = options["verify"]
    session = session_for(options.get("session"), options.get("profile"))
    try:
        return session.client(service, config=Config(**config), **kwargs)
    except NoRegionError:
        raise ValueError(
            f"no AWS region for {what}: pass region=... (or ?region= in the URL) or set "
            f"AWS_DEFAULT_REGION"
        ) from None


def code_of(e: ClientError) -> str:
    """The AWS error code of a failed call ("" if it has none)."""
    return str(e.response.get("Error", {}).get("Code", ""))


def too_long(code: str, message: str) -> bool:
    """Whether an error the service sent (for a request or an entry) refuses a message
    for its size: SQS's "Message must be shorter than N bytes", SNS's "Message too long",
    a *TooLong code."""
    return "shorter than" in message or "too long" in message.lower() or code.endswith("TooLong")


def failed_entries(
    failed: Sequence[Mapping[str, Any]], what: str, error: type[AWSError]
) -> dict[str, QchanError]:
    """Entry id -> error, for the `Failed` list of SQS SendMessageBatch or SNS PublishBatch.

    An entry the service blames on the sender (not throttling) can never pass:
    RejectedError, MessageTooLarge when refused for its size. Anything else is
    `error`, retried.
    """
    out: dict[str, QchanError] = {}
    for f in failed:
        code = f.get("Code", "")
        message = f.get("Message", "")
        text = f"{what}: {code}: {message}"
        if f.get("SenderFault") and code not in THROTTLING_CODES:
            refused = MessageTooLarge if too_long(code, message) else RejectedError
            out[str(f["Id"])] = refused(text)
        else:
            out[str(f["Id"])] = error(text, code)
    return out


def chunks(
    pending: Sequence[tuple[int, E, int]], max_entries: int, max_bytes: int
) -> Iterator[list[tuple[int, E, int]]]:
    """Consecutive runs of (bag index, entry, size) within both limits, order kept."""
    chunk: list[tuple[int, E, int]] = []
    total = 0
    for item in pending:
        size = item[2]
        if chunk and (len(chunk) == max_entries or total + size > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


def arn_region(name: str) -> str | None:
    """The region of an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:...), None for a plain name."""
    fields = name.split(":")
    if len(fields) >= 6 and fields[0] == "arn" and fields[3]:
        return fields[3]
    return None


def parse_url(
    url: str, kind: str, schemes: Collection[str], query: Mapping[str, Callable[[str], Any]]
) -> tuple[SplitResult, dict[str, Any]]:
    """The parts of an AWS transport URL and its typed query options.

    `kind` names the transport in errors ("SQS"). Credentials in the URL, an
    unknown query key (with the nearest valid one) and a bad value are errors.
    """
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as e:
        raise URLError(f"malformed {kind} URL {redact(url)!r}: {e}") from None
    if parts.scheme not in schemes:
        raise URLError(f"not an {kind} URL: {redact(url)!r}")
    if parts.username or parts.password:
        raise URLError(
            f"credentials in an {kind} URL are not supported ({redact(url)!r}); use boto3's "
            f"credential chain (environment, profile=..., instance or task role)"
        )
    params: dict[str, Any] = {}
    for key, value in pairs:
        if key not in query:
            raise unknown(
                f"{kind} URL {redact(url)!r}", [key], {*query, *QUEUE_URL_OPTIONS}, URLOptionError
            )
        try:
            params[key] = query[key](value)
        except (KeyError, ValueError):
            raise URLError(f"bad value {value!r} for {key!r} in {redact(url)!r}") from None
    return parts, params


class AWSAdapter(Adapter, Generic[E]):
    """What the AWS adapters share: sends as batches of entries of type E within the
    service's limits, a lookup of the target once, and botocore failures turned into
    the qchan errors the kernel acts on.

    Subclasses make an entry per bag (`_entry`), send a list of them (`_request`)
    and may look their target up (`_look_up`).
    """

    service: ClassVar[Service] = Service("AWS", "target", AWSError)
    #: Most bytes of one request.
    max_request_bytes: int
    #: The service's URL (never with credentials: boto3 signs requests).
    endpoint: str

    def __init__(self, name: str) -> None:
        super().__init__(name)
        #: The adapter module's logger (qchan.adapters.sqs, ...).
        self.log = logging.getLogger(type(self).__module__)
        self._ready = threading.Event()
        self._ready_lock = threading.Lock()

    @abc.abstractmethod
    def _entry(self, index: int, bag: Bag) -> tuple[E, int]:
        """The entry for `bag` (the `index`-th of its batch) and its size; RejectedError
        if the service would refuse it."""

    @abc.abstractmethod
    def _request(self, entries: list[E]) -> list[BaseException | None]:
        """One call; an outcome per entry. Raises what botocore raises."""

    def _look_up(self) -> None:
        """Find the target and read what the adapter needs of it; raises a QchanError."""

    def _prepare(self) -> None:
        """`_look_up` once, thread-safely (a failed one is tried again at the next call)."""
        if self._ready.is_set():
            return
        with self._ready_lock:
            if not self._ready.is_set():
                self._look_up()
                self._ready.set()

    def _error(self, what: str, e: BaseException) -> QchanError:
        """The qchan error for a botocore failure of `what` ("send"); never holds credentials.

        A `service.permanent` code is a RejectedError (MessageTooLarge when the service
        says the message or request is too long: a request of one message refused as
        too long is that message too large), a `service.not_found` one is `_not_found(code)`, a
        connection failure is ConnectionLost; anything else is `error_type`, retried.
        """
        where = redact(self.endpoint)
        about = f"{self.service.name} {what} on {self.service.noun} {self.name}"
        if isinstance(e, ClientError):
            code = code_of(e)
            msg = e.response.get("Error", {}).get("Message", "")
            if code in self.service.not_found:
                return self._not_found(code)
            text = f"{about} at {where} failed: {code}: {msg}"
            if code in self.service.permanent:
                if too_long(code, msg):
                    return MessageTooLarge(text)
                return RejectedError(text)
            return self.service.error(text, code)
        if isinstance(e, (botocore.exceptions.ConnectionError, HTTPClientError)):
            return ConnectionLost(f"{about} at {where} failed: {e}")
        if isinstance(e, NoCredentialsError):
            return self.service.error(
                f"{about}: no AWS credentials found (boto3 looks in the environment, ~/.aws, "
                f"profile=..., instance or task role)",
                "NoCredentials",
            )
        return self.service.error(f"{about} at {where} failed: {e}")

    def _not_found(self, code: str) -> QchanError:
        where = redact(self.endpoint)
        return self.service.error(f"{self.service.noun} {self.name!r} not found at {where}", code)

    def _check_now(self, lookup: Callable[[], object]) -> None:
        """Run `lookup` at connect, so a missing target fails there; an unreachable
        endpoint is logged and the lookup left to the first use."""
        try:
            lookup()
        except ConnectionLost as e:
            self.log.warning(
                "%s %s: endpoint not reachable yet, will retry on first use: %s",
                self.service.noun,
                self.name,
                e,
            )

    def send_batch(self, bags: Sequence[Bag]) -> Sequence[BaseException | None]:
        """Batches keep the order and stay within `max_batch` entries and
        `max_request_bytes`; once the endpoint is unreachable, no more are sent."""
        try:
            self._prepare()
        except QchanError as e:
            return [e] * len(bags)
        outcomes: list[BaseException | None] = [None] * len(bags)
        pending: list[tuple[int, E, int]] = []
        for i, bag in enumerate(bags):
            try:
                made, size = self._entry(i, bag)
            except RejectedError as e:
                self.log.warning(
                    "%s %s: message rejected before sending: %s", self.service.noun, self.name, e
                )
                outcomes[i] = e
            else:
                pending.append((i, made, size))
        down: BaseException | None = None
        for chunk in chunks(pending, self.max_batch, self.max_request_bytes):
            if down is not None:
                for i, _, _ in chunk:
                    outcomes[i] = down
            else:
                down = self._send_chunk(chunk, outcomes)
        return outcomes

    def _send_chunk(
        self,
        chunk: list[tuple[int, E, int]],
        outcomes: list[BaseException | None],
    ) -> BaseException | None:
        """One request; fills `outcomes`, returns the error if the endpoint is down."""
        try:
            results = self._request([e for _, e, _ in chunk])
        except ClientError as e:
            code = code_of(e)
            if code in self.service.permanent and len(chunk) > 1:
                self.log.info(
                    "%s %s: batch refused (%s), resending its %d entries one by one",
                    self.service.noun,
                    self.name,
                    code,
                    len(chunk),
                )
                for item in chunk:
                    down = self._send_chunk([item], outcomes)
                    if down is not None:
                        return down
                return None
            results = [self._error("send", e)] * len(chunk)
        except BotoCoreError as e:
            err = self._error("send", e)
            for i, _, _ in chunk:
                outcomes[i] = err
            return err if isinstance(err, ConnectionLost) else None
        for (i, _, _), outcome in zip(chunk, results, strict=True):
            outcomes[i] = outcome
        return None


class Publisher(AWSAdapter[E]):
    """A send-only AWS adapter (EventBridge, SNS): the send side of the contract alone, so
    `dequeue` on its queue raises SendOnlyError."""

    max_batch = 10
    #: The boto3 client (thread-safe), for what qchan does not wrap.
    client: Any
    region: str
    fifo = False

    def __init__(self, name: str, max_request_bytes: int, limit: int) -> None:
        super().__init__(name)
        if not 1024 <= max_request_bytes <= limit:
            raise ValueError(f"max_request_bytes must be 1024 to {limit}, not {max_request_bytes}")
        self.max_request_bytes = max_request_bytes

    def open(self) -> None:
        """Look the target up at connect, so a wrong name fails there (`open_url` calls it);
        an unreachable endpoint is logged and the lookup left to the first send."""
        self._check_now(self._prepare)

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.scheme}://{self._target()} "
            f"endpoint={redact(self.endpoint)} region={self.region}{' fifo' if self.fifo else ''}>"
        )

    def _target(self) -> str:
        """What the requests name (a name or an ARN)."""
        return self.name


P = TypeVar("P", bound=Publisher[Any])


def open_url(
    url: str,
    options: dict[str, Any],
    make: Callable[..., P],
    *,
    kind: str,
    scheme: str,
    query: Mapping[str, Callable[[str], Any]],
    keywords: Collection[str],
    example: str,
) -> P:
    """`make(target, **options)` for a `scheme://TARGET?...` URL (a name or an ARN),
    checked as `parse_url` does, then `open()`ed."""
    check_keywords(f"{scheme}://", options, keywords)
    parts, params = parse_url(url, kind, (scheme,), query)
    target = unquote(parts.netloc + parts.path).rstrip("/")
    if not target:
        raise URLError(f"{kind} URL {redact(url)!r} names nothing; e.g. {example}")
    params.update(options)
    adapter = make(target, **params)
    try:
        adapter.open()
    except BaseException:
        adapter.close()
        raise
    return adapter
