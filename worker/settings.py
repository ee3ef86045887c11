"""Builds arq workers wired to Fusebox's codec, queue, providers and store."""

from __future__ import annotations

import logging
from typing import Any

from arq import Worker
from arq.connections import ArqRedis

from shared import codec
from shared.config import Settings
from shared.providers.registry import build_providers
from shared.redis_conn import connect
from shared.router import Router
from shared.store import Store
from worker.executor import Executor
from worker.batch_jobs import BATCH_CRON, BATCH_FUNCTIONS, STORE_KEY
from worker.jobs import CTX_KEY, SETTINGS_KEY, chat, embed

log = logging.getLogger("fusebox.worker")


def build_executor(settings: Settings, redis: ArqRedis) -> Executor:
    cfg = settings.file
    router = Router(build_providers(cfg), cfg)
    return Executor(Store(redis, settings.keys, cfg.batches), router, cfg.retry)


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
        redis = connect(settings.redis_url, settings.keys)
    wc = settings.file.worker
    executor = build_executor(settings, redis)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        for p in executor.router.providers.values():
            await p.aclose()

    params: dict[str, Any] = dict(
        functions=[chat, embed, *BATCH_FUNCTIONS],
        cron_jobs=BATCH_CRON,
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
        on_shutdown=on_shutdown,
        log_results=False,
    )
    params.update(overrides)
    return Worker(**params)
