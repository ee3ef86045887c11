"""Single jobs from the HTTP API: enqueue ahead of batch lines, wait for the worker's notice.

arq runs due jobs lowest score first, and a batch line's score is its enqueue time: a job
scored earlier than every batch line runs before them. The worker's result write (complete.lua)
pushes to the job's notify list, so a waiting request BLPOPs it: no polling, any replica.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from producer.api.auth import ApiContext
from producer.api.errors import ApiError
from shared.byok.entries import own_entries
from shared.jobs.store import JOB_EXPIRY_MS, Store
from shared.keys import ARQ_IN_PROGRESS, ARQ_JOB, wake_workers
from shared.schema import ChatRequest, EmbeddingRequest, JobResult, JobSpec, OutputMeta, RequestError
from shared.tenants import Tenant

DAY_MS = 24 * 3600 * 1000
INTERACTIVE = 10  # the priority of synchronous requests: the most head start there is
MAX_PRIORITY = 10
WAIT_SLICE_S = 5.0


def head_start_ms(priority: int) -> int:
    """Priority p (0-10) starts p/10 of a day ahead: ahead of every batch line queued in that time."""
    return DAY_MS * max(0, min(priority, MAX_PRIORITY)) // MAX_PRIORITY


def parse(kind: str, body: Any) -> ChatRequest | EmbeddingRequest:
    try:
        req = ChatRequest.from_body(body) if kind == "chat" else EmbeddingRequest.from_body(body)
    except RequestError as e:
        raise ApiError(400, e.message, code=e.code) from None
    return req


async def check_model(ctx: ApiContext, model: str, tenant: str | None = None) -> None:
    """The fleet serves ``model``, or one of ``tenant``'s own provider entries does (read only when
    the fleet does not: no round trip on the usual path)."""
    try:
        ctx.router.resolve(model)
    except RequestError as e:
        if tenant is not None and (await own_entries(ctx.redis, ctx.settings.keys, tenant)).serves(model):
            return
        raise ApiError(
            404 if e.code == "model_not_found" else 400, e.message, code=e.code, param="model"
        ) from None


async def enqueue(
    ctx: ApiContext,
    tenant: Tenant,
    req: ChatRequest | EmbeddingRequest,
    priority: int = INTERACTIVE,
    webhook: str | None = None,
) -> JobSpec:
    """One round trip: the owner record, the arq job and its place in the queue."""
    now = time.time()
    spec = JobSpec(id="job_" + uuid.uuid4().hex, submitted_at=now, tenant=tenant.name, webhook=webhook)
    if isinstance(req, ChatRequest):
        spec.request = req
    else:
        spec.embed = req
    keys = ctx.settings.keys
    owner = json.dumps({"tenant": tenant.name, "type": spec.kind, "created_at": int(now)})
    score = int(now * 1000) - head_start_ms(priority)
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.job_owner(spec.id), owner, ex=ctx.store.cfg.results_ttl_s)
        pipe.set(ARQ_JOB + spec.id, Store.job_payload(spec), px=JOB_EXPIRY_MS)
        pipe.zadd(keys.queue, {spec.id: score})
        wake_workers(pipe, keys)  # an idle worker takes it now, not at its next poll
        await pipe.execute()
    return spec


async def wait(
    ctx: ApiContext, job_id: str, timeout: float, gone: Callable[[], Awaitable[bool]] | None = None
) -> JobResult | None:
    """The job's result once the worker wrote it, or None after ``timeout`` seconds or when ``gone()``
    says the caller hung up (checked between slices of the wait, so a dropped client frees its
    Redis connection soon; the job itself still runs and keeps its result)."""
    key = ctx.settings.keys.job_notify(job_id)
    deadline = time.monotonic() + timeout
    while True:
        # A result written before the BLPOP left its notice in the list: no race, no GET first.
        left = deadline - time.monotonic()
        await ctx.redis.blpop([key], timeout=max(0.01, min(left, WAIT_SLICE_S)))
        res = await ctx.store.get_result(job_id)
        if res is not None or left <= WAIT_SLICE_S or (gone is not None and await gone()):
            return res


def raise_for(result: JobResult) -> None:
    """A failed job as the HTTP error a direct call to the provider would have given."""
    if result.error is None:
        return
    status = result.error.status or result.status_code or 502
    if status < 400:
        status = 502
    raise ApiError(status, result.error.message, code=result.error.code, type=result.error.error_class)


async def owner(ctx: ApiContext, tenant: Tenant, job_id: str) -> dict[str, Any] | None:
    raw = await ctx.redis.get(ctx.settings.keys.job_owner(job_id))
    if raw is None:
        return None
    rec: dict[str, Any] = json.loads(raw)
    return rec if rec.get("tenant") == tenant.name else None


async def job_object(ctx: ApiContext, job_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    res = await ctx.store.get_result(job_id)
    out: dict[str, Any] = {
        "id": job_id,
        "object": "fusebox.job",
        "type": rec.get("type"),
        "created_at": rec.get("created_at"),
        "result": None,
    }
    if res is None:
        running = await ctx.redis.exists(ARQ_IN_PROGRESS + job_id)
        out["status"] = "running" if running else "queued"
        return out
    out["status"] = "completed" if res.ok else "failed"
    out["completed_at"] = int(res.completed_at)
    meta = OutputMeta.of(res)
    out["result"] = {
        "status_code": res.status_code,
        "body": res.body,
        "error": msgspec.to_builtins(res.error) if res.error is not None else None,
        "fusebox": msgspec.to_builtins(meta),
    }
    return out
