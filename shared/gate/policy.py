"""The effective breaker and limit settings of one scope, resolved once from fusebox.toml.

A scope is a provider, or ``provider/model`` for a model listed under
``[providers.NAME.per_model."MODEL"]``, which gets its own breaker and limits. Settings
inherit field by field: the file's ``[breaker]``/``[limits]``, then the provider's
sections, then the model's. The Lua arguments are built here once per scope so the hot
path only adds the per-call values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel

from shared.config import BreakerConfig, FileConfig, LimitsConfig, ProviderConfig

# Entries kept in the transitions stream (approximate trimming, MAXLEN ~).
EVENTS_MAXLEN = 10_000
# Buckets in the breaker's sliding window: its time resolution is window_seconds / WINDOW_BUCKETS.
WINDOW_BUCKETS = 20
# While forced open, callers are told to look again after this long.
FORCED_OPEN_RETRY_MS = 5_000

M = TypeVar("M", bound=BaseModel)


def merge(base: M, override: M | None) -> M:
    """``base`` with the fields ``override`` sets explicitly (unset fields inherit)."""
    if override is None:
        return base
    return base.model_copy(update=override.model_dump(exclude_unset=True))


@dataclass(frozen=True, slots=True)
class Policy:
    scope: str
    provider: str
    model: str | None
    breaker: BreakerConfig
    limits: LimitsConfig
    max_concurrency: int
    rpm: int | None
    tpm: int | None
    admit_args: tuple[str, ...] = field(init=False)
    settle_args: tuple[str, ...] = field(init=False)
    snapshot_args: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        b, lim = self.breaker, self.limits
        set_ = object.__setattr__
        set_(
            self,
            "admit_args",
            _s(
                self.max_concurrency,
                self.rpm or 0,
                self.tpm or 0,
                lim.lease_seconds * 1000,
                b.probe_lease_seconds * 1000,
                b.half_open_probes,
                int(lim.adaptive),
                FORCED_OPEN_RETRY_MS,
                EVENTS_MAXLEN,
            ),
        )
        set_(
            self,
            "settle_args",
            _s(
                self.tpm or 0,
                b.failure_rate_threshold,
                b.slow_call_rate_threshold,
                b.slow_call_ms,
                b.minimum_calls,
                self.bucket_ms,
                WINDOW_BUCKETS,
                b.wait_open_seconds * 1000,
                b.wait_open_growth,
                b.wait_open_max_seconds * 1000,
                b.wait_open_jitter,
                b.half_open_probes,
                int(b.count_rate_limited_as_failure),
                int(lim.adaptive),
                self.max_concurrency,
                lim.decrease_factor,
                lim.increase_step,
                lim.success_window,
                EVENTS_MAXLEN,
                b.consecutive_failures,
            ),
        )
        set_(self, "snapshot_args", _s(self.bucket_ms, WINDOW_BUCKETS))

    @property
    def bucket_ms(self) -> float:
        return self.breaker.window_seconds * 1000 / WINDOW_BUCKETS


def _s(*values: float | int) -> tuple[str, ...]:
    return tuple(repr(v) if isinstance(v, float) else str(v) for v in values)


def resolve(cfg: FileConfig, provider: str, pcfg: ProviderConfig, model: str | None = None) -> Policy:
    """The policy that governs calls to ``model`` on ``provider`` (the provider's, unless the model
    has its own ``per_model`` section)."""
    breaker = merge(cfg.breaker, pcfg.breaker)
    limits = merge(cfg.limits, pcfg.limits)
    mcfg = pcfg.per_model.get(model) if model is not None else None
    if mcfg is None:
        return Policy(provider, provider, None, breaker, limits, pcfg.max_concurrency, pcfg.rpm, pcfg.tpm)
    return Policy(
        f"{provider}/{model}",
        provider,
        model,
        merge(breaker, mcfg.breaker),
        merge(limits, mcfg.limits),
        mcfg.max_concurrency or pcfg.max_concurrency,
        mcfg.rpm or pcfg.rpm,
        mcfg.tpm or pcfg.tpm,
    )
