"""Grouped finishing leaves Redis exactly as arq's own ``finish_job`` does, on a real server."""

from __future__ import annotations

import asyncio
import types
import uuid
from typing import Any

import pytest
from arq import Worker

from shared.keys import ARQ_ABORT_JOBS, ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RESULT, ARQ_RETRY
from worker import group_commit


async def seed(redis: Any, queue: str, job_id: str) -> None:
    await redis.set(ARQ_JOB + job_id, b"job", px=86_400_000)
    await redis.set(ARQ_RETRY + job_id, b"1", ex=88_400)
    await redis.set(ARQ_IN_PROGRESS + job_id, b"1", px=60_000)
    await redis.zadd(queue, {job_id: 1000})
    await redis.zadd(ARQ_ABORT_JOBS, {job_id: 1})


async def state(redis: Any, queue: str, job_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix in (ARQ_JOB, ARQ_RETRY, ARQ_IN_PROGRESS, ARQ_RESULT):
        ttl = await redis.pttl(prefix + job_id)
        out[prefix] = (await redis.get(prefix + job_id), ttl if ttl < 0 else round(ttl, -4))
    out["queue"] = await redis.zscore(queue, job_id)
    out["abort"] = await redis.zscore(ARQ_ABORT_JOBS, job_id)
    return out


CASES = [  # finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
    (True, b"result", 3600.0, False, None, None),
    (True, b"result", 3600.0, True, None, None),
    (True, None, 3600.0, False, None, None),
    (False, None, 3600.0, False, 2500, None),
    (False, None, 3600.0, False, None, None),
    (True, b"result", 60.0, False, None, 30.0),
]


@pytest.mark.parametrize("case", CASES)
async def test_grouped_finish_matches_arq(redis: Any, case: tuple[Any, ...]) -> None:
    queue = "fbtest-queue-" + uuid.uuid4().hex[:8]
    theirs, ours = (uuid.uuid4().hex for _ in range(2))
    try:
        for job_id in (theirs, ours):
            await seed(redis, queue, job_id)
        await Worker.finish_job(types.SimpleNamespace(pool=redis, queue_name=queue), theirs, *case)  # type: ignore[arg-type]
        await group_commit.finish_job(redis, queue, ours, *case)
        assert await state(redis, queue, ours) == await state(redis, queue, theirs)
    finally:
        for job_id in (theirs, ours):
            await redis.delete(*(p + job_id for p in (ARQ_JOB, ARQ_RETRY, ARQ_IN_PROGRESS, ARQ_RESULT)))
            await redis.zrem(ARQ_ABORT_JOBS, job_id)
        await redis.delete(queue)


async def test_many_jobs_finish_in_one_transaction(redis: Any) -> None:
    queue = "fbtest-queue-" + uuid.uuid4().hex[:8]
    ids = [uuid.uuid4().hex for _ in range(20)]
    try:
        for job_id in ids:
            await seed(redis, queue, job_id)
        group = group_commit.finish_group(redis)
        before = group.flushes
        await asyncio.gather(
            *(
                group_commit.finish_job(redis, queue, j, True, j.encode(), 60.0, False, None, None)
                for j in ids
            )
        )
        assert group.flushes == before + 1
        assert await redis.zcard(queue) == 0
        assert [await redis.get(ARQ_RESULT + j) for j in ids] == [j.encode() for j in ids]
        assert not any([await redis.exists(ARQ_JOB + j) for j in ids])
    finally:
        for job_id in ids:
            await redis.delete(*(p + job_id for p in (ARQ_JOB, ARQ_RETRY, ARQ_IN_PROGRESS, ARQ_RESULT)))
            await redis.zrem(ARQ_ABORT_JOBS, job_id)
        await redis.delete(queue)


async def test_an_error_reaches_only_the_job_it_belongs_to(redis: Any) -> None:
    queue = "fbtest-queue-" + uuid.uuid4().hex[:8]
    good, bad = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        await seed(redis, queue, good)
        await redis.set(queue + "-notazset", b"x")
        ok, wrong = await asyncio.gather(
            group_commit.finish_job(redis, queue, good, True, b"r", 60.0, False, None, None),
            group_commit.finish_job(redis, queue + "-notazset", bad, True, b"r", 60.0, False, None, None),
            return_exceptions=True,
        )
        assert ok is None and "WRONGTYPE" in str(wrong)
        assert await redis.get(ARQ_RESULT + good) == b"r" and await redis.zcard(queue) == 0
    finally:
        for job_id in (good, bad):
            await redis.delete(*(p + job_id for p in (ARQ_JOB, ARQ_RETRY, ARQ_IN_PROGRESS, ARQ_RESULT)))
            await redis.zrem(ARQ_ABORT_JOBS, job_id)
        await redis.delete(queue, queue + "-notazset")


async def test_admits_made_together_share_one_round_trip_and_keep_the_limit(
    settings: Any, redis: Any
) -> None:
    from shared.config import FileConfig, ProviderConfig
    from shared.gate import Gate

    cfg = FileConfig(providers={"p": ProviderConfig(type="simulated", max_concurrency=3)})
    gate = Gate(redis, settings.keys, cfg)
    group = group_commit.GroupCommit(
        lambda calls: group_commit.run_pipelined(redis, calls, raise_on_error=False)
    )
    gate.grouped = group.run
    adms = await asyncio.gather(*(gate.admit("p", None, 10, waiter=f"j{i}") for i in range(5)))
    assert group.flushes == 1 and group.callers == 5
    assert [a.ok for a in adms] == [True, True, True, False, False]  # each admit is its own decision
    assert {a.reason for a in adms[3:]} == {"saturated"} and all(a.retry_in > 0 for a in adms[3:])
    for a in adms[:3]:
        await gate.settle(a, "success", 10.0, 10)
    assert (await gate.admit("p", None, 10)).ok


@pytest.mark.parametrize("allow_abort", [False, True])
async def test_jobs_start_with_no_round_trip_of_their_own_and_count_their_tries(
    settings: Any, redis: Any, allow_abort: bool
) -> None:
    """arq's start transaction of each job (read it, count its try, and with aborts allowed take its
    abort mark) is done by the claim that took it (claim.lua): no start goes out in a round trip of its
    own; tries still count per job across a retry, and a job marked for abort is not run."""
    from arq import Retry
    from arq.utils import timestamp_ms
    from arq.worker import func

    from shared.keys import ARQ_ABORT_JOBS, ARQ_JOB
    from tests.integration.helpers import arq_worker

    tries: dict[str, list[int]] = {}

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        tries.setdefault(raw.decode(), []).append(ctx["job_try"])
        if ctx["job_try"] == 1:
            raise Retry(defer=0.01)

    n = 10
    for i in range(n):
        await redis.enqueue_job("job", str(i).encode(), _job_id=f"{settings.namespace}-{i}")
    aborted = f"{settings.namespace}-{n - 1}"
    if allow_abort:
        await redis.zadd(ARQ_ABORT_JOBS, {aborted: timestamp_ms()})
    ran = n - 1 if allow_abort else n
    group = group_commit.finish_group(redis)
    starts: list[tuple[Any, ...]] = []  # GETs of job payloads sent by a group
    real_send = group._send

    async def send(cmds: list[tuple[Any, ...]]) -> list[Any]:
        starts.extend(c for c in cmds if c[0] in ("GET", "INCRBY"))
        return await real_send(cmds)

    group._send = send  # type: ignore[method-assign]
    worker = arq_worker(
        settings, redis, [func(job, name="job")], poll_delay=0.01, allow_abort_jobs=allow_abort
    )
    task = asyncio.create_task(worker.async_run())
    try:
        for _ in range(500):
            if len(tries) == ran and all(len(t) == 2 for t in tries.values()) and not worker.tasks:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()
        group._send = real_send  # type: ignore[method-assign]
    assert tries == {str(i): [1, 2] for i in range(ran)}  # every job ran twice: its tries counted 1, 2
    assert starts == []  # no start of its own: the claims did them
    if allow_abort:
        assert not await redis.exists(ARQ_JOB + aborted)  # failed as aborted: never run
    assert not await redis.zscore(ARQ_ABORT_JOBS, aborted)
    assert not [k async for k in redis.scan_iter(match=f"{ARQ_RETRY}{settings.namespace}-*")]


async def test_a_result_write_finishes_the_job_as_arq_would(settings: Any, redis: Any) -> None:
    """complete.lua with the job's arq keys leaves them as arq's finish_job(finish=True, no kept result)
    does, whether this run wrote the result or an earlier one did; without them it touches none."""
    from shared.jobs.store import Store
    from shared.schema import JobResult

    store = Store(redis, settings.keys)
    queue = settings.keys.queue
    theirs, ours, again, alone = (f"{settings.namespace}-{x}" for x in ("theirs", "ours", "again", "alone"))
    for job_id in (theirs, ours, again, alone):
        await seed(redis, queue, job_id)
    arq = types.SimpleNamespace(pool=redis, queue_name=queue)
    await Worker.finish_job(arq, theirs, True, None, 0, False, None, None)  # type: ignore[arg-type]

    def arq_keys(job_id: str) -> list[str]:
        return [ARQ_IN_PROGRESS + job_id, ARQ_JOB + job_id, ARQ_RETRY + job_id, ARQ_ABORT_JOBS, queue]

    def complete(job_id: str, keys: list[str]) -> group_commit.ScriptCall:
        return store.complete_call(JobResult(id=job_id, status_code=200), None, keys)

    await redis.set(settings.keys.result(again), b"earlier run")  # written=0: finished all the same
    replies = await group_commit.run_pipelined(
        redis, [complete(ours, arq_keys(ours)), complete(again, arq_keys(again)), complete(alone, [])]
    )
    assert [store.completed(r)[0] for r in replies] == [True, False, True]
    want = await state(redis, queue, theirs)
    assert want["queue"] is None and want[ARQ_JOB] == (None, -2)
    assert await state(redis, queue, ours) == want and await state(redis, queue, again) == want
    assert (await state(redis, queue, alone))[ARQ_JOB][0] == b"job"  # no keys given: arq's finish runs later
    for job_id in (theirs, ours, again, alone):
        keys = [p + job_id for p in (ARQ_JOB, ARQ_RETRY, ARQ_IN_PROGRESS)]
        await redis.delete(settings.keys.result(job_id), *keys)
        await redis.zrem(ARQ_ABORT_JOBS, job_id)
        await redis.zrem(queue, job_id)


async def test_jobs_finish_in_their_result_write(settings: Any, redis: Any) -> None:
    """Through a real worker, a job's end costs no round trip of its own: its result write records it
    (no finish transaction is sent), and nothing of arq's is left behind."""
    from producer.client import FuseboxClient
    from tests.integration.helpers import batch_lines, running_worker

    group = group_commit.finish_group(redis)
    sent: list[tuple[Any, ...]] = []
    real_send = group._send

    async def send(cmds: list[tuple[Any, ...]]) -> list[Any]:
        sent.extend(cmds)
        return await real_send(cmds)

    group._send = send  # type: ignore[method-assign]
    client = FuseboxClient(redis, settings)
    try:
        async with running_worker(settings, redis):
            sub = await client.submit_batch(batch_lines(30))
            done = await client.wait_batch(sub.batch_id, timeout=60)
    finally:
        group._send = real_send  # type: ignore[method-assign]
    assert (done.completed, done.failed) == (30, 0)
    lines = [c for c in sent if any(str(a).endswith(f"{sub.batch_id}:c{i}") for a in c for i in range(30))]
    assert lines == []  # neither a start nor a finish of a line went out on its own
    for prefix in (ARQ_JOB, ARQ_RETRY, ARQ_IN_PROGRESS):
        assert not [k async for k in redis.scan_iter(match=f"{prefix}{sub.batch_id}*")], prefix
    assert await redis.zcard(settings.keys.queue) <= 1  # at most the batch's finalize job, not a line


@pytest.mark.parametrize("keep_result", [0, 60])
async def test_a_result_write_finishes_only_a_live_job_whose_result_arq_does_not_keep(
    settings: Any, redis: Any, keep_result: int
) -> None:
    """The worker hands complete.lua arq's keys only for a job whose lease it holds and whose arq result
    is not kept (arq's finish would write one); otherwise arq's own finish runs as before."""
    from arq.worker import func

    from worker.fuse_worker import FuseboxWorker

    async def job(ctx: dict[str, Any]) -> None:
        return None

    worker = FuseboxWorker(
        functions=[func(job, name="job")], queue_name=settings.keys.queue, redis_pool=redis,
        handle_signals=False, keep_result=keep_result,
    )  # fmt: skip
    try:
        job_id = f"{settings.namespace}-live"
        assert worker.finish_keys(job_id) is None  # not this worker's (no live lease)
        worker.leases.claimed(job_id)
        keys = worker.finish_keys(job_id)
        if keep_result:
            assert keys is None and job_id in worker.leases.live
        else:
            assert keys == [
                ARQ_IN_PROGRESS + job_id,
                ARQ_JOB + job_id,
                ARQ_RETRY + job_id,
                ARQ_ABORT_JOBS,
                settings.keys.queue,
            ]
            assert job_id not in worker.leases.live  # its lease is not renewed while the write deletes it
            worker.ended(job_id)
            await worker.finish_job(job_id, True, None, 0, False, None, None)  # arq's call: nothing to send
            assert job_id not in worker.leases.held
    finally:
        await worker.close()
