"""How long to wait before retrying a provider call, and when that wait should leave the worker.

Backoff is exponential and capped, with jitter so that jobs failing together do not retry together
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/). A provider's requested
wait (Retry-After and friends, already parsed into ``ProviderError.retry_after``) is a floor. A wait
above ``defer_threshold_s`` is not slept in a worker slot: the executor re-defers the job through arq.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from shared.config import RetryConfig

Jitter = Literal["full", "decorrelated"]

# Spread added above a provider's requested wait, as a fraction of it: many jobs told "retry after
# 1 s" by the same 429 burst should not all come back in the same millisecond.
RETRY_AFTER_SPREAD = 0.1
_MAX_EXPONENT = 64  # 2.0**n overflows for n > 1023; the cap is reached long before this
# A batch line whose every candidate failed comes back after a wait that grows with each such round.
ROUND_BACKOFF_BASE_S = 1.0
ROUND_BACKOFF_MAX_S = 60.0


class RetryPolicy:
    def __init__(
        self, cfg: RetryConfig, *, jitter: Jitter = "full", rng: random.Random | None = None
    ) -> None:
        self.cfg = cfg
        self.jitter = jitter
        self._rng = rng or random.Random()

    @property
    def max_attempts(self) -> int:
        """Attempts per candidate, the first call included."""
        return self.cfg.max_attempts

    def ceiling(self, attempt_index: int) -> float:
        """The un-jittered backoff for retry number ``attempt_index`` (0 = after the first failure)."""
        n = min(max(attempt_index, 0), _MAX_EXPONENT)
        return min(self.cfg.backoff_max, self.cfg.backoff_base * 2.0**n)

    def delay(
        self, attempt_index: int, retry_after: float | None = None, previous: float | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt_index`` (0 = after the first failure).

        full jitter: uniform(0, min(backoff_max, base * 2**n)).
        decorrelated jitter: uniform(base, 3 * previous) capped at backoff_max; without ``previous``
        the previous wait is taken as base * 3**n, which grows the same way on average.
        ``retry_after`` (seconds, from the provider) is a floor, plus up to 10% spread above it.
        """
        base, cap = self.cfg.backoff_base, self.cfg.backoff_max
        n = min(max(attempt_index, 0), _MAX_EXPONENT)
        if self.jitter == "decorrelated":
            prev = previous if previous is not None and previous > 0 else base * 3.0**n
            upper = max(base, 3.0 * prev)
            wait = min(cap, self._rng.uniform(base, upper))
        else:
            wait = self._rng.uniform(0.0, self.ceiling(n))
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            wait = max(wait, retry_after * (1.0 + self._rng.uniform(0.0, RETRY_AFTER_SPREAD)))
        return wait

    def round_delay(self, rounds: int) -> float:
        """Seconds before a batch line whose candidates all failed ``rounds`` times (>= 1) tries again.

        Equal jitter (half fixed, half random): lines that failed together spread out, and the wait
        never shrinks to a busy poll.
        """
        n = min(max(rounds - 1, 0), _MAX_EXPONENT)
        ceiling = min(ROUND_BACKOFF_MAX_S, ROUND_BACKOFF_BASE_S * 2.0**n)
        return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)

    def may_wait(self, failed_attempts: int, age_s: float) -> bool:
        """Whether a batch line may wait for another round: within its attempt and time budgets."""
        cfg = self.cfg
        if failed_attempts >= cfg.line_max_attempts:
            return False
        return cfg.line_max_seconds is None or age_s < cfg.line_max_seconds

    def should_defer(self, delay: float) -> bool:
        """Whether a wait is long enough to hand the job back to arq instead of sleeping in the worker."""
        return delay > self.cfg.defer_threshold_s
