"""Retry delays: exponential bounds, jitter spread, the provider's wait as a floor, the defer threshold."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from shared.config import FileConfig, RetryConfig
from shared.retry import RETRY_AFTER_SPREAD, RetryPolicy

CFG = RetryConfig(max_attempts=4, backoff_base=0.1, backoff_max=3.0)


def policy(jitter: str = "full", cfg: RetryConfig = CFG, seed: int = 7) -> RetryPolicy:
    return RetryPolicy(cfg, jitter=jitter, rng=random.Random(seed))  # type: ignore[arg-type]


def test_ceiling_doubles_then_caps() -> None:
    p = policy()
    assert [p.ceiling(n) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0])
    assert p.ceiling(10_000) == 3.0  # no overflow
    assert p.max_attempts == 4


@pytest.mark.parametrize("n", [0, 1, 3, 5, 50])
def test_full_jitter_stays_within_zero_and_the_ceiling_and_spreads(n: int) -> None:
    p = policy()
    cap = p.ceiling(n)
    samples = [p.delay(n) for _ in range(500)]
    assert all(0.0 <= s <= cap for s in samples)
    assert min(samples) < 0.1 * cap and max(samples) > 0.9 * cap  # jitter covers the range


def test_decorrelated_jitter_bounds() -> None:
    p = policy("decorrelated")
    for n in range(8):
        samples = [p.delay(n) for _ in range(300)]
        upper = min(3.0, 0.1 * 3.0 ** (n + 1))
        assert all(0.1 <= s <= upper + 1e-12 for s in samples)
    prev = 0.5
    samples = [p.delay(3, previous=prev) for _ in range(300)]
    assert all(0.1 <= s <= 1.5 for s in samples)
    assert max(samples) > 1.3
    assert all(p.delay(2, previous=100.0) <= 3.0 for _ in range(100))  # capped


@pytest.mark.parametrize("jitter", ["full", "decorrelated"])
def test_retry_after_is_a_floor_with_a_small_spread(jitter: str) -> None:
    p = policy(jitter)
    samples = [p.delay(0, retry_after=5.0) for _ in range(500)]
    assert all(5.0 <= s <= 5.0 * (1 + RETRY_AFTER_SPREAD) for s in samples)
    assert max(samples) - min(samples) > 0.3  # not every job wakes in the same instant


def test_short_retry_after_never_shortens_the_backoff() -> None:
    p = policy()
    samples = [p.delay(6, retry_after=0.01) for _ in range(500)]
    assert all(0.01 <= s <= 3.0 for s in samples)
    assert max(samples) > 2.5


@pytest.mark.parametrize("bad", [None, 0.0, -3.0, math.nan, math.inf])
def test_unusable_retry_after_is_ignored(bad: float | None) -> None:
    p = policy()
    assert all(0.0 <= p.delay(2, retry_after=bad) <= 0.4 for _ in range(200))


def test_should_defer_above_the_threshold() -> None:
    p = policy()
    assert CFG.defer_threshold_s == 2.0
    assert not p.should_defer(2.0)
    assert p.should_defer(2.01)
    assert p.should_defer(p.delay(0, retry_after=30.0))  # a long 429 wait leaves the worker
    assert not p.should_defer(p.delay(0))
    strict = policy(cfg=RetryConfig(defer_threshold_s=0.5))
    assert strict.should_defer(0.6) and not strict.should_defer(0.4)


def test_defer_threshold_comes_from_fusebox_toml_and_is_validated() -> None:
    cfg = FileConfig.model_validate({"retry": {"defer_threshold_s": 10}})
    assert not RetryPolicy(cfg.retry).should_defer(9.0)
    with pytest.raises(ValidationError):
        RetryConfig(defer_threshold_s=-1)


def test_same_seed_same_delays() -> None:
    assert [policy(seed=1).delay(n) for n in range(5)] == [policy(seed=1).delay(n) for n in range(5)]
