"""Retry policies. For sending, `Backoff`: constant, linear, exponential with full jitter;
for handling received messages, `Retries` (used by `serve`).

A `Backoff` answers one question: after the `attempt`-th failure, `elapsed`
seconds after the first try, how long to wait before trying again, or None
to give up (then the message goes to the dead-letter channel). `Retries`
answers the same for a message whose handler raised, per delivery: redeliver
after a growing delay, or give up and dead-letter it.
"""

from __future__ import annotations

import abc
import random
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

if TYPE_CHECKING:
    from .message import Msg

__all__ = ["Backoff", "Constant", "Exponential", "Linear", "Retries"]

T = TypeVar("T")


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


def _classes(value: Any) -> tuple[type[BaseException], ...]:
    classes = tuple(value) if isinstance(value, (tuple, list, set, frozenset)) else (value,)
    for c in classes:
        if not (isinstance(c, type) and issubclass(c, BaseException)):
            raise TypeError(f"retry_on/give_up_on take exception classes, not {c!r}")
    return classes


@attrs.frozen(kw_only=True)
class Retries:
    """What happens to a message whose handler raised (`serve`, or your own loop).

    It is redelivered after a delay that grows with each delivery: `delay`
    seconds after the first, times `factor` after each next one, at most
    `max_delay`; with `jitter`, each delay is drawn between half and all of
    that (so consumers that failed together do not retry together). After
    `max_deliveries` deliveries (None: never here; the transport's own
    threshold still applies) it goes to the dead-letter queue instead. An
    error that is an instance of `give_up_on` goes there at once (a
    validation error, say: retrying cannot help); one that is not an instance
    of `retry_on` too.

    In a hand-written loop: `ack.send(retries.failed(msg, err))`.
    """

    max_deliveries: int | None = attrs.field(default=10)
    delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_classes
    )
    give_up_on: tuple[type[BaseException], ...] = attrs.field(default=(), converter=_classes)

    def __attrs_post_init__(self) -> None:
        if self.max_deliveries is not None and (
            not isinstance(self.max_deliveries, int) or self.max_deliveries < 1
        ):
            raise ValueError(
                f"max_deliveries must be an int >= 1 or None, not {self.max_deliveries!r}"
            )
        for name in ("delay", "factor", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")

    def delay_after(self, deliveries: int) -> float:
        """Seconds before the next delivery of a message that failed `deliveries` times."""
        ceiling = min(self.max_delay, self.delay * self.factor ** min(max(deliveries, 1) - 1, 64))
        if not self.jitter:
            return ceiling
        return ceiling / 2 + random.uniform(0.0, ceiling / 2)  # noqa: S311

    def gives_up(self, error: BaseException, deliveries: int) -> bool:
        """Whether a message that failed with `error` on delivery `deliveries` is dead-lettered."""
        if isinstance(error, self.give_up_on) or not isinstance(error, self.retry_on):
            return True
        return self.max_deliveries is not None and deliveries >= self.max_deliveries

    def failed(self, msg: Msg[T], error: BaseException) -> Msg[T]:
        """The nack for `msg` whose handling raised `error`: redeliver later, or give up."""
        if self.gives_up(error, msg.deliveries):
            return msg.dead_letter(error)
        return msg.fail(error, delay=self.delay_after(msg.deliveries))
