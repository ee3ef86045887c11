"""Which provider and key a tenant's job calls, decided in the worker without extra round trips.

``route`` turns a job's model into candidates: a tenant's provider entry of its own (stored under a
name no fleet provider has, e.g. ``my-vllm``) serves ``my-vllm/<model>`` and the models it lists,
for that tenant only; anything else is the fleet's route with the tenant's own keys swapped in.
Calls with a tenant's key run under the gate scope ``provider@tenant`` (``owners``).

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

from shared.byok.adapters import build, check_entry
from shared.byok.crypto import KeyRing, MasterKeyError
from shared.byok.entries import serving
from shared.byok.store import TenantKey, require_ring
from shared.config import ProviderConfig
from shared.keys import Keys
from shared.providers.base import Provider
from shared.redact import register_secret
from shared.router import Candidate, Router
from shared.schema import ErrorInfo, ProviderKeyRecord, RequestError
from shared.ssrf import AllowList

CLOSE_GRACE_S = 300.0  # an adapter dropped from the cache is closed this long after (calls finish)
_dec = msgspec.json.Decoder(ProviderKeyRecord)


@dataclass(frozen=True, slots=True)
class TenantView:
    keys: Mapping[str, TenantKey]
    allow_fleet_keys: bool


@dataclass(frozen=True, slots=True)
class Routed:
    """A job's candidates; ``owners``: provider name -> the tenant whose own key it calls with (its
    calls use that tenant's gate scope); or the error that says why nothing may serve it."""

    candidates: list[Candidate]
    owners: dict[str, str]
    error: ErrorInfo | None = None


def _refused(code: str, message: str, status: int) -> Routed:
    return Routed([], {}, ErrorInfo(code=code, message=message, error_class="final", status=status))


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
        allow_hosts: AllowList | list[str] | None = None,
    ) -> None:
        """``allow_hosts``: the hosts a tenant's own entry may point at despite the SSRF guard
        (``[api] provider_allow_hosts``), checked again here since the name may resolve elsewhere now."""
        self.redis, self.keys, self.ring = redis, keys, ring
        self.base_configs = base_configs
        self.allow_hosts = allow_hosts if allow_hosts is not None else []
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

    async def route(self, tenant: str, model: str | None, router: Router) -> Routed:
        """The tenant's candidates for ``model``: its own entries first (they serve it alone), else
        the fleet's with its keys swapped in. Cached view: no round trip per job."""
        try:
            view = await self.view(tenant)
        except MasterKeyError as e:
            return _refused("master_key_unavailable", str(e), 500)
        entries = {n: k.entry for n, k in view.keys.items()}
        fleet = router.providers
        targets = serving(entries, model, skip=fleet)
        if targets:
            return await self._own_entries(tenant, [(view.keys[n], m) for n, m in targets])
        try:
            candidates = router.candidates(model)
        except RequestError as e:
            # An entry replacing a fleet provider's endpoint may list models the fleet does not serve.
            targets = serving(entries, model)
            if targets:
                return await self._own_entries(tenant, [(view.keys[n], m) for n, m in targets])
            return _refused(e.code, e.message, 400)
        if not view.keys and view.allow_fleet_keys:
            return Routed(candidates, {})
        out: list[Candidate] = []
        owners: dict[str, str] = {}
        missing: list[str] = []
        for c in candidates:
            key = view.keys.get(c.provider.name)
            if key is not None:
                try:
                    out.append(Candidate(await self.adapter(tenant, key), c.model))
                except ValueError as e:  # EntryError: refused entry; or what the adapter lacks
                    return _refused("provider_entry_refused", f"{c.provider.name}: {e}", 403)
                owners[c.provider.name] = tenant
            elif view.allow_fleet_keys:
                out.append(c)
            else:
                missing.append(c.provider.name)
        if out:
            return Routed(out, owners)
        msg = (
            f"tenant {tenant!r} has no key of its own for {', '.join(missing)} and may not use the fleet's "
            f"keys: store one (PUT /v1/fusebox/provider-keys/{missing[0]}) or allow fleet keys"
        )
        return _refused("tenant_key_missing", msg, 403)

    async def _own_entries(self, tenant: str, targets: list[tuple[TenantKey, str]]) -> Routed:
        out: list[Candidate] = []
        problems: list[str] = []
        for key, model in targets:
            try:
                out.append(Candidate(await self.adapter(tenant, key), model))
            except ValueError as e:
                problems.append(f"{key.provider}: {e}")
        if not out:
            return _refused("provider_entry_refused", "; ".join(problems), 403)
        return Routed(out, {c.provider.name: tenant for c in out})

    async def adapter(self, tenant: str, key: TenantKey) -> Provider:
        """The adapter for ``key`` (built once; its own connection pool). A tenant's own entry's
        base URL passes the SSRF guard when the adapter is built (EntryError if refused)."""
        ck = (tenant, key.provider, key.fingerprint)
        p = self._adapters.get(ck)
        if p is not None:
            self._adapters.move_to_end(ck)
            return p
        if key.entry is not None:
            await check_entry(key.entry, self.allow_hosts)
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
