"""The operator's commands: `qchan peek`, `redrive`, `purge` and `stats`.

They work on the adapters directly, with raw `Bag`s and no kernel threads: a
message is moved or shown byte for byte, with every attribute (`Category`,
`Source`, a foreign producer's own), and nothing is decoded.

redrive's rule: a message leaves the source only after the destination
accepted it. A send whose outcome is lost (a cut connection) is retried, so the
destination may get it twice: the summary counts those. A message that comes
back to the source after its move (its removal was lost with the connection) is
recognised by its id and removed without being sent again.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import attrs

from ..adapter import Adapter, Depth, Hooks, Operations, ReceivingAdapter
from ..errors import ConnectionLost, NotSupported, QchanError, RejectedError, describe
from ..message import Bag
from ..options import split_query
from ..retry import Exponential
from ..urls import URLError, adapter_names, open_adapter, redact
from .commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _body, _within, err

__all__ = [
    "Redriven",
    "Reports",
    "guarded",
    "open_raw",
    "open_receiving",
    "operations",
    "peek",
    "peek_command",
    "purge",
    "redrive",
    "redrive_command",
    "stats",
]

log = logging.getLogger("qchan.cli")


class Reports(Hooks):
    """Hooks that keep what an adapter reports (a failed ack, a lost connection)."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def report(self, error: BaseException) -> None:
        log.info("%s", error)
        self.errors.append(error)


def open_raw(url: str, seconds: float, *, moving: bool = False) -> Adapter:
    """The adapter for `url`, for an operator: it never creates or declares anything.

    RabbitMQ queues are checked, not declared (`declare=passive`), and no delivery is
    dead-lettered for its count (`max_deliveries=None`), unless the URL says otherwise.
    `moving` (for a redrive): an SQS queue's EventBridge and SNS envelopes stay as they
    are (`unwrap=false`), so that a moved message is the message received, and botocore
    does not retry on its own (`max_attempts=1`), so that every resend is counted.
    Kernel options in the URL's query (`in_flight=`, ...) are ignored.
    """
    adapter_url, _ = split_query(url, adapter_names(url, "QUERY_KEYS") or ())
    try:
        parts = urlsplit(adapter_url)
    except ValueError as e:
        raise URLError(f"malformed queue URL {redact(url)!r}: {e}") from None
    scheme, query = parts.scheme.lower(), parse_qs(parts.query)
    options: dict[str, Any] = _within(url, seconds)
    if scheme in ("amqp", "amqps"):
        if "declare" not in query:
            options["declare"] = "passive"
        if "max_deliveries" not in query:
            # The adapter dead-letters a delivery past max_deliveries when it arrives;
            # a peek or a redrive must never do that to what it only looks at or moves.
            options["max_deliveries"] = None
    if scheme == "sqs" and moving:
        if "unwrap" not in query:
            options["unwrap"] = False
        if "max_attempts" not in query:
            # The command retries and counts what it resends; botocore's own retries
            # would resend a batch whose reply was lost without anyone knowing.
            options["max_attempts"] = 1
    try:
        adapter = open_adapter(adapter_url, **options)
    except URLError:
        raise
    except (TypeError, ValueError) as e:  # an option the transport does not know, say
        raise URLError(f"cannot open {redact(url)}: {e}") from None
    adapter.bind(Reports())
    return adapter


def open_receiving(url: str, seconds: float, *, moving: bool = False) -> ReceivingAdapter:
    """`open_raw` for a command that receives: NotSupported for a send-only transport."""
    adapter = open_raw(url, seconds, moving=moving)
    if not isinstance(adapter, ReceivingAdapter):
        adapter.close()
        raise NotSupported(
            f"{adapter.scheme}:// only sends; its messages are received where it delivers "
            f"them (an SQS queue, say): use that queue's URL"
        )
    return adapter


def operations(adapter: Adapter, what: str) -> Operations:
    """The adapter's operator side; NotSupported (saying `what`) where it has none."""
    if not isinstance(adapter, Operations):
        raise NotSupported(f"{what} is not supported by {adapter.scheme}://")
    return adapter


def guarded(run: Callable[[], int], urls: Sequence[str], verbose: bool) -> int:
    """Run a command; its errors become a line on stderr and an exit code, no traceback
    unless `verbose`: 1 for a broker that failed (unreachable, refused), 2 for bad usage
    (URL, option, a missing queue, an operation the transport does not have)."""

    def say(text: str) -> None:
        for url in urls:
            text = text.replace(url, redact(url))
        err(text)

    try:
        return run()
    except ConnectionLost as e:
        say(str(e))
        return EXIT_FAILED
    except QchanError as e:
        say(str(e))
        return EXIT_USAGE
    except Exception as e:  # a client library's own error: say it in one line
        if verbose:
            log.exception("unexpected error")
        say(f"{describe(e)}{'' if verbose else ' (run with -v for the traceback)'}")
        return EXIT_FAILED


class _Pause:
    """Waits between the tries of an operation that fails, until it has failed for
    `seconds` in a row (`ok` ends a run of failures)."""

    def __init__(self, seconds: float) -> None:
        self._policy = Exponential(base=0.05, cap=1.0, max_attempts=None, max_elapsed=seconds)
        self._event = threading.Event()  # never set: a wait that is not a bare sleep
        self.ok()

    def ok(self) -> None:
        self._since: float | None = None
        self._attempt = 0

    def again(self) -> bool:
        """Wait before the next try; False once the failures have lasted too long."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        self._attempt += 1
        wait = self._policy.next(self._attempt, now - self._since)
        if wait is None:
            return False
        self._event.wait(wait)
        return True


def _line(bag: Bag) -> str:
    """One message as `qchan listen` prints it, plus its id and delivery count."""
    line = {
        "category": bag.category,
        "attributes": dict(bag.attributes),
        **_body(bag.body),
        "id": bag.id,
        "deliveries": bag.deliveries,
    }
    return json.dumps(line, ensure_ascii=False)


def _receive(adapter: ReceivingAdapter, n: int, wait: float, pause: _Pause) -> Sequence[Bag] | None:
    """Up to `n` bags, or None when the connection was lost (raised, or reported by an
    adapter that reconnects by itself) and `pause` waited before the next try. Raises
    the ConnectionLost once the broker stayed unreachable longer than `pause` allows."""
    reports = adapter.hooks.errors if isinstance(adapter.hooks, Reports) else []
    before = len(reports)
    try:
        bags = adapter.receive(n, wait)
    except ConnectionLost as e:
        lost = e
    else:
        if bags:
            pause.ok()
            return bags
        found = [e for e in reports[before:] if isinstance(e, ConnectionLost)]
        if not found:
            return bags
        lost = found[-1]
    log.info("receive failed: %s", lost)
    if not pause.again():
        raise lost
    return None


def _arrivals(
    adapter: ReceivingAdapter, want: Callable[[], int], timeout: float, pause: _Pause
) -> Iterator[Sequence[Bag]]:
    """Batches of at most `want()` bags from `adapter`, until `want()` is 0 or `timeout`
    seconds pass without one. The clock starts again once the caller has handled a batch,
    and while the broker is unreachable (`pause` bounds that)."""
    last = time.monotonic()
    while (n := want()) > 0:
        left = last + timeout - time.monotonic()
        if left <= 0:
            return
        bags = _receive(adapter, n, min(left, 5.0), pause)
        if bags is None:  # unreachable for a moment: the timeout starts again
            last = time.monotonic()
        elif bags:
            yield bags
            last = time.monotonic()


def peek(
    adapter: ReceivingAdapter, *, count: int, timeout: float, retry_seconds: float, out: IO[str]
) -> int:
    """Print up to `count` messages as JSON lines and give them back untouched (an uncounted
    `give_back`).

    Stops once `timeout` seconds pass without a message (an empty queue is no error).
    Nothing counts as a delivery (`msg.deliveries`, `max_deliveries`); SQS's own
    ApproximateReceiveCount does count a FIFO queue's peek (docs/reliability.md)."""
    got: list[Bag] = []
    pause = _Pause(retry_seconds)
    try:

        def want() -> int:
            return min(count - len(got), adapter.max_receive)

        for bags in _arrivals(adapter, want, timeout, pause):
            got.extend(bags)
            for bag in bags:
                out.write(_line(bag) + "\n")
            out.flush()
    finally:
        if got:
            adapter.give_back(got, counted=False)
    err(f"peeked at {len(got)} message(s); all given back")
    return EXIT_OK


@attrs.define
class Redriven:
    """What a redrive did (its summary)."""

    #: Accepted by the destination, then removed from the source.
    moved: int = 0
    #: Not moved: the destination refused them, or kept failing (they are in the source).
    failed: int = 0
    #: Came back to the source after their move (the removal was lost): removed, not resent.
    again: int = 0
    #: Sent again after a send whose outcome was lost: each may be in the destination twice
    #: (or more: `resends` counts the extra sends).
    resent: int = 0
    resends: int = 0
    #: Moved, but their removal from the source was not confirmed: they may be there still.
    unsure: int = 0
    #: The first few failures, as text.
    reasons: list[str] = attrs.Factory(list)
    #: Why the redrive stopped before FROM was empty (a broker that kept failing), if it did.
    stopped: str | None = None

    @property
    def maybe_duplicated(self) -> int:
        """Messages that may be in both queues, or twice in the destination."""
        return self.resent + self.unsure


def redrive(
    source: ReceivingAdapter,
    target: Adapter,
    *,
    count: int | None,
    timeout: float,
    retry_seconds: float,
    done: Redriven | None = None,
) -> Redriven:
    """Move messages from `source` to `target` (see the module docstring); stops after
    `count`, or once `timeout` seconds pass without a message."""
    r = done if done is not None else Redriven()
    moved: set[str] = set()  # ids moved in this run
    refused: set[str] = set()  # ids that failed in this run (held until the end)
    held: list[Bag] = []  # failed ones: given back at the end, so they are not taken again
    in_hand: list[Bag] = []
    pause = _Pause(retry_seconds)
    batch = max(1, min(source.max_receive, target.max_batch))
    try:

        def want() -> int:
            return batch if count is None else min(batch, count - r.moved)

        for bags in _arrivals(source, want, timeout, pause):
            in_hand = list(bags)
            again = [b for b in bags if b.id is not None and b.id in moved]
            held += [b for b in bags if b.id is not None and b.id in refused]
            fresh = [b for b in bags if b.id is None or (b.id not in moved and b.id not in refused)]
            if again:
                r.again += len(again)
                r.unsure += len(again) - _remove(source, again, retry_seconds)
            if fresh:
                outcomes = _send(target, fresh, retry_seconds, r)
                ok = [b for b, o in zip(fresh, outcomes, strict=True) if o is None]
                bad = [(b, o) for b, o in zip(fresh, outcomes, strict=True) if o is not None]
                r.moved += len(ok)
                moved.update(b.id for b in ok if b.id is not None)
                r.unsure += len(ok) - _remove(source, ok, retry_seconds)
                for b, o in bad:
                    r.failed += 1
                    if b.id is not None:
                        refused.add(b.id)
                    held.append(b)
                    if len(r.reasons) < 5:
                        r.reasons.append(f"{b.id or '(no id)'} ({b.category!r}): {describe(o)}")
                down = [o for _, o in bad if not isinstance(o, RejectedError)]
                if down:  # TO kept failing for retry_seconds: every next batch would too
                    r.stopped = f"TO kept failing for {retry_seconds:g} s: {describe(down[-1])}"
                    in_hand = []
                    break
            in_hand = []
    finally:
        kept = {id(b) for b in held}
        back = held + [b for b in in_hand if id(b) not in kept]
        if back:
            source.give_back(back, counted=False)
    return r


def _copy(bag: Bag) -> Bag:
    """The message to send: as received, without the source's receipt and count."""
    return Bag(
        category=bag.category,
        body=bag.body,
        attributes=bag.attributes,
        id=bag.id,
        key=bag.key,
        content_type=bag.content_type,
    )


def _send(
    target: Adapter, bags: Sequence[Bag], retry_seconds: float, r: Redriven
) -> list[BaseException | None]:
    """One outcome per bag; failures other than a refusal are retried for `retry_seconds`."""
    copies = [_copy(b) for b in bags]
    outcomes: list[BaseException | None] = [None] * len(bags)
    pending = list(range(len(bags)))
    resent: set[int] = set()
    pause = _Pause(retry_seconds)
    while True:
        try:
            got: Sequence[BaseException | None] = target.send_batch([copies[i] for i in pending])
        except Exception as e:  # noqa: BLE001 - the call failed: so did every bag of it
            got = [e] * len(pending)
        retry = []
        for i, outcome in zip(pending, got, strict=True):
            outcomes[i] = outcome
            if outcome is not None and not isinstance(outcome, RejectedError):
                retry.append(i)
        if not retry or not pause.again():
            r.resent += len(resent)
            return outcomes
        # A send that failed may still have reached the broker (its reply was lost).
        r.resends += len(retry)
        resent.update(retry)
        pending = retry


def _remove(source: ReceivingAdapter, bags: Sequence[Bag], retry_seconds: float) -> int:
    """Ack `bags` on the source, again while it reports a failure; how many are confirmed
    (for an adapter that acks without waiting, RabbitMQ's, all of them: a lost ack there
    brings the message back to this run, which removes it then)."""
    hooks = source.hooks
    errors = hooks.errors if isinstance(hooks, Reports) else None
    pause = _Pause(retry_seconds)
    while True:
        before = len(errors) if errors is not None else 0
        try:
            source.ack(bags)
            failed = errors is not None and len(errors) > before
        except Exception as e:  # noqa: BLE001 - retried, then counted as unsure
            log.info("ack failed: %s", e)
            failed = True
        if not failed:
            return len(bags)
        if not pause.again():
            return 0


def _depth_text(d: Depth) -> str:
    def n(v: int | None) -> str:
        return "unknown" if v is None else f"{v:,}"

    text = f"{n(d.ready)} ready, {n(d.in_flight)} in flight"
    return text + (f", {n(d.delayed)} delayed" if d.delayed is not None else "")


def redrive_command(
    source_url: str, target_url: str, *, count: int | None, timeout: float, retry_seconds: float
) -> int:
    """`qchan redrive FROM TO`: move, then print the summary; exit 1 if anything failed."""
    if redact(source_url) == redact(target_url):
        raise URLError("FROM and TO are the same queue: a redrive would move messages in circles")
    source = open_receiving(source_url, retry_seconds, moving=True)
    try:
        target = open_raw(target_url, retry_seconds, moving=True)
    except BaseException:
        source.close()
        raise
    r = Redriven()
    interrupted = False
    try:
        redrive(source, target, count=count, timeout=timeout, retry_seconds=retry_seconds, done=r)
    except KeyboardInterrupt:
        interrupted = True
    except ConnectionLost as e:  # FROM unreachable for retry_seconds: say what was done
        r.stopped = f"FROM kept failing for {retry_seconds:g} s: {e}"
    finally:
        left = _left(source)
        target.close()
        source.close()
    src, dst = redact(source_url), redact(target_url)
    err(f"moved {r.moved:,} message(s) from {src} to {dst}; {r.failed:,} failed (still in FROM)")
    for reason in r.reasons:
        err(f"  not moved: {reason}")
    if r.again:
        err(f"{r.again:,} came back to FROM after their move (a lost ack): removed, not sent again")
    if r.resent:
        err(
            f"{r.resent:,} may be in TO twice or more (sent {r.resends:,} more time(s) "
            f"after sends whose outcome was lost)"
        )
    if r.unsure:
        err(f"{r.unsure:,} moved but not confirmed removed: they may still be in FROM too")
    if r.failed and source.scheme == "kafka":
        err(
            "on Kafka, FROM's group commits each partition only up to its first message not "
            "moved: the ones moved after it will be received again (a later redrive moves "
            "them again)"
        )
    if left is not None:
        err(f"FROM holds {_depth_text(left)} now")
    if r.stopped:
        err(f"stopped: {r.stopped}")
    if interrupted:
        err("interrupted: messages being moved went back to FROM (they may be in TO too)")
        raise KeyboardInterrupt
    return EXIT_FAILED if r.failed or r.unsure or r.stopped else EXIT_OK


def _left(adapter: Adapter) -> Depth | None:
    try:
        return operations(adapter, "queue depth").depth()
    except Exception as e:  # noqa: BLE001 - only for the summary
        log.info("depth after redrive: %s", e)
        return None


def peek_command(
    url: str, *, count: int, timeout: float, retry_seconds: float, out: IO[str]
) -> int:
    adapter = open_receiving(url, retry_seconds)
    try:
        return peek(adapter, count=count, timeout=timeout, retry_seconds=retry_seconds, out=out)
    finally:
        adapter.close()


def stats(url: str, *, as_json: bool, out: IO[str]) -> int:
    """`qchan stats URL`: depth, in flight (and delayed) as the broker tells."""
    adapter = open_raw(url, 10.0)
    try:
        d = operations(adapter, "queue depth").depth()
    finally:
        adapter.close()
    if as_json:
        out.write(json.dumps({"url": redact(url), **attrs.asdict(d)}) + "\n")
    else:
        out.write(f"{redact(url)}: {_depth_text(d)}\n")
    return EXIT_OK


def purge(url: str, *, yes: bool, stdin: IO[str]) -> int:
    """`qchan purge URL`: delete every message, after a confirmation on a terminal (or --yes)."""
    adapter = open_raw(url, 10.0)
    try:
        ops = operations(adapter, "purge")
        if not yes:
            try:
                d: Depth | None = ops.depth()
            except NotSupported:
                d = None
            known = [v for v in (d.ready, d.in_flight, d.delayed) if v is not None] if d else []
            what = f"{sum(known):,} message(s)" if known else "every message"
            if not stdin.isatty():
                err(f"not purged: {what} in {redact(url)}; confirm with --yes (no terminal to ask)")
                return EXIT_FAILED
            print(f"purge {what} from {redact(url)}? [y/N] ", end="", file=sys.stderr, flush=True)
            answer = stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                err("not purged")
                return EXIT_FAILED
        n = ops.purge()
    finally:
        adapter.close()
    if n is None:
        err(f"purged {redact(url)} (the broker does not say how many)")
    else:
        err(f"purged {n:,} message(s) from {redact(url)}")
    return EXIT_OK
