"""The consecutive-failures trip: a provider that goes hard down after a healthy stretch is cut off
after ``consecutive_failures`` calls, however many successes its window holds."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.config import BreakerConfig, FileConfig, LimitsConfig, ProviderConfig
from shared.gate import Gate


def _gate(redis: Any, settings: Any, **breaker: Any) -> Gate:
    cfg = FileConfig(
        breaker=BreakerConfig(**{"wait_open_jitter": 0.0, "minimum_calls": 10, **breaker}),
        limits=LimitsConfig(adaptive=False),
        providers={"p": ProviderConfig(type="simulated", max_concurrency=1000)},
    )
    return Gate(redis, settings.keys, cfg)


async def _call(gate: Gate, outcome: str) -> None:
    adm = await gate.admit("p", None, 10)
    assert adm.ok, adm
    await gate.settle(adm, outcome, 5.0, 10)


async def test_failures_in_a_row_trip_despite_a_healthy_window(redis, settings):
    gate = _gate(redis, settings, consecutive_failures=4)
    for _ in range(200):
        await _call(gate, "success")
    for i in range(3):
        await _call(gate, "failure")
        snap = await gate.snapshot("p")
        assert (snap["state"], snap["consecutive_failures"]) == ("closed", i + 1)
    assert snap["consecutive_failures_to_trip"] == 4
    await _call(gate, "failure")  # 4 of 204 calls failed: far below the rate, but 4 in a row
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["consecutive_failures"]) == ("open", 0)
    assert snap["last_transition"]["reason"] == "consecutive_failures"
    [ev] = await gate.transitions()
    assert (ev["reason"], ev["consecutive"], ev["calls"], ev["failures"]) == (
        "consecutive_failures",
        "4",
        "204",
        "4",
    )
    assert not (await gate.admit("p", None, 10)).ok


async def test_a_success_or_ignored_outcomes_do_not_count_in_the_streak(redis, settings):
    gate = _gate(redis, settings, consecutive_failures=3, minimum_calls=1000)
    for outcome in ["failure", "failure", "success", "failure", "failure", "ignored", "rate_limited"]:
        await _call(gate, outcome)
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["consecutive_failures"]) == ("closed", 2)  # the success reset it
    await _call(gate, "failure")
    assert (await gate.snapshot("p"))["state"] == "open"


async def test_forced_closed_never_trips_on_a_streak(redis, settings):
    gate = _gate(redis, settings, consecutive_failures=2, minimum_calls=1000)
    await gate.force("p", "closed")
    for _ in range(5):
        await _call(gate, "failure")
    snap = await gate.snapshot("p")
    assert snap["state"] == "forced_closed" and snap["consecutive_failures"] == 5


async def test_the_streak_starts_over_after_the_breaker_recloses(redis, settings):
    gate = _gate(redis, settings, consecutive_failures=2, minimum_calls=1000, wait_open_seconds=0.05,
                 half_open_probes=1)  # fmt: skip
    await _call(gate, "failure")
    await _call(gate, "failure")
    assert (await gate.snapshot("p"))["state"] == "open"
    for _ in range(500):
        adm = await gate.admit("p", None, 10)
        if adm.ok:
            break
        await asyncio.sleep(0.02)
    assert adm.probe
    await gate.settle(adm, "success", 5.0, 10)
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["consecutive_failures"]) == ("closed", 0)
    await _call(gate, "failure")  # one failure after reclosing is not a streak of two
    assert (await gate.snapshot("p"))["state"] == "closed"
