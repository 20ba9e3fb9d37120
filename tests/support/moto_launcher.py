"""Test-only launcher: moto's server with SQS queue attributes computed lazily.

Run as `python tests/support/moto_launcher.py -H 127.0.0.1 -p PORT` (same arguments
as `moto_server`). Why it exists: moto 5.2's `Queue.attributes` is a property
that rebuilds every queue attribute, including three scans of the whole
queue (ApproximateNumberOfMessages, ...Delayed, ...NotVisible), and the send
path reads it several times per message just to look up
`ContentBasedDeduplication`. Sending therefore costs O(queue depth): about
500 sends/s at depth 50, under 100/s at depth 500, so any test or benchmark
that lets a queue fill up measures moto rather than the code under test.

The patch below replaces the property by a read-only mapping that computes an
attribute only when it is looked up. Lookups return exactly what moto would
(same keys, same values, booleans lowered to "true"/"false"), so
GetQueueAttributes answers are unchanged; only unrequested scans are skipped.
Likewise `Queue.messages`, which ReceiveMessage iterates only until it has
MaxNumberOfMessages, becomes a lazy view instead of a list of the whole queue.
And a long poll of a FIFO queue no longer keeps a group blocked after its
in-flight messages were deleted, nor spins while waiting (see
`_sliced_long_poll`): real SQS does neither.
It also turns off werkzeug's one-line-per-request log. Nothing else about
moto changes. This file is never imported by qchan itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from moto.core.utils import camelcase_to_underscores


class _LazyAttributes(Mapping[str, Any]):
    """`Queue.attributes` as moto computes it, one key at a time."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._names = _attribute_names(queue)

    def __getitem__(self, key: str) -> Any:
        if key not in self._names:
            raise KeyError(key)
        q = self._queue
        if key == "RedrivePolicy" and q.redrive_policy:
            value: Any = json.dumps(q.redrive_policy)
        else:
            value = getattr(q, camelcase_to_underscores(key))
        return str(value).lower() if isinstance(value, bool) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _VisibleMessages:
    """`Queue.messages` (visible, not delayed) as a lazy view instead of a fresh list.

    ReceiveMessage iterates it and stops after MaxNumberOfMessages, so a view
    makes a receive cost O(messages skipped) instead of O(queue depth).
    """

    def __init__(self, queue: Any) -> None:
        self._all = queue._messages

    def __iter__(self) -> Iterator[Any]:
        return (m for m in self._all if m.visible and not m.delayed)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return any(True for _ in self)


def _sliced_long_poll(receive: Any) -> Any:
    """Wrap `SQSBackend.receive_message` so a long poll is a series of non-waiting polls.

    moto decides which FIFO message groups are blocked (have messages in
    flight) once, when the poll starts, and waits with `wait_for(any visible
    message)`: a group whose messages are deleted during the poll stays
    blocked until the poll ends (real SQS returns its next messages), and
    while only blocked groups have visible messages the wait spins at full
    CPU. Here each slice is a fresh non-waiting receive; between slices the
    poll sleeps on the queue's condition, which a new message wakes at once,
    and at most 50 ms (deletes do not notify it).
    """

    def receive_message(
        self: Any, queue_name: str, count: int, wait_seconds_timeout: int, *rest: Any
    ) -> Any:
        deadline = time.monotonic() + (wait_seconds_timeout or 0)
        while True:
            result = receive(self, queue_name, count, 0, *rest)
            left = deadline - time.monotonic()
            if result or left <= 0:
                return result
            lock = self.get_queue(queue_name)._messages_lock
            with lock:
                lock.wait(min(0.05, left))

    return receive_message


def _attribute_names(queue: Any) -> list[str]:
    """The keys moto's own `Queue.attributes` would have, in the same order."""
    names = list(queue.BASE_ATTRIBUTES)
    if queue.fifo_queue:
        names += queue.FIFO_ATTRIBUTES
    if queue.kms_master_key_id:
        names += queue.KMS_ATTRIBUTES
    return names


def patch_moto() -> None:
    """Install the lazy `Queue.attributes` and `Queue.messages`, and the sliced long poll."""
    from moto.sqs import models

    if getattr(models, "_qchan_patched", False):
        return
    models._qchan_patched = True  # type: ignore[attr-defined]
    models.Queue.attributes = property(_LazyAttributes)  # type: ignore[assignment]
    models.Queue.messages = property(_VisibleMessages)  # type: ignore[assignment]
    backend = models.SQSBackend
    backend.receive_message = _sliced_long_poll(backend.receive_message)  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    patch_moto()
    # One log line per request costs the server time and fills its stderr;
    # keep warnings and errors only.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
