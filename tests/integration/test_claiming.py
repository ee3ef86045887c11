"""Capacity-aware claiming and the workers' wake-up list (issue 13): properties, not speeds."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from arq.worker import func

from producer.client import FuseboxClient
from shared import codec
from shared.config import Settings
from shared.keys import ARQ_IN_PROGRESS
from worker.jobs import CTX_KEY
from worker.settings import FuseboxWorker


async def test_a_worker_claims_no_more_than_claim_ahead_jobs_that_are_not_running_yet(
    settings: Settings, redis
):
    gate = asyncio.Event()
    started: list[str] = []

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        started.append(raw.decode())
        await gate.wait()  # never reaches a provider call: every claimed job counts as "ahead"

    for i in range(20):
        await redis.enqueue_job("job", str(i).encode(), _job_id=f"{settings.namespace}-{i}")
    fake_executor = SimpleNamespace(router=SimpleNamespace(in_call=0), local=SimpleNamespace(waiting=0))
    worker = FuseboxWorker(
        functions=[func(job, name="job")],
        queue_name=settings.keys.queue,
        redis_pool=redis,
        handle_signals=False,
        poll_delay=0.01,
        keep_result=0,
        job_serializer=codec.arq_serializer,
        job_deserializer=codec.arq_deserializer,
        ctx={CTX_KEY: fake_executor},
        claim_ahead=5,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        for _ in range(30):  # many polls: the bound must hold on every one
            await asyncio.sleep(0.02)
            assert len(worker.tasks) <= 5
        held = [k async for k in redis.scan_iter(match=f"{ARQ_IN_PROGRESS}{settings.namespace}-*")]
        assert len(held) == len(worker.tasks) == 5
        gate.set()
        for _ in range(500):
            if len(started) == 20 and not worker.tasks:
                break
            await asyncio.sleep(0.02)
        assert sorted(started, key=int) == [str(i) for i in range(20)]  # every job ran, once
    finally:
        gate.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()


async def test_enqueue_pushes_a_few_wake_up_tokens_and_the_list_stays_bounded(settings: Settings, redis):
    client = FuseboxClient(redis, settings)
    lines = [
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}})
        for i in range(30)
    ]  # fmt: skip
    await client.submit_batch(lines)  # no worker runs: nothing consumes the tokens
    assert 0 < await redis.llen(settings.keys.wake) <= 4
    for _ in range(10):
        await client.submit_batch(lines)
    assert await redis.llen(settings.keys.wake) == 16
