"""Router: name resolution, each strategy's ordering and fallbacks, and the stats the executor feeds it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shared.config import ConfigError, FileConfig, ProviderConfig
from shared.providers.base import Health, Provider, ProviderResponse
from shared.router import FAILURE_FLOOR_MS, Candidate, Router
from shared.schema import ChatRequest, EmbeddingRequest, RequestError, Usage


class FakeProvider(Provider):
    """Just enough of a provider for routing; counts serves() calls to observe caching."""

    def __init__(self, name: str, type_: str | None = None, models: list[str] | None = None, **options: Any):
        self.name = name
        self.type = type_ or name
        self.config = ProviderConfig(type=self.type, models=models or [], options=options)
        self.serves_calls = 0

    def serves(self, model: str) -> bool:
        self.serves_calls += 1
        return super().serves(model)

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        raise NotImplementedError

    async def embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        raise NotImplementedError

    async def health(self) -> Health:
        return Health(ok=True)


ALL = ("openai", "anthropic", "gemini", "cohere")


def providers(*names: str, **extra: FakeProvider) -> dict[str, Provider]:
    out: dict[str, Provider] = {n: FakeProvider(n) for n in names}
    out["simulated"] = FakeProvider("simulated")
    out.update(extra)
    return out


def make(
    names: tuple[str, ...] = ALL, cfg: dict[str, Any] | None = None, **kw: Any
) -> tuple[Router, dict[str, Provider]]:
    ps = providers(*names, **kw.pop("extra", {}))
    return Router(ps, FileConfig.model_validate(cfg or {}), **kw), ps


def labels(cands: list[Candidate]) -> list[str]:
    return [c.label for c in cands]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- resolution ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", "openai"),
        ("gpt-4.1-mini", "openai"),
        ("o1-mini", "openai"),
        ("o3", "openai"),
        ("o4-mini", "openai"),
        ("text-embedding-3-small", "openai"),
        ("text-embedding-004", "gemini"),
        ("claude-3-5-sonnet-20241022", "anthropic"),
        ("gemini-2.5-pro", "gemini"),
        ("command-r-plus", "cohere"),
        ("embed-english-v3.0", "cohere"),
    ],
)
def test_prefix_rules(model: str, provider: str) -> None:
    r, _ = make()
    assert labels(r.candidates(model)) == [f"{provider}/{model}"]


@pytest.mark.parametrize(
    ("model", "env", "section"),
    [
        ("claude-3-7-sonnet", "ANTHROPIC_API_KEY", "[providers.anthropic]"),
        ("gemini-2.0-flash", "GEMINI_API_KEY", "[providers.gemini]"),
        ("command-r", "COHERE_API_KEY", "[providers.cohere]"),
    ],
)
def test_prefix_rule_for_unconfigured_provider_names_the_env_var(model: str, env: str, section: str) -> None:
    r, _ = make(("openai",))
    with pytest.raises(RequestError) as e:
        r.candidates(model)
    assert e.value.code == "model_not_found"
    assert env in e.value.message and section in e.value.message and repr(model) in e.value.message


def test_explicit_provider_strips_the_prefix_and_keeps_the_rest() -> None:
    r, _ = make(("openai",), extra={"openrouter": FakeProvider("openrouter")})
    assert r.candidates("openai/gpt-4o")[0].model == "gpt-4o"
    (c,) = r.candidates("openrouter/openai/gpt-4o")
    assert (c.provider.name, c.model) == ("openrouter", "openai/gpt-4o")
    assert labels(r.candidates("simulated/anything")) == ["simulated/anything"]


def test_unknown_provider_prefix_lists_known_providers() -> None:
    r, _ = make(("openai",))
    with pytest.raises(RequestError) as e:
        r.candidates("nope/model-x")
    assert e.value.code == "model_not_found"
    assert "'nope'" in e.value.message and "[providers.nope]" in e.value.message
    assert "openai, simulated" in e.value.message


def test_unknown_bare_model_names_the_fixes() -> None:
    r, _ = make()
    with pytest.raises(RequestError) as e:
        r.candidates("mystery-model")
    assert e.value.code == "model_not_found"
    assert "OPENAI_API_KEY" in e.value.message and "'simulated/<name>'" in e.value.message
    with pytest.raises(RequestError):  # the failure is cached, and still raised every time
        r.candidates("mystery-model")


def test_models_listed_under_a_provider_win_over_prefix_rules() -> None:
    local = FakeProvider("local", "ollama", models=["llama3.2", "gpt-4o"])
    r, _ = make(("openai",), extra={"local": local})
    assert labels(r.candidates("llama3.2")) == ["local/llama3.2"]
    assert labels(r.candidates("gpt-4o")) == ["local/gpt-4o"]


def test_resolution_is_cached_but_each_call_gets_its_own_list() -> None:
    local = FakeProvider("local", "ollama", models=["llama3.2"])
    r, _ = make((), extra={"local": local})
    first = r.candidates("llama3.2")
    calls = local.serves_calls
    first.clear()  # a caller mutating its list must not change the next call's
    for _ in range(5):
        assert labels(r.candidates("llama3.2")) == ["local/llama3.2"]
    assert local.serves_calls == calls


def test_default_model_only_when_the_request_names_none() -> None:
    r, _ = make(cfg={"default_model": "gpt-4o-mini"})
    assert r.default() == "gpt-4o-mini"
    assert labels(r.candidates(None)) == ["openai/gpt-4o-mini"]
    assert labels(r.candidates("")) == ["openai/gpt-4o-mini"]
    assert labels(r.candidates("claude-3-haiku")) == ["anthropic/claude-3-haiku"]
    bare, _ = make()
    with pytest.raises(RequestError) as e:
        bare.candidates(None)
    assert e.value.code == "missing_model" and "default_model" in e.value.message


def test_default_model_may_be_a_route() -> None:
    cfg = {"default_model": "fast", "routes": {"fast": {"candidates": ["gpt-4o-mini", "claude-3-5-haiku"]}}}
    r, _ = make(cfg=cfg)
    assert labels(r.candidates(None)) == ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku"]


# -- routes and strategies ----------------------------------------------------


def route(strategy: str, candidates: list[str], weights: list[float] | None = None, **extra: Any) -> dict:
    r: dict[str, Any] = {"candidates": candidates, "strategy": strategy}
    if weights is not None:
        r["weights"] = weights
    return {"routes": {"r": r}, **extra}


def test_priority_route_keeps_the_listed_order_as_fallbacks() -> None:
    r, _ = make(cfg=route("priority", ["claude-3-5-sonnet", "openai/gpt-4o", "gemini-2.5-pro"]))
    for _ in range(3):
        assert labels(r.candidates("r")) == [
            "anthropic/claude-3-5-sonnet",
            "openai/gpt-4o",
            "gemini/gemini-2.5-pro",
        ]


def test_route_skips_candidates_whose_provider_is_missing() -> None:
    r, _ = make(("openai",), cfg=route("priority", ["claude-3-5-sonnet", "gpt-4o"]))
    assert labels(r.candidates("r")) == ["openai/gpt-4o"]
    assert labels(r.resolve("r")) == ["openai/gpt-4o"]


def test_route_with_no_available_candidate_explains_each() -> None:
    r, _ = make(("openai",), cfg=route("priority", ["claude-3-5-sonnet", "gemini-2.5-pro"]))
    with pytest.raises(RequestError) as e:
        r.candidates("r")
    assert e.value.code == "model_not_found"
    assert "route 'r'" in e.value.message
    assert "ANTHROPIC_API_KEY" in e.value.message and "GEMINI_API_KEY" in e.value.message


def test_weighted_round_robin_is_exact_and_smooth() -> None:
    r, _ = make(cfg=route("weighted", ["openai/a", "anthropic/b", "gemini/c"], [5, 1, 1]))
    firsts = []
    for _ in range(7000):
        order = r.candidates("r")
        assert sorted(labels(order)) == ["anthropic/b", "gemini/c", "openai/a"]  # all kept as fallbacks
        firsts.append(order[0].provider.name)
    counts = Counter(firsts)
    assert counts == {"openai": 5000, "anthropic": 1000, "gemini": 1000}
    # Smooth: the heavy candidate's turns are interleaved, not five in a row (nginx's sequence).
    assert firsts[:7] == ["openai", "openai", "anthropic", "openai", "gemini", "openai", "openai"]


def test_weighted_fallbacks_follow_the_listed_order() -> None:
    r, _ = make(cfg=route("weighted", ["openai/a", "anthropic/b", "gemini/c"], [1, 2, 1]))
    orders = [labels(r.candidates("r")) for _ in range(4)]
    assert ["anthropic/b", "openai/a", "gemini/c"] in orders
    assert ["gemini/c", "openai/a", "anthropic/b"] in orders


@pytest.mark.parametrize("weights", [[0.7, 0.2, 0.1], [3, 1, 0]])
def test_weighted_distribution_within_tolerance(weights: list[float]) -> None:
    r, _ = make(cfg=route("weighted", ["openai/a", "anthropic/b", "gemini/c"], weights))
    n = 10_000
    counts = Counter(r.candidates("r")[0].provider.name for _ in range(n))
    total = sum(weights)
    for name, w in zip(("openai", "anthropic", "gemini"), weights, strict=True):
        assert abs(counts[name] / n - w / total) < 0.01
    if 0 in weights:
        assert counts["gemini"] == 0  # weight 0: never first, still a fallback
        assert labels(r.candidates("r"))[-1] == "gemini/c"


def test_weighted_without_weights_is_plain_round_robin() -> None:
    r, _ = make(cfg=route("weighted", ["openai/a", "anthropic/b"]))
    assert [r.candidates("r")[0].provider.name for _ in range(4)] == ["openai", "anthropic"] * 2


def test_least_busy_orders_by_in_flight_and_ties_keep_listed_order() -> None:
    r, _ = make(cfg=route("least-busy", ["openai/a", "anthropic/b", "gemini/c"]))
    a, b, _c = r.resolve("r")
    assert labels(r.candidates("r")) == ["openai/a", "anthropic/b", "gemini/c"]
    r.started(a)
    r.started(a)
    r.started(b)
    assert labels(r.candidates("r")) == ["gemini/c", "anthropic/b", "openai/a"]
    r.finished(a, 10.0, True)
    r.finished(a, 10.0, True)
    assert labels(r.candidates("r")) == ["openai/a", "gemini/c", "anthropic/b"]
    r.finished(b, 10.0, False)
    r.finished(b, 10.0, False)  # an unmatched finish never drives the count negative
    assert r.inflight("anthropic") == 0


def test_least_busy_counts_per_provider_across_models() -> None:
    r, _ = make(cfg=route("least-busy", ["openai/gpt-4o", "anthropic/claude-3-5-sonnet"]))
    r.started(Candidate(r.providers["openai"], "gpt-4o-mini"))  # another route's call to the same provider
    assert labels(r.candidates("r"))[0] == "anthropic/claude-3-5-sonnet"


def test_least_busy_uses_an_external_in_flight_source() -> None:
    fleet = {"openai": 40, "anthropic": 3, "gemini": 12}
    r, _ = make(cfg=route("least-busy", ["openai/a", "anthropic/b", "gemini/c"]), inflight=fleet.__getitem__)
    assert labels(r.candidates("r")) == ["anthropic/b", "gemini/c", "openai/a"]
    fleet["anthropic"] = 99
    assert labels(r.candidates("r")) == ["gemini/c", "openai/a", "anthropic/b"]
    r.set_inflight_source(None)  # back to this process's own counts (all zero)
    assert labels(r.candidates("r")) == ["openai/a", "anthropic/b", "gemini/c"]


def test_lowest_latency_probes_unobserved_first_one_at_a_time() -> None:
    clock = Clock()
    r, _ = make(cfg=route("lowest-latency", ["openai/a", "anthropic/b", "gemini/c"]), clock=clock)
    a, b, c = r.resolve("r")
    r.started(a)
    r.finished(a, 300.0, True)
    # b and c are unobserved: they go first, in listed order.
    assert labels(r.candidates("r")) == ["anthropic/b", "gemini/c", "openai/a"]
    r.started(b)  # b's probe is out: c is next, then the observed a, then b
    assert labels(r.candidates("r")) == ["gemini/c", "openai/a", "anthropic/b"]
    r.started(c)
    assert labels(r.candidates("r")) == ["openai/a", "anthropic/b", "gemini/c"]
    r.finished(b, 100.0, True)
    r.finished(c, 200.0, True)
    assert labels(r.candidates("r")) == ["anthropic/b", "gemini/c", "openai/a"]


def test_lowest_latency_moving_average_and_failures() -> None:
    clock = Clock()
    r, _ = make(cfg=route("lowest-latency", ["openai/a", "anthropic/b"]), clock=clock)
    a, b = r.resolve("r")
    for cand, ms in ((a, 100.0), (a, 200.0), (b, 150.0)):
        r.started(cand)
        r.finished(cand, ms, True)
    assert r.stats()["openai/a"]["latency_ms"] == pytest.approx(130.0)  # 100 + 0.3 * (200 - 100)
    assert labels(r.candidates("r")) == ["openai/a", "anthropic/b"]
    r.started(a)
    r.finished(a, 5.0, False)  # a fast 429 is counted as slow, not fast
    assert r.stats()["openai/a"]["latency_ms"] == pytest.approx(130.0 + 0.3 * (FAILURE_FLOOR_MS - 130.0))
    assert labels(r.candidates("r")) == ["anthropic/b", "openai/a"]


def test_lowest_latency_reprobes_a_stale_candidate_and_forgets_its_past() -> None:
    clock = Clock()
    r, _ = make(cfg=route("lowest-latency", ["openai/a", "anthropic/b"]), clock=clock, stale_after_s=30.0)
    a, b = r.resolve("r")
    for cand, ms, ok in ((a, 100.0, False), (b, 400.0, True)):
        r.started(cand)
        r.finished(cand, ms, ok)
    assert labels(r.candidates("r")) == ["anthropic/b", "openai/a"]
    clock.now += 20
    r.started(b)
    r.finished(b, 400.0, True)  # b stays fresh; a's penalty is now 20 s old
    clock.now += 15
    assert labels(r.candidates("r")) == ["openai/a", "anthropic/b"]  # a is stale: probe it
    r.started(a)
    r.finished(a, 80.0, True)
    assert r.stats()["openai/a"]["latency_ms"] == pytest.approx(80.0)  # replaced, not blended with 1000
    assert labels(r.candidates("r")) == ["openai/a", "anthropic/b"]


def test_lowest_cost_orders_by_input_plus_output_price_unknown_last() -> None:
    local = FakeProvider("local", "ollama", models=["my-llm"])
    cfg = route("lowest-cost", ["local/my-llm", "gpt-4o", "claude-3-5-haiku", "gpt-4o-mini"])
    r, _ = make(cfg=cfg, extra={"local": local})
    expected = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku", "openai/gpt-4o", "local/my-llm"]
    assert labels(r.candidates("r")) == expected
    assert labels(r.candidates("r")) == expected


def test_lowest_cost_uses_price_overrides_and_azure_base_model() -> None:
    azure = FakeProvider("azure", "azure", base_model="gpt-4.1-nano")
    local = FakeProvider("local", "ollama", models=["my-llm"])
    cfg = route(
        "lowest-cost",
        ["gpt-4o-mini", "azure/prod-deployment", "local/my-llm"],
        prices={"my-llm": {"input": 0.01, "output": 0.01}},
    )
    r, _ = make(cfg=cfg, extra={"azure": azure, "local": local})
    assert labels(r.candidates("r")) == ["local/my-llm", "azure/prod-deployment", "openai/gpt-4o-mini"]
    (dep,) = [c for c in r.resolve("r") if c.provider.name == "azure"]
    assert r.cost(dep, Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)) == pytest.approx(0.50)


def test_router_cost_of_simulated_models_is_zero_unless_overridden() -> None:
    r, ps = make(cfg={"prices": {"simulated/priced": {"input": 1.0, "output": 2.0}}})
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert r.cost(Candidate(ps["simulated"], "gpt-4o"), usage) == 0.0  # not gpt-4o's price
    assert r.cost(Candidate(ps["simulated"], "priced"), usage) == pytest.approx(3.0)
    assert r.cost(Candidate(ps["openai"], "gpt-4o"), usage) == pytest.approx(12.5)
    assert r.cost(Candidate(ps["openai"], "unheard-of"), usage) is None


@pytest.mark.parametrize(
    ("route_cfg", "needle"),
    [
        (
            {"candidates": ["gpt-4o", "claude-3-haiku"], "strategy": "weighted", "weights": [1]},
            "2 candidates",
        ),
        ({"candidates": ["gpt-4o"], "weights": [1]}, 'strategy = "weighted"'),
        ({"candidates": ["gpt-4o", "x"], "strategy": "weighted", "weights": [1, -1]}, ">= 0"),
        ({"candidates": ["gpt-4o"], "strategy": "weighted", "weights": [0]}, "not all 0"),
        ({"candidates": []}, "no candidates"),
    ],
)
def test_bad_routes_fail_at_startup(route_cfg: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        make(cfg={"routes": {"bad": route_cfg}})
    assert "[routes.bad]" in str(e.value) and needle in str(e.value)


def test_stats_reports_in_flight_and_latency() -> None:
    r, ps = make()
    c = Candidate(ps["openai"], "gpt-4o")
    r.started(c)
    r.started(c)
    r.finished(c, 42.0, True)
    assert r.stats() == {"openai/gpt-4o": {"inflight": 1, "latency_ms": 42.0}}
    assert r.inflight("openai") == 1
