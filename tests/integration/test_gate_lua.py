"""The gate's Lua on every supported server: no "-0", fraction or nil reaches an integer command.

Redis 7 rejects ``HINCRBY key field -0`` ("value is not an integer"), Valkey 8 accepts it; these
tests run on both (see tests/conftest.py), so an arithmetic result that formats badly fails here.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from shared.config import BreakerConfig, FileConfig, LimitsConfig, ProviderConfig
from shared.gate import Gate
from shared.jobs.store import Store
from shared.schema import JobResult, Usage


def _gate(redis: Any, settings: Any, **breaker: Any) -> Gate:
    cfg = FileConfig(
        breaker=BreakerConfig(**{"wait_open_jitter": 0.0, **breaker}),
        limits=LimitsConfig(adaptive=True),
        providers={"p": ProviderConfig(type="simulated", max_concurrency=50, tpm=100_000)},
    )
    return Gate(redis, settings.keys, cfg)


async def _settle(gate: Gate, outcome: str, tokens: int | None = 10) -> None:
    adm = await gate.admit("p", None, 10)
    assert adm.ok, adm
    await gate.settle(adm, outcome, 5.0, tokens)


async def test_window_drops_a_bucket_without_failures(redis, settings):
    # 1 s window of 20 buckets: the first call's bucket leaves the window on the third settle, which
    # subtracts its (absent) failure and slow counts: "-0" on the old code.
    gate = _gate(redis, settings, window_seconds=1.0, minimum_calls=1000)
    await _settle(gate, "success")
    await asyncio.sleep(0.6)
    await _settle(gate, "success")
    await asyncio.sleep(0.6)
    await _settle(gate, "success")
    snap = await gate.snapshot("p")
    assert (snap["calls"], snap["failures"], snap["slow"]) == (2, 0, 0)


async def test_window_drops_a_bucket_with_failures(redis, settings):
    gate = _gate(redis, settings, window_seconds=1.0, minimum_calls=1000)
    await _settle(gate, "failure")
    await _settle(gate, "success")
    await asyncio.sleep(0.6)
    await _settle(gate, "failure")
    await asyncio.sleep(0.6)
    await _settle(gate, "success")
    snap = await gate.snapshot("p")
    assert (snap["calls"], snap["failures"]) == (2, 1)


async def test_window_totals_stay_consistent_over_many_rolls(redis, settings):
    """Every outcome, 429s and ignored ones included, over many rolls of a short window: the totals
    never go negative and never exceed what was recorded."""
    gate = _gate(redis, settings, window_seconds=0.3, minimum_calls=1000, slow_call_ms=4.0)
    rng = random.Random(5)
    recorded = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.5
    while loop.time() < end:
        outcome = rng.choice(["success", "success", "failure", "rate_limited", "ignored"])
        await _settle(gate, outcome, rng.choice([None, 0, 7]))
        recorded += outcome in ("success", "failure")
        snap = await gate.snapshot("p")
        assert 0 <= snap["failures"] <= snap["calls"] <= recorded, snap
        assert 0 <= snap["slow"] <= snap["calls"], snap
        await asyncio.sleep(rng.choice([0, 0.01, 0.04]))
    raw = await redis.hgetall(settings.keys.gate_window("p"))
    assert all(int(v) >= 0 for k, v in raw.items() if k != b"h"), raw


async def test_complete_counts_odd_provider_token_figures_as_whole_numbers(redis, settings):
    """Providers report usage; a fraction, "-0" or NaN there must not fail the result's write."""
    store = Store(redis, settings.keys, settings.file.batches)
    usage = Usage(prompt_tokens=12.7, completion_tokens=-0.0, cached_tokens=float("nan"))  # type: ignore[arg-type]
    for i, u in enumerate([usage, Usage(prompt_tokens=5, completion_tokens=3)]):
        r = JobResult(id=f"b:c{i}", status_code=200, custom_id=f"c{i}", batch_id="b", line=i, usage=u,
                      cost_usd=float("inf") if i == 0 else 0.5)  # fmt: skip
        written, _ = await store.complete(r)
        assert written
    h = await redis.hgetall(settings.keys.batch("b"))
    assert (h[b"completed"], h[b"prompt_tokens"], h[b"completion_tokens"]) == (b"2", b"17", b"3")
    assert b"cached_tokens" not in h and float(h[b"cost_usd"]) == 0.5
