"""Backoff policies: delays, jitter bounds, and when they give up."""

from __future__ import annotations

import pytest

from qchan import Constant, Exponential, Linear


def test_constant() -> None:
    p = Constant(0.2, max_attempts=3, max_elapsed=None)
    assert [p.next(n, 0.0) for n in (1, 2, 3)] == [0.2, 0.2, None]


def test_linear_with_cap() -> None:
    p = Linear(base=0.1, step=0.2, cap=0.4, max_attempts=None, max_elapsed=None)
    assert [round(p.delay(n), 3) for n in (1, 2, 3, 4)] == [0.1, 0.3, 0.4, 0.4]


def test_exponential_without_jitter_doubles_up_to_the_cap() -> None:
    p = Exponential(base=0.1, factor=2, cap=1.0, jitter=False, max_attempts=None)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5, 200)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_stays_below_the_exponential_ceiling_and_varies() -> None:
    p = Exponential(base=0.1, factor=2, cap=5.0)
    draws = [p.delay(4) for _ in range(2000)]
    assert all(0.0 <= d <= 0.8 for d in draws)
    assert 0.3 < sum(draws) / len(draws) < 0.5  # uniform on [0, 0.8]: mean 0.4
    assert len(set(draws)) > 1000


def test_max_elapsed_gives_up_and_clamps_the_last_wait() -> None:
    p = Constant(1.0, max_attempts=None, max_elapsed=2.5)
    assert p.next(1, 0.0) == 1.0
    assert p.next(3, 2.0) == 0.5
    assert p.next(4, 2.5) is None


def test_invalid_policies() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Constant(0.1, max_attempts=0)
    with pytest.raises(ValueError, match="max_elapsed"):
        Constant(0.1, max_elapsed=-1)
