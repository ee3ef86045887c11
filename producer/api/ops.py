"""Ops API (admin keys): providers with breaker and limiter state, live health checks, forcing a
breaker (audited), Server-Sent Events, Prometheus /metrics and the dashboard page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from producer.api.auth import AdminDep, ApiContext, Ctx
from producer.api.errors import OPENAI_ERRORS, ApiError
from producer.providers_cmd import describe
from shared import audit, metrics
from shared.byok import store as key_store
from shared.gate import Gate
from shared.ops_view import batches_in_progress, fleet_state, provider_series
from shared.providers.base import Provider

router = APIRouter(responses=OPENAI_ERRORS, tags=["ops"])
_DIR = Path(__file__).parent
EVENT_TICK_S = 1.0  # how often the event stream re-reads provider state and batch progress


def gate_of(ctx: ApiContext, request: Request) -> Gate:
    gate: Gate | None = getattr(request.app.state, "ops_gate", None)
    if gate is None:
        cfg = ctx.settings.file
        policies = {n: p.config for n, p in ctx.router.providers.items()}
        gate = request.app.state.ops_gate = Gate(ctx.redis, ctx.settings.keys, cfg, policies)
    return gate


def _provider(ctx: ApiContext, name: str) -> Provider:
    p = ctx.router.providers.get(name.split("/")[0].split("@")[0])  # provider[@tenant][/model]
    if p is None:
        raise ApiError(404, f"No provider named '{name}'.", code="not_found", param="name")
    return p


async def _scope_exists(ctx: ApiContext, gate: Gate, name: str) -> None:
    """A fleet provider's scope, or a tenant's own provider entry (``my-vllm@tenant``)."""
    if name.split("/")[0].split("@")[0] in ctx.router.providers:
        return
    if name.split("/")[0] not in {p.scope for p in await gate.key_scopes()}:
        raise ApiError(404, f"No provider named '{name}'.", code="not_found", param="name")


async def _tenant_entries(ctx: ApiContext) -> list[dict[str, Any]]:
    """Tenants' own provider entries (a name no fleet provider has), one view per (entry, tenant)
    named like its breaker scope; never the key (only its masked form)."""
    redis, keys = ctx.redis, ctx.settings.keys
    out = []
    for t in sorted(
        x.decode() if isinstance(x, bytes) else x for x in await redis.smembers(keys.provider_key_tenants)
    ):
        for pname, rec in sorted((await key_store.records(redis, keys, t)).items()):
            if rec.entry is None or pname in ctx.router.providers:
                continue
            out.append({
                "name": f"{pname}@{t}", "type": rec.entry.type, "tenant": t, "base_url": rec.entry.base_url,
                "models": list(rec.entry.models), "key": {"required": True, "set": True,
                "source": "tenant", "masked": rec.masked},
            })  # fmt: skip
    return out


class ProviderView(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    type: str
    scopes: list[dict[str, Any]] = Field(
        description="breaker and limiter state per scope (provider, provider/model)"
    )


class BreakerAction(BaseModel):
    action: Literal["open", "close", "disable", "reset"]
    reason: str = Field("", max_length=500, description="why (kept in the audit trail)")


async def _views(ctx: ApiContext, gate: Gate, name: str | None = None) -> list[dict[str, Any]]:
    snaps = await gate.snapshots()
    out = []
    for pname, p in ctx.router.providers.items():
        if name is not None and pname != name:
            continue
        scopes = [s for s in snaps if s["provider"] == pname]
        out.append({**describe(p, None), "scopes": scopes})
    for entry in await _tenant_entries(ctx):
        if name is not None and entry["name"] != name:
            continue
        scopes = [s for s in snaps if s["scope"].split("/")[0] == entry["name"]]
        out.append({**entry, "scopes": scopes})
    return out


@router.get("/v1/providers", response_model=list[ProviderView])
async def list_providers(ctx: Ctx, request: Request, _: AdminDep) -> list[dict[str, Any]]:
    """Every provider with its models, masked key source, limits, and per scope: breaker state,
    failure and slow rates, window counts, in flight vs limit, adaptive limit, rpm/tpm use, EMA
    latency, last transition and when it may change next."""
    return await _views(ctx, gate_of(ctx, request))


@router.get("/v1/providers/{name}", response_model=ProviderView)
async def get_provider(ctx: Ctx, request: Request, name: str, _: AdminDep) -> dict[str, Any]:
    gate = gate_of(ctx, request)
    await _scope_exists(ctx, gate, name)
    scope = name.split("/")[0]  # provider[@tenant]: a fleet provider's view, or a tenant entry's
    fleet = scope.split("@")[0]
    (view,) = await _views(ctx, gate, fleet if fleet in ctx.router.providers else scope)
    return view


@router.get("/v1/providers/{name}/health")
async def provider_health(ctx: Ctx, name: str, _: AdminDep) -> dict[str, Any]:
    """A live, cheap call to the provider (its model list, or the in-process check)."""
    p = _provider(ctx, name)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(15):
            h = await p.health()
        return {"name": p.name, **msgspec.to_builtins(h)}
    except Exception as e:  # the check must answer, whatever the provider does
        ms = round((time.perf_counter() - t0) * 1000, 1)
        return {
            "name": p.name,
            "ok": False,
            "latency_ms": ms,
            "detail": f"health check failed: {type(e).__name__}",
        }


@router.post("/v1/providers/{name}/breaker")
async def force_breaker(
    ctx: Ctx, request: Request, name: str, body: BreakerAction, admin: AdminDep
) -> dict[str, Any]:
    """open | close pin the breaker until reset; disable lets calls through unrecorded (limits still
    apply); reset returns it to automatic. Audited: actor and reason go to the transition stream."""
    gate = gate_of(ctx, request)
    await _scope_exists(ctx, gate, name)
    try:
        if body.action == "reset":
            await gate.reset(name, actor=admin.name, why=body.reason)
        else:
            state = {"open": "open", "close": "closed", "disable": "disabled"}[body.action]
            await gate.force(name, state, actor=admin.name, why=body.reason)
    except LookupError:
        raise ApiError(404, f"No breaker scope named '{name}'.", code="not_found", param="name") from None
    details = {"action": body.action, "reason": body.reason}
    await audit.record(
        ctx.redis, ctx.settings.keys, actor=admin.name, action="breaker.force", target=name, details=details
    )
    return await gate.snapshot(name)


@router.get("/v1/providers/{name}/transitions")
async def transitions(
    ctx: Ctx, request: Request, name: str, _: AdminDep, limit: int = 50
) -> list[dict[str, Any]]:
    gate = gate_of(ctx, request)
    await _scope_exists(ctx, gate, name)
    return await gate.transitions(min(max(limit, 1), 500), scope=name)


def _sse(event: str, data: Any, ident: str | None = None) -> bytes:
    head = f"id: {ident}\n" if ident else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _event_stream(ctx: ApiContext, gate: Gate, request: Request, last_id: str) -> AsyncIterator[bytes]:
    keys = ctx.settings.keys
    yield b"retry: 2000\n\n"
    if last_id == "$":  # a new client: the recent transitions first, oldest first
        recent = await gate.transitions(20)
        yield _sse("transitions", list(reversed(recent)))
        last_id = recent[0]["id"] if recent else "0-0"
    prev_state = prev_batches = None
    next_tick = 0.0
    while not await request.is_disconnected():
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + EVENT_TICK_S
            state = await _views(ctx, gate)
            if state != prev_state:
                yield _sse("providers", state)
                prev_state = state
            batches = await batches_in_progress(ctx.redis, keys)
            if batches != prev_batches:
                yield _sse("batches", batches)
                prev_batches = batches
        block_ms = max(1, int((next_tick - time.monotonic()) * 1000))
        rows = await ctx.redis.xread({keys.breaker_events: last_id}, count=100, block=block_ms)
        for _stream, entries in rows or []:
            for entry_id, fields in entries:
                last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                ev = {_s(k): _s(v) for k, v in fields.items()}
                ev["id"] = last_id
                ev["at"] = float(ev.pop("at_ms", 0)) / 1000
                yield _sse("transition", ev, last_id)
                next_tick = 0.0  # a transition changes provider state: send it now


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@router.get("/v1/events", response_class=StreamingResponse)
async def events(ctx: Ctx, request: Request, _: AdminDep) -> StreamingResponse:
    """Server-Sent Events: `transition` (breaker transitions as they happen), `providers` (provider
    and limit state when it changes), `batches` (batches in progress, with progress and ETA)."""
    last = request.headers.get("last-event-id") or "$"
    return StreamingResponse(
        _event_stream(ctx, gate_of(ctx, request), request, last),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/fusebox/ops/series")
async def series(ctx: Ctx, _: AdminDep, minutes: int = 30) -> dict[str, Any]:
    """Per provider, a point per minute: requests, errors, error rate, p50/p95 latency."""
    return await provider_series(ctx.redis, ctx.settings.keys, min(max(minutes, 1), 240))


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def prometheus_metrics(ctx: Ctx, request: Request) -> Response:
    """Prometheus exposition: fleet state from Redis plus this process's counters."""
    try:
        state = await fleet_state(
            ctx.redis, ctx.settings.keys, gate_of(ctx, request), ctx.settings.file.worker.max_jobs
        )
        body = metrics.render_fleet(state)
    except Exception:
        body = b"# HELP fusebox_redis_up 1 when Redis answered this scrape.\n# TYPE fusebox_redis_up gauge\n"
        body += b"fusebox_redis_up 0.0\n"
    return Response(body + metrics.render_process(), media_type=metrics.CONTENT_TYPE)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse((_DIR / "dashboard.html").read_text())


@router.get("/dashboard.js", include_in_schema=False)
async def dashboard_js() -> Response:
    return Response((_DIR / "dashboard.js").read_text(), media_type="text/javascript")
