"""Builds arq workers wired to Fusebox's codec, queue, providers, gate and store."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from arq import Worker
from arq.connections import ArqRedis

from shared import codec, routing_table
from shared.budget import Budgets
from shared.byok.crypto import KeyRing
from shared.byok.resolver import TenantKeys
from shared.byok.store import check_startup
from shared.config import Settings
from shared.gate import Gate
from shared.jobs.store import Store
from shared.providers.registry import build_providers
from shared.redis_conn import connect, redact_url
from shared.retry import RetryPolicy
from shared.router import Router
from worker import group_commit
from worker.batch_jobs import BATCH_FUNCTIONS, STORE_KEY, batch_cron
from worker.executor import Executor
from worker.fuse_worker import FuseboxWorker
from worker.jobs import CTX_KEY, chat, embed
from worker.webhook_jobs import SETTINGS_KEY, WEBHOOK_FUNCTIONS, close_webhooks


def build_executor(settings: Settings, redis: ArqRedis) -> Executor:
    cfg = settings.file
    providers = build_providers(cfg)
    router = Router(providers, cfg)
    gate = Gate(redis, settings.keys, cfg, {name: p.config for name, p in providers.items()})
    gate.grouped = group_commit.script_group(redis).run  # admits of jobs woken together: one round trip
    wc = cfg.worker
    local = wc.local_waiters if wc.local_waiters is not None else max(1, wc.max_jobs // 4)
    store = Store(redis, settings.keys, cfg.batches)
    # Tenants' own provider keys; a malformed master key fails here, at startup (MasterKeyError).
    own = TenantKeys(
        redis, settings.keys, KeyRing.from_env(), {n: p.config for n, p in providers.items()},
        allow_hosts=cfg.api.provider_allow_hosts,
    )  # fmt: skip
    budgets = Budgets(redis, settings.keys)
    return Executor(
        store,
        router,
        gate,
        RetryPolicy(cfg.retry),
        wc.max_tries,
        local,
        own,
        budgets,
        job_timeout=wc.job_timeout,
    )


def _use_uvloop() -> None:
    """A worker process of its own (``fusebox worker``) runs on uvloop: the event loop is a fifth of a
    worker's CPU per job and uvloop's costs less. Never inside a running loop (in-process workers)."""
    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass
    try:
        import uvloop
    except ImportError:  # optional: the standard loop works, only slower
        return
    asyncio.set_event_loop(uvloop.new_event_loop())


GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def _tune_gc() -> None:
    """A worker process of its own collects garbage less often: with CPython's defaults the cyclic
    collector was about 8% of a busy worker's CPU (perf, 40 calls in flight), most of it re-scanning
    the long-lived objects of the imports. Those are frozen (never scanned again) and the young
    generation holds more before a collection; garbage that is not in a cycle is freed at once
    either way."""
    gc.collect()
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, mid, old)


def build_worker(
    settings: Settings,
    redis: ArqRedis | None = None,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    **overrides: Any,
) -> Worker:
    """A worker on ``settings``; pass ``redis`` to share a pool (in-process workers)."""
    if redis is None:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (or run 'fusebox run', which starts its own server)")
        _use_uvloop()
        _tune_gc()
        redis = connect(settings.redis_url, settings.keys)
    wc = settings.file.worker
    executor = build_executor(settings, redis)

    async def on_startup(ctx: dict[str, Any]) -> None:
        # Producers check models against the table this worker routes by (shared/routing_table.py).
        await routing_table.publish(redis, settings.keys, executor.router.providers, settings.file)
        for p in executor.router.providers.values():
            p.warm()
        # Stored tenant keys without (or with the wrong) master key: stop now, saying what to set.
        if executor.tenant_keys is not None:
            await check_startup(redis, settings.keys, executor.tenant_keys.ring)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await close_webhooks(ctx)
        for p in executor.router.providers.values():
            await p.aclose()
        if executor.tenant_keys is not None:
            await executor.tenant_keys.aclose()

    params: dict[str, Any] = dict(
        functions=[chat, embed, *BATCH_FUNCTIONS, *WEBHOOK_FUNCTIONS],
        cron_jobs=batch_cron(settings.namespace),
        queue_name=settings.keys.queue,
        redis_pool=redis,
        burst=burst,
        handle_signals=handle_signals,
        max_jobs=wc.max_jobs,
        poll_delay=wc.poll_delay,
        job_timeout=wc.job_timeout,
        max_tries=wc.max_tries,
        # Results live in Fusebox's own keys; arq's copy would be a wasted write per job.
        keep_result=0,
        job_serializer=codec.arq_serializer,
        job_deserializer=codec.arq_deserializer,
        ctx={CTX_KEY: executor, STORE_KEY: executor.store, SETTINGS_KEY: settings},
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        log_results=False,
    )
    params.update(overrides)
    worker = FuseboxWorker(
        lease_seconds=wc.lease_seconds,
        shutdown_grace=wc.shutdown_grace_seconds if handle_signals else 0.0,
        reconcile_seconds=wc.reconcile_seconds,
        claim_ahead=wc.claim_ahead,
        wake_key=settings.keys.wake,
        lane_keys=settings.keys,
        lane_window=wc.lane_window,
        fleet_key=settings.keys.fleet_loads,
        fill_cpu=wc.fill_cpu,
        **params,
    )
    worker.redis_label = redact_url(settings.redis_url or "")
    return worker
