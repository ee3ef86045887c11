"""arq job functions. Each takes the msgpack-encoded JobSpec as its only argument."""

from __future__ import annotations

import logging
from typing import Any

from arq.worker import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.gate import RedisUnavailable
from worker.executor import Executor

CTX_KEY = "fusebox_executor"
END_KEY = "fusebox_job_end"  # the FuseboxWorker running the job (worker/results.py JobEnd), if any
OUTAGE_RETRY_S = 1.0

log = logging.getLogger("fusebox.worker")
_REDIS_DOWN = (RedisUnavailable, RedisConnectionError, RedisTimeoutError)


async def chat(ctx: dict[str, Any], raw: bytes) -> None:
    await _run(ctx, raw)


async def embed(ctx: dict[str, Any], raw: bytes) -> None:
    # Same path as chat; arq registers functions by name, so each kind has its own.
    await _run(ctx, raw)


async def _run(ctx: dict[str, Any], raw: bytes) -> None:
    executor: Executor = ctx[CTX_KEY]
    try:
        await executor.run(raw, ctx.get("job_try", 1), ctx.get(END_KEY))
    except _REDIS_DOWN as e:
        # Not a failure of the job: it runs again once Redis answers. arq would log it as "failed" with a
        # traceback and, if Redis were back by then, delete the job; Retry keeps it queued.
        log.warning("job %s interrupted by a Redis outage, will run again: %s", ctx.get("job_id"), e)
        raise Retry(defer=OUTAGE_RETRY_S) from None
