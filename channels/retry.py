"""Backoff policies for the emitter's retries: constant, linear, exponential with full jitter.

A policy answers one question: after the `attempt`-th failure, `elapsed`
seconds after the first try, how long to wait before trying again, or None
to give up (then the message goes to the dead-letter channel).
"""

from __future__ import annotations

import abc
import random

import attrs

__all__ = ["Backoff", "Constant", "Exponential", "Linear"]


@attrs.frozen
class Backoff(abc.ABC):
    """Give up after `max_attempts` tries in all, or once `max_elapsed` seconds have passed."""

    max_attempts: int | None = attrs.field(default=8, kw_only=True)
    max_elapsed: float | None = attrs.field(default=60.0, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (1: never retry), not {self.max_attempts}")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError(f"max_elapsed must be >= 0 s, not {self.max_elapsed}")

    @abc.abstractmethod
    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th failure (attempt >= 1), before any limit."""

    def next(self, attempt: int, elapsed: float) -> float | None:
        """The wait before try number `attempt + 1`, or None when the policy gives up."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return None
        wait = self.delay(attempt)
        if self.max_elapsed is not None:
            wait = min(wait, self.max_elapsed - elapsed)
        return max(0.0, wait)


@attrs.frozen
class Constant(Backoff):
    """The same wait every time."""

    interval: float = 0.1

    def delay(self, attempt: int) -> float:
        return self.interval


@attrs.frozen
class Linear(Backoff):
    """`base`, then `step` more after each failure, at most `cap`."""

    base: float = 0.1
    step: float = 0.1
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base + self.step * (attempt - 1))


@attrs.frozen
class Exponential(Backoff):
    """`base * factor**(attempt-1)`, at most `cap`; with full jitter, a uniform draw below that.

    Full jitter (AWS architecture blog, "Exponential Backoff and Jitter") keeps
    many clients that failed together from retrying together.
    """

    base: float = 0.05
    factor: float = 2.0
    cap: float = 5.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * self.factor ** min(attempt - 1, 64))
        return random.uniform(0.0, ceiling) if self.jitter else ceiling  # noqa: S311
