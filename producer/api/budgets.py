"""Spend caps (admin keys): a tenant's daily cap and a batch's cap, in USD; audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from producer.api.auth import AdminDep, Ctx
from producer.api.errors import OPENAI_ERRORS, ApiError
from shared import budget
from shared.tenants import check_tenant

router = APIRouter(prefix="/v1/fusebox/budgets", responses=OPENAI_ERRORS, tags=["fusebox"])


class Cap(BaseModel):
    usd: float | None = Field(description="the cap in USD (a tenant's: per UTC day); null removes it", ge=0)


@router.put("/tenants/{tenant}")
async def put_tenant_budget(ctx: Ctx, tenant: str, body: Cap, admin: AdminDep) -> dict[str, Any]:
    try:
        check_tenant(tenant)
    except ValueError as e:
        raise ApiError(400, str(e), param="tenant") from None
    await budget.set_cap(ctx.redis, ctx.settings.keys, tenant=tenant, usd=body.usd, actor=admin.name)
    spent = await budget.spent(ctx.redis, ctx.settings.keys, tenant=tenant)
    return {"tenant": tenant, "daily_budget_usd": body.usd, "spent_today_usd": spent}


@router.put("/batches/{batch_id}")
async def put_batch_budget(ctx: Ctx, batch_id: str, body: Cap, admin: AdminDep) -> dict[str, Any]:
    """Raising the cap of a paused batch resumes it (its waiting lines run at their next check)."""
    try:
        await budget.set_cap(ctx.redis, ctx.settings.keys, batch_id=batch_id, usd=body.usd, actor=admin.name)
    except LookupError:
        raise ApiError(
            404, f"No batch found with id '{batch_id}'.", code="not_found", param="batch_id"
        ) from None
    spent = await budget.spent(ctx.redis, ctx.settings.keys, batch_id=batch_id)
    return {"batch_id": batch_id, "budget_usd": body.usd, "spent_usd": spent}
