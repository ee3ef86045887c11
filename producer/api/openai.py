"""OpenAI-compatible routes: Files, Batches, chat completions, embeddings and models.

Base URL ``http://HOST:PORT/v1``; errors in OpenAI's shape (errors.py is the default family).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from producer.api import batches, jobs
from producer.api.auth import Ctx, TenantDep
from producer.api.errors import OPENAI_ERRORS, ApiError, not_found
from shared.batches.files import FileError
from shared.schema import URL_KINDS

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS)
_enc = msgspec.json.Encoder()
READ_BLOCK = 1024 * 1024
_WINDOW = re.compile(r"^(\d+)([hms])$")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileObject(_Open):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(_Open):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(_Open):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(_Open):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(_Open):
    object: str = "list"
    data: list[BatchError]


class BatchFusebox(_Open):
    """Fusebox's own fields; ``status`` stays OpenAI's (a batch at its spend cap is in_progress)."""

    paused: str | None = Field(None, description="why the batch's lines wait (its spend cap), while they do")
    budget_usd: float | None = Field(None, description="the batch's spend cap in USD, if any")


class BatchObject(_Open):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    fusebox: BatchFusebox | None = None


class BatchList(_Open):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"]
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)


class Model(_Open):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(_Open):
    object: Literal["list"] = "list"
    data: list[Model]


# -- files -------------------------------------------------------------------
def _file_obj(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": meta["id"],
        "object": "file",
        "bytes": meta["bytes"],
        "created_at": meta["created_at"],
        "filename": meta["filename"],
        "purpose": meta["purpose"],
        "status": "processed",
        "expires_at": meta.get("expires_at"),
        "status_details": None,
    }


async def _virtual(ctx: Ctx, tenant: TenantDep, file_id: str) -> tuple[str, str, dict[str, str]]:
    v = batches.virtual_file(file_id)
    info = await batches.owned_batch(ctx, tenant.name, v[0]) if v else None
    if v is None or info is None:
        raise not_found("file", file_id)
    return v[0], v[1], info


@router.post("/files", response_model=FileObject)
async def create_file(
    ctx: Ctx,
    tenant: TenantDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[Literal["batch"], Form()],
) -> dict[str, Any]:
    if purpose != "batch":
        raise ApiError(400, f"purpose {purpose!r} is not supported; use 'batch'", param="purpose")

    async def blocks() -> Any:
        while block := await file.read(READ_BLOCK):
            yield block

    try:
        meta = await ctx.files.create(tenant.name, file.filename or "upload.jsonl", purpose, blocks())
    except FileError as e:
        raise ApiError(e.status, e.message, code=e.code, param="file") from None
    return _file_obj(meta)


@router.get("/files", response_model=FileList)
async def list_files(
    ctx: Ctx,
    tenant: TenantDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    rows, more = await ctx.files.list(tenant.name, limit, after, newest_first=order == "desc")
    data = [_file_obj(m) for m in rows if purpose is None or m["purpose"] == purpose]
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/files/{file_id}", response_model=FileObject)
async def get_file(ctx: Ctx, tenant: TenantDep, file_id: str) -> dict[str, Any]:
    meta = await ctx.files.get(tenant.name, file_id)
    if meta is not None:
        return _file_obj(meta)
    batch_id, which, info = await _virtual(ctx, tenant, file_id)
    created = int(float(info.get("completed_at") or info.get("created_at") or time.time()))
    # The size is unknown until rendered; OpenAI's clients only display it.
    return {
        "id": file_id,
        "object": "file",
        "bytes": 0,
        "created_at": created,
        "filename": f"{batch_id}_{which}.jsonl",
        "purpose": f"batch_{which}",
        "status": "processed",
    }


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def file_content(ctx: Ctx, tenant: TenantDep, file_id: str) -> StreamingResponse:
    meta = await ctx.files.get(tenant.name, file_id)
    if meta is not None:
        return StreamingResponse(ctx.files.iter_content(file_id), media_type="application/octet-stream")
    batch_id, which, info = await _virtual(ctx, tenant, file_id)
    total = int(info.get("total", 0))
    body = batches.output_lines(ctx, batch_id, which, total)
    return StreamingResponse(body, media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(ctx: Ctx, tenant: TenantDep, file_id: str) -> dict[str, Any]:
    if await ctx.files.delete(tenant.name, file_id):
        return {"id": file_id, "object": "file", "deleted": True}
    await _virtual(ctx, tenant, file_id)  # 404 unless it is one of this tenant's output files
    raise ApiError(400, "a batch's output and error files expire with the batch; they cannot be deleted")


# -- batches -----------------------------------------------------------------
def _window_s(w: str) -> float:
    m = _WINDOW.match(w)
    if not m or int(m.group(1)) <= 0:
        raise ApiError(400, f"completion_window {w!r}: use e.g. '24h'", param="completion_window")
    return int(m.group(1)) * {"h": 3600, "m": 60, "s": 1}[m.group(2)]


@router.post("/batches", response_model=BatchObject)
async def create_batch(ctx: Ctx, tenant: TenantDep, req: CreateBatch) -> dict[str, Any]:
    window = _window_s(req.completion_window)
    if await ctx.files.get(tenant.name, req.input_file_id) is None:
        raise not_found("file", req.input_file_id)
    batch_id = "batch_" + uuid.uuid4().hex[:24]
    fields: dict[str, Any] = {
        "tenant": tenant.name,
        "input_file_id": req.input_file_id,
        "endpoint": req.endpoint,
        "completion_window": req.completion_window,
        "completion_window_s": window,
        "input": req.input_file_id,
    }
    if req.metadata:
        fields["metadata"] = json.dumps(req.metadata, separators=(",", ":"))
    await ctx.store.create_batch(batch_id, fields)
    await ctx.redis.zadd(ctx.settings.keys.tenant_batches(tenant.name), {batch_id: time.time()})
    # Validation and enqueueing run on in the background; the batch answers 'validating' meanwhile.
    info = await ctx.store.batch_info(batch_id)
    if await batches.claim_submission(ctx, batch_id):
        batches.start_submission(ctx, batch_id, info)
    return await batches.batch_object(ctx, batch_id, info)


@router.get("/batches/{batch_id}", response_model=BatchObject)
async def get_batch(ctx: Ctx, tenant: TenantDep, batch_id: str) -> dict[str, Any]:
    info = await batches.owned_batch(ctx, tenant.name, batch_id)
    if info is None:
        raise not_found("batch", batch_id)
    await batches.resume_if_orphaned(ctx, batch_id, info)
    return await batches.batch_object(ctx, batch_id, info)


@router.get("/batches", response_model=BatchList)
async def list_batches(
    ctx: Ctx, tenant: TenantDep, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    key = ctx.settings.keys.tenant_batches(tenant.name)
    start = 0
    if after:
        rank = await ctx.redis.zrevrank(key, after)
        start = rank + 1 if rank is not None else 0
    ids = [i.decode() for i in await ctx.redis.zrevrange(key, start, start + limit)]
    data = []
    for bid in ids[:limit]:
        info = await ctx.store.batch_info(bid)
        if info:
            await batches.resume_if_orphaned(ctx, bid, info)
            data.append(await batches.batch_object(ctx, bid, info))
        else:  # its results' TTL ran out: drop it from the index too
            await ctx.redis.zrem(key, bid)
    return {
        "object": "list",
        "data": data,
        "has_more": len(ids) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.post("/batches/{batch_id}/cancel", response_model=BatchObject)
async def cancel_batch(ctx: Ctx, tenant: TenantDep, batch_id: str) -> dict[str, Any]:
    if await batches.owned_batch(ctx, tenant.name, batch_id) is None:
        raise not_found("batch", batch_id)
    await ctx.store.cancel(batch_id)
    return await batches.batch_object(ctx, batch_id, await ctx.store.batch_info(batch_id))


# -- synchronous requests ----------------------------------------------------
_JSON_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": {"type": "object"}}}}
}


async def _run(request: Request, ctx: Ctx, tenant: TenantDep, kind: str, body: Any) -> Response:
    if kind == "chat" and isinstance(body, dict) and body.get("stream"):
        raise ApiError(
            400,
            "stream=true is not supported by Fusebox; send the request without it",
            code="unsupported_parameter",
            param="stream",
        )
    req = jobs.parse(kind, body)
    await jobs.check_model(ctx, req.model, tenant.name)
    spec = await jobs.enqueue(ctx, tenant, req)
    res = await jobs.wait(ctx, spec.id, ctx.settings.file.api.sync_timeout_s, request.is_disconnected)
    if res is None:
        raise ApiError(
            504,
            f"job {spec.id} has no result yet; fetch it later with GET /v1/jobs/{spec.id}",
            code="timeout",
            type="timeout",
        )
    jobs.raise_for(res)
    return Response(_enc.encode(res.body), media_type="application/json")


@router.post("/chat/completions", response_class=Response, responses=_JSON_OK)
async def chat_completions(
    request: Request, ctx: Ctx, tenant: TenantDep, body: Annotated[dict[str, Any], Body()]
) -> Response:
    return await _run(request, ctx, tenant, "chat", body)


@router.post("/embeddings", response_class=Response, responses=_JSON_OK)
async def embeddings(
    request: Request, ctx: Ctx, tenant: TenantDep, body: Annotated[dict[str, Any], Body()]
) -> Response:
    return await _run(request, ctx, tenant, "embed", body)


@router.get("/models", response_model=ModelList)
async def models(ctx: Ctx, tenant: TenantDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": o} for m, o in fleet_models(ctx)],
    }


def fleet_models(ctx: Ctx) -> list[tuple[str, str]]:
    """(model id, owner): every route, and every provider's listed models as 'provider/model'."""
    cfg = ctx.settings.file
    out = [(name, "fusebox") for name in sorted(cfg.routes)]
    for name, provider in sorted(ctx.router.providers.items()):
        listed = list(getattr(getattr(provider, "config", None), "models", None) or [])
        if name == "simulated" and not listed:
            listed = ["chat", "embed"]
        out += [(f"{name}/{m}", name) for m in listed]
    return out


assert set(URL_KINDS) == {"/v1/chat/completions", "/v1/embeddings"}  # CreateBatch.endpoint lists them
