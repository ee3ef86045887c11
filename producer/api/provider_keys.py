"""Tenants' own provider keys (BYOK), tenant settings and the audit trail.

A tenant manages its own keys; an admin key may act for any tenant with ``?tenant=NAME``. Keys
are accepted once (PUT) and never shown again: lists give the masked form only.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from producer.api.auth import AdminDep, ApiContext, Ctx, TenantDep
from producer.api.errors import OPENAI_ERRORS, ApiError
from shared import audit, tenants
from shared.byok import adapters, store
from shared.byok.adapters import EntryError
from shared.byok.crypto import MasterKeyError
from shared.schema import ProviderEntry
from shared.tenants import Tenant

router = APIRouter(prefix="/v1/fusebox", responses=OPENAI_ERRORS, tags=["fusebox"])
_PROVIDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TenantParam = Annotated[str | None, Query(description="admin keys only: act for this tenant")]


class PutProviderKey(BaseModel):
    key: str = Field(min_length=1, max_length=8192, description="the provider API key (never shown again)")
    type: str | None = Field(None, description="a provider entry of the tenant's own: adapter type")
    base_url: str | None = Field(None, max_length=2048, description="its base URL (SSRF-checked)")
    models: list[str] = Field(default_factory=list, description="models it serves")

    def __repr__(self) -> str:  # never the key, even in a validation traceback
        return f"PutProviderKey(type={self.type!r}, base_url={self.base_url!r})"

    __str__ = __repr__


class TenantSettings(BaseModel):
    allow_fleet_keys: bool | None = Field(
        None, description="may the tenant's jobs use the deployment's keys where it has none of its own"
    )
    weight: int | None = Field(
        None, ge=1, le=1000, description="the tenant's share of workers among tenants' batch lines"
    )


def _target(caller: Tenant, tenant: str | None) -> str:
    if tenant is None or tenant == caller.name:
        return caller.name
    if not caller.admin:
        raise ApiError(
            403, "Only admin keys may act for another tenant.", code="admin_required", type="permission_error"
        )
    try:
        return tenants.check_tenant(tenant)
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_tenant", param="tenant") from None


def _check_provider(name: str) -> str:
    if not _PROVIDER.match(name):
        raise ApiError(400, "provider: use 1-64 letters, digits, '.', '_' or '-'", param="provider")
    return name


def _master_error(e: MasterKeyError) -> ApiError:
    return ApiError(503, str(e), code="master_key_unavailable", type="server_error")


@router.put("/provider-keys/{provider}")
async def put_provider_key(
    ctx: Ctx, caller: TenantDep, provider: str, body: PutProviderKey, tenant: TenantParam = None
) -> dict[str, Any]:
    """Store (or replace) the tenant's key for ``provider``: a configured provider, or a provider
    entry of the tenant's own (type, base_url, models)."""
    who = _target(caller, tenant)
    _check_provider(provider)
    base = ctx.router.providers.get(provider)
    entry = None
    if body.type is not None or body.base_url is not None:
        if body.type is None:
            raise ApiError(400, "a provider entry needs its type", param="type")
        entry = ProviderEntry(type=body.type, base_url=body.base_url, models=body.models)
    elif base is None or provider == "simulated":
        raise ApiError(
            404,
            f"No provider named '{provider}': give type, base_url and models for an entry of your own.",
            code="not_found",
            param="provider",
        )
    try:
        if entry is not None:
            await adapters.check_entry(entry, ctx.settings.file.api.provider_allow_hosts)
        # Building it checks what the adapter needs (a base URL for types that have no default).
        p = adapters.build(
            provider, base.config if base else None, store.TenantKey(provider, body.key, entry, "")
        )
        await p.aclose()
        rec = await store.put(
            ctx.redis, ctx.settings.keys, ctx.keyring, who, provider, body.key, entry, actor=caller.name
        )
    except MasterKeyError as e:
        raise _master_error(e) from None
    except (EntryError, ValueError) as e:
        raise ApiError(400, str(e), code="invalid_provider_entry", param="base_url") from None
    return {"tenant": who, **store.view(provider, rec)}


@router.get("/provider-keys")
async def list_provider_keys(ctx: Ctx, caller: TenantDep, tenant: TenantParam = None) -> dict[str, Any]:
    """The tenant's provider keys, masked, and whether it may fall back to the fleet's keys."""
    who = _target(caller, tenant)
    recs = await store.records(ctx.redis, ctx.settings.keys, who)
    settings = await tenants.get_settings(ctx.redis, ctx.settings.keys, who)
    return {
        "tenant": who,
        "allow_fleet_keys": settings["allow_fleet_keys"],
        "data": [store.view(p, r) for p, r in sorted(recs.items())],
    }


@router.delete("/provider-keys/{provider}")
async def delete_provider_key(
    ctx: Ctx, caller: TenantDep, provider: str, tenant: TenantParam = None
) -> dict[str, Any]:
    who = _target(caller, tenant)
    if not await store.delete(
        ctx.redis, ctx.settings.keys, who, _check_provider(provider), actor=caller.name
    ):
        raise ApiError(
            404, f"Tenant '{who}' has no key for '{provider}'.", code="not_found", param="provider"
        )
    return {"tenant": who, "provider": provider, "deleted": True}


async def _test(ctx: ApiContext, who: str, provider: str) -> dict[str, Any]:
    try:
        keys = await store.load(ctx.redis, ctx.settings.keys, ctx.keyring, who)
    except MasterKeyError as e:
        raise _master_error(e) from None
    key = keys.get(provider)
    if key is None:
        raise ApiError(
            404, f"Tenant '{who}' has no key for '{provider}'.", code="not_found", param="provider"
        )
    base = ctx.router.providers.get(provider)
    try:
        if key.entry is not None:  # checked again: the name may resolve elsewhere by now
            await adapters.check_entry(key.entry, ctx.settings.file.api.provider_allow_hosts)
        p = adapters.build(provider, base.config if base else None, key)
    except (EntryError, ValueError) as e:
        return {"status": "error", "detail": str(e)}
    try:
        return await adapters.test_connection(p)
    finally:
        await p.aclose()


@router.post("/provider-keys/{provider}/test")
async def test_provider_key(
    ctx: Ctx, caller: TenantDep, provider: str, tenant: TenantParam = None
) -> dict[str, Any]:
    """A cheap real call with the stored key (the provider's model list): ok | auth_failed |
    unreachable | error."""
    who = _target(caller, tenant)
    result = await _test(ctx, who, _check_provider(provider))
    await audit.record(
        ctx.redis,
        ctx.settings.keys,
        actor=caller.name,
        action="provider_key.test",
        target=who,
        details={"provider": provider, "status": result["status"]},
    )
    return {"tenant": who, "provider": provider, **result}


@router.get("/tenants/{tenant}/settings")
async def get_tenant_settings(ctx: Ctx, tenant: str, _: AdminDep) -> dict[str, Any]:
    return {"tenant": tenant, **await tenants.get_settings(ctx.redis, ctx.settings.keys, tenant)}


@router.patch("/tenants/{tenant}/settings")
async def patch_tenant_settings(
    ctx: Ctx, tenant: str, body: TenantSettings, admin: AdminDep
) -> dict[str, Any]:
    changes = {k: v for k, v in body.model_dump().items() if v is not None}
    try:
        out = await tenants.update_settings(ctx.redis, ctx.settings.keys, tenant, changes, actor=admin.name)
    except ValueError as e:
        raise ApiError(400, str(e), code="invalid_request", param="tenant") from None
    return {"tenant": tenant, **out}


@router.get("/audit")
async def audit_trail(ctx: Ctx, _: AdminDep, limit: int = 100) -> dict[str, Any]:
    """The newest admin actions first: key changes, breaker forcing, settings changes."""
    return {"data": await audit.read(ctx.redis, ctx.settings.keys, min(max(limit, 1), 1000))}
