"""Provider adapters that call with a tenant's own key, and the "test connection" check.

A tenant adapter is the provider's configured adapter rebuilt with the key replaced (or, for a
tenant's provider entry of its own, built from that entry): its own instance, so its own
connection pool. The key reaches the adapter through a private one-variable environment, never
through ``os.environ``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from shared.byok.store import TenantKey
from shared.config import ProviderConfig
from shared.errors import ProviderError
from shared.providers.base import Provider
from shared.providers.http import HTTPProvider
from shared.providers.registry import ADAPTERS
from shared.redact import redact
from shared.schema import ProviderEntry
from shared.ssrf import AllowList, check_url

_KEY_VAR = "FUSEBOX_TENANT_PROVIDER_KEY"  # only ever in the private mapping passed to the factory
TEST_TIMEOUT_S = 15.0


class EntryError(ValueError):
    """A tenant's provider entry Fusebox will not use (unknown type, refused base URL)."""


async def check_entry(entry: ProviderEntry, allow: AllowList | list[str]) -> None:
    if entry.type not in ADAPTERS or entry.type == "simulated":
        known = ", ".join(sorted(t for t in ADAPTERS if t != "simulated"))
        raise EntryError(f"unknown provider type {entry.type!r} (known: {known})")
    if entry.base_url:
        try:
            await check_url(entry.base_url, allow)
        except (ValueError, OSError) as e:
            raise EntryError(f"base_url refused: {e}".replace("webhook URL", "URL")) from None


def tenant_config(base: ProviderConfig | None, entry: ProviderEntry | None) -> ProviderConfig:
    """The provider config a tenant key is used with: the fleet's with the key replaced, or the
    tenant's own entry (inheriting only limits and timeouts, never the fleet's headers/options,
    which may carry the fleet's own credentials)."""
    if entry is None:
        if base is None:
            raise EntryError("no such provider is configured; give a provider entry (type, base_url, models)")
        return base.model_copy(update={"api_key_env": _KEY_VAR, "api_key_file": None})
    fields: dict[str, Any] = {
        "type": entry.type,
        "base_url": entry.base_url,
        "models": list(entry.models),
        "api_key_env": _KEY_VAR,
    }
    if base is not None:
        fields.update(max_concurrency=base.max_concurrency, timeout=base.timeout, rpm=base.rpm, tpm=base.tpm)
        fields.update(breaker=base.breaker, limits=base.limits)
    return ProviderConfig(**fields)


def build(
    name: str,
    base: ProviderConfig | None,
    key: TenantKey,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Provider:
    cfg = tenant_config(base, key.entry)
    factory = ADAPTERS.get(cfg.type)
    if factory is None:
        raise EntryError(f"unknown provider type {cfg.type!r}")
    return factory(name, cfg, env={_KEY_VAR: key.secret}, transport=transport)


async def test_connection(p: Provider) -> dict[str, Any]:
    """One cheap authenticated call (the model list): ok | auth_failed | unreachable | error."""
    t0 = time.perf_counter()

    def ms() -> float:
        return round((time.perf_counter() - t0) * 1000, 1)

    if not isinstance(p, HTTPProvider):
        h = await p.health()
        return {"status": "ok" if h.ok else "error", "latency_ms": h.latency_ms, "detail": h.detail}
    try:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            resp = await p.send(
                "GET", p.health_path, params=p.health_params, timeout=min(p.config.timeout, TEST_TIMEOUT_S)
            )
    except ProviderError as e:
        return {"status": "unreachable", "latency_ms": ms(), "detail": e.message}
    except Exception as e:  # a test reports, never raises
        return {"status": "unreachable", "latency_ms": ms(), "detail": redact(f"{type(e).__name__}: {e}")}
    if resp.status_code == 200:
        return {"status": "ok", "latency_ms": ms(), "detail": p.health_detail(resp)}
    detail = p.error(resp.status_code, resp.content, resp.headers).message
    status = "auth_failed" if resp.status_code in (401, 403) else "error"
    return {"status": status, "latency_ms": ms(), "http_status": resp.status_code, "detail": detail}
