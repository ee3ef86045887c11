"""Capacity-aware claiming and the workers' wake-up list (issue 13): properties, not speeds."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from arq.worker import func

from producer.client import FuseboxClient
from shared import codec, scripts
from shared.config import Settings
from shared.keys import ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RETRY
from tests.integration.helpers import arq_worker
from worker import fuse_worker
from worker.jobs import CTX_KEY
from worker.settings import FuseboxWorker


@pytest.mark.parametrize(("claim_ahead", "share", "bound"), [(5, 1.0, 5), (16, 1 / 16, 1), (16, 0.25, 4)])
async def test_a_worker_claims_no_more_than_claim_ahead_jobs_that_are_not_running_yet(
    settings: Settings, redis, claim_ahead: int, share: float, bound: int
):
    """``share``: the executor's ahead_share, cut while jobs find no place in a full provider's line."""
    gate = asyncio.Event()
    started: list[str] = []

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        started.append(raw.decode())
        await gate.wait()  # never reaches a provider call: every claimed job counts as "ahead"

    for i in range(20):
        await redis.enqueue_job("job", str(i).encode(), _job_id=f"{settings.namespace}-{i}")
    fake_executor = SimpleNamespace(
        router=SimpleNamespace(in_call=0), local=SimpleNamespace(waiting=0), ahead_share=share
    )
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
        claim_ahead=claim_ahead,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        for _ in range(30):  # many polls: the bound must hold on every one
            await asyncio.sleep(0.02)
            assert len(worker.tasks) <= bound
        held = [k async for k in redis.scan_iter(match=f"{ARQ_IN_PROGRESS}{settings.namespace}-*")]
        assert len(held) == len(worker.tasks) == bound
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


async def test_running_jobs_are_parked_out_of_the_due_range_and_come_back_when_released(
    settings: Settings, redis
):
    """A claimed job's queue score is its lease's end (polls then read only jobs to take); the
    heartbeat moves it on; a release puts it back at its score; a lapsed lease leaves it due."""
    from arq.utils import timestamp_ms

    from shared.keys import LANE_OUT_SUFFIX
    from worker.lease import Leases

    q, ns = settings.keys.queue, settings.namespace
    a, b, c = (f"{ns}-{x}" for x in "abc")
    now = timestamp_ms()
    await redis.zadd(q, {a: now - 5000, b: now - 4000, c: now - 3000})
    claim = scripts.load(redis, "claim", fuse_worker.__file__)

    async def claim_as(
        owner: str, ids: list[str], lease_ms: int = 10_000, read: int = 0
    ) -> list[tuple[str, int]]:
        no_start = ("", "", "")  # ids and scores only, not arq's start of each job
        lanes = ("", 0, LANE_OUT_SUFFIX)
        alone = (0, 0, 0)  # no fleet loads: this worker claims whatever other workers do
        args = [ARQ_IN_PROGRESS, lease_ms, timestamp_ms(), 2, owner, *lanes, read, *no_start, *alone, *ids]
        got = await claim(keys=[q, "", "", "", ""], args=args)
        return [(got[i].decode(), int(float(got[i + 1]))) for i in range(0, len(got), 2)]

    assert await claim_as("w1", [a, b]) == [(a, now - 5000), (b, now - 4000)]  # the scores they had
    due = [m.decode() for m in await redis.zrangebyscore(q, "-inf", timestamp_ms())]
    assert due == [c]  # a and b are parked at their leases' end
    assert timestamp_ms() + 9000 < await redis.zscore(q, a) <= timestamp_ms() + 10_000
    # a running job back in the due range (a settle's call-back lowered it) is parked again, not taken
    await redis.zadd(q, {a: now - 5000})
    assert await claim_as("w2", [], read=10) == [(c, now - 3000)]  # the script reads the due range itself
    assert await redis.zscore(q, a) > timestamp_ms() + 9000 and await redis.get(ARQ_IN_PROGRESS + a) == b"w1"
    leases = Leases(redis, q, 10.0, owner="w1")
    leases.claimed(a, now - 5000)
    leases.claimed(b, now - 4000)
    await redis.zadd(q, {a: timestamp_ms() + 100})
    assert (await leases.renew())[0] == 2
    assert await redis.zscore(q, a) > timestamp_ms() + 9000  # the heartbeat moved it on
    assert await leases.release([a]) == 1
    assert await redis.zscore(q, a) == now - 5000 and not await redis.exists(ARQ_IN_PROGRESS + a)
    # a dead worker's lease lapses no later than its job is due again: another worker takes it
    await redis.delete(ARQ_IN_PROGRESS + b)
    lapsed = timestamp_ms() - 1
    await redis.zadd(q, {b: lapsed})  # as when the lease ran out
    assert await claim_as("w2", [b]) == [(b, lapsed)]
    assert await redis.get(ARQ_IN_PROGRESS + b) == b"w2"
    await redis.delete(*(ARQ_IN_PROGRESS + x for x in (a, b, c)))
    await redis.zrem(q, a, b, c)


async def test_a_poll_reads_the_due_jobs_and_claims_them_in_one_round_trip(
    settings: Settings, redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """claim.lua reads the due range itself: a poll that finds jobs costs one round trip, not a read
    and then a claim. Jobs this worker's tasks still hold are never started twice: one whose end arq
    recorded (deferred, due again) while its task winds down is not claimed (nobody would renew that
    lease); one still running whose lease Redis lost is claimed back, its lease ours again. The claim
    also did the start of arq's run_job (read the payload, count the try): the runs send only their
    finish."""
    from redis.asyncio.client import Pipeline

    started: list[str] = []

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        started.append(raw.decode())
        tries.append(ctx["job_try"])

    tries: list[int] = []
    w = arq_worker(settings, redis, [func(job, name="job")], max_jobs=10)
    monkeypatch.setattr(w, "heart_beat", _no_heart_beat)
    await w._poll_queue()  # nothing due yet (this loads the script on the server)
    ns = settings.namespace
    for i in range(6):
        await redis.enqueue_job("job", str(i).encode(), _job_id=f"{ns}-p{i}")
    winding_down, running = (asyncio.get_running_loop().create_task(asyncio.sleep(3600)) for _ in "ab")
    w.tasks[f"{ns}-p4"] = winding_down  # its run ended in Redis, its task has not yet
    w.tasks[f"{ns}-p5"] = running
    w.leases.claimed(f"{ns}-p5")  # running here, its lease lost with a failed-over primary
    trips: list[str] = []
    command, execute, packed = redis.execute_command, Pipeline.execute, scripts.send_commands

    async def counted_command(*args: Any, **kw: Any) -> Any:
        trips.append(str(args[0]))
        return await command(*args, **kw)

    async def counted_packed(client: Any, cmds: Any) -> Any:
        trips.append(",".join(str(c[0]) for c in cmds))
        return await packed(client, cmds)

    async def counted_pipeline(self: Pipeline, *args: Any, **kw: Any) -> Any:
        trips.append("pipeline")
        sent.extend(str(c[0][0]) for c in self.command_stack)
        return await execute(self, *args, **kw)

    sent: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(redis, "execute_command", counted_command)
        m.setattr(Pipeline, "execute", counted_pipeline)
        m.setattr(scripts, "send_commands", counted_packed)
        await w._poll_queue()
        assert trips == ["EVALSHA"]
        assert sorted(w.tasks) == [f"{ns}-p{i}" for i in range(6)]
        assert w.tasks[f"{ns}-p4"] is winding_down and w.tasks[f"{ns}-p5"] is running
        await asyncio.gather(*(t for t in w.tasks.values() if t not in (winding_down, running)))
    try:
        assert sorted(started) == ["0", "1", "2", "3"] and tries == [1, 1, 1, 1]
        # the runs sent their finish (arq's MULTI/EXEC), never a start of their own
        assert sent and "GET" not in sent and "INCRBY" not in sent, sent
        assert not await redis.exists(ARQ_IN_PROGRESS + f"{ns}-p4")  # left in the queue, due
        assert await redis.get(ARQ_IN_PROGRESS + f"{ns}-p5") == w.leases.owner.encode()
    finally:
        for t in (winding_down, running):
            t.cancel()
        del w.tasks[f"{ns}-p4"], w.tasks[f"{ns}-p5"]
        await w.close()


async def test_a_job_claimed_while_its_last_run_winds_down_is_given_back(settings: Settings, redis) -> None:
    """The run of a job ended (deferred, due again) during the claim that took it: the worker does not start
    it twice and gives it back at once, due at its score, instead of holding a lease nobody renews."""
    from arq.utils import timestamp_ms

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        raise AssertionError("not to be started")

    w = arq_worker(settings, redis, [func(job, name="job")], max_jobs=10)
    job_id = f"{settings.namespace}-late"
    due = timestamp_ms() - 1000
    await redis.zadd(settings.keys.queue, {job_id: due})
    await redis.set(ARQ_RETRY + job_id, 1)  # its run that winds down counted its try
    winding_down = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    w.tasks[job_id] = winding_down
    w._finishing = lambda: []  # type: ignore[method-assign]  # as if its run ended after the claim was sent
    try:
        await w.start_jobs([], read=10)
        assert w.tasks[job_id] is winding_down and w.job_counter == 0
        assert not await redis.exists(ARQ_IN_PROGRESS + job_id)
        assert await redis.zscore(settings.keys.queue, job_id) == due
        assert await redis.get(ARQ_RETRY + job_id) == b"1"  # the claim counted a try for no run: uncounted
    finally:
        winding_down.cancel()
        await redis.delete(ARQ_RETRY + job_id)
        del w.tasks[job_id]
        await redis.zrem(settings.keys.queue, job_id)
        await w.close()


async def _no_heart_beat() -> None:
    return None


async def test_a_lane_line_this_worker_already_runs_is_not_started_twice(settings: Settings, redis) -> None:
    """After a failover the new primary may hold a running line in its lane again (the claim went
    with the old primary): claiming it must not start a second run of that id in this worker."""
    started: list[str] = []
    release = asyncio.Event()

    async def job(ctx: dict[str, Any], *args: Any) -> None:
        started.append(ctx["job_id"])
        await release.wait()

    w = arq_worker(settings, redis, [func(job, name="job")], max_jobs=5)
    keys = settings.keys
    job_id = "b1:line-0"
    # an arq job record: its try, function, args, kwargs and enqueue time
    await redis.set(ARQ_JOB + job_id, codec.arq_serializer({"t": 1, "f": "job", "a": (), "k": {}, "et": 1}))
    running = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    w.tasks[job_id] = running  # this worker runs it already
    w.leases.claimed(job_id)
    await redis.zadd(keys.lane("t"), {job_id: 1})
    await redis.sadd(keys.lanes, "t")
    try:
        await w.start_jobs([], lanes=True)
        await asyncio.sleep(0.05)
        assert started == [] and w.tasks[job_id] is running and w.job_counter == 0
        assert await redis.zscore(keys.queue, job_id) is not None  # claimed: it left the lane
        assert await redis.get(ARQ_IN_PROGRESS + job_id) == w.leases.owner.encode()  # the lease is ours
    finally:
        running.cancel()
        release.set()


async def test_a_poll_passes_up_a_small_claim_while_jobs_wait_here_for_slots(
    settings: Settings, redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With jobs of this worker waiting in its local lines, a claim for fewer than CLAIM_BATCH jobs waits
    for a later poll (fewer, larger claims), but never more than SKIP_POLLS polls in a row; with none
    waiting, every poll claims."""
    from worker.fuse_worker import CLAIM_BATCH, SKIP_POLLS

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        await asyncio.sleep(3600)

    local = SimpleNamespace(waiting=CLAIM_BATCH)
    fake_executor = SimpleNamespace(router=SimpleNamespace(in_call=0), local=local, ahead_share=1.0)
    w = arq_worker(
        settings, redis, [func(job, name="job")], max_jobs=CLAIM_BATCH - 1, ctx={CTX_KEY: fake_executor}
    )
    monkeypatch.setattr(w, "heart_beat", _no_heart_beat)
    claims: list[int] = []
    packed = scripts.send_commands

    async def counted(client: Any, cmds: Any) -> Any:
        claims.append(len(cmds))
        return await packed(client, cmds)

    monkeypatch.setattr(scripts, "send_commands", counted)
    try:
        for _ in range(2 * (SKIP_POLLS + 1)):
            await w._poll_queue()
        assert len(claims) == 2  # every (SKIP_POLLS + 1)th poll claims
        local.waiting = 0
        for _ in range(3):
            await w._poll_queue()
        assert len(claims) == 5
    finally:
        for t in w.tasks.values():
            t.cancel()
        await w.close()


async def test_a_worker_with_jobs_left_to_claim_claims_again_once_it_can_take_claim_more(
    settings: Settings, redis
) -> None:
    """Capacity, not the clock, sets when a worker with due jobs left claims again: only once CLAIM_MORE of
    its claimed jobs have found their fate (a call, or a place in a local line), and then that many at once.
    So each claim takes several jobs, however many workers share the work."""
    from worker.fuse_worker import CLAIM_MORE

    gate = asyncio.Event()

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        await gate.wait()

    for i in range(40):
        await redis.enqueue_job("job", str(i).encode(), _job_id=f"{settings.namespace}-{i}")
    router = SimpleNamespace(in_call=0)
    fake_executor = SimpleNamespace(router=router, local=SimpleNamespace(waiting=0), ahead_share=1.0)
    w = arq_worker(
        settings,
        redis,
        [func(job, name="job")],
        poll_delay=30.0,
        claim_ahead=16,
        max_jobs=100,
        ctx={CTX_KEY: fake_executor},
    )
    task = asyncio.create_task(w.async_run())
    try:
        for _ in range(500):
            if len(w.tasks) == 16:
                break
            await asyncio.sleep(0.01)
        assert len(w.tasks) == 16 and fake_executor.on_known == w.capacity
        router.in_call = CLAIM_MORE - 1  # their calls started
        w.capacity()
        await asyncio.sleep(0.2)
        assert len(w.tasks) == 16  # too few to claim for: the next poll is far off
        router.in_call = CLAIM_MORE
        w.capacity()
        for _ in range(500):
            if len(w.tasks) > 16:
                break
            await asyncio.sleep(0.01)
        assert len(w.tasks) == 16 + CLAIM_MORE
    finally:
        gate.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()


async def test_an_idle_worker_sleeps_longer_between_polls_but_never_past_the_next_due_job(
    settings: Settings, redis
) -> None:
    """An idle worker's sleep between polls doubles up to IDLE_MAX_S (polls on the clock cost Redis and CPU
    however many workers wait), but never lasts past the queue's next due job (deferred, or a lapsing
    lease); a claim that took jobs puts it back to poll_delay."""
    from worker.poll_clock import IDLE_MAX_S

    loop = asyncio.get_running_loop()
    ran: list[float] = []

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        ran.append(loop.time())

    defer = 2.0  # past the doubling: the worker sleeps IDLE_MAX_S a few times before the job is due
    due_lo = loop.time() + defer
    await redis.enqueue_job("job", b"later", _job_id=f"{settings.namespace}-later", _defer_by=defer)
    due = loop.time() + defer
    w = arq_worker(settings, redis, [func(job, name="job")], poll_delay=0.01, wake_key=settings.keys.wake)
    pauses: list[tuple[float, float]] = []
    sleep = w.clock.sleep

    async def spy(seconds: float) -> None:
        pauses.append((loop.time(), seconds))
        await sleep(seconds)

    w.clock.sleep = spy  # type: ignore[method-assign]
    task = asyncio.create_task(w.async_run())
    try:
        for _ in range(1000):
            if ran and pauses[-1][0] > ran[0]:
                break
            await asyncio.sleep(0.01)
        assert ran and ran[0] >= due_lo - 0.01  # not taken before it was due
        before = [p for t, p in pauses if t < ran[0]]
        k = before.index(IDLE_MAX_S)
        assert before[:k] == sorted(before[:k]) and before[0] == 0.01  # doubling from poll_delay
        # no sleep ran past the due job (the clock read for the pause comes a moment before ``t``)
        assert all(t + p <= due + 0.05 for t, p in pauses if t < ran[0]), (due, pauses)
        assert next(p for t, p in pauses if t > ran[0]) == 0.01  # the claim took a job: back to poll_delay
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()


async def test_a_single_job_sends_a_wake_up_token(settings: Settings, redis) -> None:
    """Idle workers sleep up to half a second between polls: a submitted job wakes one now."""
    client = FuseboxClient(redis, settings)
    body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}
    await client.submit(body)  # no worker runs: nothing consumes the token
    assert await redis.llen(settings.keys.wake) == 1


async def test_a_worker_without_wake_up_tokens_keeps_its_poll_delay_when_idle(
    settings: Settings, redis
) -> None:
    """Without a wake-up listener nothing would cut a long sleep short for a new job: no backoff."""

    async def job(ctx: dict[str, Any], raw: bytes) -> None:
        return None

    w = arq_worker(settings, redis, [func(job, name="job")], poll_delay=0.01)
    pauses: list[float] = []
    sleep = w.clock.sleep

    async def spy(seconds: float) -> None:
        pauses.append(seconds)
        await sleep(seconds)

    w.clock.sleep = spy  # type: ignore[method-assign]
    task = asyncio.create_task(w.async_run())
    try:
        for _ in range(500):
            if len(pauses) >= 20:
                break
            await asyncio.sleep(0.01)
        assert len(pauses) >= 20 and set(pauses) == {0.01}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()
