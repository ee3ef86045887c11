"""``arq worker.arq_settings.WorkerSettings`` for people who run arq's own CLI.

``fusebox worker`` is the usual entry point: arq's CLI builds arq's own Worker, so jobs it runs
hold arq's in-progress key for job_timeout + 10 s (no short leases or graceful release), it does
not reconcile batches and it does not survive Redis outages. Run at least one ``fusebox worker``
beside it. This module reads the environment at import time, as arq's settings classes expect.
"""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from shared import codec, routing_table
from shared.config import Settings
from worker.batch_jobs import BATCH_CRON, BATCH_FUNCTIONS, STORE_KEY
from worker.jobs import CTX_KEY, chat, embed
from worker.settings import build_executor
from worker.webhook_jobs import SETTINGS_KEY, WEBHOOK_FUNCTIONS, close_webhooks

_settings = Settings()


class WorkerSettings:
    functions = [chat, embed, *BATCH_FUNCTIONS, *WEBHOOK_FUNCTIONS]
    cron_jobs = BATCH_CRON
    job_serializer = staticmethod(codec.arq_serializer)
    job_deserializer = staticmethod(codec.arq_deserializer)
    keep_result = 0
    queue_name = _settings.keys.queue
    redis_settings = RedisSettings.from_dsn(_settings.redis_url or "redis://localhost:6379")
    max_jobs = _settings.file.worker.max_jobs
    poll_delay = _settings.file.worker.poll_delay
    max_tries = _settings.file.worker.max_tries
    job_timeout = _settings.file.worker.job_timeout

    @staticmethod
    async def on_startup(ctx: dict[str, Any]) -> None:
        executor = build_executor(_settings, ctx["redis"])
        ctx.update({CTX_KEY: executor, STORE_KEY: executor.store, SETTINGS_KEY: _settings})
        await routing_table.publish(ctx["redis"], _settings.keys, executor.router.providers, _settings.file)

    @staticmethod
    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await close_webhooks(ctx)
