"""Builds the set of providers from fusebox.toml and the environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from shared.config import ConfigError, FileConfig, ProviderConfig, SimulatedConfig
from shared.providers.anthropic import AnthropicProvider
from shared.providers.base import Provider
from shared.providers.cohere import CohereProvider
from shared.providers.gemini import GeminiProvider
from shared.providers.ollama import OllamaProvider
from shared.providers.openai import PRESETS, AzureOpenAIProvider, OpenAIProvider
from shared.providers.simulated import SimulatedProvider

# factory(name, cfg, env=..., transport=...) -> Provider
Factory = Callable[..., Provider]


def _simulated(name: str, cfg: ProviderConfig, **_: Any) -> Provider:
    p = SimulatedProvider(SimulatedConfig.model_validate(cfg.options), name=name)
    p.config = cfg
    return p


# Adapter types by wire format; other modules add theirs with ``register_type``.
ADAPTERS: dict[str, Factory] = {
    "simulated": _simulated,
    **{t: OpenAIProvider for t in PRESETS if t != "azure"},
    "azure": AzureOpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "ollama": OllamaProvider,
    "cohere": CohereProvider,
}

# Providers that appear when their usual key variable is set: (name = type, key variables, base-URL variable).
ENV_KEYED: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("openai", ("OPENAI_API_KEY",), "OPENAI_BASE_URL"),
    ("anthropic", ("ANTHROPIC_API_KEY",), "ANTHROPIC_BASE_URL"),
    ("gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY"), None),
    ("groq", ("GROQ_API_KEY",), None),
    ("openrouter", ("OPENROUTER_API_KEY",), None),
    ("xai", ("XAI_API_KEY",), None),
    ("together", ("TOGETHER_API_KEY",), None),
    ("mistral", ("MISTRAL_API_KEY",), None),
    ("deepseek", ("DEEPSEEK_API_KEY",), None),
    ("cohere", ("COHERE_API_KEY", "CO_API_KEY"), None),
    ("huggingface", ("HF_TOKEN", "HUGGINGFACE_API_KEY"), "HF_BASE_URL"),
)
# Local servers need no key: they appear when their base URL is set (name = type, URL variable, key variable).
ENV_LOCAL: tuple[tuple[str, str, str], ...] = (
    ("ollama", "OLLAMA_BASE_URL", "OLLAMA_API_KEY"),
    ("lmstudio", "LMSTUDIO_BASE_URL", "LMSTUDIO_API_KEY"),
    ("vllm", "VLLM_BASE_URL", "VLLM_API_KEY"),
)


def register_type(type_name: str, factory: Factory) -> None:
    ADAPTERS[type_name] = factory


def env_provider_configs(env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Providers implied by the usual environment variables (keys are referenced by name, never copied)."""

    def get(name: str | None) -> str:
        return (env.get(name) or "").strip() if name else ""

    found: dict[str, ProviderConfig] = {}
    for name, key_vars, url_var in ENV_KEYED:
        key_var = next((v for v in key_vars if get(v)), None)
        if key_var:
            found[name] = ProviderConfig(type=name, api_key_env=key_var, base_url=get(url_var) or None)
    if get("AZURE_OPENAI_API_KEY") and get("AZURE_OPENAI_ENDPOINT"):
        version = get("AZURE_OPENAI_API_VERSION") or get("OPENAI_API_VERSION")
        found["azure"] = ProviderConfig(
            type="azure",
            api_key_env="AZURE_OPENAI_API_KEY",
            base_url=get("AZURE_OPENAI_ENDPOINT"),
            options={"api_version": version} if version else {},
        )
    for name, url_var, key_var in ENV_LOCAL:
        if get(url_var):
            found[name] = ProviderConfig(type=name, base_url=get(url_var), api_key_env=key_var)
    return found


def build_providers(
    cfg: FileConfig,
    env: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Provider]:
    """``simulated`` is always present; every ``[providers.NAME]`` adds one, and so does every provider
    found in the environment whose name is not already configured."""
    env = os.environ if env is None else env
    providers: dict[str, Provider] = {"simulated": SimulatedProvider(cfg.simulated)}
    sections = dict(cfg.providers)
    for name, pcfg in env_provider_configs(env).items():
        sections.setdefault(name, pcfg)
    for name, pcfg in sections.items():
        factory = ADAPTERS.get(pcfg.type)
        if factory is None:
            known = ", ".join(sorted(ADAPTERS))
            raise ConfigError(f"[providers.{name}] has unknown type {pcfg.type!r} (known: {known})")
        providers[name] = factory(name, pcfg, env=env, transport=transport)
    return providers
