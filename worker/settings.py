"""Builds arq workers wired to Fusebox's codec, queue, providers, gate and store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq import Worker
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import codec, routing_table, scripts
from shared.config import Settings
from shared.keys import ARQ_IN_PROGRESS
from shared.providers.registry import build_providers
from shared.redis_conn import connect, redact_url
from shared.resilience import Gate, RedisUnavailable
from shared.retry import RetryPolicy
from shared.router import Router
from shared.store import Store
from worker.batch_jobs import BATCH_CRON, BATCH_FUNCTIONS, STORE_KEY
from worker.executor import Executor
from worker.jobs import CTX_KEY, chat, embed
from worker.webhook_jobs import SETTINGS_KEY, WEBHOOK_FUNCTIONS, close_webhooks

log = logging.getLogger("fusebox.worker")
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, RedisUnavailable, ConnectionError, OSError)


def build_executor(settings: Settings, redis: ArqRedis) -> Executor:
    cfg = settings.file
    providers = build_providers(cfg)
    router = Router(providers, cfg)
    gate = Gate(redis, settings.keys, cfg, {name: p.config for name, p in providers.items()})
    wc = cfg.worker
    local = wc.local_waiters if wc.local_waiters is not None else max(1, wc.max_jobs // 4)
    store = Store(redis, settings.keys, cfg.batches)
    return Executor(store, router, gate, RetryPolicy(cfg.retry), wc.max_tries, local)


class FuseboxWorker(Worker):
    """arq's worker with two changes: it claims jobs in batches (one round trip, not four per job),
    and it survives a Redis outage: it stops taking jobs, says so, and resumes.

    arq's own loop dies on the first connection error. Jobs that were running when
    Redis went away are not lost: their in-progress keys expire and arq runs them again.
    """

    redis_label = ""
    _down_since: float | None = None
    _claim: AsyncScript | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._orphans: set[str] = set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim every job we have a free slot for in one Lua call (arq: four round trips per job)."""
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        if self._claim is None:
            self._claim = scripts.load(self.pool, "claim")
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        claimed = await self._claim(
            keys=[self.queue_name], args=[ARQ_IN_PROGRESS, timeout_ms, timestamp_ms(), free, *job_ids]
        )
        for i in range(0, len(claimed), 2):
            job_id = claimed[i].decode()
            await self.sem.acquire()  # never waits: we claimed no more than the free slots
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, int(float(claimed[i + 1]))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def main(self) -> None:
        # arq's startup talks to Redis first thing and dies if it cannot: wait for it instead.
        delay = 0.2
        while self._pool is not None:
            try:
                await self._pool.ping()
                break
            except _REDIS_DOWN as e:
                if delay == 0.2:
                    log.error(
                        "Redis %s is unreachable (%s): waiting for it before starting", self.redis_label, e
                    )
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        await super().main()

    async def _poll_iteration(self) -> None:
        self._reap_tasks()
        try:
            if self._orphans:
                await self._release_orphans()
            await super()._poll_iteration()
        except _REDIS_DOWN as e:
            loop = asyncio.get_running_loop()
            if self._down_since is None:
                self._down_since = loop.time()
                log.error(
                    "Redis %s is unreachable (%s): not taking jobs until it is back", self.redis_label, e
                )
            await asyncio.sleep(min(2.0, 0.2 + (loop.time() - self._down_since) / 10))
            return
        if self._down_since is not None:
            log.warning("Redis %s is back: taking jobs again", self.redis_label)
            self._down_since = None

    def _reap_tasks(self) -> None:
        """Collect finished job tasks here: arq re-raises their errors one per poll, stalling the loop."""
        for job_id, t in list(self.tasks.items()):
            if not t.done():
                continue
            del self.tasks[job_id]
            exc = None if t.cancelled() else t.exception()
            if isinstance(exc, _REDIS_DOWN):
                # arq could not record the end of this job: its in-progress key would hold it back
                # for the whole job timeout. Release it once Redis answers, so it runs again now.
                self._orphans.add(job_id)
            elif exc is not None:
                log.error("job %s: %s: %s", job_id, type(exc).__name__, exc)

    async def _release_orphans(self) -> None:
        ids = list(self._orphans)
        await self.pool.delete(*(ARQ_IN_PROGRESS + j for j in ids))
        self._orphans.difference_update(ids)
        log.warning("re-queued %d jobs interrupted by the Redis outage", len(ids))


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

    async def on_startup(ctx: dict[str, Any]) -> None:
        # Producers check models against the table this worker routes by (shared/routing_table.py).
        await routing_table.publish(redis, settings.keys, executor.router.providers, settings.file)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await close_webhooks(ctx)
        for p in executor.router.providers.values():
            await p.aclose()

    params: dict[str, Any] = dict(
        functions=[chat, embed, *BATCH_FUNCTIONS, *WEBHOOK_FUNCTIONS],
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
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        log_results=False,
    )
    params.update(overrides)
    worker = FuseboxWorker(**params)
    worker.redis_label = redact_url(settings.redis_url or "")
    return worker
