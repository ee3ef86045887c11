"""What the gate answers: an Admission (or RedisUnavailable), and what a call's end means to a breaker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.errors import ErrorClass, ProviderError
from shared.gate.policy import Policy

Outcome = Literal["success", "failure", "rate_limited", "ignored"]
Reason = Literal["open", "forced_open", "saturated", "rate_limited", "half_open_busy"]
OUTCOMES: frozenset[str] = frozenset({"success", "failure", "rate_limited", "ignored"})


class RedisUnavailable(RuntimeError):
    """Redis could not be reached, so no provider call may be admitted (Fusebox never fails open)."""


@dataclass(slots=True)
class Admission:
    """The gate's answer. When ``ok``, the call holds ``lease`` until ``settle``."""

    ok: bool
    provider: str
    model: str | None
    scope: str
    reason: Reason | None = None
    retry_in: float = 0.0  # seconds; a hint for deferring when not ok
    lease: str = ""
    probe: bool = False  # a half-open probe: its outcome decides whether the breaker closes
    generation: int = 0  # breaker generation at admission; outcomes from older ones are fenced off
    limit_generation: int = 0
    limit: int = 0  # effective concurrency limit at admission
    in_flight: int = 0
    owners: int = 1  # workers (gates) holding the scope's slots at admission, this one included
    est_tokens: int = 0
    policy: Policy | None = field(default=None, repr=False)
    waiter: str = ""  # a passed-on slot's job (Gate.pass_on): its settle takes it out of the scope's line

    def passed(self, owners: int, waiter: str) -> Admission:
        """This slot for the next call it passes on to (Gate.pass_on, then that call's job): a copy made
        by hand, twice per call on a busy scope, where dataclasses.replace costs about five times as much."""
        return Admission(
            ok=self.ok, provider=self.provider, model=self.model, scope=self.scope, reason=self.reason,
            retry_in=self.retry_in, lease=self.lease, probe=self.probe, generation=self.generation,
            limit_generation=self.limit_generation, limit=self.limit, in_flight=self.in_flight,
            owners=owners, est_tokens=self.est_tokens, policy=self.policy, waiter=waiter,
        )  # fmt: skip


def outcome_of(err: ProviderError | None) -> Outcome:
    """What a provider call's result means to the breaker: only the provider's fault counts."""
    if err is None:
        return "success"
    if err.error_class is ErrorClass.RATE_LIMITED:
        return "rate_limited"
    if err.error_class is ErrorClass.TRANSIENT:
        return "failure"
    return "ignored"  # the user's request (400, context length, auth) says nothing about health
