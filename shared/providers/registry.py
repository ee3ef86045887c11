"""Builds the set of configured providers from fusebox.toml and the environment."""

from __future__ import annotations

from collections.abc import Callable

from shared.config import ConfigError, FileConfig, ProviderConfig, SimulatedConfig
from shared.providers.base import Provider
from shared.providers.simulated import SimulatedProvider

Factory = Callable[[str, ProviderConfig], Provider]


def _simulated(name: str, cfg: ProviderConfig) -> Provider:
    p = SimulatedProvider(SimulatedConfig.model_validate(cfg.options), name=name)
    p.config = cfg
    return p


# Adapter types by wire format; other modules add theirs with ``register_type``.
ADAPTERS: dict[str, Factory] = {"simulated": _simulated}


def register_type(type_name: str, factory: Factory) -> None:
    ADAPTERS[type_name] = factory


def build_providers(cfg: FileConfig) -> dict[str, Provider]:
    """``simulated`` is always present; every ``[providers.NAME]`` section adds one more."""
    providers: dict[str, Provider] = {"simulated": SimulatedProvider(cfg.simulated)}
    for name, pcfg in cfg.providers.items():
        factory = ADAPTERS.get(pcfg.type)
        if factory is None:
            known = ", ".join(sorted(ADAPTERS))
            raise ConfigError(f"[providers.{name}] has unknown type {pcfg.type!r} (known: {known})")
        providers[name] = factory(name, pcfg)
    return providers
