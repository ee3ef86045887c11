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
# weight: the tenant's share when batch lines of several tenants wait for workers (weighted round
# robin between the tenants' lanes): weight 3 gets three lines to another tenant's one.
DEFAULT_SETTINGS: dict[str, bool | int] = {"allow_fleet_keys": True, "weight": 1}
MAX_WEIGHT = 1000


async def get_settings(redis: Redis, keys: Keys, tenant: str) -> dict[str, bool | int]:
    raw = await redis.hgetall(keys.tenant_settings(tenant))
    got = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    out = dict(DEFAULT_SETTINGS)
    for name, default in DEFAULT_SETTINGS.items():
        if name not in got:
            continue
        v = got[name].decode() if isinstance(got[name], bytes) else str(got[name])
        out[name] = v == "1" if isinstance(default, bool) else int(v)
    return out


def check_weight(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WEIGHT:
        raise ValueError(f"weight is a whole number from 1 to {MAX_WEIGHT} (got {v!r})")
    return v


def _checked(changes: dict[str, bool | int]) -> dict[str, str]:
    """The stored form of ``changes``; ValueError for an unknown name or a value out of range."""
    unknown = sorted(set(changes) - set(DEFAULT_SETTINGS))
    if unknown:
        known = ", ".join(DEFAULT_SETTINGS)
        raise ValueError(f"unknown tenant setting(s): {', '.join(unknown)} (known: {known})")
    out = {}
    for k, v in changes.items():
        if isinstance(DEFAULT_SETTINGS[k], bool):
            if not isinstance(v, bool):
                raise ValueError(f"{k} is true or false (got {v!r})")
            out[k] = "1" if v else "0"
        else:
            out[k] = str(check_weight(v))
    return out


async def update_settings(
    redis: Redis, keys: Keys, tenant: str, changes: dict[str, bool | int], *, actor: str
) -> dict[str, bool | int]:
    """Set some settings (unknown names or bad values raise ValueError); audited; -> all settings after."""
    check_tenant(tenant)
    stored = _checked(changes)
    if changes:
        before = await get_settings(redis, keys, tenant)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.tenant_settings(tenant), mapping=stored)
            if "weight" in stored:  # the copy claim.lua reads, one hash for every lane
                pipe.hset(keys.lane_weights, tenant, stored["weight"])
            await pipe.execute()
        details = {k: {"from": before[k], "to": v} for k, v in changes.items()}
        await audit.record(redis, keys, actor=actor, action="tenant.settings", target=tenant, details=details)
    return await get_settings(redis, keys, tenant)
