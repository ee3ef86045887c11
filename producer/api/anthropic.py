"""Anthropic-compatible API: ``POST /v1/messages`` and the Message Batches API, answered by any provider.

Requests are translated to the internal (OpenAI-shaped) chat request (``anthropic_format``), run
through the same queue, router, limits and breakers as everything else, and translated back.
Errors use Anthropic's shape. Point the Anthropic SDK at ``http://HOST:PORT`` (no ``/v1``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from producer.api import anthropic_format as af
from producer.api import jobs
from producer.api.auth import ApiContext, Ctx, TenantDep
from producer.api.errors import ApiError, documented_errors
from producer.batch_input import Validator
from shared.byok.entries import own_entries
from shared.jobs.store import ENDED
from shared.schema import ChatRequest, ErrorInfo, JobResult, JobSpec, RequestError

ERROR_PREFIXES = ("/v1/messages",)
WINDOW_S = 24 * 3600  # Anthropic batches end within 24 hours
CHUNK = 1000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error shape."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


ANTHROPIC_ERRORS = documented_errors(AnthropicError, (504, "No answer in time"))
router = APIRouter(prefix="/v1", tags=["anthropic"], responses=ANTHROPIC_ERRORS)
_JSON_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"schema": {"type": "object"}}}}
}
# The body is read raw (one decode, a size check first); this documents it for OpenAPI clients.
_JSON_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
}


def error_body(status: int, message: str, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    return af.error_body(status, message)


def _not_found(batch_id: str) -> ApiError:
    return ApiError(404, f"No message batch found with id '{batch_id}'.", code="not_found")


async def _json(request: Request, limit: int) -> Any:
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        raise ApiError(413, f"request body is {size} bytes; the limit is {limit}", code="request_too_large")
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    try:
        return _dec.decode(raw)
    except msgspec.DecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None


def _chat(params: Any) -> ChatRequest:
    try:
        return ChatRequest.from_body(af.to_openai_request(params))
    except RequestError as e:
        raise ApiError(400, e.message, code=e.code) from None


@router.post("/messages", response_class=Response, responses=_JSON_OK, openapi_extra=_JSON_BODY)
async def create_message(ctx: Ctx, tenant: TenantDep, request: Request) -> Response:
    """Anthropic Messages, run as an interactive job (ahead of batch lines) and answered when done."""
    params = await _json(request, ctx.settings.file.batches.max_line_bytes)
    req = _chat(params)
    await jobs.check_model(ctx, req.model, tenant.name)
    spec = await jobs.enqueue(ctx, tenant, req)
    res = await jobs.wait(ctx, spec.id, ctx.settings.file.api.sync_timeout_s)
    if res is None:
        raise ApiError(504, f"no answer within {ctx.settings.file.api.sync_timeout_s:.0f}s", code="timeout")
    jobs.raise_for(res)
    assert res.body is not None
    msg = af.to_message(res.body, req.model, af.message_id(spec.id))
    return Response(_enc.encode(msg), media_type="application/json")


# -- message batches ---------------------------------------------------------------


def _results_url(request: Request, batch_id: str) -> str:
    return str(request.base_url).rstrip("/") + f"/v1/messages/batches/{batch_id}/results"


async def _owned(ctx: ApiContext, tenant: str, batch_id: str) -> dict[str, str]:
    info = await ctx.store.batch_info(batch_id)
    if not info or info.get("tenant") != tenant or info.get("api") != "anthropic":
        raise _not_found(batch_id)
    return info


def _reject(batch_id: str, index: int, custom_id: str, e: RequestError) -> JobResult:
    return JobResult(
        id=f"{batch_id}:{custom_id}",
        status_code=400,
        error=ErrorInfo(
            code=e.code, message=f"requests.{index}.params: {e.message}", error_class="final", status=400
        ),
        custom_id=custom_id,
        batch_id=batch_id,
        line=index,
        completed_at=time.time(),
    )


def _specs(v: Validator, items: list[Any], offset: int) -> list[JobSpec | JobResult]:
    """Each request -> a job, or its errored result (params are validated per request, as Anthropic does)."""
    out: list[JobSpec | JobResult] = []
    for i, item in enumerate(items, start=offset):
        cid = item["custom_id"]
        try:
            req = ChatRequest.from_body(af.to_openai_request(item.get("params")))
            v.check_model(req.model)
        except RequestError as e:
            out.append(_reject(v.batch_id, i, cid, e))
            continue
        out.append(v.accept(i, cid, req))
    return out


def _check_requests(data: Any, max_lines: int) -> list[dict[str, Any]]:
    items = data.get("requests") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ApiError(400, "requests: a non-empty list is required", param="requests")
    if len(items) > max_lines:
        raise ApiError(413, f"{len(items)} requests; the limit is {max_lines}", code="request_too_large")
    seen: set[str] = set()
    for i, item in enumerate(items):
        cid = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
            raise ApiError(400, f"requests.{i}.custom_id: 1-64 letters, digits, '_' or '-' are required")
        if cid in seen:
            raise ApiError(400, f"requests.{i}.custom_id: {cid!r} is used more than once")
        seen.add(cid)
    return items


@router.post("/messages/batches", openapi_extra=_JSON_BODY)
async def create_batch(ctx: Ctx, tenant: TenantDep, request: Request) -> dict[str, Any]:
    """Create a message batch; every request runs through Fusebox's queue on any provider."""
    api = ctx.settings.file.api
    items = _check_requests(await _json(request, api.max_file_bytes), api.max_file_lines)
    batch_id = "msgbatch_" + uuid.uuid4().hex[:24]
    store = ctx.store
    await store.create_batch(
        batch_id,
        {
            "tenant": tenant.name,
            "api": "anthropic",
            "endpoint": "/v1/messages",
            "completion_window_s": WINDOW_S,
        },
    )
    await ctx.redis.zadd(ctx.settings.keys.tenant_message_batches(tenant.name), {batch_id: time.time()})
    own = await own_entries(ctx.redis, ctx.settings.keys, tenant.name)
    v = Validator(batch_id, ctx.router, store.cfg.max_line_bytes, tenant=tenant.name, own=own)
    rejected_n = 0
    for start in range(0, len(items), CHUNK):
        part = _specs(v, items[start : start + CHUNK], start)
        specs = [s for s in part if isinstance(s, JobSpec)]
        bad = [r for r in part if isinstance(r, JobResult)]
        rejected_n += (await store.enqueue_chunk(batch_id, specs, bad))[2]
    await store.seal(batch_id, len(items), validation_failed=rejected_n == len(items))
    return af.batch_object(batch_id, await store.batch_info(batch_id), _results_url(request, batch_id))


@router.get("/messages/batches/{batch_id}")
async def get_batch(ctx: Ctx, tenant: TenantDep, request: Request, batch_id: str) -> dict[str, Any]:
    info = await _owned(ctx, tenant.name, batch_id)
    return af.batch_object(batch_id, info, _results_url(request, batch_id))


@router.get("/messages/batches")
async def list_batches(
    ctx: Ctx,
    tenant: TenantDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: str | None = None,
    before_id: str | None = None,
) -> dict[str, Any]:
    """Newest first, as Anthropic lists them; ``after_id`` pages towards older batches."""
    key = ctx.settings.keys.tenant_message_batches(tenant.name)
    start, stop = 0, None
    if after_id:
        rank = await ctx.redis.zrevrank(key, after_id)
        start = rank + 1 if rank is not None else 0
    if before_id:
        rank = await ctx.redis.zrevrank(key, before_id)
        stop = rank if rank is not None else 0
        start = max(0, (stop or 0) - limit)
    end = start + limit if stop is None else stop - 1
    ids = [i.decode() for i in await ctx.redis.zrevrange(key, start, end)]
    data = []
    for bid in ids[:limit]:
        info = await ctx.store.batch_info(bid)
        if info:
            data.append(af.batch_object(bid, info, _results_url(request, bid)))
    more = (await ctx.redis.zcard(key)) > start + len(data) if stop is None else start > 0
    return {
        "data": data,
        "has_more": bool(more),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.post("/messages/batches/{batch_id}/cancel")
async def cancel_batch(ctx: Ctx, tenant: TenantDep, request: Request, batch_id: str) -> dict[str, Any]:
    await _owned(ctx, tenant.name, batch_id)
    await ctx.store.cancel(batch_id)
    return af.batch_object(batch_id, await ctx.store.batch_info(batch_id), _results_url(request, batch_id))


async def _result_lines(ctx: ApiContext, batch_id: str, total: int, ended_as: str) -> AsyncIterator[bytes]:
    buf = bytearray()
    async for r in ctx.store.iter_results(batch_id, total):
        if r is None or r.custom_id is None:
            continue
        buf += _enc.encode(af.result_line(r.custom_id, r, ended_as)) + b"\n"
        if len(buf) >= 256 * 1024:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


@router.get("/messages/batches/{batch_id}/results", response_class=StreamingResponse)
async def batch_results(ctx: Ctx, tenant: TenantDep, batch_id: str) -> StreamingResponse:
    """JSONL, one ``{custom_id, result}`` per request, in request order; available once the batch ended."""
    info = await _owned(ctx, tenant.name, batch_id)
    if info.get("status") not in ENDED:
        raise ApiError(404, f"message batch {batch_id} has not ended yet; results are not available")
    ended_as = "expired" if info.get("status") == "expired" else "canceled"
    return StreamingResponse(
        _result_lines(ctx, batch_id, int(info.get("total") or 0), ended_as), media_type="application/x-jsonl"
    )
