"""Fusebox's own API: single jobs with webhooks and priorities, batch results as they finish, usage."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from producer.api import batches, jobs
from producer.api.auth import Ctx, TenantDep
from producer.api.errors import OPENAI_ERRORS, ApiError, not_found
from shared import budget
from shared.ssrf import check_url
from shared.usage import read_usage, totals

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS, tags=["fusebox"])


class CreateJob(BaseModel):
    type: Literal["chat", "embedding"] = "chat"
    body: dict[str, Any] = Field(description="an OpenAI chat.completions or embeddings request body")
    webhook_url: str | None = Field(None, description="POSTed a signed summary when the job ends")
    priority: int = Field(0, ge=0, le=10, description="0 (default) to 10 (as synchronous requests)")


class JobObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["fusebox.job"] = "fusebox.job"
    type: str | None = None
    status: Literal["queued", "running", "completed", "failed"]
    created_at: int | None = None
    completed_at: int | None = None
    result: dict[str, Any] | None = None


class NativeBatch(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["fusebox.batch"] = "fusebox.batch"
    status: str
    request_counts: dict[str, int]
    paused: str | None = Field(None, description="why its lines wait (its spend cap), while they do")
    budget_usd: float | None = Field(None, description="its spend cap in USD, if any")
    spent_usd: float = Field(0.0, description="what its lines have cost so far (reservations included)")


class UsageList(BaseModel):
    model_config = ConfigDict(extra="allow")
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    totals: dict[str, float]


@router.post("/jobs", response_model=JobObject, status_code=202)
async def create_job(ctx: Ctx, tenant: TenantDep, req: CreateJob) -> dict[str, Any]:
    kind = "chat" if req.type == "chat" else "embed"
    parsed = jobs.parse(kind, req.body)
    await jobs.check_model(ctx, parsed.model, tenant.name)
    if req.webhook_url:
        try:
            await check_url(req.webhook_url, ctx.settings.file.webhooks.allow_hosts)
        except (ValueError, OSError) as e:
            raise ApiError(
                400, f"webhook_url refused: {e}", code="invalid_webhook_url", param="webhook_url"
            ) from None
    spec = await jobs.enqueue(ctx, tenant, parsed, priority=req.priority, webhook=req.webhook_url)
    rec = {"tenant": tenant.name, "type": spec.kind, "created_at": int(spec.submitted_at)}
    return await jobs.job_object(ctx, spec.id, rec)


@router.get("/jobs/{job_id}", response_model=JobObject)
async def get_job(ctx: Ctx, tenant: TenantDep, job_id: str) -> dict[str, Any]:
    rec = await jobs.owner(ctx, tenant, job_id)
    if rec is None:
        raise not_found("job", job_id)
    return await jobs.job_object(ctx, job_id, rec)


@router.get("/fusebox/batches/{batch_id}", response_model=NativeBatch)
async def get_batch(ctx: Ctx, tenant: TenantDep, batch_id: str) -> dict[str, Any]:
    """A batch of any API family in Fusebox's terms: its status and counts, and whether its lines
    wait for its spend cap (``paused``, with the reason) and what it has spent."""
    info = await batches.owned_batch(ctx, tenant.name, batch_id)
    if info is None:
        raise not_found("batch", batch_id)
    total, completed, failed = (int(info.get(k, 0)) for k in ("total", "completed", "failed"))
    return {
        "id": batch_id,
        "status": info.get("status", "validating"),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        **budget.batch_fields(info),
        "spent_usd": await budget.spent(ctx.redis, ctx.settings.keys, batch_id=batch_id),
        "api": info.get("api", "openai"),
    }


@router.get(
    "/fusebox/batches/{batch_id}/results",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def batch_results(
    ctx: Ctx, tenant: TenantDep, batch_id: str, order: Literal["completion", "input"] = "completion"
) -> StreamingResponse:
    """OpenAI batch output lines (successes and failures) as NDJSON. ``completion`` order follows the
    batch and streams each line as it finishes; ``input`` order gives the lines finished so far."""
    info = await batches.owned_batch(ctx, tenant.name, batch_id)
    if info is None:
        raise not_found("batch", batch_id)
    if order == "completion":
        body = batches.completion_lines(ctx, batch_id)
    else:
        total = int(info.get("total", 0))
        body = _both(ctx, batch_id, total)
    return StreamingResponse(body, media_type="application/x-ndjson")


async def _both(ctx: Ctx, batch_id: str, total: int) -> Any:
    async for chunk in batches.output_lines(ctx, batch_id, "all", total):
        yield chunk


@router.get("/fusebox/usage", response_model=UsageList)
async def usage(
    ctx: Ctx,
    tenant: TenantDep,
    since_s: Annotated[float, Query(gt=0, le=8 * 24 * 3600)] = 3600,
    tenant_name: Annotated[str | None, Query(alias="tenant")] = None,
) -> dict[str, Any]:
    """Usage per provider, model, tenant and batch; a tenant sees its own, an admin key everyone's."""
    rows = await read_usage(ctx.redis, ctx.settings.keys, since_s)
    if not tenant.admin:
        if tenant_name not in (None, tenant.name):
            raise ApiError(403, "only admin keys read other tenants' usage", code="forbidden")
        tenant_name = tenant.name
    if tenant_name is not None:
        rows = [r for r in rows if r.tenant == tenant_name]
    return {"object": "list", "data": [asdict(r) for r in rows], "totals": totals(rows)}
