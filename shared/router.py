"""Turns a requested model name into an ordered list of (provider, model) candidates."""

from __future__ import annotations

from typing import NamedTuple

from shared.config import FileConfig
from shared.providers.base import Provider
from shared.schema import RequestError

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


class Candidate(NamedTuple):
    provider: Provider
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Router:
    def __init__(self, providers: dict[str, Provider], cfg: FileConfig) -> None:
        self.providers = providers
        self.cfg = cfg
        self._cache: dict[str, list[Candidate]] = {}

    def candidates(self, model: str) -> list[Candidate]:
        """Ordered candidates for ``model``; raises RequestError('model_not_found') naming the fix."""
        hit = self._cache.get(model)
        if hit is None:
            hit = self._cache[model] = self._resolve(model)
        return hit

    def _resolve(self, model: str) -> list[Candidate]:
        route = self.cfg.routes.get(model)
        if route is not None:
            return [c for name in route.candidates for c in self._resolve_one(name)]
        return self._resolve_one(model)

    def _resolve_one(self, model: str) -> list[Candidate]:
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self.providers and rest:
            return [Candidate(self.providers[prefix], rest)]
        for p in self.providers.values():
            if p.serves(model):
                return [Candidate(p, model)]
        for start, pname, env in PREFIX_RULES:
            if model.startswith(start):
                if pname in self.providers:
                    return [Candidate(self.providers[pname], model)]
                raise RequestError(
                    "model_not_found",
                    f"model {model!r} needs the {pname} provider, which is not configured: "
                    f"set {env} or add [providers.{pname}] to fusebox.toml",
                )
        if sep and rest:
            raise RequestError(
                "model_not_found",
                f"model {model!r}: no provider named {prefix!r} is configured "
                f"(add [providers.{prefix}] to fusebox.toml); known providers: {', '.join(sorted(self.providers))}",
            )
        raise RequestError(
            "model_not_found",
            f"no registered provider serves model {model!r}: use 'provider/model', list it under "
            "a provider's 'models' in fusebox.toml, or set that provider's API key env var "
            "(e.g. OPENAI_API_KEY); 'simulated/<name>' always works without keys",
        )
