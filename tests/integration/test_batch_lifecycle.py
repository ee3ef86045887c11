"""Batch lifecycle on a real server: statuses, exactly-once counting, cancel, expiry, usage."""

from __future__ import annotations

import asyncio
import time

from producer.client import FuseboxClient
from shared import usage
from shared.config import BatchConfig, FileConfig, SimulatedConfig, WorkerConfig
from shared.jobs.store import Store
from shared.schema import JobResult, Usage
from tests.integration.helpers import batch_lines, running_worker


async def _until(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await pred()
        if v:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_lifecycle_statuses_timestamps_and_ttl(settings, redis):
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(
            batch_lines(40, content="hello {i}"), metadata={"project": "x"}, tenant="acme"
        )
        await client.wait_batch(sub.batch_id, timeout=30)
        obj = await _until(lambda: _completed(client, sub.batch_id))
    assert obj["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
    assert obj["metadata"] == {"project": "x"} and obj["tenant"] == "acme"
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert isinstance(obj[stamp], int), stamp
    assert obj["created_at"] <= obj["in_progress_at"] <= obj["finalizing_at"] <= obj["completed_at"]
    assert obj["usage"]["prompt_tokens"] > 0 and obj["usage"]["completion_tokens"] > 0
    ttl = await redis.ttl(settings.keys.batch_results(sub.batch_id))
    assert 0 < ttl <= BatchConfig().results_ttl_s


async def _completed(client, batch_id):
    obj = await client.batch(batch_id)
    return obj if obj["status"] == "completed" else None


async def test_every_line_invalid_fails_the_batch(settings, redis):
    client = FuseboxClient(redis, settings)
    sub = await client.submit_batch(["{not json", '{"custom_id": 3}'])
    assert sub.status == "failed" and sub.rejected == 2
    obj = await client.batch(sub.batch_id)
    assert obj["status"] == "failed" and obj["request_counts"] == {"total": 2, "completed": 0, "failed": 2}


async def test_result_and_counters_are_written_exactly_once(settings, redis):
    store = Store(redis, settings.keys)
    client = FuseboxClient(redis, settings)
    sub = await client.submit_batch(batch_lines(2, content="hello {i}"), batch_id="b-once")
    r = JobResult(id="b-once:c0", status_code=200, body={}, batch_id="b-once", custom_id="c0", line=0,
                  provider="simulated", model="chat", usage=Usage(prompt_tokens=5, completion_tokens=7,
                  total_tokens=12), cost_usd=0.25)  # fmt: skip
    assert (await store.complete(r, "t1"))[0] is True
    # a re-run of the same job (worker killed after writing) must not count again
    assert (await store.complete(r, "t1"))[0] is False
    c = await client.counts(sub.batch_id)
    assert (c.completed, c.failed, c.status) == (1, 0, "in_progress")
    rows = await usage.read_usage(redis, settings.keys, 120, batch="b-once")
    assert [(x.requests, x.input_tokens, x.output_tokens, round(x.cost_usd, 6)) for x in rows] == [
        (1, 5, 7, 0.25)
    ]
    obj = await client.batch("b-once")
    assert obj["usage"]["cost_usd"] == 0.25 and obj["usage"]["prompt_tokens"] == 5


async def test_cancel_keeps_partial_results_and_answers_every_line(settings, redis):
    s = settings.with_file(
        FileConfig(simulated=SimulatedConfig(latency_ms=50), worker=WorkerConfig(max_jobs=4))
    )
    client = FuseboxClient(redis, s)
    async with running_worker(s, redis):
        sub = await client.submit_batch(batch_lines(300, content="hello {i}"))
        await _until(lambda: _done_at_least(client, sub.batch_id, 10))
        removed, status = await client.cancel(sub.batch_id)
        assert status in ("cancelling", "cancelled") and removed > 200
        final = await client.wait_batch(sub.batch_id, timeout=30)
    assert final.status == "cancelled"
    results = [r async for r in client.results(sub.batch_id)]
    assert len(results) == 300 and all(r is not None for r in results)
    cancelled = [r for r in results if r.error and r.error.code == "batch_cancelled"]
    ok = [r for r in results if r.ok]
    assert len(cancelled) == removed and len(ok) + len(cancelled) == 300
    assert final.completed == len(ok) and final.failed == len(cancelled)
    for zset in (s.keys.queue, s.keys.lane(None)):
        queued = [m for m in await redis.zrange(zset, 0, -1) if m.decode().startswith(sub.batch_id)]
        assert queued == []
    # cancelling again changes nothing
    assert (await client.cancel(sub.batch_id))[1] == "cancelled"


async def _done_at_least(client, batch_id, n):
    c = await client.counts(batch_id)
    return c.done >= n


async def test_completion_window_expires_unrun_lines(settings, redis):
    s = settings.with_file(
        FileConfig(simulated=SimulatedConfig(latency_ms=100), worker=WorkerConfig(max_jobs=2))
    )
    client = FuseboxClient(redis, s)
    store = Store(redis, s.keys)
    async with running_worker(s, redis):
        sub = await client.submit_batch(batch_lines(100, content="hello {i}"), completion_window_s=0.3)
        await asyncio.sleep(0.4)
        # the worker's own check (every 5 s on the clock) may have expired it first: then this finds
        # nothing due, and the batch still ends expired
        got = await store.expire_due()
        assert got == [sub.batch_id] or (got == [] and await store.expire_due() == [])
        final = await client.wait_batch(sub.batch_id, timeout=30)
    assert final.status == "expired"
    results = [r async for r in client.results(sub.batch_id)]
    codes = {r.error.code for r in results if r.error}
    assert codes == {"batch_expired"} and final.done == 100 and final.completed >= 1


async def test_results_in_completion_order_and_usage_totals(settings, redis):
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(batch_lines(60, content="hello {i}"), tenant="t9")
        await client.wait_batch(sub.batch_id, timeout=30)
    seen = [r async for r in client.results(sub.batch_id, ordered=False)]
    assert sorted(r.custom_id for r in seen) == sorted(f"c{i}" for i in range(60))
    rows = await client.usage(since_s=300, batch=sub.batch_id)
    assert len(rows) == 1 and rows[0].tenant == "t9" and rows[0].provider == "simulated"
    assert rows[0].requests == 60
    assert rows[0].input_tokens == sum(r.usage.prompt_tokens for r in seen)
    assert rows[0].output_tokens == sum(r.usage.completion_tokens for r in seen)
    assert sum(rows[0].latency_ms.values()) == 60
