"""Logs a person can read: repeated lines collapsed, client libraries' lines kept apart.

`Repeats` lets the first of a run of like lines through and then at most one
per `every` seconds, saying how many were held back ("47 more like it in the
last 30 s"). Lines are alike when they differ only in numbers (librdkafka's
"after 0ms", a port, a count). `CLIENT` is the parent logger of the client
libraries' own lines (librdkafka's, routed at DEBUG): the command line shows
them with -v.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

__all__ = ["CLIENT", "Repeats", "client_logger"]

#: librdkafka's own lines go to `qchan.client.kafka`, at DEBUG.
CLIENT = "qchan.client"

_DIGITS = re.compile(r"\d+")


class Repeats:
    """Collapse repeated log lines: the first, then at most one per `every` seconds."""

    def __init__(self, every: float = 30.0, clock: Any = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # shape -> (last shown, held back)

    def check(self, text: str) -> tuple[bool, int]:
        """(show it?, how many like it were held back since the last one shown)."""
        shape = _DIGITS.sub("#", text)
        now = self._clock()
        with self._lock:
            last = self._seen.get(shape)
            if last is None or now - last[0] >= self.every:
                self._seen[shape] = (now, 0)
                if len(self._seen) > 1000:
                    self._seen.pop(next(iter(self._seen)))
                return True, 0 if last is None else last[1]
            self._seen[shape] = (last[0], last[1] + 1)
            return False, 0

    def log(
        self, logger: logging.Logger | logging.LoggerAdapter[Any], level: int, text: str
    ) -> None:
        """Log `text` at `level` unless a like line was shown within `every` seconds."""
        show, held = self.check(text)
        if show:
            if held:
                text += f" ({held} more like it in the last {self.every:.0f} s)"
            logger.log(level, "%s", text)


class _AtDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What confluent-kafka's `logger` gets: every line of librdkafka at DEBUG (qchan reports
    what matters itself, once, through `error_cb`)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)


def client_logger(name: str) -> logging.LoggerAdapter[Any]:
    """The logger a client library's own lines go to: `qchan.client.<name>`, at DEBUG."""
    return _AtDebug(logging.getLogger(f"{CLIENT}.{name}"), {})
