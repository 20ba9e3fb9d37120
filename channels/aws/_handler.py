"""`lambda_handler`: run `serve`'s handler functions on the events AWS Lambda is invoked with."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypedDict, TypeVar, Unpack

import attrs
import cattrs

from .. import tracing
from ..codec import Codec, JSONCodec, category_for, codec_for
from ..errors import DecodeError, MessageError, QchanError, UnroutableError
from ..kernel.routes import ANY, short, type_name
from ..message import Msg
from ..options import OptionError, check_seconds
from ._records import DynamoDBRecord, S3Record
from ._sources import Batch, Record, parse

__all__ = ["LambdaHandler", "RecordsFailed", "lambda_handler"]

T = TypeVar("T")


class RouteOptions(TypedDict, Generic[T], total=False):
    """How a route decodes and calls its handler (`serve`'s keywords of the same names)."""

    category: str | None
    with_msg: bool
    codec: Codec[T] | None
    converter: cattrs.Converter | None


log = logging.getLogger("qchan.aws")

#: What a partial batch response looks like: {"batchItemFailures": [{"itemIdentifier": id}]}.
Response = dict[str, list[dict[str, str]]]

#: Records built by qchan go to the route of their type, whatever its category.
_BUILT = (S3Record, DynamoDBRecord)


class RecordsFailed(QchanError):
    """Records of an event without partial batch responses failed: Lambda retries the event.

    `failed` lists the ids of the failed records; `__cause__` is the first
    failure. Each failure was logged already, with its record id.
    """

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed


@attrs.frozen
class _Route:
    work: Callable[[Any], object]
    type: Any
    category: str
    codec: Codec[Any]
    with_msg: bool


class _Outcome:
    """The failures of one invocation, in record order."""

    def __init__(self) -> None:
        self.failed: list[Record] = []
        self.first: BaseException | None = None
        self.groups: set[str] = set()  # groups with a failure: later records wait

    def fail(self, record: Record, error: BaseException | None) -> None:
        self.failed.append(record)
        if self.first is None and error is not None:
            self.first = error
        if record.group is not None:
            self.groups.add(record.group)


class LambdaHandler:
    """The function Lambda calls: `handler(event, context)`. Made by `lambda_handler`.

    Add a handler for another type, routed by category as on a queue, with
    `route` (it returns the handler, so calls chain).
    """

    def __init__(self, margin: float, unwrap: bool = True) -> None:
        self.margin = margin
        self.unwrap = unwrap
        self._routes: dict[str, _Route] = {}
        self._built: dict[type, _Route] = {}

    def route(
        self,
        work: Callable[[T], object] | Callable[[Msg[T]], object],
        type_: type[T],
        *,
        category: str | None = None,
        with_msg: bool = False,
        codec: Codec[T] | None = None,
        converter: cattrs.Converter | None = None,
    ) -> LambdaHandler:
        """Handle messages of `category` (default: `type_`'s name) with `work`, as `serve` would.

        `category="*"` takes every category no other route takes, `""` the
        messages without one. `S3Record` and `DynamoDBRecord` routes get the
        S3 and DynamoDB Streams records, whatever their category.
        """
        if not callable(work):
            raise OptionError(f"lambda_handler needs a handler function, not {work!r:.80}")
        if not isinstance(with_msg, bool):
            raise OptionError(f"lambda_handler: with_msg must be True or False, not {with_msg!r}")
        try:
            cat = category_for(type_) if category is None else category
        except TypeError as e:
            raise OptionError(f"lambda_handler: {e}") from None
        if not isinstance(cat, str):
            raise OptionError(f"lambda_handler: category must be a str, not {cat!r:.80}")
        if cat in self._routes:
            raise OptionError(
                f"lambda_handler: category {cat!r} has a handler already "
                f"({self._routes[cat].work!r:.80}); give the new one category=..."
            )
        r = _Route(work, type_, cat, codec or codec_for(type_, converter), with_msg)
        self._routes[cat] = r
        if type_ in _BUILT:
            self._built.setdefault(type_, r)
        return self

    def __call__(self, event: Any, context: Any = None) -> Response | None:
        """Handle every record of `event`; the partial batch response for SQS and DynamoDB.

        Raises `RecordsFailed` when a record failed and the source has no
        partial responses (SNS, S3, EventBridge), so that Lambda retries the
        event; `UnknownEvent` for an event from no source qchan knows.
        """
        batch = parse(event, self.unwrap)
        outcome = _Outcome()
        late: list[Record] = []  # not started: too little time left
        blocked: list[Record] = []  # not started: an earlier record of their group failed
        started = 0
        for record in batch.records:
            if started and _too_late(context, self.margin):
                late.append(record)
                outcome.fail(record, None)
                continue
            if record.group is not None and record.group in outcome.groups:
                blocked.append(record)
                outcome.fail(record, None)
                continue
            started += 1
            self._one(batch.source, record, outcome)
        if blocked:
            log.warning(
                "lambda: %d %s record(s) not started, reported failed: an earlier record of "
                "their %s failed (%s)",
                len(blocked),
                batch.source,
                "message group" if batch.source == "sqs" else "shard",
                _ids(blocked),
            )
        if late:
            log.warning(
                "lambda: %d %s record(s) not started, reported failed: less than the margin "
                "of %.3f s left (%s)",
                len(late),
                batch.source,
                self.margin,
                _ids(late),
            )
        return _answer(batch, outcome)

    def _one(self, source: str, record: Record, outcome: _Outcome) -> None:
        """Decode, route and handle one record; a failure is logged once and counted."""
        try:
            route, msg = self._resolve(source, record)
        except MessageError as e:
            log.error("lambda: %s", e)
            outcome.fail(record, e)
            return
        try:
            with tracing.consumer_span(msg):
                route.work(msg if route.with_msg else msg.object)
        except Exception as e:  # logged with its traceback, answered as failed
            log.error(
                "lambda: handler failed on %s %s record %s; reported failed",
                short(msg.category),
                source,
                record.id or "(no id)",
                exc_info=e,
            )
            outcome.fail(record, e)

    def _resolve(self, source: str, record: Record) -> tuple[_Route, Msg[Any]]:
        """The route and the message for `record`; a MessageError if there is none."""
        if record.error is not None:
            raise record.error
        bag = record.bag
        if record.built is not None:
            route = self._built.get(type(record.built))
            if route is None:
                raise UnroutableError(
                    f"no handler takes {type(record.built).__name__} ({source} record "
                    f"{record.id}); route one with lambda_handler(work, "
                    f"{type(record.built).__name__})",
                    bag,
                )
            return route, Msg(record.built, route.category, None, bag.attributes, bag=bag)
        route = self._routes.get(bag.category) or self._routes.get(ANY)
        if route is None or route.type in _BUILT:
            raise UnroutableError(
                f"no handler for category {short(bag.category)} ({source} record "
                f"{short(record.id)}); handlers: {', '.join(map(repr, self._routes)) or 'none'}",
                bag,
            )
        try:
            obj = route.codec.decode(bag.body)
        except Exception as e:  # any codec failure: this record's DecodeError
            why = JSONCodec.explain(e)
            err = DecodeError(
                f"cannot decode a {short(bag.category)} message ({source} record "
                f"{short(record.id)}, {len(bag.body)} bytes) as {type_name(route.codec)}: "
                f"{why[:500]}",
                bag,
            )
            err.__cause__ = e
            raise err from e
        return route, Msg(obj, bag.category, bag.digest, bag.attributes, bag=bag)


def _too_late(context: Any, margin: float) -> bool:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining is not None and remaining() < margin * 1000


def _ids(records: list[Record]) -> str:
    ids = [r.id or "(no id)" for r in records]
    return ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


def _answer(batch: Batch, outcome: _Outcome) -> Response | None:
    failed = outcome.failed
    if batch.partial and all(r.id is not None for r in failed):
        return {"batchItemFailures": [{"itemIdentifier": r.id} for r in failed if r.id]}
    if not failed:
        return None
    # No partial response (or a record without an id to name in one): the event fails
    # as a whole and Lambda retries it by its own rules.
    error = RecordsFailed(
        f"{len(failed)} of {len(batch.records)} {batch.source} record(s) failed "
        f"({_ids(failed)}); Lambda retries the event",
        [r.id or "(no id)" for r in failed],
    )
    raise error from outcome.first


def lambda_handler(
    work: Callable[[T], object] | Callable[[Msg[T]], object],
    type_: type[T],
    *,
    margin: float = 1.0,
    unwrap: bool = True,
    **options: Unpack[RouteOptions[T]],
) -> LambdaHandler:
    """The function for Lambda to call, running `work` on every `type_` message of an event.

    `work` has `serve`'s signature: it gets the object (the `Msg` with
    `with_msg=True`); returning means done, raising means failed. Events from
    SQS, SNS, EventBridge, S3 and DynamoDB Streams are told apart by their
    shape. Failed records of SQS and DynamoDB events are answered as a
    partial batch response (the event source mapping must enable
    `ReportBatchItemFailures`); for the other sources a failure raises
    `RecordsFailed`, so that Lambda retries the event. A record not started
    while `margin` seconds or more were left (`context.get_remaining_time_in_millis()`)
    is answered as failed, unprocessed; the first record is always started.
    An SQS message that is an EventBridge event or SNS notification (a queue
    fed by a rule or a subscription) is the message inside, routed by its own
    category, unless `unwrap=False` (as the sqs:// option). More types:
    `.route(work, OtherType)`.
    """
    check_seconds("margin", margin, where="lambda_handler")
    if not isinstance(unwrap, bool):
        raise OptionError(f"lambda_handler: unwrap must be True or False, not {unwrap!r}")
    handler = LambdaHandler(float(margin), unwrap)
    return handler.route(work, type_, **options)
