"""Filling the fleet one worker at a time ([worker] fill_cpu, worker/fill.py, claim.lua): properties."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from arq.utils import timestamp_ms
from arq.worker import func

from shared import scripts
from shared.config import Settings
from shared.keys import ARQ_IN_PROGRESS, LANE_OUT_SUFFIX
from tests.integration.helpers import arq_worker
from worker import fuse_worker
from worker.jobs import CTX_KEY
from worker.settings import FuseboxWorker


async def test_an_idle_worker_leaves_the_jobs_to_a_busier_one_with_room(settings: Settings, redis) -> None:
    q, fleet, ns = settings.keys.queue, settings.keys.fleet_loads, settings.namespace
    ids = [f"{ns}-{i}" for i in range(12)]
    now = timestamp_ms()
    await redis.zadd(q, {j: now - 1000 + i for i, j in enumerate(ids)})
    claim = scripts.load(redis, "claim", fuse_worker.__file__)

    async def claim_as(owner: str, load: int, room: int, want: int = 2) -> list[str] | str:
        args = [ARQ_IN_PROGRESS, 10_000, timestamp_ms(), want, owner, "", 0, LANE_OUT_SUFFIX, 20]
        args += ["", "", "", load, room, 1000]  # no start replies; this worker's load, room, freshness
        got = await claim(keys=[q, "", "", "", fleet], args=args)
        return "yield" if got == [b"yield"] else [got[i].decode() for i in range(0, len(got), 2)]

    async def noted(owner: str) -> tuple[int, int]:
        load, room, _ = (await redis.hget(fleet, owner)).decode().split(":")
        return int(load), int(room)

    assert await claim_as("w1", 0, 1) == ids[:2]
    assert await noted("w1") == (2, 1)  # its load after the claim, and its room
    assert await claim_as("w2", 0, 1) == "yield"  # idle: w1 has jobs and room
    assert await redis.zscore(q, ids[2]) == now - 1000 + 2  # nothing taken
    assert await claim_as("w3", 1, 1) == ids[2:4]  # a worker with jobs never yields
    assert await claim_as("w1", 2, 0) == ids[4:6]  # w1 out of room (CPU or job slots)...
    assert await claim_as("w2", 0, 1) == "yield"  # ...but w3 has some
    assert await claim_as("w3", 3, 0) == ids[6:8]
    assert await claim_as("w2", 0, 1) == ids[8:10]  # nobody busier has room: the idle worker joins

    # A load noted longer ago than the freshness (a worker gone quiet) holds nobody back; one a
    # minute old (a worker gone without saying so) is dropped.
    await redis.hset(fleet, mapping={"w1": f"5:1:{timestamp_ms() - 2000}", "w3": f"5:1:{now - 61_000}"})
    await redis.hset(fleet, "w2", f"0:0:{timestamp_ms()}")
    assert await claim_as("w4", 0, 1, want=5) == ids[10:12]
    assert await redis.hexists(fleet, "w3") == 0
    assert await noted("w4") == (2, 0)  # it found fewer jobs than it asked for: no room to offer

    # Off (no fleet key): the load is neither read nor written.
    await redis.zadd(q, {f"{ns}-x": now})
    await redis.hset(fleet, "w1", f"5:1:{timestamp_ms()}")
    args = [ARQ_IN_PROGRESS, 10_000, timestamp_ms(), 2, "w5", "", 0, LANE_OUT_SUFFIX, 20, "", "", ""]
    got = await claim(keys=[q, "", "", "", ""], args=[*args, 0, 0, 0])
    assert [g.decode() for g in got[::2]] == [f"{ns}-x"]
    assert await redis.hexists(fleet, "w5") == 0


@pytest.mark.parametrize("fill_cpu", [1.0, 0.0])
async def test_a_filling_fleet_runs_a_load_one_worker_can_carry_in_that_worker(
    settings: Settings, redis, fill_cpu: float
) -> None:
    """Two workers, the second started once the first runs jobs: filling, the second takes none of
    them; spreading (fill_cpu 0), it takes its share. Every job runs once either way."""
    ran: Counter[str] = Counter()
    by: dict[str, str] = {}
    n = 40

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        executor = ctx[CTX_KEY]
        executor.router.in_call += 1  # a provider call: the worker claims on (claim_ahead)
        ran[raw.decode()] += 1
        by[raw.decode()] = ctx["name"]
        await asyncio.sleep(0.2)
        executor.router.in_call -= 1

    for i in range(n):
        await redis.enqueue_job("job", str(i).encode(), _job_id=f"{settings.namespace}-{i}")

    def worker(name: str) -> FuseboxWorker:
        executor = SimpleNamespace(router=SimpleNamespace(in_call=0), local=SimpleNamespace(waiting=0))
        executor.ahead_share = 1.0
        return arq_worker(
            settings,
            redis,
            [func(job, name="job")],
            poll_delay=0.01,
            ctx={CTX_KEY: executor, "name": name},
            claim_ahead=4,  # a few jobs per poll: the first worker is still claiming when the second starts
            fleet_key=settings.keys.fleet_loads,
            fill_cpu=fill_cpu,
        )

    first, second = worker("first"), worker("second")
    tasks = [asyncio.create_task(first.async_run())]
    try:
        for _ in range(500):
            if first.tasks:
                break
            await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(second.async_run()))
        for _ in range(1000):
            if len(ran) == n and not first.tasks and not second.tasks:
                break
            await asyncio.sleep(0.02)
        assert sorted(ran) == sorted(str(i) for i in range(n)) and set(ran.values()) == {1}
        per_worker = Counter(by.values())
        if fill_cpu:
            assert per_worker == {"first": n}
        else:
            assert per_worker["second"] > 0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await first.close()
        await second.close()
    assert await redis.hlen(settings.keys.fleet_loads) == 0  # a closed worker's load is gone at once
