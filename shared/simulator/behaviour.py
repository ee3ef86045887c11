"""Compiled per-route behaviour (fast to consult per request) and per-route stats.

A config change recompiles behaviour but keeps each route's stats object, so counters and
the in-flight count survive ``POST /_sim/config``.
"""

from __future__ import annotations

import hashlib
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.simulator.config import (
    ERROR_KINDS,
    Format,
    LatencyConfig,
    RouteConfig,
    SimConfig,
    SimConfigError,
    effective_routes,
)
from shared.simulator.formats import WIRE_FORMATS, WireFormat

_Z99 = 2.3263478740408408  # standard normal 99th percentile


def latency_sampler(lat: LatencyConfig, rng: random.Random) -> Callable[[], float] | None:
    """A function returning a delay in seconds, or None when the delay is always zero."""
    if lat.kind == "fixed":
        s = lat.ms / 1000
        return (lambda: s) if s > 0 else None
    if lat.kind == "uniform":
        if lat.max_ms < lat.min_ms:
            raise SimConfigError(f"uniform latency needs max_ms >= min_ms (got {lat.min_ms}, {lat.max_ms})")
        lo, hi = lat.min_ms / 1000, lat.max_ms / 1000
        return (lambda: rng.uniform(lo, hi)) if hi > 0 else None
    # lognormal fitted to the mean and the 99th percentile
    mean, p99 = lat.mean_ms, lat.p99_ms
    if mean <= 0 or p99 <= mean:
        raise SimConfigError(f"lognormal latency needs 0 < mean_ms < p99_ms (got {mean}, {p99})")
    gap = math.log(p99 / mean)
    if gap > _Z99 * _Z99 / 2:
        raise SimConfigError(
            f"lognormal latency: p99_ms may be at most ~14.9x mean_ms (got {p99 / mean:.1f}x)"
        )
    sigma = _Z99 - math.sqrt(_Z99 * _Z99 - 2 * gap)
    mu = math.log(mean / 1000) - sigma * sigma / 2
    return lambda: rng.lognormvariate(mu, sigma)


def key_fingerprint(key: str | None) -> str:
    """How the stats name a credential: the first 12 hex digits of its sha256 ("none" when absent)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else "none"


@dataclass(slots=True)
class RouteStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    capacity_rejections: int = 0
    outage_rejections: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    model_list_requests: int = 0
    # sha256(key)[:12] -> requests that carried it: which credential each call used, never the key.
    keys: dict[str, int] = field(default_factory=dict)

    def record_key(self, key: str | None) -> None:
        fp = key_fingerprint(key)
        self.keys[fp] = self.keys.get(fp, 0) + 1

    def record(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def reset(self) -> None:
        # In-flight requests are real; only the counters restart.
        self.requests = self.capacity_rejections = self.outage_rejections = self.model_list_requests = 0
        self.by_status.clear()
        self.injected.clear()
        self.keys.clear()
        self.max_in_flight = self.in_flight

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "capacity_rejections": self.capacity_rejections,
            "outage_rejections": self.outage_rejections,
            "injected": dict(sorted(self.injected.items())),
            "model_list_requests": self.model_list_requests,
            "keys": dict(sorted(self.keys.items())),
        }


class Route:
    """One route (or one per-model override of it): behaviour plus live stats."""

    __slots__ = (
        "api_key",
        "capacity",
        "cfg",
        "context_window",
        "disconnect",
        "down",
        "embedding_dims",
        "error_cum",
        "error_total",
        "format",
        "hold_s",
        "key",
        "models",
        "per_model",
        "per_token_s",
        "retry_after_header",
        "retry_after_s",
        "rng",
        "sample_latency",
        "served",
        "stats",
        "windows",
    )

    def __init__(
        self, key: str, fmt: Format, cfg: RouteConfig, seed: int | None, stats: RouteStats | None = None
    ) -> None:
        self.key = key
        self.cfg = cfg
        self.format: WireFormat = WIRE_FORMATS[fmt]
        # crc32, not hash(): str hashes differ between processes, seeds must not.
        self.rng = random.Random(None if seed is None else seed * 1_000_003 + zlib.crc32(key.encode()))
        self.sample_latency = latency_sampler(cfg.latency, self.rng)
        self.per_token_s = cfg.latency.per_output_token_ms / 1000
        cum, acc = [], 0.0
        for kind in ERROR_KINDS:
            p = getattr(cfg.errors, kind)
            if p > 0:
                acc += p
                cum.append((acc, kind))
        if acc > 1 + 1e-9:
            raise SimConfigError(f"route {key!r}: error rates sum to {acc:.3f}, more than 1")
        self.error_cum: tuple[tuple[float, str], ...] = tuple(cum)
        self.error_total = acc
        self.capacity = cfg.capacity
        for a, b in cfg.outages:
            if b <= a:
                raise SimConfigError(f"route {key!r}: outage window [{a}, {b}) is empty")
        self.windows = tuple(cfg.outages)
        self.down = cfg.down
        self.disconnect = cfg.outage_mode == "disconnect"
        self.retry_after_s = cfg.retry_after_s
        self.retry_after_header = cfg.retry_after_header
        self.hold_s = cfg.timeout_hold_s
        self.context_window = cfg.context_window
        self.embedding_dims = cfg.embedding_dimensions
        self.api_key = cfg.api_key.get_secret_value() if cfg.api_key is not None else None
        self.served: frozenset[str] | None = frozenset(cfg.models) if cfg.models else None
        self.models = list(cfg.models) or list(self.format.default_models)
        self.per_model: dict[str, Route] = {}
        self.stats = stats if stats is not None else RouteStats()

    def draw_error(self) -> str | None:
        if not self.error_cum:
            return None
        x = self.rng.random()
        if x >= self.error_total:
            return None
        for bound, kind in self.error_cum:
            if x < bound:
                return kind
        return None  # pragma: no cover - float edge

    def in_outage(self, elapsed: float) -> bool:
        if self.down:
            return True
        for a, b in self.windows:
            if a <= elapsed < b:
                return True
        return False

    def serves(self, model: str) -> bool:
        return self.served is None or model in self.served or model in self.per_model

    def all_routes(self) -> list[Route]:
        return [self, *self.per_model.values()]


def compile_routes(cfg: SimConfig, old: dict[str, Route] | None = None) -> dict[str, Route]:
    """Route name -> compiled route (per-model overrides hang off their route); stats carry over."""
    prev: dict[str, RouteStats] = {}
    for r in (old or {}).values():
        for sub in r.all_routes():
            prev[sub.key] = sub.stats
    out: dict[str, Route] = {}
    for name, (fmt, merged, per_model) in effective_routes(cfg).items():
        route = Route(name, fmt, merged, cfg.seed, prev.get(name))
        for model, mcfg in per_model.items():
            key = f"{name}/{model}"
            route.per_model[model] = Route(key, fmt, mcfg, cfg.seed, prev.get(key))
        out[name] = route
    return out
