"""Turns a requested model name into an ordered list of (provider, model) candidates.

Resolving a name (route alias, ``provider/model``, a provider's ``models``, prefix rules) is cached;
the order is picked per call by the route's strategy from cheap in-process stats that the executor
feeds with ``started(candidate)`` / ``finished(candidate, latency_ms, ok)``. The first candidate is
the one to try; the rest are fallbacks in the order given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from shared.config import ConfigError, FileConfig, RouteConfig
from shared.pricing import Kind, PriceTable
from shared.providers.base import Provider
from shared.schema import RequestError, Usage

log = logging.getLogger(__name__)

# Which provider a bare model name belongs to, and what would enable it.
PREFIX_RULES: tuple[tuple[str, str, str], ...] = (
    ("gpt-", "openai", "OPENAI_API_KEY"),
    ("o1", "openai", "OPENAI_API_KEY"),
    ("o3", "openai", "OPENAI_API_KEY"),
    ("o4", "openai", "OPENAI_API_KEY"),
    ("text-embedding-004", "gemini", "GEMINI_API_KEY"),
    ("text-embedding-", "openai", "OPENAI_API_KEY"),
    ("claude-", "anthropic", "ANTHROPIC_API_KEY"),
    ("gemini-", "gemini", "GEMINI_API_KEY"),
    ("command", "cohere", "COHERE_API_KEY"),
    ("embed-", "cohere", "COHERE_API_KEY"),
)

# lowest-latency: weight of the newest observation in the moving average.
LATENCY_ALPHA = 0.3
# lowest-latency: an observation older than this is stale, so the candidate is probed again and the
# probe's latency replaces the average (a candidate penalised by one bad minute is not shunned forever).
LATENCY_STALE_S = 30.0
# lowest-latency: a failed call counts as at least this many times the candidate's average (a fast
# 429 must not make a failing provider look quick), and at least FAILURE_FLOOR_MS.
FAILURE_FACTOR = 3.0
FAILURE_FLOOR_MS = 1000.0

_MAX_CACHED = 4096  # ad-hoc model names come from users: keep their cache bounded

InflightSource = Callable[[str], int]
"""provider name -> requests in flight (e.g. a Redis limiter snapshot); must be cheap and non-blocking."""


class Candidate(NamedTuple):
    provider: Provider
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


def _key(c: Candidate) -> tuple[str, str]:
    # Keyed by names, not objects: a provider class may define __eq__ and so be unhashable.
    return (c.provider.name, c.model)


@dataclass(slots=True)
class _Latency:
    ewma_ms: float
    at: float  # clock() of the last observation


class _Strategy(Protocol):
    def order(self) -> list[Candidate]: ...


class _Fixed:
    """priority (and lowest-cost, whose order is fixed once prices are known): the stored order."""

    __slots__ = ("cands",)

    def __init__(self, cands: list[Candidate]) -> None:
        self.cands = tuple(cands)

    def order(self) -> list[Candidate]:
        return list(self.cands)


class _Weighted:
    """Smooth weighted round-robin (nginx): deterministic, and spreads each candidate's turns evenly."""

    __slots__ = ("cands", "current", "total", "weights")

    def __init__(self, cands: list[Candidate], weights: list[float]) -> None:
        self.cands = tuple(cands)
        self.weights = tuple(weights)
        self.current = [0.0] * len(cands)
        self.total = sum(weights)

    def order(self) -> list[Candidate]:
        cur, w = self.current, self.weights
        best = 0
        for i in range(len(cur)):
            cur[i] += w[i]
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        cands = self.cands
        return [cands[best], *cands[:best], *cands[best + 1 :]]


class _LeastBusy:
    __slots__ = ("cands", "router")

    def __init__(self, cands: list[Candidate], router: Router) -> None:
        self.cands = tuple(cands)
        self.router = router

    def order(self) -> list[Candidate]:
        inflight = self.router.inflight
        return sorted(self.cands, key=lambda c: inflight(c.provider.name))  # stable: ties keep listed order


class _LowestLatency:
    __slots__ = ("cands", "router")

    def __init__(self, cands: list[Candidate], router: Router) -> None:
        self.cands = tuple(cands)
        self.router = router

    def order(self) -> list[Candidate]:
        r = self.router
        now = r.clock()
        lat, busy = r._latency, r._cand_busy

        def rank(c: Candidate) -> tuple[int, float]:
            k = _key(c)
            seen = lat.get(k)
            if seen is not None and now - seen.at < r.stale_after_s:
                return (1, seen.ewma_ms)
            # Unobserved (or stale): try it first, but only one probe at a time; while its probe is
            # out it goes after the observed ones.
            return (2, 0.0) if busy.get(k, 0) else (0, 0.0)

        return sorted(self.cands, key=rank)


class Router:
    def __init__(
        self,
        providers: dict[str, Provider],
        cfg: FileConfig,
        *,
        prices: PriceTable | None = None,
        inflight: InflightSource | None = None,
        price_model: Callable[[Candidate], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        latency_alpha: float = LATENCY_ALPHA,
        stale_after_s: float = LATENCY_STALE_S,
    ) -> None:
        self.providers = providers
        self.cfg = cfg
        self.prices = prices if prices is not None else PriceTable(cfg.prices)
        self.price_model = price_model or default_price_model
        self.clock = clock
        self.latency_alpha = latency_alpha
        self.stale_after_s = stale_after_s
        self._external: InflightSource | None = inflight
        self._busy: dict[str, int] = {}
        self.in_call = 0  # calls started and not finished, every provider
        self._cand_busy: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        self._routes: dict[str, _Strategy] = {}  # configured aliases: bounded by the config
        self._cache: dict[str, _Strategy | RequestError] = {}  # everything else
        for name, route in cfg.routes.items():
            _check_route(name, route)

    # -- resolution ---------------------------------------------------------
    def default(self) -> str:
        """The model for a request that names none: ``default_model`` from fusebox.toml."""
        if self.cfg.default_model:
            return self.cfg.default_model
        raise RequestError("missing_model", "request has no 'model' and fusebox.toml sets no default_model")

    def candidates(self, model: str | None) -> list[Candidate]:
        """Candidates for ``model`` in the order to try them, for this call; a new list each time.

        An empty or missing model means ``default()``. Raises RequestError('model_not_found')
        naming the fix. Cheap: one dict lookup plus the strategy's ordering.
        """
        if not model:
            model = self.default()
        strategy = self._routes.get(model) or self._cache.get(model)
        if strategy is None:
            strategy = self._build(model)
        if isinstance(strategy, RequestError):
            raise RequestError(strategy.code, strategy.message)
        return strategy.order()

    def resolve(self, model: str | None) -> list[Candidate]:
        """The candidates in configured order, without touching any strategy state (validation, UIs)."""
        if not model:
            model = self.default()
        route = self.cfg.routes.get(model)
        if route is None:
            return [self._resolve_one(model)]
        return self._resolve_route(model, route)[0]

    def _build(self, model: str) -> _Strategy | RequestError:
        # Failures are cached too: providers and routes only change with a restart.
        route = self.cfg.routes.get(model)
        built: _Strategy | RequestError
        try:
            if route is not None:
                built = self._strategy(route, *self._resolve_route(model, route))
                self._routes[model] = built
                return built
            built = _Fixed([self._resolve_one(model)])
        except RequestError as e:
            built = e
        self._remember(model, built)
        return built

    def _remember(self, model: str, value: _Strategy | RequestError) -> None:
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[model] = value

    def _resolve_route(self, name: str, route: RouteConfig) -> tuple[list[Candidate], list[float]]:
        """A route's candidates; one whose provider is not configured is skipped (with a warning)."""
        weights = route.weights or [1.0] * len(route.candidates)
        cands: list[Candidate] = []
        kept: list[float] = []
        problems: list[str] = []
        for target, weight in zip(route.candidates, weights, strict=True):
            try:
                cands.append(self._resolve_one(target))
            except RequestError as e:
                problems.append(e.message)
                continue
            kept.append(weight)
        if not cands:
            raise RequestError(
                "model_not_found",
                f"route {name!r}: none of its candidates is available: " + "; ".join(problems),
            )
        for p in problems:
            log.warning("route %r: skipping a candidate: %s", name, p)
        return cands, kept

    def _strategy(self, route: RouteConfig, cands: list[Candidate], weights: list[float]) -> _Strategy:
        match route.strategy:
            case "weighted":
                if sum(weights) <= 0:  # every weighted candidate was skipped; the rest weigh 0
                    return _Fixed(cands)
                return _Weighted(cands, weights)
            case "least-busy":
                return _LeastBusy(cands, self)
            case "lowest-latency":
                return _LowestLatency(cands, self)
            case "lowest-cost":
                return _Fixed(self._by_cost(cands))
            case _:
                return _Fixed(cands)

    def _by_cost(self, cands: list[Candidate]) -> list[Candidate]:
        def rank(c: Candidate) -> float:
            p = self.prices.price(self.price_model(c), simulated=c.provider.type == "simulated")
            return p.per_call_rank if p is not None else float("inf")  # unknown price goes last

        return sorted(cands, key=rank)

    def _resolve_one(self, model: str) -> Candidate:
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self.providers and rest:
            return Candidate(self.providers[prefix], rest)
        for p in self.providers.values():
            if p.serves(model):
                return Candidate(p, model)
        for start, pname, env in PREFIX_RULES:
            if model.startswith(start):
                if pname in self.providers:
                    return Candidate(self.providers[pname], model)
                raise RequestError(
                    "model_not_found",
                    f"model {model!r} needs the {pname} provider, which is not configured: "
                    f"set {env} or add [providers.{pname}] to fusebox.toml",
                )
        if sep and rest:
            raise RequestError(
                "model_not_found",
                f"model {model!r}: no provider named {prefix!r} is configured "
                f"(add [providers.{prefix}] to fusebox.toml); "
                f"known providers: {', '.join(sorted(self.providers))}",
            )
        raise RequestError(
            "model_not_found",
            f"no registered provider serves model {model!r}: use 'provider/model', list it under "
            "a provider's 'models' in fusebox.toml, or set that provider's API key env var "
            "(e.g. OPENAI_API_KEY); 'simulated/<name>' always works without keys",
        )

    # -- stats fed by the executor -----------------------------------------
    def set_inflight_source(self, source: InflightSource | None) -> None:
        """Use ``source`` (provider name -> in flight, fleet-wide) for least-busy instead of local counts."""
        self._external = source

    def inflight(self, provider: str) -> int:
        if self._external is not None:
            return self._external(provider)
        return self._busy.get(provider, 0)

    def started(self, candidate: Candidate) -> None:
        """A call to ``candidate`` is about to be sent."""
        name = candidate.provider.name
        self.in_call += 1
        self._busy[name] = self._busy.get(name, 0) + 1
        k = _key(candidate)
        self._cand_busy[k] = self._cand_busy.get(k, 0) + 1

    def finished(self, candidate: Candidate, latency_ms: float, ok: bool, observed: bool = True) -> None:
        """A call started with ``started`` ended. ``ok`` False when the provider was at fault (5xx,
        timeout, 429); a request's own 4xx is ``ok`` as far as routing is concerned. ``observed``
        False: the call was cut off (cancelled), so its latency says nothing about the provider."""
        name = candidate.provider.name
        self.in_call = max(self.in_call - 1, 0)
        self._busy[name] = max(self._busy.get(name, 0) - 1, 0)
        k = _key(candidate)
        self._cand_busy[k] = max(self._cand_busy.get(k, 0) - 1, 0)
        if not observed:
            return
        now = self.clock()
        seen = self._latency.get(k)
        fresh = seen is not None and now - seen.at < self.stale_after_s
        sample = latency_ms
        if not ok:
            sample = max(
                latency_ms, FAILURE_FLOOR_MS, FAILURE_FACTOR * seen.ewma_ms if fresh and seen else 0.0
            )
        if seen is None:
            self._latency[k] = _Latency(sample, now)
        else:
            a = self.latency_alpha
            seen.ewma_ms = seen.ewma_ms + a * (sample - seen.ewma_ms) if fresh else sample
            seen.at = now

    def stats(self) -> dict[str, dict[str, float]]:
        """Per candidate label: calls in flight from this process and the latency average (ms)."""
        out: dict[str, dict[str, float]] = {}
        for (p, m), n in self._cand_busy.items():
            out.setdefault(f"{p}/{m}", {})["inflight"] = n
        for (p, m), lat in self._latency.items():
            out.setdefault(f"{p}/{m}", {})["latency_ms"] = round(lat.ewma_ms, 3)
        return out

    # -- cost ----------------------------------------------------------------
    def cost(self, candidate: Candidate, usage: Usage, kind: Kind = "chat") -> float | None:
        """USD for a call served by ``candidate``; None when its price is unknown."""
        return self.prices.cost(
            self.price_model(candidate), usage, kind, simulated=candidate.provider.type == "simulated"
        )


def default_price_model(c: Candidate) -> str:
    """The name a candidate is priced under: a simulated provider's models are its own (free unless
    overridden as ``[prices."<provider>/<model>"]``); a provider whose model names are deployments
    (Azure) names the real model in ``options.base_model``."""
    if c.provider.type == "simulated":
        return f"{c.provider.name}/{c.model}"
    return c.provider.cost_model(c.model)


def _check_route(name: str, route: RouteConfig) -> None:
    if not route.candidates:
        raise ConfigError(f"[routes.{name}] has no candidates")
    if route.weights is None:
        return
    if route.strategy != "weighted":
        raise ConfigError(f'[routes.{name}] sets weights, which only apply to strategy = "weighted"')
    if len(route.weights) != len(route.candidates):
        raise ConfigError(
            f"[routes.{name}] has {len(route.candidates)} candidates but {len(route.weights)} weights"
        )
    if any(w < 0 for w in route.weights) or sum(route.weights) <= 0:
        raise ConfigError(f"[routes.{name}] weights must be >= 0 and not all 0")
