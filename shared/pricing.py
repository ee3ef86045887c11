"""What a call cost in USD, from a built-in price table plus per-model overrides in fusebox.toml.

Prices are USD per 1M tokens. A model name matches an entry exactly, else the longest entry that is a
prefix of it followed by ``-``, ``:`` or ``@`` (so ``gpt-4o-2024-08-06`` is ``gpt-4o`` and
``claude-sonnet-4-5-20250929`` is ``claude-sonnet-4-5``), else the same after dropping a vendor path
(``openai/gpt-4o`` on OpenRouter, ``models/gemini-2.5-pro``). Unknown models cost ``None``: "unknown"
is kept apart from "free" so totals never silently undercount.

``Usage.cached_tokens`` is taken as the part of ``prompt_tokens`` read from a prompt cache (OpenAI's
meaning); it is billed at the cached rate and the rest of the prompt at the input rate. Cache *writes*
(Anthropic bills them at 1.25x input) are not reported in Usage and are billed at the input rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from shared.config import ConfigError
from shared.schema import Usage

Kind = Literal["chat", "embed"]

_BOUNDARY = frozenset("-:@")
_OVERRIDE_FIELDS = ("input", "output", "cached_input")
_MAX_CACHED = 4096


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens. ``cached_input`` None: cache hits cost the input rate."""

    input: float
    output: float = 0.0
    cached_input: float | None = None
    # Long-context tier: a prompt above ``long_above`` tokens bills every token at ``long``'s rates.
    long_above: int | None = None
    long: Price | None = None

    @property
    def per_call_rank(self) -> float:
        """What lowest-cost routing compares: input + output rate."""
        return self.input + self.output


def _p(
    inp: float, out: float = 0.0, cached: float | None = None, long: tuple[int, Price] | None = None
) -> Price:
    if long is None:
        return Price(inp, out, cached)
    return Price(inp, out, cached, long_above=long[0], long=long[1])


# Checked 2026-11-22 against stored copies of the vendors' pricing pages (OpenAI, Anthropic, Google,
# DeepSeek); Mistral, Groq and Cohere as last published for these model ids. Standard (not batch) tier.
# Prices change: override any of them with [prices."model"] in fusebox.toml.
BUILTIN_PRICES: dict[str, Price] = {
    # --- OpenAI
    "gpt-5": _p(1.25, 10.0, 0.125),
    "gpt-5-mini": _p(0.25, 2.0, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-4.1": _p(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.0, 1.25),
    "gpt-4o-2024-05-13": _p(5.0, 15.0),  # the first gpt-4o snapshot kept its launch price
    "chatgpt-4o-latest": _p(5.0, 15.0),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "gpt-4.5-preview": _p(75.0, 150.0, 37.5),
    "gpt-4-turbo": _p(10.0, 30.0),
    "gpt-4": _p(30.0, 60.0),
    "gpt-3.5-turbo": _p(0.50, 1.50),
    "o1": _p(15.0, 60.0, 7.50),
    "o1-preview": _p(15.0, 60.0, 7.50),
    "o1-mini": _p(1.10, 4.40, 0.55),
    "o1-pro": _p(150.0, 600.0),
    "o3": _p(2.0, 8.0, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o3-pro": _p(20.0, 80.0),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "text-embedding-3-small": _p(0.02),
    "text-embedding-3-large": _p(0.13),
    "text-embedding-ada-002": _p(0.10),
    # --- Anthropic (cached_input = cache hits; Sonnet 4/4.5 above 200k prompt tokens cost more)
    "claude-3-haiku": _p(0.25, 1.25, 0.03),
    "claude-3-5-haiku": _p(0.80, 4.0, 0.08),
    "claude-haiku-4-5": _p(1.0, 5.0, 0.10),
    "claude-3-sonnet": _p(3.0, 15.0, 0.30),
    "claude-3-5-sonnet": _p(3.0, 15.0, 0.30),
    "claude-3-7-sonnet": _p(3.0, 15.0, 0.30),
    "claude-sonnet-4": _p(3.0, 15.0, 0.30, long=(200_000, _p(6.0, 22.5, 0.60))),
    "claude-sonnet-4-5": _p(3.0, 15.0, 0.30, long=(200_000, _p(6.0, 22.5, 0.60))),
    "claude-sonnet-4-6": _p(3.0, 15.0, 0.30),
    "claude-3-opus": _p(15.0, 75.0, 1.50),
    "claude-opus-4": _p(15.0, 75.0, 1.50),
    "claude-opus-4-1": _p(15.0, 75.0, 1.50),
    "claude-opus-4-5": _p(5.0, 25.0, 0.50),
    "claude-opus-4-6": _p(5.0, 25.0, 0.50),
    "claude-opus-4-7": _p(5.0, 25.0, 0.50),
    "claude-opus-4-8": _p(5.0, 25.0, 0.50),
    # --- Google Gemini API (paid tier; 1.5 models: above 128k, 2.5/3 Pro: above 200k prompt tokens)
    "gemini-1.5-flash": _p(0.075, 0.30, 0.01875, long=(128_000, _p(0.15, 0.60, 0.0375))),
    "gemini-1.5-flash-8b": _p(0.0375, 0.15, 0.01, long=(128_000, _p(0.075, 0.30, 0.02))),
    "gemini-1.5-pro": _p(1.25, 5.0, 0.3125, long=(128_000, _p(2.50, 10.0, 0.625))),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(0.075, 0.30),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01),
    "gemini-2.5-pro": _p(1.25, 10.0, 0.125, long=(200_000, _p(2.50, 15.0, 0.25))),
    "gemini-3-pro": _p(2.0, 12.0, 0.20, long=(200_000, _p(4.0, 18.0, 0.40))),
    "gemini-3-flash": _p(0.50, 3.0, 0.05),
    "text-embedding-004": _p(0.0),  # free of charge on the Gemini API
    "gemini-embedding-001": _p(0.15),
    # --- Mistral (mistral-large-latest is Large 3; the 24xx snapshots kept the older price)
    "mistral-large": _p(0.50, 1.50),
    "mistral-large-2407": _p(2.0, 6.0),
    "mistral-large-2411": _p(2.0, 6.0),
    "pixtral-large": _p(2.0, 6.0),
    "mistral-medium": _p(0.40, 2.0),
    "mistral-small": _p(0.10, 0.30),
    "magistral-medium": _p(2.0, 5.0),
    "magistral-small": _p(0.50, 1.50),
    "devstral-medium": _p(0.40, 2.0),
    "devstral-small": _p(0.10, 0.30),
    "codestral": _p(0.30, 0.90),
    "ministral-8b": _p(0.10, 0.10),
    "ministral-3b": _p(0.04, 0.04),
    "open-mistral-nemo": _p(0.15, 0.15),
    "mistral-embed": _p(0.10),
    # --- Groq-hosted models (Groq's own model ids)
    "llama-3.3-70b-versatile": _p(0.59, 0.79),
    "llama-3.1-8b-instant": _p(0.05, 0.08),
    "llama3-70b-8192": _p(0.59, 0.79),
    "llama3-8b-8192": _p(0.05, 0.08),
    "meta-llama/llama-4-scout-17b-16e-instruct": _p(0.11, 0.34),
    "meta-llama/llama-4-maverick-17b-128e-instruct": _p(0.20, 0.60),
    "openai/gpt-oss-120b": _p(0.15, 0.60),
    "openai/gpt-oss-20b": _p(0.075, 0.30),
    # --- DeepSeek (both endpoints serve V3.2 at one price; cached_input = cache hit)
    "deepseek-chat": _p(0.28, 0.42, 0.028),
    "deepseek-reasoner": _p(0.28, 0.42, 0.028),
    # --- Cohere
    "command-a": _p(2.50, 10.0),
    "command-r-plus": _p(2.50, 10.0),
    "command-r-plus-04-2024": _p(3.0, 15.0),
    "command-r": _p(0.15, 0.60),
    "command-r7b": _p(0.0375, 0.15),
    "command-light": _p(0.30, 0.60),
    "embed-english-v3.0": _p(0.10),
    "embed-multilingual-v3.0": _p(0.10),
    "embed-english-light-v3.0": _p(0.10),
    "embed-multilingual-light-v3.0": _p(0.10),
    "embed-v4.0": _p(0.12),
}

FREE = Price(0.0)


def _lookup(table: Mapping[str, Price], by_length: tuple[str, ...], name: str) -> Price | None:
    hit = table.get(name)
    if hit is not None:
        return hit
    for key in by_length:  # longest first, so the most specific entry wins
        if name.startswith(key) and name[len(key)] in _BOUNDARY:
            return table[key]
    return None


def _by_length(table: Mapping[str, Price]) -> tuple[str, ...]:
    return tuple(sorted(table, key=len, reverse=True))


class PriceTable:
    """Built-in prices merged with ``[prices."model"]`` overrides (``input``, ``output``, ``cached_input``).

    An override of a built-in entry keeps the fields it does not set and drops any long-context tier.
    Simulated models (``simulated/<name>``, or ``simulated=True``) cost 0 unless an override names them.
    """

    def __init__(
        self,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        builtin: Mapping[str, Price] = BUILTIN_PRICES,
    ) -> None:
        table = {k.lower(): v for k, v in builtin.items()}
        self._overrides: dict[str, Price] = {}
        for name, fields in (overrides or {}).items():
            key = name.lower()
            price = self._override(name, fields, table.get(key))
            table[key] = self._overrides[key] = price
        self._table = table
        self._keys = _by_length(table)
        self._override_keys = _by_length(self._overrides)
        self._cache: dict[tuple[str, bool], Price | None] = {}

    @staticmethod
    def _override(name: str, fields: Mapping[str, float], base: Price | None) -> Price:
        unknown = sorted(set(fields) - set(_OVERRIDE_FIELDS))
        if unknown or not fields:
            raise ConfigError(
                f'[prices."{name}"] must set some of {", ".join(_OVERRIDE_FIELDS)} (USD per 1M tokens)'
                + (f"; unknown field(s): {', '.join(unknown)}" if unknown else "")
            )
        for k, v in fields.items():
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise ConfigError(f'[prices."{name}"] {k} must be a number >= 0 (USD per 1M tokens)')
        base = replace(base, long_above=None, long=None) if base is not None else FREE
        return replace(base, **{k: float(v) for k, v in fields.items()})

    def price(self, model: str, *, simulated: bool = False) -> Price | None:
        """The price entry for ``model``, or None when it is unknown."""
        key = (model, simulated)
        try:
            return self._cache[key]
        except KeyError:
            pass
        name = model.lower()
        if simulated or name.startswith("simulated/"):
            found: Price | None = _lookup(self._overrides, self._override_keys, name) or FREE
        else:
            found = _lookup(self._table, self._keys, name)
            if found is None and "/" in name:
                found = _lookup(self._table, self._keys, name.rsplit("/", 1)[1])
        if len(self._cache) >= _MAX_CACHED:  # model names come from users: keep this bounded
            self._cache.clear()
        self._cache[key] = found
        return found

    def cost(self, model: str, usage: Usage, kind: Kind = "chat", *, simulated: bool = False) -> float | None:
        """USD for one call, or None when the model's price is unknown."""
        p = self.price(model, simulated=simulated)
        if p is None:
            return None
        prompt = max(usage.prompt_tokens, 0)
        if kind == "embed" and prompt == 0:
            prompt = max(usage.total_tokens, 0)  # some embedding APIs report only a total
        if p.long is not None and p.long_above is not None and prompt > p.long_above:
            p = p.long
        cached = min(max(usage.cached_tokens, 0), prompt)
        cached_rate = p.input if p.cached_input is None else p.cached_input
        total = (prompt - cached) * p.input + cached * cached_rate
        if kind == "chat":
            total += max(usage.completion_tokens, 0) * p.output
        return round(total / 1_000_000, 12)
