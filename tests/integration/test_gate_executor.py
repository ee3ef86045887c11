"""The executor's promises on a real server, with an in-process worker:

- a Lua error (or any unexpected error) on the settle/complete path never deletes a job without a
  result: the job runs again, and on its last chance its line is answered with ``internal_error``;
- transient failures never fail a batch line early: it waits for another round (deferred through
  arq, growing backoff) until its attempt budget, its time budget or arq's last try.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.exceptions import ResponseError

import worker.executor as executor_mod
from producer.client import FuseboxClient
from shared import metrics
from shared.config import (
    BreakerConfig,
    FileConfig,
    ProviderConfig,
    RetryConfig,
    Settings,
    SimulatedConfig,
    WorkerConfig,
)
from shared.gate import Gate
from shared.router import Router
from shared.schema import JobResult
from shared.scripts import ScriptCall
from tests.integration.helpers import batch_lines
from worker.executor import Executor
from worker.jobs import CTX_KEY
from worker.settings import build_worker

NO_TRIP = BreakerConfig(minimum_calls=1_000_000, consecutive_failures=1_000_000)


@asynccontextmanager
async def _worker(
    settings: Settings, redis: Any, cfg: FileConfig
) -> AsyncIterator[tuple[Executor, FuseboxClient]]:
    s = settings.with_file(cfg)
    worker = build_worker(s, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker.ctx[CTX_KEY], FuseboxClient(redis, s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _batch(client: FuseboxClient, n: int, timeout: float = 60) -> list[JobResult]:
    sub = await client.submit_batch(batch_lines(n))
    counts = await client.wait_batch(sub.batch_id, timeout=timeout)
    results = [r async for r in client.results(sub.batch_id)]
    assert counts.done == counts.total == n, counts
    assert all(r is not None for r in results)
    assert [r.custom_id for r in results if r is not None] == [f"c{i}" for i in range(n)]
    return [r for r in results if r is not None]


def _provider_attempts(r: JobResult) -> int:
    return sum(1 for a in r.attempts if a.provider)


# -- a Lua error on the result path ----------------------------------------------------------------------
def _broken_script(redis: Any) -> Any:
    # the very error Redis 7 raised for "-0": a script error, not an outage
    return redis.register_script("return redis.call('HINCRBY', KEYS[1], 'x', '-0')")


async def test_failing_final_settle_never_costs_the_result(settings, redis, monkeypatch):
    broken = _broken_script(redis)
    real = Gate.settle_call

    def settle_call(self: Gate, *a: Any, **kw: Any) -> ScriptCall | None:
        call = real(self, *a, **kw)
        return None if call is None else ScriptCall(broken, [settings.keys.gate_state("broken")], [])

    monkeypatch.setattr(Gate, "settle_call", settle_call)
    async with _worker(settings, redis, FileConfig()) as (_, client):
        results = await _batch(client, 40)
    assert all(r.ok and _provider_attempts(r) == 1 for r in results)


async def test_failing_settle_between_retries_never_ends_the_job(settings, redis, monkeypatch):
    async def settle(self: Gate, *a: Any, **kw: Any) -> None:
        raise ResponseError("value is not an integer or out of range")

    monkeypatch.setattr(Gate, "settle", settle)
    cfg = FileConfig(simulated=SimulatedConfig(failure_rate=0.5), breaker=NO_TRIP)
    async with _worker(settings, redis, cfg) as (_, client):
        results = await _batch(client, 40)
    assert all(r.ok for r in results)
    assert any(_provider_attempts(r) > 1 for r in results)  # the failing settle was on the path


async def test_an_error_that_always_happens_answers_every_line_with_internal_error(
    settings, redis, monkeypatch
):
    monkeypatch.setattr(executor_mod, "INTERNAL_BACKOFF_S", 0.02)

    def cost(self: Router, *a: Any, **kw: Any) -> float:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Router, "cost", cost)
    async with _worker(settings, redis, FileConfig()) as (_, client):
        results = await _batch(client, 20)
    for r in results:
        assert not r.ok and r.error is not None
        assert (r.error.code, r.status_code) == ("internal_error", 500)
        assert sum(1 for a in r.attempts if a.error_class == "internal") == executor_mod.INTERNAL_TRIES


async def test_an_error_on_the_last_arq_try_still_answers_the_line(settings, redis, monkeypatch):
    monkeypatch.setattr(executor_mod, "INTERNAL_BACKOFF_S", 0.02)

    def cost(self: Router, *a: Any, **kw: Any) -> float:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Router, "cost", cost)
    async with _worker(settings, redis, FileConfig(worker=WorkerConfig(max_tries=2))) as (_, client):
        results = await _batch(client, 10)
    assert all(r.error is not None and r.error.code == "internal_error" for r in results)
    assert all(sum(1 for a in r.attempts if a.error_class == "internal") == 2 for r in results)


async def test_an_error_that_happens_once_is_retried(settings, redis, monkeypatch):
    monkeypatch.setattr(executor_mod, "INTERNAL_BACKOFF_S", 0.02)
    seen: set[str] = set()
    real = Executor._result

    def result(self: Executor, spec: Any, *a: Any) -> JobResult:
        if spec.id not in seen:
            seen.add(spec.id)
            raise RuntimeError("once per job")
        return real(self, spec, *a)

    monkeypatch.setattr(Executor, "_result", result)
    async with _worker(settings, redis, FileConfig()) as (_, client):
        results = await _batch(client, 20)
    assert all(r.ok for r in results)


# -- transient failures never fail a batch line early ----------------------------------------------------
def _set_failure_rate(ex: Executor, rate: float) -> None:
    ex.router.providers["simulated"].sim = SimulatedConfig(failure_rate=rate)  # type: ignore[attr-defined]


async def test_a_line_waits_out_an_outage_instead_of_failing(settings, redis):
    cfg = FileConfig(
        simulated=SimulatedConfig(failure_rate=1.0), breaker=NO_TRIP, retry=RetryConfig(max_attempts=2)
    )
    async with _worker(settings, redis, cfg) as (ex, client):
        sub = await client.submit_batch(batch_lines(20))
        # every line spends its first round on the outage (2 attempts), then waits in arq's queue
        deadline = asyncio.get_running_loop().time() + 30
        while (await client.counts(sub.batch_id)).done == 0:
            tried = [a for a in await _carried(redis, settings, sub.batch_id) if a >= 2]
            if len(tried) == 20:
                break
            assert asyncio.get_running_loop().time() < deadline, "lines never finished a round"
            await asyncio.sleep(0.05)
        assert (await client.counts(sub.batch_id)).done == 0  # none failed for the outage
        _set_failure_rate(ex, 0.0)
        counts = await client.wait_batch(sub.batch_id, timeout=60)
        results = [r async for r in client.results(sub.batch_id)]
    assert (counts.completed, counts.failed) == (20, 0)
    for r in results:
        assert r is not None and r.ok
        assert _provider_attempts(r) - 1 >= 2, r.attempts  # at least its first round failed
        assert _provider_attempts(r) <= RetryConfig().line_max_attempts + 1


async def _carried(redis: Any, settings: Settings, batch_id: str) -> list[int]:
    """Provider attempts carried in each queued job's payload (lines deferred after a failed round)."""
    from arq.jobs import deserialize_job

    from shared import codec
    from shared.keys import ARQ_JOB

    out = []
    for i in range(20):
        raw = await redis.get(f"{ARQ_JOB}{batch_id}:c{i}")
        if raw is None:
            continue
        job = deserialize_job(raw, deserializer=codec.arq_deserializer)
        spec = codec.decode_spec(job.args[0])
        out.append(sum(1 for a in spec.prior_attempts if a.provider))
    return out


@pytest.mark.parametrize(("line_max_attempts", "max_tries", "expected"), [(4, 1000, 4), (1000, 2, 4)])
async def test_a_line_fails_only_when_its_budget_or_the_last_try_is_spent(
    settings, redis, line_max_attempts: int, max_tries: int, expected: int
):
    cfg = FileConfig(
        simulated=SimulatedConfig(failure_rate=1.0),
        breaker=NO_TRIP,
        retry=RetryConfig(max_attempts=2, line_max_attempts=line_max_attempts),
        worker=WorkerConfig(max_tries=max_tries),
    )
    async with _worker(settings, redis, cfg) as (_, client):
        results = await _batch(client, 10)
    for r in results:
        assert not r.ok and r.error is not None and r.error.error_class == "transient", r
        assert _provider_attempts(r) == expected, r.attempts


async def test_a_single_job_still_fails_after_its_attempts(settings, redis):
    cfg = FileConfig(
        simulated=SimulatedConfig(failure_rate=1.0), breaker=NO_TRIP, retry=RetryConfig(max_attempts=2)
    )
    async with _worker(settings, redis, cfg) as (_, client):
        job = await client.submit({"model": "simulated/chat", "messages": [{"role": "user", "content": "x"}]})
        r = await client.wait(job, timeout=30)
    assert not r.ok and _provider_attempts(r) == 2


async def test_a_job_past_its_job_timeout_is_answered_not_dropped(settings, redis, monkeypatch):
    """arq drops a job that outlives job_timeout without a result; the executor ends the run first."""
    monkeypatch.setattr(executor_mod, "INTERNAL_BACKOFF_S", 0.02)
    cfg = FileConfig(simulated=SimulatedConfig(latency_ms=1500), worker=WorkerConfig(job_timeout=1.0))
    async with _worker(settings, redis, cfg) as (_, client):
        results = await _batch(client, 5, timeout=60)
    for r in results:
        assert r.error is not None and r.error.code == "internal_error", r
        assert "job_timeout" in r.error.message
        assert sum(1 for a in r.attempts if a.error_class == "internal") == executor_mod.INTERNAL_TRIES


def _tight(local_waiters: int, claim_ahead: int, limit: int, latency_ms: int) -> FileConfig:
    """One simulated provider, "tight", with a small limit, and a worker's local lines and claims sized."""
    tight = ProviderConfig(type="simulated", max_concurrency=limit, options={"latency_ms": latency_ms})
    return FileConfig(
        worker=WorkerConfig(local_waiters=local_waiters, claim_ahead=claim_ahead), providers={"tight": tight}
    )


# -- a saturated provider's backlog waits in the worker ----------------------------------------------------
async def test_jobs_past_the_local_line_wait_for_a_place_instead_of_going_back_through_arq(
    settings, redis, monkeypatch
):
    """Issue 13: a job that finds its provider's local line full waits for a place in it; the old rule
    deferred it at once (a whole arq round of Redis work per job, most of a batch on 2 workers).
    The room wait is long here so the property does not depend on this machine's speed."""
    monkeypatch.setattr(executor_mod, "ROOM_WAIT_S", 60.0)
    monkeypatch.setattr(executor_mod, "ROOM_WAIT_MAX_S", 60.0)
    cfg = _tight(local_waiters=2, claim_ahead=6, limit=2, latency_ms=5)
    deferred = metrics.DEFERRALS.labels("saturated")
    before = deferred._value.get()
    async with _worker(settings, redis, cfg) as (ex, client):
        sub = await client.submit_batch(batch_lines(40, model="tight/chat"))
        counts = await client.wait_batch(sub.batch_id, timeout=60)
        assert ex.local.waiting == 0 and not any(ex.calls.calling.values())
    assert (counts.completed, counts.failed) == (40, 0)
    assert deferred._value.get() == before  # none went back to arq for a full line


async def test_a_job_deferred_behind_others_waiting_for_a_place_cuts_how_far_the_worker_claims(
    settings, redis, monkeypatch
):
    """A job whose turn for a place in a full line is too far to wait for (other jobs of this worker
    wait for one already) is deferred at once; that too says the worker claims too far ahead. It used
    to say nothing, so claims went on at full width, each job deferred at once: 4 workers on a limit
    of 8 ran at 0.85-0.90 deferrals per job (bench/peers.py with fill_cpu 0), 0.30 with this change."""
    # one job may wait for a place (its turn: 1.5 call latencies), never a second one behind it; a
    # place always comes to the one waiting (60 s), so no wait times out
    monkeypatch.setattr(executor_mod, "ROOM_WAIT_S", 60.0)
    monkeypatch.setattr(executor_mod, "ROOM_WAIT_MAX_S", 0.2)
    cfg = _tight(local_waiters=1, claim_ahead=8, limit=1, latency_ms=100)
    deferred = metrics.DEFERRALS.labels("saturated")
    before = deferred._value.get()
    async with _worker(settings, redis, cfg) as (ex, client):
        sub = await client.submit_batch(batch_lines(16, model="tight/chat"))
        lowest = 1.0
        while (await client.counts(sub.batch_id)).done != 16:
            lowest = min(lowest, ex.ahead_share)
            await asyncio.sleep(0.002)
        counts = await client.wait_batch(sub.batch_id, timeout=60)
    assert (counts.completed, counts.failed) == (16, 0)
    assert deferred._value.get() > before  # jobs were deferred for want of a place
    assert lowest <= 0.5


async def test_a_job_deep_in_a_local_line_asks_the_gate_again_only_about_when_its_turn_comes(settings, redis):
    """A job waiting in a line this worker's own calls drain re-asks the gate (for a slot freed in another
    worker) about when its turn there comes, not every LOCAL_WAIT_S: from 20-deep lines behind one slot
    every such re-check was refused (4 spread workers on a limit of 8: 1.7 refused admissions per
    request, 0.33 now). Counts, not times: the turn is measured on this machine's own calls."""
    cfg = _tight(local_waiters=40, claim_ahead=40, limit=1, latency_ms=60)
    async with _worker(settings, redis, cfg) as (ex, client):
        warm = await client.submit_batch(batch_lines(3, model="tight/chat"))  # the worker learns the latency
        await client.wait_batch(warm.batch_id, timeout=60)
        woken: Counter[str] = Counter()
        wait = ex.local.wait

        async def counted(*args: Any, **kw: Any) -> Any:
            got = await wait(*args, **kw)
            woken["re-check" if got is None else "slot"] += 1
            return got

        ex.local.wait = counted  # type: ignore[method-assign]
        sub = await client.submit_batch(batch_lines(24, model="tight/chat"))
        counts = await client.wait_batch(sub.batch_id, timeout=60)
    assert (counts.completed, counts.failed) == (24, 0)
    assert woken["slot"] >= 20  # the line was drained by this worker's calls, one slot at a time
    # each job past the first ~8 of the line (8 x 60 ms) timed out at 0.5 s to ask the gate again
    assert woken["re-check"] <= 3, woken


async def test_jobs_turned_away_by_a_full_local_line_cut_how_far_the_worker_claims_ahead(
    settings, redis, monkeypatch
):
    """A job that finds no place in its provider's local line halves the worker's claim-ahead share;
    jobs finding places win it back a step at a time."""
    # a 1 ms wait for room: shorter than any call, so the first claim's extra jobs find none
    monkeypatch.setattr(executor_mod, "ROOM_WAIT_S", 0.001)
    monkeypatch.setattr(executor_mod, "ROOM_WAIT_MAX_S", 60.0)
    cfg = _tight(local_waiters=1, claim_ahead=8, limit=1, latency_ms=5)
    async with _worker(settings, redis, cfg) as (ex, client):
        sub = await client.submit_batch(batch_lines(30, model="tight/chat"))
        lowest = 1.0
        while (await client.counts(sub.batch_id)).done != 30:
            lowest = min(lowest, ex.ahead_share)
            await asyncio.sleep(0.002)
        counts = await client.wait_batch(sub.batch_id, timeout=60)
    assert (counts.completed, counts.failed) == (30, 0)
    assert lowest <= 0.5  # the first claim (8 jobs, 1 slot, a line of 1) turned jobs away
    assert executor_mod.AHEAD_MIN <= ex.ahead_share <= 1.0
