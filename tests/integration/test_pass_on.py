"""A call that ends while a job of the same worker waits for its scope passes its lease on (settle's
``keep``): no release, no admission of the waiter's own. Only while the scope may still run it, and the
lease is released in every other case, so the fleet-wide limit and the breaker stay exact."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.config import BreakerConfig, FileConfig, LimitsConfig, ProviderConfig
from shared.gate import Gate
from shared.gate.types import Admission


def _gate(
    redis: Any, settings: Any, max_concurrency: int = 4, adaptive: bool = False, **provider: Any
) -> Gate:
    cfg = FileConfig(
        breaker=BreakerConfig(wait_open_jitter=0.0, minimum_calls=2, failure_rate_threshold=0.5),
        limits=LimitsConfig(adaptive=adaptive),
        providers={"p": ProviderConfig(type="simulated", max_concurrency=max_concurrency, **provider)},
    )
    return Gate(redis, settings.keys, cfg)


async def _settle_keeping(gate: Gate, adm: Admission, outcome: str = "success") -> bool:
    """Settle ``adm`` passing its slot on, as a worker does; whether its lease ran on."""
    call = gate.settle_call(adm, outcome, 5.0, 1, handoff=True, keep=True)
    assert call is not None
    return gate.passed_on(adm, await call.script(call.keys, call.args))


async def test_a_successful_call_passes_its_lease_on(redis, settings) -> None:  # type: ignore[no-untyped-def]
    gate = _gate(redis, settings)
    leases = settings.keys.gate_leases("p")
    held = [await gate.admit("p", None, 1) for _ in range(4)]
    assert gate.can_pass_on(held[0])
    slot = gate.pass_on(held[0])
    assert slot.lease == held[0].lease and slot.ok
    before = await redis.zscore(leases, slot.lease)
    assert await _settle_keeping(gate, held[0])
    assert await redis.zcard(leases) == 4  # nothing freed: the slot runs on for the next job
    assert await redis.zscore(leases, slot.lease) > before  # for a whole new lease time
    assert (await gate.admit("p", None, 1)).reason == "saturated"
    assert gate.can_pass_on(slot)  # closed, 4 of 4 in flight: the next may pass on too
    await gate.settle(slot, "success", 5.0, 1)  # the job that took it ends: now it is freed
    assert await redis.zcard(leases) == 3
    await gate.settle(held[1], "success", 5.0, 1)


async def test_once_the_breaker_opens_slots_stop_passing_on(redis, settings) -> None:  # type: ignore[no-untyped-def]
    gate = _gate(redis, settings)
    a, b, c = [await gate.admit("p", None, 1) for _ in range(3)]
    await gate.settle(a, "failure", 5.0, 1)
    # the second failure trips the breaker (2 calls, 100% failures); a slot passed on meanwhile keeps its
    # lease (its call already runs, as calls admitted before a trip do), and no slot passes on after it
    await gate.settle(b, "failure", 5.0, 1)
    assert await _settle_keeping(gate, c)
    assert (await gate.snapshot("p"))["state"] == "open"
    assert not gate.can_pass_on(c)
    await gate.settle(c, "success", 5.0, 1)
    assert await redis.zcard(settings.keys.gate_leases("p")) == 0


async def test_over_a_lowered_limit_slots_stop_passing_on(redis, settings) -> None:  # type: ignore[no-untyped-def]
    gate = _gate(redis, settings, adaptive=True)
    held = [await gate.admit("p", None, 1) for _ in range(3)]
    await redis.hset(settings.keys.gate_state("p"), "lim", 2)  # the adaptive limit shrank meanwhile
    assert await _settle_keeping(gate, held[0])
    assert not gate.can_pass_on(held[1])  # 3 in flight > 2: the next call's slot goes back to the gate
    await gate.settle(held[1], "success", 5.0, 1)
    await gate.settle(held[2], "success", 5.0, 1)
    assert await _settle_keeping(gate, held[0])  # 1 in flight: within it again
    assert gate.can_pass_on(held[0])


async def test_an_expired_lease_is_not_brought_back(redis, settings) -> None:  # type: ignore[no-untyped-def]
    gate = _gate(redis, settings)
    leases = settings.keys.gate_leases("p")
    adm = await gate.admit("p", None, 1)
    await redis.zrem(leases, adm.lease)  # reclaimed as expired (its worker seemed dead)
    assert not await _settle_keeping(gate, adm)
    assert await redis.zcard(leases) == 0


async def test_rate_limited_scopes_and_probes_admit_every_call(redis, settings) -> None:  # type: ignore[no-untyped-def]
    for gate in (_gate(redis, settings, rpm=600), _gate(redis, settings, tpm=100_000)):
        assert not gate.can_pass_on(await gate.admit("p", None, 1))
    gate = _gate(redis, settings)
    adm = await gate.admit("p", None, 1)
    assert gate.can_pass_on(adm)
    assert not gate.can_pass_on(Admission(True, "p", None, "p", probe=True, policy=adm.policy))


async def test_a_passed_on_lease_counts_the_workers_holding_slots(redis, settings) -> None:  # type: ignore[no-untyped-def]
    a, b = _gate(redis, settings, max_concurrency=10), _gate(redis, settings, max_concurrency=10)
    a.owners_every = 3600.0
    held = await a.admit("p", None, 1)
    assert held.owners == 1
    await b.admit("p", None, 1)
    assert a.pass_on(held).owners == 1  # counted lately: not again
    a.owners_every = 0  # due: the settle that keeps the lease counts them
    assert await _settle_keeping(a, held)
    assert a.pass_on(held).owners == 2


async def test_a_worker_passes_slots_on_and_never_runs_more_than_the_limit(settings, redis) -> None:  # type: ignore[no-untyped-def]
    from producer.client import FuseboxClient
    from tests.integration.helpers import batch_lines, running_worker
    from worker.jobs import CTX_KEY

    limit, n = 4, 200
    cfg = FileConfig.model_validate(
        {
            "providers": {
                "sim4": {"type": "simulated", "max_concurrency": limit, "options": {"latency_ms": 20}}
            },
            "worker": {"max_jobs": 20},
        }
    )
    s = settings.with_file(cfg)
    client = FuseboxClient(redis, s)
    async with running_worker(s, redis) as worker:
        executor = worker.ctx[CTX_KEY]
        gate, provider = executor.gate, executor.router.providers["sim4"]
        admitted, running, most, calls = [0], [0], [0], [0]
        admit, chat = gate.admit, provider.chat

        async def counting_admit(*args: Any, **kwargs: Any) -> Admission:
            adm = await admit(*args, **kwargs)
            admitted[0] += adm.ok
            return adm

        async def counting_chat(*args: Any, **kwargs: Any) -> Any:
            running[0] += 1
            calls[0] += 1
            most[0] = max(most[0], running[0])
            try:
                return await chat(*args, **kwargs)
            finally:
                running[0] -= 1

        gate.admit, provider.chat = counting_admit, counting_chat
        sub = await client.submit_batch(batch_lines(n, model="sim4/chat"))
        counts = await client.wait_batch(sub.batch_id, poll=0.05, timeout=120)
    assert counts.completed == n
    assert most[0] == limit, (most, admitted, calls)
    # jobs that wait in the worker take the slot a call of theirs frees: far fewer admissions than calls
    assert admitted[0] < n // 2, admitted[0]
    assert await redis.zcard(s.keys.gate_leases("sim4")) == 0  # every lease released in the end


async def test_a_job_that_ran_on_a_passed_on_slot_leaves_the_line_and_is_not_called_back(
    redis, settings
) -> None:  # type: ignore[no-untyped-def]
    """A job refused a slot stands in the scope's line; if it then runs on a slot passed on in its worker,
    no admission takes it out. Its settle does; and a freed slot skips a line entry whose job is no longer
    queued (answered), calling back the next one instead of no one."""
    from arq.utils import timestamp_ms

    gate = _gate(redis, settings, max_concurrency=1)
    queue, line = settings.keys.queue, settings.keys.gate_waiting("p")
    took, gone, deferred = (f"{settings.namespace}-{x}" for x in ("took", "gone", "deferred"))
    running = await gate.admit("p", None, 1)
    far = timestamp_ms() + 60_000
    try:
        await redis.zadd(queue, {deferred: far})  # gone: answered and out of the queue
        for job in (gone, took, deferred):
            assert (await gate.admit("p", None, 1, waiter=job)).reason == "saturated"
        assert await redis.zcard(line) == 3
        slot = gate.pass_on(running)
        call = gate.settle_call(slot, "success", 5.0, 1, handoff=True, keep=True)
        assert call is not None and gate.passed_on(running, await call.script(call.keys, call.args))
        import dataclasses

        await gate.settle(dataclasses.replace(slot, waiter=took), "success", 5.0, 1)
        assert await redis.zscore(line, took) is None  # its settle took it out of the line
        assert await redis.zscore(line, gone) is None  # skipped and dropped
        assert await redis.zscore(queue, deferred) <= timestamp_ms()  # called back in its place
    finally:
        await redis.zrem(queue, deferred)


async def test_a_worker_passing_slots_on_takes_up_slots_the_gate_frees(settings, redis) -> None:  # type: ignore[no-untyped-def]
    """A worker whose calls run on passed-on slots makes no admissions, so slots freed in the gate (its
    limit grown back, or another worker's given back) went unused until a waiting job's re-check came
    round (its calls stayed at the count they had, 16-30 calls longer here). A keep-settle's reply now
    shows them free, and a waiting job asks for one at once: no re-check is needed to take them up."""
    from producer.client import FuseboxClient
    from tests.integration.helpers import batch_lines, running_worker
    from worker.jobs import CTX_KEY

    limit, n = 4, 300
    cfg = FileConfig.model_validate(
        {
            "providers": {
                "sim4": {"type": "simulated", "max_concurrency": limit, "options": {"latency_ms": 20}}
            },
            # a line long enough for every job: none asks the gate for want of a place in it
            "worker": {"max_jobs": 400, "local_waiters": 400},
        }
    )
    s = settings.with_file(cfg)
    leases = s.keys.gate_leases("sim4")
    # another worker holds 2 of the 4 slots (leases far from expiry) until it gives them back below
    await redis.zadd(leases, {"other-worker:1": 10**13, "other-worker:2": 10**13})
    client = FuseboxClient(redis, s)
    async with running_worker(s, redis) as worker:
        executor = worker.ctx[CTX_KEY]
        provider = executor.router.providers["sim4"]
        running, calls, most, rechecks = [0], [0], [0], [0]
        at_full: list[int] = []  # re-checks made when this worker first held all 4 slots
        # 100 calls made: passing its 2 slots on, jobs waiting here (past the first re-checks of jobs that
        # joined before any call's latency was known)
        warm = asyncio.Event()
        chat, wait = provider.chat, executor.local.wait

        async def counting_chat(*args: Any, **kwargs: Any) -> Any:
            running[0] += 1
            calls[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] == limit and not at_full:
                at_full.append(rechecks[0])
            if calls[0] == 100:
                warm.set()
            try:
                return await chat(*args, **kwargs)
            finally:
                running[0] -= 1

        async def counting_wait(*args: Any, **kwargs: Any) -> Any:
            got = await wait(*args, **kwargs)
            rechecks[0] += got is None  # timed out: the job asks the gate again
            return got

        provider.chat, executor.local.wait = counting_chat, counting_wait
        sub = await client.submit_batch(batch_lines(n, model="sim4/chat"))
        await asyncio.wait_for(warm.wait(), 60)
        assert most[0] == 2
        freed_at = rechecks[0]
        await redis.zrem(leases, "other-worker:1", "other-worker:2")
        counts = await client.wait_batch(sub.batch_id, poll=0.05, timeout=120)
    assert counts.completed == n and most[0] == limit
    assert at_full == [freed_at], (freed_at, at_full)  # taken up without a waiting job's re-check
    assert await redis.zcard(leases) == 0
