"""Price table: exact figures, name matching, long-context tiers, overrides, unknown models (None)."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, FileConfig
from shared.pricing import BUILTIN_PRICES, PriceTable
from shared.schema import Usage

M = 1_000_000
T = PriceTable()


def u(prompt: int = 0, completion: int = 0, cached: int = 0, total: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, total_tokens=total)


@pytest.mark.parametrize(
    ("model", "usage", "usd"),
    [
        # 800 fresh * 2.50 + 200 cached * 1.25 + 500 out * 10.00, per 1M
        ("gpt-4o", u(1000, 500, 200), (800 * 2.50 + 200 * 1.25 + 500 * 10.0) / M),
        ("gpt-4o-mini", u(M, M), 0.15 + 0.60),
        ("gpt-4.1", u(2000, 1000, 1000), (1000 * 2.0 + 1000 * 0.50 + 1000 * 8.0) / M),
        ("o4-mini", u(M, M, M), 0.275 + 4.40),
        ("claude-3-5-sonnet-20241022", u(10_000, 2_000, 8_000), (2000 * 3.0 + 8000 * 0.30 + 2000 * 15.0) / M),
        ("claude-opus-4-5-20251101", u(M, M), 5.0 + 25.0),
        ("claude-opus-4-20250514", u(M, M), 15.0 + 75.0),
        ("claude-3-5-haiku-latest", u(M, M, M // 2), 0.40 + 0.04 + 4.0),
        ("gemini-2.5-flash", u(M, M, M), 0.03 + 2.50),
        ("deepseek-chat", u(M, M, M // 2), 0.14 + 0.014 + 0.42),
        ("llama-3.3-70b-versatile", u(M, M), 0.59 + 0.79),
        ("command-r-plus-08-2024", u(M, M), 2.50 + 10.0),
        ("mistral-small-latest", u(M, M), 0.10 + 0.30),
    ],
)
def test_exact_figures(model: str, usage: Usage, usd: float) -> None:
    assert T.cost(model, usage) == pytest.approx(usd, rel=1e-9)


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),  # Vertex-style version suffix
        ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
        ("gemini-1.5-flash-8b-001", "gemini-1.5-flash-8b"),
        ("GPT-4o", "gpt-4o"),  # case does not matter
        ("openai/gpt-4o", "gpt-4o"),  # OpenRouter-style vendor path
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("meta-llama/llama-4-scout-17b-16e-instruct", "meta-llama/llama-4-scout-17b-16e-instruct"),
    ],
)
def test_longest_prefix_match(model: str, entry: str) -> None:
    assert T.price(model) == BUILTIN_PRICES[entry]


def test_exact_entry_beats_prefix() -> None:
    assert T.cost("gpt-4o-2024-05-13", u(M, M)) == pytest.approx(5.0 + 15.0)
    assert T.cost("gpt-4o-2024-11-20", u(M, M)) == pytest.approx(2.5 + 10.0)


@pytest.mark.parametrize(
    "model", ["gpt-4x", "gpt-4oo", "claude-sonnet-45", "totally-unknown", "ft:gpt-4o:org::x"]
)
def test_prefix_needs_a_boundary_and_unknown_is_none(model: str) -> None:
    assert T.price(model) is None
    assert T.cost(model, u(100, 100)) is None


def test_embeddings_bill_input_only() -> None:
    assert T.cost("text-embedding-3-small", u(M, completion=999), "embed") == pytest.approx(0.02)
    assert T.cost("text-embedding-3-large", u(total=2 * M), "embed") == pytest.approx(0.26)  # total only
    assert T.cost("text-embedding-ada-002", u(500_000), "embed") == pytest.approx(0.05)
    assert T.cost("embed-english-v3.0", u(M), "embed") == pytest.approx(0.10)
    assert T.cost("text-embedding-004", u(M), "embed") == 0.0


def test_long_context_tier_applies_to_the_whole_call() -> None:
    assert T.cost("gemini-2.5-pro", u(200_000, 1000)) == pytest.approx((200_000 * 1.25 + 1000 * 10.0) / M)
    assert T.cost("gemini-2.5-pro", u(200_001, 1000, 1)) == pytest.approx(
        (200_000 * 2.50 + 1 * 0.25 + 1000 * 15.0) / M
    )
    assert T.cost("claude-sonnet-4-5-20250929", u(300_000, 1000)) == pytest.approx(
        (300_000 * 6.0 + 1000 * 22.5) / M
    )


def test_cached_tokens_are_clamped_to_the_prompt() -> None:
    assert T.cost("gpt-4o", u(100, 0, cached=500)) == pytest.approx(100 * 1.25 / M)


def test_no_cached_rate_means_input_rate() -> None:
    assert T.cost("gpt-4-turbo", u(M, 0, cached=M)) == pytest.approx(10.0)


def test_overrides_add_models_and_patch_builtins() -> None:
    t = PriceTable(
        {"my-model": {"input": 0.5, "output": 1.5}, "gpt-4o": {"output": 8.0}, "Gemini-2.5-Pro": {"input": 1}}
    )
    assert t.cost("my-model", u(M, M)) == pytest.approx(2.0)
    assert t.cost("my-model-v2", u(M, M)) == pytest.approx(2.0)  # overrides match by prefix too
    assert t.cost("gpt-4o-2024-08-06", u(M, M, M)) == pytest.approx(1.25 + 8.0)  # cached rate kept
    assert t.cost("gemini-2.5-pro", u(300_000, 0)) == pytest.approx(0.3)  # flat: the tier is dropped
    assert PriceTable().cost("gpt-4o", u(0, M)) == pytest.approx(10.0)  # the built-in table is untouched


def test_overrides_from_fusebox_toml_section() -> None:
    cfg = FileConfig.model_validate(
        {"prices": {"my-model": {"input": 0.5, "output": 1.5, "cached_input": 0.1}}}
    )
    t = PriceTable(cfg.prices)
    assert t.cost("my-model", u(2 * M, M, M)) == pytest.approx(0.5 + 0.1 + 1.5)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"inptu": 1.0}, "inptu"),
        ({}, "must set some of"),
        ({"input": -1.0}, ">= 0"),
    ],
)
def test_bad_overrides_are_config_errors(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        PriceTable({"m": fields})
    assert '[prices."m"]' in str(e.value) and needle in str(e.value)


def test_simulated_models_are_free_unless_overridden() -> None:
    t = PriceTable({"simulated/costly": {"input": 2.0, "output": 4.0}, "sim2/x": {"input": 1.0}})
    assert t.cost("simulated/gpt-4o", u(M, M)) == 0.0  # not priced as the real gpt-4o
    assert t.cost("simulated/costly", u(M, M)) == pytest.approx(6.0)
    assert t.cost("sim2/x", u(M), simulated=True) == pytest.approx(1.0)
    assert t.cost("sim2/gpt-4o", u(M), simulated=True) == 0.0
