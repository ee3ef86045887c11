"""A job cut off by a Redis outage logs one warning, no traceback, and runs again (issue 8, defect 8)."""

from __future__ import annotations

import logging

import pytest
from arq.worker import func

from shared.config import Settings
from shared.gate import RedisUnavailable
from shared.redis_conn import connect
from tests.integration.helpers import arq_worker
from worker.jobs import CTX_KEY, chat


class FlakyExecutor:
    """Raises what the executor raises when its result write meets an outage, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.tries: list[int] = []

    async def run(self, raw: bytes, job_try: int = 1, end: object = None) -> None:
        self.tries.append(job_try)
        if len(self.tries) <= self.failures:
            raise RedisUnavailable("could not store the result of j1: Connection refused")


async def test_outage_interrupted_job_logs_one_warning_and_runs_again(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    redis = connect(settings.redis_url or "", settings.keys)
    executor = FlakyExecutor(failures=1)
    worker = arq_worker(
        settings, redis, [func(chat, name="chat")], burst=True, poll_delay=0.01, ctx={CTX_KEY: executor}
    )
    try:
        await redis.enqueue_job("chat", b"spec", _job_id=f"{settings.namespace}-j1")
        await worker.async_run()
    finally:
        await worker.close()
    assert executor.tries == [1, 2]  # kept, not deleted as failed
    assert worker.jobs_failed == 0
    records = [r for r in caplog.records if r.name.startswith(("arq", "fusebox"))]
    assert [r for r in records if r.levelno >= logging.ERROR] == []
    assert [r for r in records if r.exc_info] == []
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "interrupted by a Redis outage" in warnings[0], warnings
