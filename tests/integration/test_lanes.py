"""Priority lanes per tenant (issue 12): single jobs ahead of batch lines, and tenants' batch lines
claimed by weighted round robin. Counts and orders only: never a rate or a duration."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from producer.client import FuseboxClient
from shared import scripts, tenants, usage
from shared.keys import ARQ_IN_PROGRESS, ARQ_JOB, LANE_OUT_SUFFIX, Keys
from shared.metrics import read_queue
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import batch_lines, stop_processes
from worker import fuse_worker

NOW_MS = 10**13  # every line is due


async def _claim(redis, keys: Keys, owner: str, want: int, window: int = 10**6, ids: list[str] = ()):
    """One claim.lua call as FuseboxWorker.start_jobs makes it -> [(id, lane or 'queue')]."""
    script = scripts.load(redis, "claim", fuse_worker.__file__)
    got = await script(
        keys=[keys.queue, keys.lanes, keys.lane_weights, keys.lane_turns, ""],
        args=[
            ARQ_IN_PROGRESS,
            60_000,
            NOW_MS,
            want,
            owner,
            keys.lane_prefix,
            window,
            LANE_OUT_SUFFIX,
            0,
            "",  # no start replies: ids and scores only
            "",
            "",
            0,  # no fleet loads (KEYS[5] ''): this worker's load and room are not read
            0,
            0,
            *ids,
        ],
    )
    return [got[i].decode() for i in range(0, len(got), 2)]


async def _submit(client: FuseboxClient, tenant: str | None, n: int, prefix: str = "c") -> str:
    sub = await client.submit_batch(batch_lines(n, prefix=prefix), tenant=tenant)
    assert sub.queued == n
    return sub.batch_id


async def test_lines_are_claimed_at_the_tenants_weights_across_workers(settings, redis):
    k = settings.keys
    client = FuseboxClient(redis, settings)
    await tenants.update_settings(redis, k, "ta", {"weight": 3}, actor="test")
    a = await _submit(client, "ta", 1000)
    b = await _submit(client, "tb", 1000)
    assert await redis.zcard(k.queue) == 0  # batch lines wait in their tenants' lanes
    assert (await read_queue(redis, k.queue, keys=k)).lanes == {"ta": 1000, "tb": 1000}
    claimed: list[str] = []
    sizes = [7, 1, 16, 3, 5, 11]  # several workers, claims of every size: the turns are shared
    i = 0
    while len(claimed) < 400:
        got = await _claim(redis, k, f"w{i % 3}", sizes[i % len(sizes)])
        assert got
        claimed += got
        i += 1
    first = Counter(c.split(":")[0] for c in claimed[:400])
    assert abs(first[a] - 300) <= 2 and first[a] + first[b] == 400
    # each line claimed once; every claimed line is an ordinary arq job now
    assert len(set(claimed)) == len(claimed)
    assert await redis.zcard(k.queue) == len(claimed)
    assert await redis.exists(*(ARQ_IN_PROGRESS + c for c in claimed)) == len(claimed)  # leased
    assert await redis.zcard(k.lane("ta")) + await redis.zcard(k.lane("tb")) == 2000 - len(claimed)
    # once tenant a's lane is empty it leaves the rotation: b gets every turn, a banks no credit
    while await redis.exists(k.lane("ta")):
        await _claim(redis, k, "w0", 50)
    assert not await redis.sismember(k.lanes, "ta") and not await redis.hexists(k.lane_turns, "ta")
    rest = await _claim(redis, k, "w1", 20)
    assert len(rest) == 20 and all(c.startswith(b) for c in rest)


async def test_one_large_claim_takes_each_line_once_with_its_start(settings, redis):
    """A claim takes each lane's share of its lines in a few calls (claim.lua's take_lane and emit, in
    chunks of 500): every line once, at the lanes' turns, each with its own payload, a first try and its
    abort mark; a line that is in the queue already leaves its lane and is not started from it."""
    k = settings.keys
    client = FuseboxClient(redis, settings)
    a = await _submit(client, "ta", 700)
    b = await _submit(client, "tb", 700)
    dup, cancelled = f"{a}:c5", f"{b}:c7"  # c5 queued already (a deferral, say); c7 has an abort mark
    await redis.zadd(k.queue, {dup: NOW_MS})
    abort_key = "fusebox-test-abort"
    await redis.zadd(abort_key, {cancelled: NOW_MS})
    script = scripts.load(redis, "claim", fuse_worker.__file__)
    start = [ARQ_JOB, "fusebox-test-try:", abort_key]
    want = 1201
    args = [ARQ_IN_PROGRESS, 60_000, NOW_MS, want, "w", k.lane_prefix, 10**6, LANE_OUT_SUFFIX, 0, *start]
    args += [0, 0, 0]  # no fleet loads
    got = await script(keys=[k.queue, k.lanes, k.lane_weights, k.lane_turns, ""], args=args)
    rows = [got[i : i + 5] for i in range(0, len(got), 5)]
    ids = [r[0].decode() for r in rows]
    assert len(ids) == want and len(set(ids)) == want and dup not in ids
    per = Counter(i.split(":")[0] for i in ids)
    assert abs(per[a] - per[b]) <= 1  # equal weights: equal turns
    payloads = await redis.mget(*(ARQ_JOB + i for i in ids))
    assert [r[2] for r in rows] == payloads and all(payloads)
    assert {int(r[3]) for r in rows} == {1}  # each line's first try, counted
    assert {i for i, r in zip(ids, rows, strict=True) if r[4] == 1} == ({cancelled} & set(ids))
    assert await redis.zscore(abort_key, cancelled) is None or cancelled not in ids
    assert await redis.exists(*(ARQ_IN_PROGRESS + i for i in ids)) == want  # leased, parked in the queue
    assert await redis.zcard(k.queue) == want + 1  # and the queued line, left where it was
    assert await redis.zscore(k.lane("ta"), "c5") is None and await redis.zscore(k.lane("ta"), dup) is None
    left = await redis.zcard(k.lane("ta")) + await redis.zcard(k.lane("tb"))
    assert left == 1400 - want - 1


async def test_a_claim_larger_than_luas_unpack_takes_it_in_chunks(settings, redis):
    """One lane's 4,101 lines in one take: a ZADD of 4,101 score-member pairs is past the 8,000 values
    Lua's unpack passes at once ("too many results to unpack"): claim.lua sends such commands in chunks."""
    k = settings.keys
    client = FuseboxClient(redis, settings)
    await _submit(client, "ta", 4200)
    got = await _claim(redis, k, "w", 4101)
    assert len(got) == len(set(got)) == 4101
    assert await redis.zcard(k.queue) == 4101 and await redis.zcard(k.lane("ta")) == 99


async def test_a_tenant_stops_taking_turns_at_its_window_of_lines_out(settings, redis):
    k = settings.keys
    client = FuseboxClient(redis, settings)
    await tenants.update_settings(redis, k, "ta", {"weight": 3}, actor="test")
    a = await _submit(client, "ta", 100)
    b = await _submit(client, "tb", 100)
    got = await _claim(redis, k, "w", 100, window=5)  # ta may have 15 lines out, tb 5
    per = Counter(c.split(":")[0] for c in got)
    assert (per[a], per[b]) == (15, 5)
    assert await _claim(redis, k, "w", 10, window=5) == []  # nothing finished: no turns
    # three of a's lines finish (arq takes a finished job off the queue, and its lease): three more turns
    done = [c for c in got if c.startswith(a)][:3]
    await redis.zrem(k.queue, *done)
    await redis.delete(*(ARQ_IN_PROGRESS + c for c in done))
    again = await _claim(redis, k, "w", 10, window=5)
    assert len(again) == 3 and all(c.startswith(a) for c in again)
    # two of b's lines go back to the queue (deferred: their provider is saturated): no worker holds
    # them, so b's other lines do not wait behind them
    back = [c for c in got if c.startswith(b)][:2]
    await redis.delete(*(ARQ_IN_PROGRESS + c for c in back))
    more = await _claim(redis, k, "w", 10, window=5)
    assert len(more) == 2 and all(c.startswith(b) for c in more)
    assert await redis.zscore(k.queue, back[0]) is not None  # still queued: they run from there


async def test_a_single_job_behind_a_1000_line_backlog_is_claimed_next(settings, redis):
    k = settings.keys
    client = FuseboxClient(redis, settings)
    await _submit(client, "ta", 1000)
    assert len(await _claim(redis, k, "w0", 10)) == 10
    job = await client.submit({"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]})
    due = [m.decode() for m in await redis.zrangebyscore(k.queue, "-inf", NOW_MS)]
    got = await _claim(redis, k, "w1", 3, ids=due)  # as a worker polls: the queue's due jobs first
    assert got[0] == job and len(got) == 3


async def test_cancel_answers_every_line_still_in_its_lane(settings, redis):
    k = settings.keys
    client = FuseboxClient(redis, settings)
    bid = await _submit(client, "ta", 300)
    claimed = await _claim(redis, k, "w0", 20)  # 20 running (in the queue), 280 in the lane
    removed, status = await client.cancel(bid)
    assert removed == 300 and status == "cancelled"
    results = [r async for r in client.results(bid)]
    assert len(results) == 300 and all(r.error and r.error.code == "batch_cancelled" for r in results)
    assert await redis.zcard(k.lane("ta")) == 0
    assert not any([await redis.zscore(k.queue, c) for c in claimed])
    # the empty lane leaves the set at the next claim; nothing of the batch is claimed again
    assert await _claim(redis, k, "w0", 5) == []
    assert not await redis.sismember(k.lanes, "ta")


async def test_weight_setting_is_validated_and_audited(settings, redis):
    k = settings.keys
    for bad in (0, 1001, True, "3"):
        with pytest.raises(ValueError):
            await tenants.update_settings(redis, k, "ta", {"weight": bad}, actor="test")
    got = await tenants.update_settings(redis, k, "ta", {"weight": 7}, actor="admin-x")
    assert got == {"allow_fleet_keys": True, "weight": 7}
    assert await redis.hget(k.lane_weights, "ta") == b"7"
    assert (await tenants.get_settings(redis, k, "tb"))["weight"] == 1
    from shared import audit

    last = (await audit.read(redis, k, 1))[0]
    assert (last["action"], last["target"], last["details"]) == (
        "tenant.settings",
        "ta",
        {"weight": {"from": 1, "to": 7}},
    )


CONFIG = """
[worker]
max_jobs = 40
poll_delay = 0.01
lease_seconds = 2
lane_window = 20
[simulated]
latency_ms = 20
"""


async def test_kill_9_a_worker_holding_lines_from_lanes_loses_none(settings, redis, tmp_path: Path):
    """Real worker processes; one dies with SIGKILL holding lines it claimed from the lanes. Every line
    of both tenants' batches runs and is answered exactly once."""
    cfg = tmp_path / "fusebox.toml"
    cfg.write_text(CONFIG)
    env = subprocess_env(settings, FUSEBOX_CONFIG=str(cfg))
    client = FuseboxClient(redis, settings)
    await tenants.update_settings(redis, settings.keys, "ta", {"weight": 3}, actor="test")
    n = 800
    a = await _submit(client, "ta", n)
    b = await _submit(client, "tb", n)

    def spawn():
        import subprocess

        return subprocess.Popen(
            [PYTHON, "-m", "producer.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    procs = [spawn()]
    try:
        for _ in range(3000):  # until it holds leases on lines it took from the lanes
            held = [x async for x in redis.scan_iter(match=f"{ARQ_IN_PROGRESS}{a}:*", count=1000)]
            c = await client.counts(a)
            if len(held) >= 5 and c is not None and c.done >= 20:
                break
            await asyncio.sleep(0.01)
        assert held, "the worker never held a line claimed from a lane"
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        procs.append(spawn())
        for bid in (a, b):
            counts = await client.wait_batch(bid, timeout=600)  # a bound for a busy machine
            assert (counts.status, counts.completed, counts.failed) == ("completed", n, 0)
            ids = [r.custom_id async for r in client.results(bid) if r is not None]
            assert ids == [f"c{i}" for i in range(n)]
            assert await redis.llen(settings.keys.batch_done(bid)) == n  # never counted twice
            rows = await usage.read_usage(redis, settings.keys, 900, batch=bid)
            assert sum(r.requests for r in rows) == n
    finally:
        stop_processes(procs)
    k = settings.keys
    assert await redis.zcard(k.lane("ta")) == 0 and await redis.zcard(k.lane("tb")) == 0
    assert not [x async for x in redis.scan_iter(match=f"{ARQ_JOB}{a}:*")]
