"""A small live progress line for the command line (no dependency beyond the standard library)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """`[#####.....]  12,000/20,000 received  8,123/s`, redrawn in place on a terminal.

    Off a terminal (a pipe, CI logs) it prints a plain line at each quarter instead.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._quarter = 0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.1 or done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(done, now))
                self.stream.flush()
        else:
            quarter = 4 * done // self.total
            if quarter > self._quarter:
                self._quarter = quarter
                self.stream.write(self._line(done, now) + "\n")

    def finish(self, done: int) -> None:
        self.update(done)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _line(self, done: int, now: float) -> str:
        filled = self.width * min(done, self.total) // self.total
        rate = done / max(now - self.started, 1e-9)
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {done:>9,}/{self.total:,} {self.label}  {rate:,.0f}/s"
