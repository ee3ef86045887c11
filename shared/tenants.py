"""Tenants and their API keys: keys are stored only as a sha256 hash, mapped to a tenant.

A key is 32 random bytes (``fbx_`` + urlsafe base64), so a plain sha256 is enough: there
is nothing to brute-force that a slow hash would protect. One HGET authenticates a request.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import audit
from shared.keys import Keys

KEY_PREFIX = "fbx_"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str  # the first 12 hex digits of the hash: names a key in `keys list` / `keys revoke`
    tenant: str
    admin: bool
    created_at: float
    prefix: str  # the key's first characters, so a person can tell their keys apart


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(name: str) -> str:
    if not _TENANT.match(name):
        raise ValueError(f"tenant {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


async def create_key(
    redis: Redis, keys: Keys, tenant: str, admin: bool = False, *, actor: str = "system"
) -> str:
    """A new key for ``tenant``; the key itself is returned once and never stored."""
    check_tenant(tenant)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = {"tenant": tenant, "admin": admin, "created_at": time.time(), "prefix": key[:10]}
    h = hash_key(key)
    await redis.hset(keys.api_keys, h, json.dumps(record))
    details = {"key_id": h[:12], "admin": admin}
    await audit.record(redis, keys, actor=actor, action="api_key.create", target=tenant, details=details)
    return key


async def authenticate(redis: Redis, keys: Keys, key: str) -> Tenant | None:
    if not key:
        return None
    raw = await redis.hget(keys.api_keys, hash_key(key))
    if raw is None:
        return None
    rec = json.loads(raw)
    return Tenant(rec["tenant"], bool(rec.get("admin")))


async def list_keys(redis: Redis, keys: Keys) -> list[KeyInfo]:
    out = []
    for h, raw in (await redis.hgetall(keys.api_keys)).items():
        rec = json.loads(raw)
        hx = h.decode() if isinstance(h, bytes) else h
        out.append(
            KeyInfo(hx[:12], rec["tenant"], bool(rec.get("admin")), float(rec["created_at"]), rec["prefix"])
        )
    return sorted(out, key=lambda k: (k.tenant, k.created_at))


async def revoke(redis: Redis, keys: Keys, key_or_id: str, *, actor: str = "system") -> list[KeyInfo]:
    """Revoke a key given the key itself or its id (a unique prefix of its hash); -> what was revoked."""
    all_keys = await redis.hkeys(keys.api_keys)
    hashes = [h.decode() if isinstance(h, bytes) else h for h in all_keys]
    full = hash_key(key_or_id)
    if full in hashes:
        match = [full]
    elif len(key_or_id) >= 6:
        match = [h for h in hashes if h.startswith(key_or_id.lower())]
    else:
        match = []
    if len(match) != 1:
        return []
    info = [k for k in await list_keys(redis, keys) if match[0].startswith(k.key_id)]
    await redis.hdel(keys.api_keys, match[0])
    for k in info:
        details = {"key_id": k.key_id, "admin": k.admin}
        await audit.record(
            redis, keys, actor=actor, action="api_key.revoke", target=k.tenant, details=details
        )
    return info


# -- per-tenant settings --------------------------------------------------------

# allow_fleet_keys: whether the tenant's jobs may use the deployment's own provider keys for a
# provider the tenant has no key of its own for.
DEFAULT_SETTINGS: dict[str, bool] = {"allow_fleet_keys": True}


async def get_settings(redis: Redis, keys: Keys, tenant: str) -> dict[str, bool]:
    raw = await redis.hgetall(keys.tenant_settings(tenant))
    got = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    out = dict(DEFAULT_SETTINGS)
    for name in DEFAULT_SETTINGS:
        if name in got:
            out[name] = got[name] in (b"1", "1")
    return out


async def update_settings(
    redis: Redis, keys: Keys, tenant: str, changes: dict[str, bool], *, actor: str
) -> dict[str, bool]:
    """Set some settings (unknown names raise ValueError); audited; -> all settings after."""
    check_tenant(tenant)
    unknown = sorted(set(changes) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown tenant setting(s): {', '.join(unknown)} (known: allow_fleet_keys)")
    if changes:
        before = await get_settings(redis, keys, tenant)
        await redis.hset(
            keys.tenant_settings(tenant), mapping={k: "1" if v else "0" for k, v in changes.items()}
        )
        details = {k: {"from": before[k], "to": v} for k, v in changes.items()}
        await audit.record(redis, keys, actor=actor, action="tenant.settings", target=tenant, details=details)
    return await get_settings(redis, keys, tenant)
