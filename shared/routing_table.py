"""The fleet's routing table in Redis: what producers validate models against.

Workers own the configuration (fusebox.toml, provider API keys in their environment).
Each worker publishes the table it routes by when it starts: providers with their
type and models, routes (aliases) and the default model. Producers (the client,
``fusebox submit``, the HTTP API) build a Router from it, so they need neither the
workers' fusebox.toml nor their keys. Prefix rules (``gpt-`` -> openai, ...) are code,
the same on both sides.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from shared.config import FileConfig, ProviderConfig, RouteConfig
from shared.keys import Keys
from shared.providers.base import Health, Provider, ProviderResponse
from shared.schema import ChatRequest, EmbeddingRequest

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.router import Router

VERSION = 1


def build_table(providers: dict[str, Provider], cfg: FileConfig) -> dict[str, Any]:
    """The table a worker with ``providers`` and ``cfg`` routes by (nothing secret in it)."""
    return {
        "version": VERSION,
        "published_at": time.time(),
        "by": f"{socket.gethostname()}:{os.getpid()}",
        "providers": {
            name: {"type": p.type, "models": sorted(m for m in p.config.models)}
            for name, p in providers.items()
        },
        "routes": {name: r.model_dump(exclude_none=True) for name, r in cfg.routes.items()},
        "default_model": cfg.default_model,
    }


async def publish(redis: Redis, keys: Keys, providers: dict[str, Provider], cfg: FileConfig) -> None:
    """Called by every worker at startup: the last worker started defines the fleet's table."""
    await redis.set(keys.routing_table, json.dumps(build_table(providers, cfg), separators=(",", ":")))


async def read(redis: Redis, keys: Keys) -> dict[str, Any] | None:
    """The published table, or None if no worker ever started against this Redis and namespace."""
    raw = await redis.get(keys.routing_table)
    if raw is None:
        return None
    table: dict[str, Any] = json.loads(raw)
    return table if table.get("version") == VERSION else None


class TableProvider(Provider):
    """A provider as the table describes it: enough to resolve models, never to call one."""

    def __init__(self, name: str, type_: str, models: list[str]) -> None:
        self.name = name
        self.type = type_
        self.config = ProviderConfig(type=type_, models=models)
        self._models = frozenset(models)

    def serves(self, model: str) -> bool:
        # The simulated provider is only reached through an explicit 'simulated/<name>'.
        return self.type != "simulated" and model in self._models

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:  # pragma: no cover
        raise RuntimeError("a routing-table provider only resolves models")

    async def embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:  # pragma: no cover
        raise RuntimeError("a routing-table provider only resolves models")

    async def health(self) -> Health:  # pragma: no cover
        return Health(ok=False, detail="described by the routing table only")


def router_from_table(table: dict[str, Any]) -> Router:
    from shared.router import Router

    providers: dict[str, Provider] = {
        name: TableProvider(name, p["type"], list(p.get("models", [])))
        for name, p in table.get("providers", {}).items()
    }
    routes = {name: RouteConfig.model_validate(r) for name, r in table.get("routes", {}).items()}
    cfg = FileConfig(routes=routes, default_model=table.get("default_model"))
    return Router(providers, cfg)


NO_TABLE = (
    "no worker has published the fleet's routing table to this Redis (namespace {ns}): "
    "start a worker ('fusebox worker') first so models can be checked, "
    "or run this from the directory holding the workers' fusebox.toml"
)
