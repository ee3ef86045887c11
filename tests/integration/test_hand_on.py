"""Hand-ons: a call's slot goes straight to the next call of a job waiting in the same worker, on the
same lease, with no admit (Gate.may_hand_on, settle.lua's hand-on). On a real server: the lease count
never grows, the settle keeps and renews the lease, hand-ons stop when the breaker is not closed or the
fleet is over its limit, and a slot handed to a job that does not take it is freed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from producer.client import FuseboxClient
from shared.config import BreakerConfig, FileConfig, LimitsConfig, ProviderConfig, WorkerConfig
from shared.gate.core import MAX_HOPS
from shared.resilience import Gate
from shared.scripts import run_pipelined
from tests.integration.helpers import batch_lines, running_worker
from worker.hand_on import HandOns
from worker.jobs import CTX_KEY
from worker.local_lines import LocalLines


def _cfg(max_concurrency: int = 2, rpm: int | None = None, adaptive: bool = False) -> FileConfig:
    return FileConfig(
        breaker=BreakerConfig(wait_open_jitter=0.0),
        limits=LimitsConfig(adaptive=adaptive),
        providers={"p": ProviderConfig(type="simulated", max_concurrency=max_concurrency, rpm=rpm)},
    )


async def _hand_on(gate: Gate, adm: Any, who: str) -> list[Any]:
    """Settle ``adm`` handing its lease on to job ``who`` (as the worker's result write does)."""
    call = gate.settle_call(adm, "success", 5.0, 1, hand_on=who)
    assert call is not None
    (reply,) = await run_pipelined(gate.redis, [call], raise_on_error=True)
    gate.settled(adm, reply)
    return reply


async def test_a_hand_on_keeps_the_lease_for_the_next_call(redis, settings):
    gate = Gate(redis, settings.keys, _cfg())
    k = settings.keys
    a, b = await gate.admit("p", None, 1), await gate.admit("p", None, 1)
    assert a.ok and b.ok
    assert (await gate.admit("p", None, 1, waiter="job-c")).reason == "saturated"
    assert await redis.zscore(k.gate_waiting("p"), "job-c") is not None
    expiry = await redis.zscore(k.gate_leases("p"), a.lease)
    assert gate.may_hand_on(a, "success")
    await asyncio.sleep(0.01)

    reply = await _hand_on(gate, a, "job-c")

    assert reply[2] == 1  # hand-ons may go on
    assert (await gate.snapshot("p"))["in_flight"] == 2  # the lease is the next call's now
    assert await redis.zscore(k.gate_leases("p"), a.lease) > expiry  # renewed for it
    assert await redis.zscore(k.gate_waiting("p"), "job-c") is None  # it left the scope's line
    assert (await gate.admit("p", None, 1)).reason == "saturated"
    assert (await gate.snapshot("p"))["calls"] == 1  # the first call's outcome counted
    await gate.settle(a, "success", 5.0, 1)  # the next call's end frees it
    await gate.settle(b, "success", 5.0, 1)
    assert (await gate.snapshot("p"))["in_flight"] == 0


async def test_hand_ons_stop_while_the_breaker_is_not_closed_until_an_admit(redis, settings):
    gate = Gate(redis, settings.keys, _cfg())
    a = await gate.admit("p", None, 1)
    await gate.force("p", "open")
    assert (await _hand_on(gate, a, "job-b"))[2] == 0
    assert not gate.may_hand_on(a, "success")  # the next job asks admit, which refuses it
    assert (await gate.admit("p", None, 1)).reason == "forced_open"
    assert (await gate.snapshot("p"))["in_flight"] == 1  # the handed call still holds its slot
    await gate.settle(a, "success", 5.0, 1)
    await gate.force("p", "closed")
    b = await gate.admit("p", None, 1)
    assert b.ok and gate.may_hand_on(b, "success")  # an admit says the scope is open for calls again
    await gate.settle(b, "success", 5.0, 1)


async def test_hand_ons_stop_when_the_fleet_is_over_its_adaptive_limit(redis, settings):
    gate = Gate(redis, settings.keys, _cfg(max_concurrency=4, adaptive=True))
    held = [await gate.admit("p", None, 1) for _ in range(3)]
    await redis.hset(settings.keys.gate_state("p"), "lim", 2)  # 429s elsewhere shrank the limit
    assert (await _hand_on(gate, held[0], "job-x"))[2] == 0
    assert not gate.may_hand_on(held[1], "success")
    for adm in held:
        await gate.settle(adm, "success", 5.0, 1)


async def test_a_reclaimed_lease_is_not_taken_back_by_a_hand_on(redis, settings):
    gate = Gate(redis, settings.keys, _cfg())
    a = await gate.admit("p", None, 1)
    await redis.zrem(settings.keys.gate_leases("p"), a.lease)  # expired and reclaimed meanwhile
    assert (await _hand_on(gate, a, "job-b"))[2] == 0
    assert (await gate.snapshot("p"))["in_flight"] == 0


async def test_only_plain_successes_on_scopes_without_rate_limits_hand_on(redis, settings):
    gate = Gate(redis, settings.keys, _cfg())
    a = await gate.admit("p", None, 1)
    assert gate.may_hand_on(a, "success")
    assert not any(gate.may_hand_on(a, o) for o in ("failure", "rate_limited", "ignored"))
    assert not gate.may_hand_on(dataclasses.replace(a, probe=True), "success")  # a half-open probe
    assert not gate.may_hand_on(dataclasses.replace(a, hops=MAX_HOPS), "success")  # its turn to be asked for
    await gate.settle(a, "success", 5.0, 1)
    limited = Gate(redis, settings.keys, _cfg(rpm=6000))  # every call reserves its rate in admit
    r = await limited.admit("p", None, 1)
    assert r.ok and not limited.may_hand_on(r, "success")
    await limited.settle(r, "success", 5.0, 1)


async def test_a_handed_on_call_is_not_released_as_unsettled(redis, settings):
    """Its lease is the next call's: an outage cutting its settle off must not free it under that call."""
    gate = Gate(redis, settings.keys, _cfg())
    a = await gate.admit("p", None, 1)
    a.handed_on = True
    gate.unsettled(a)
    assert await gate.release_unsettled() == 0
    assert (await gate.snapshot("p"))["in_flight"] == 1
    await gate.settle(a, "success", 5.0, 1)


async def test_a_slot_handed_to_a_waiter_that_leaves_goes_to_lost() -> None:
    lost: list[Any] = []
    lines = LocalLines(per_scope_cap=4, on_lost=lost.append)
    waiter = asyncio.create_task(lines.wait(["p"], timeout=5, who="job-1"))
    await asyncio.sleep(0)
    assert lines.release("p", "slot") == "job-1"
    waiter.cancel()  # cancelled before it resumed with the slot
    try:
        got = await waiter
    except asyncio.CancelledError:
        got = None
    # either it resumed with the slot (its caller frees an unused one) or the slot went to ``lost``
    assert got == ("p", "slot") or lost == ["slot"]
    assert lines.release("p", "other") is None and lines.waiting == 0


async def test_a_worker_hands_slots_on_within_the_limit_and_leaves_no_lease(redis, settings):
    """Through a real worker: most calls start on a handed-on lease (fewer admits than calls), the limit
    holds (counted around the provider's calls), and every lease is gone at the end."""
    cfg = FileConfig(
        worker=WorkerConfig(claim_ahead=16),
        providers={"sim": ProviderConfig(type="simulated", max_concurrency=3, options={"latency_ms": 5})},
    )
    s = settings.with_file(cfg)
    admitted = active = peak = calls = 0
    async with running_worker(s, redis) as worker:
        ex = worker.ctx[CTX_KEY]
        admit, provider = ex.gate.admit, ex.router.candidates("sim/chat")[0].provider
        chat = provider.chat

        async def counting_admit(*a: Any, **kw: Any) -> Any:
            nonlocal admitted
            got = await admit(*a, **kw)
            admitted += got.ok
            return got

        async def counting_chat(*a: Any, **kw: Any) -> Any:
            nonlocal active, peak, calls
            active, calls = active + 1, calls + 1
            peak = max(peak, active)
            try:
                return await chat(*a, **kw)
            finally:
                active -= 1

        ex.gate.admit, provider.chat = counting_admit, counting_chat
        client = FuseboxClient(redis, s)
        sub = await client.submit_batch(batch_lines(60, model="sim/chat"))
        counts = await client.wait_batch(sub.batch_id, timeout=60)
    assert (counts.completed, counts.failed) == (60, 0)
    assert calls == 60 and peak == 3
    assert admitted < calls  # the rest started on a handed-on lease
    assert (await Gate(redis, s.keys, cfg).snapshot("sim"))["in_flight"] == 0


async def test_a_slot_nobody_takes_is_freed_and_wakes_the_next_waiter(redis, settings):
    gate = Gate(redis, settings.keys, _cfg())
    lines = LocalLines(per_scope_cap=4)
    hand_ons = HandOns(gate, lines)
    a = await gate.admit("p", None, 1)
    waiter = asyncio.create_task(lines.wait(["p"], timeout=5, who="job-1"))
    await asyncio.sleep(0)
    hand_ons.lost(a)
    assert await waiter == ("p", None)  # woken to ask admit for the freed slot
    assert (await gate.snapshot("p"))["in_flight"] == 0
