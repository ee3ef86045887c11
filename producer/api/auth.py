"""Who is calling: the API key (``Authorization: Bearer`` or ``x-api-key``) names a tenant.

``ctx`` gives routes the process's shared handles (Redis, stores, router); nothing a request
leaves behind lives in the process, so any replica can answer the next request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from producer.api.errors import ApiError
from shared.batches.files import FileStore
from shared.byok.crypto import KeyRing
from shared.config import Settings
from shared.jobs.store import Store
from shared.router import Router
from shared.tenants import Tenant, authenticate


@dataclass
class ApiContext:
    settings: Settings
    redis: ArqRedis
    store: Store
    files: FileStore
    router: Router
    keyring: KeyRing | None = None  # master key(s) for tenants' provider keys (None: not configured)


async def get_ctx(request: Request) -> ApiContext:
    # async: FastAPI would run a plain function in its thread pool, a thread hop per request
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_api_key = APIKeyHeader(name="x-api-key", auto_error=False, description="x-api-key: KEY")


async def get_tenant(
    ctx: Ctx,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Tenant:
    key = bearer.credentials if bearer is not None else api_key
    if not key:
        raise ApiError(
            401,
            "You didn't provide an API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY' "
            "(create one with 'fusebox keys create TENANT').",
            code="missing_api_key",
        )
    tenant = await authenticate(ctx.redis, ctx.settings.keys, key)
    if tenant is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


async def require_admin(tenant: TenantDep) -> Tenant:
    """For ops routes: only admin keys (``fusebox keys create T --admin``)."""
    if not tenant.admin:
        raise ApiError(
            403,
            "This endpoint needs an admin key (fusebox keys create NAME --admin).",
            code="admin_required",
            type="permission_error",
        )
    return tenant


AdminDep = Annotated[Tenant, Depends(require_admin)]
