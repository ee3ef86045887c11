"""Tenants' provider keys in Redis: one hash per tenant (provider -> encrypted record), audited.

Plaintext keys exist only in the memory of the process that stores or uses them, and are registered
with ``shared.redact`` there so no log line, error or Sentry event can carry them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import WatchError

from shared import audit
from shared.byok.crypto import HOW, KeyRing, MasterKeyError
from shared.keys import Keys
from shared.providers.http import mask_key
from shared.redact import register_secret
from shared.schema import ProviderEntry, ProviderKeyRecord
from shared.tenants import check_tenant

_dec = msgspec.json.Decoder(ProviderKeyRecord)


@dataclass(frozen=True, slots=True)
class TenantKey:
    """A decrypted key, ready to build an adapter with; never stored, logged or pickled."""

    provider: str
    secret: str
    entry: ProviderEntry | None
    fingerprint: str  # the record's nonce: changes whenever the key is stored again

    def __repr__(self) -> str:
        return f"TenantKey({self.provider}: {mask_key(self.secret)})"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def require_ring(ring: KeyRing | None) -> KeyRing:
    if ring is None:
        raise MasterKeyError(f"tenants' provider keys need a master key: {HOW}")
    return ring


async def put(
    redis: Redis,
    keys: Keys,
    ring: KeyRing | None,
    tenant: str,
    provider: str,
    secret: str,
    entry: ProviderEntry | None,
    *,
    actor: str,
) -> ProviderKeyRecord:
    check_tenant(tenant)
    secret = secret.strip()
    if not secret:
        raise ValueError("the key is empty")
    register_secret(secret)
    rec = require_ring(ring).encrypt(tenant, provider, secret, entry, masked=mask_key(secret), at=time.time())
    rec.actor = actor
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.provider_keys(tenant), provider, msgspec.json.encode(rec))
        pipe.sadd(keys.provider_key_tenants, tenant)
        await pipe.execute()
    details: dict[str, Any] = {"provider": provider, "masked": rec.masked, "master_key_id": rec.mk}
    if entry is not None:
        details["entry"] = msgspec.to_builtins(entry)
    await audit.record(redis, keys, actor=actor, action="provider_key.set", target=tenant, details=details)
    return rec


async def records(redis: Redis, keys: Keys, tenant: str) -> dict[str, ProviderKeyRecord]:
    raw = await redis.hgetall(keys.provider_keys(tenant))
    return {_s(k): _dec.decode(v) for k, v in raw.items()}


def view(provider: str, rec: ProviderKeyRecord) -> dict[str, Any]:
    """What the API and CLI show: masked key, entry, when and by whom; never the key."""
    out: dict[str, Any] = {
        "provider": provider,
        "key": rec.masked,
        "updated_at": rec.updated_at,
        "updated_by": rec.actor,
        "master_key_id": rec.mk,
    }
    if rec.entry is not None:
        out["entry"] = msgspec.to_builtins(rec.entry)
    return out


async def delete(redis: Redis, keys: Keys, tenant: str, provider: str, *, actor: str) -> bool:
    gone = bool(await redis.hdel(keys.provider_keys(tenant), provider))
    if gone:
        await audit.record(
            redis,
            keys,
            actor=actor,
            action="provider_key.delete",
            target=tenant,
            details={"provider": provider},
        )
    return gone


async def load(redis: Redis, keys: Keys, ring: KeyRing | None, tenant: str) -> dict[str, TenantKey]:
    """Every key of ``tenant``, decrypted (MasterKeyError when they cannot be)."""
    recs = await records(redis, keys, tenant)
    if not recs:
        return {}
    ring = require_ring(ring)
    out = {}
    for provider, rec in recs.items():
        secret = ring.decrypt(tenant, provider, rec)
        register_secret(secret)
        out[provider] = TenantKey(provider, secret, rec.entry, rec.nonce)
    return out


async def check_startup(redis: Redis, keys: Keys, ring: KeyRing | None) -> int:
    """Raise MasterKeyError (naming what to set) when stored records cannot be decrypted with the
    configured master key(s); -> how many records there are."""
    n = 0
    for t in await redis.smembers(keys.provider_key_tenants):
        tenant = _s(t)
        for provider, rec in (await records(redis, keys, tenant)).items():
            n += 1
            if ring is None:
                raise MasterKeyError(
                    f"tenants' provider keys are stored encrypted but no master key is set: {HOW}"
                )
            ring.decrypt(tenant, provider, rec)
    return n


async def rotate(redis: Redis, keys: Keys, ring: KeyRing, *, actor: str) -> tuple[int, int]:
    """Re-wrap every record not under the write key; -> (re-wrapped, already current).

    Each record is replaced only if it did not change meanwhile (WATCH), so a key stored during
    the rotation is never overwritten with an older one; running it again is harmless."""
    done = current = 0
    for t in await redis.smembers(keys.provider_key_tenants):
        tenant, hkey = _s(t), keys.provider_keys(_s(t))
        for provider in [_s(p) for p in await redis.hkeys(hkey)]:
            while True:
                async with redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(hkey)
                        raw = await pipe.hget(hkey, provider)
                        if raw is None:
                            break
                        rec = _dec.decode(raw)
                        if rec.mk == ring.write_id:
                            current += 1
                            break
                        pipe.multi()
                        pipe.hset(hkey, provider, msgspec.json.encode(ring.rewrap(tenant, provider, rec)))
                        await pipe.execute()
                        done += 1
                        break
                    except WatchError:
                        continue
    await audit.record(
        redis,
        keys,
        actor=actor,
        action="master_key.rotate",
        target="*",
        details={"rewrapped": done, "already_current": current, "master_key_id": ring.write_id},
    )
    return done, current
