"""Which key a tenant's job calls a provider with, decided in the worker without extra round trips.

A tenant's key records and settings are read together (one pipelined round trip) and cached for
``ttl`` seconds, so a changed key or setting takes effect within that time; jobs without a tenant
never touch this. Adapters built with a tenant's key are cached per (tenant, provider, record) with
a bound; one evicted or replaced is closed after a grace period, so a call still using it finishes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import msgspec
from redis.asyncio import Redis

from shared.byok.adapters import build
from shared.byok.crypto import KeyRing
from shared.byok.store import TenantKey, require_ring
from shared.config import ProviderConfig
from shared.keys import Keys
from shared.providers.base import Provider
from shared.redact import register_secret
from shared.schema import ProviderKeyRecord

CLOSE_GRACE_S = 300.0  # an adapter dropped from the cache is closed this long after (calls finish)
_dec = msgspec.json.Decoder(ProviderKeyRecord)


@dataclass(frozen=True, slots=True)
class TenantView:
    keys: Mapping[str, TenantKey]
    allow_fleet_keys: bool


class TenantKeys:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        ring: KeyRing | None,
        base_configs: Mapping[str, ProviderConfig],
        *,
        ttl: float = 5.0,
        max_adapters: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.redis, self.keys, self.ring = redis, keys, ring
        self.base_configs = base_configs
        self.ttl = ttl
        self.max_adapters = max_adapters
        self.transport = transport
        self._views: dict[str, tuple[float, TenantView]] = {}
        self._loading: dict[str, asyncio.Future[TenantView]] = {}
        self._adapters: OrderedDict[tuple[str, str, str], Provider] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    async def view(self, tenant: str) -> TenantView:
        now = time.monotonic()
        hit = self._views.get(tenant)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._loading.get(tenant)
        if pending is not None:  # one read per tenant at a time, however many jobs ask
            return await asyncio.shield(pending)
        fut: asyncio.Future[TenantView] = asyncio.get_running_loop().create_future()
        self._loading[tenant] = fut
        try:
            v = await self._load(tenant)
            self._views[tenant] = (time.monotonic() + self.ttl, v)
            fut.set_result(v)
            return v
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._loading.pop(tenant, None)

    async def _load(self, tenant: str) -> TenantView:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.provider_keys(tenant))
            pipe.hget(self.keys.tenant_settings(tenant), "allow_fleet_keys")
            raw, allow = await pipe.execute()
        out: dict[str, TenantKey] = {}
        if raw:
            ring = require_ring(self.ring)
            for p, blob in raw.items():
                provider = p.decode() if isinstance(p, bytes) else p
                rec = _dec.decode(blob)
                secret = ring.decrypt(tenant, provider, rec)
                register_secret(secret)
                out[provider] = TenantKey(provider, secret, rec.entry, rec.nonce)
        return TenantView(out, allow not in (b"0", "0"))

    def adapter(self, tenant: str, key: TenantKey) -> Provider:
        """The adapter for ``key`` (built once; its own connection pool)."""
        ck = (tenant, key.provider, key.fingerprint)
        p = self._adapters.get(ck)
        if p is not None:
            self._adapters.move_to_end(ck)
            return p
        p = build(key.provider, self.base_configs.get(key.provider), key, self.transport)
        for old in [k for k in self._adapters if k[:2] == ck[:2]]:  # the key was replaced
            self._close_later(self._adapters.pop(old))
        self._adapters[ck] = p
        while len(self._adapters) > self.max_adapters:
            self._close_later(self._adapters.popitem(last=False)[1])
        return p

    def _close_later(self, p: Provider) -> None:
        async def close() -> None:
            await asyncio.sleep(CLOSE_GRACE_S)
            await p.aclose()

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        for t in list(self._closing):
            t.cancel()
        adapters, self._adapters = list(self._adapters.values()), OrderedDict()
        for p in adapters:
            await p.aclose()
