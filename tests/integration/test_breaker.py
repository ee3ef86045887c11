"""The circuit breaker on a real Redis server: every transition, the probe leases, the generation fence."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.config import BreakerConfig, FileConfig, LimitsConfig, ModelLimitsConfig, ProviderConfig
from shared.gate import Admission, Gate


def _cfg(max_concurrency: int = 1000, **breaker: Any) -> FileConfig:
    return FileConfig(
        breaker=BreakerConfig(**{"wait_open_jitter": 0.0, **breaker}),
        limits=LimitsConfig(adaptive=False),
        providers={"p": ProviderConfig(type="simulated", max_concurrency=max_concurrency)},
    )


def _gate(redis, settings, **breaker: Any) -> Gate:
    return Gate(redis, settings.keys, _cfg(**breaker))


async def _call(gate: Gate, outcome: str, latency_ms: float = 10.0) -> Admission:
    adm = await gate.admit("p", None, 10)
    assert adm.ok, adm
    await gate.settle(adm, outcome, latency_ms, 10)
    return adm


async def _state(gate: Gate) -> str:
    return (await gate.snapshot("p"))["state"]


async def _until_admitted(gate: Gate, timeout: float = 10.0) -> Admission:
    """Admit as soon as the breaker lets a call through (the wait is the server's, not ours)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        adm = await gate.admit("p", None, 10)
        if adm.ok:
            return adm
        assert asyncio.get_running_loop().time() < deadline, adm
        await asyncio.sleep(min(adm.retry_in, 0.2) + 0.01)


async def _trip(gate: Gate, n: int) -> None:
    for _ in range(n):
        await _call(gate, "failure")
    assert await _state(gate) == "open"


async def test_trips_on_failure_rate_once_minimum_calls_reached(redis, settings):
    gate = _gate(redis, settings, minimum_calls=4, failure_rate_threshold=0.5, wait_open_seconds=30)
    await _call(gate, "success")
    await _call(gate, "success")
    await _call(gate, "failure")
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["calls"], snap["failures"]) == ("closed", 3, 1)
    await _call(gate, "failure")  # 2 of 4 = 50 %
    snap = await gate.snapshot("p")
    assert snap["state"] == "open"
    assert snap["trips"] == 1
    assert snap["open_wait_seconds"] == pytest.approx(30.0)
    assert snap["next_change_at"] - snap["now"] == pytest.approx(30.0, abs=1.0)
    assert snap["last_transition"]["reason"] == "failure_rate"

    adm = await gate.admit("p", None, 10)
    assert (adm.ok, adm.reason) == (False, "open")
    assert 28.0 < adm.retry_in <= 30.0

    [ev] = await gate.transitions()
    assert (ev["scope"], ev["from"], ev["to"], ev["reason"]) == ("p", "closed", "open", "failure_rate")
    assert (ev["calls"], ev["failures"], ev["slow"], ev["failure_rate"]) == ("4", "2", "0", "0.500")
    assert ev["wait_ms"] == "30000.000"
    assert ev["at"] == pytest.approx(snap["now"], abs=5.0)


async def test_minimum_calls_respected(redis, settings):
    gate = _gate(redis, settings, minimum_calls=5)
    for _ in range(4):
        await _call(gate, "failure")
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["calls"], snap["failure_rate"]) == ("closed", 4, 1.0)
    await _call(gate, "failure")
    assert await _state(gate) == "open"


async def test_trips_on_slow_call_rate(redis, settings):
    gate = _gate(redis, settings, minimum_calls=4, slow_call_ms=100, slow_call_rate_threshold=0.5)
    await _call(gate, "success", 20)
    await _call(gate, "success", 20)
    await _call(gate, "success", 150)
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["slow"]) == ("closed", 1)
    await _call(gate, "success", 150)
    snap = await gate.snapshot("p")
    assert snap["state"] == "open"
    assert snap["last_transition"]["reason"] == "slow_call_rate"
    [ev] = await gate.transitions()
    assert (ev["reason"], ev["slow"], ev["slow_rate"]) == ("slow_call_rate", "2", "0.500")
    assert ev["failures"] == "0"


async def test_user_errors_and_429s_never_trip_by_default(redis, settings):
    gate = _gate(redis, settings, minimum_calls=3)
    for _ in range(20):
        await _call(gate, "ignored")
        await _call(gate, "rate_limited")
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["calls"], snap["failures"]) == ("closed", 0, 0)
    assert await gate.transitions() == []


async def test_429s_trip_when_configured(redis, settings):
    gate = _gate(redis, settings, minimum_calls=3, count_rate_limited_as_failure=True)
    for _ in range(3):
        await _call(gate, "rate_limited")
    assert await _state(gate) == "open"


async def test_window_forgets_old_calls(redis, settings):
    gate = _gate(redis, settings, minimum_calls=3, window_seconds=0.4)
    await _call(gate, "failure")
    await _call(gate, "failure")
    await asyncio.sleep(0.5)
    assert (await gate.snapshot("p"))["calls"] == 0
    await _call(gate, "failure")
    await _call(gate, "failure")
    snap = await gate.snapshot("p")
    assert snap["state"] == "closed"
    assert snap["calls"] <= 2


async def test_open_becomes_half_open_after_the_wait(redis, settings):
    gate = _gate(redis, settings, minimum_calls=2, wait_open_seconds=1.0)
    await _trip(gate, 2)
    adm = await gate.admit("p", None, 10)
    assert (adm.ok, adm.reason) == (False, "open")
    assert 0 < adm.retry_in <= 1.0
    await asyncio.sleep(adm.retry_in + 0.02)
    probe = await gate.admit("p", None, 10)
    assert probe.ok and probe.probe
    assert probe.generation == 2  # closed(0) -> open(1) -> half_open(2)
    assert await _state(gate) == "half_open"
    ev = (await gate.transitions())[0]
    assert (ev["from"], ev["to"], ev["reason"]) == ("open", "half_open", "wait_elapsed")


async def test_half_open_admits_exactly_n_probes_fleet_wide(redis, settings):
    gate = _gate(redis, settings, minimum_calls=2, wait_open_seconds=0.2, half_open_probes=3)
    # A second gate object stands for another worker process sharing the breaker.
    other = _gate(redis, settings, minimum_calls=2, wait_open_seconds=0.2, half_open_probes=3)
    await _trip(gate, 2)
    await asyncio.sleep(0.25)
    results = await asyncio.gather(*((gate if i % 2 else other).admit("p", None, 10) for i in range(60)))
    ok = [a for a in results if a.ok]
    assert len(ok) == 3
    assert all(a.probe for a in ok)
    assert {a.reason for a in results if not a.ok} == {"half_open_busy"}
    assert (await gate.snapshot("p"))["probes_in_flight"] == 3

    await gate.settle(ok[0], "success", 10, 10)  # one probe slot frees, one more probe may run
    again = await asyncio.gather(*(gate.admit("p", None, 10) for _ in range(10)))
    assert sum(a.ok for a in again) == 1


async def test_probe_successes_close(redis, settings):
    gate = _gate(redis, settings, minimum_calls=2, wait_open_seconds=0.1, half_open_probes=2)
    await _trip(gate, 2)
    p1 = await _until_admitted(gate)
    p2 = await gate.admit("p", None, 10)
    assert p1.probe and p2.ok and p2.probe
    await gate.settle(p1, "success", 10, 10)
    assert await _state(gate) == "half_open"
    await gate.settle(p2, "success", 10, 10)
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["trips"], snap["calls"]) == ("closed", 0, 0)
    ev = (await gate.transitions())[0]
    assert (ev["from"], ev["to"], ev["reason"]) == ("half_open", "closed", "probes_succeeded")
    assert ev["probes"] == "2"
    after = await gate.admit("p", None, 10)
    assert after.ok and not after.probe


async def test_probe_failure_reopens_with_a_longer_capped_wait(redis, settings):
    gate = _gate(
        redis,
        settings,
        minimum_calls=2,
        wait_open_seconds=0.2,
        wait_open_growth=3.0,
        wait_open_max_seconds=1.0,
        half_open_probes=1,
    )
    await _trip(gate, 2)
    waits = [(await gate.snapshot("p"))["open_wait_seconds"]]
    for _ in range(2):
        probe = await _until_admitted(gate)
        assert probe.probe
        await gate.settle(probe, "failure", 10, 0)
        snap = await gate.snapshot("p")
        assert snap["state"] == "open"
        waits.append(snap["open_wait_seconds"])
    assert waits == pytest.approx([0.2, 0.6, 1.0])
    assert (await gate.snapshot("p"))["trips"] == 3
    reasons = [e["reason"] for e in await gate.transitions()]
    assert reasons == ["probe_failed", "wait_elapsed", "probe_failed", "wait_elapsed", "failure_rate"]


async def test_slow_probes_reopen(redis, settings):
    gate = _gate(
        redis,
        settings,
        minimum_calls=2,
        wait_open_seconds=0.1,
        half_open_probes=2,
        slow_call_ms=100,
        slow_call_rate_threshold=0.5,
    )
    await _trip(gate, 2)
    p1 = await _until_admitted(gate)
    p2 = await gate.admit("p", None, 10)
    await gate.settle(p1, "success", 500, 10)
    await gate.settle(p2, "success", 500, 10)
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["last_transition"]["reason"]) == ("open", "probe_slow")


async def test_expired_probe_lease_is_reclaimed(redis, settings):
    gate = _gate(
        redis, settings, minimum_calls=2, wait_open_seconds=0.1, half_open_probes=1, probe_lease_seconds=0.3
    )
    await _trip(gate, 2)
    lost = await _until_admitted(gate)  # its worker "dies": never settled, never renewed
    assert lost.probe
    busy = await gate.admit("p", None, 10)
    assert (busy.ok, busy.reason) == (False, "half_open_busy")
    assert 0 < busy.retry_in <= 0.3
    probe = await _until_admitted(gate)
    assert probe.probe and probe.lease != lost.lease
    await gate.settle(probe, "success", 10, 10)
    assert await _state(gate) == "closed"


async def test_generation_fence_ignores_stale_probe(redis, settings):
    gate = _gate(redis, settings, minimum_calls=2, wait_open_seconds=0.1, half_open_probes=2)
    await _trip(gate, 2)
    p1 = await _until_admitted(gate)
    p2 = await gate.admit("p", None, 10)
    assert p1.probe and p2.probe and p1.generation == p2.generation
    await gate.settle(p1, "failure", 10, 0)  # re-opens
    p3 = await _until_admitted(gate)  # a new half-open period
    assert p3.probe and p3.generation > p2.generation
    await gate.settle(p2, "failure", 10, 0)  # late outcome from the previous half-open period
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["probes_in_flight"]) == ("half_open", 1)
    await gate.settle(p2, "success", 10, 10)  # nor can it count towards closing
    assert (await gate.snapshot("p"))["probe_successes"] == 0


async def test_generation_fence_ignores_stale_closed_outcome(redis, settings):
    gate = _gate(redis, settings, minimum_calls=2)
    old = await gate.admit("p", None, 10)
    await _trip(gate, 2)
    await gate.reset("p")
    await gate.settle(old, "failure", 10, 0)  # admitted before the trip and the reset
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["calls"], snap["in_flight"]) == ("closed", 0, 0)


async def test_forced_states_and_reset(redis, settings):
    gate = _gate(redis, settings, minimum_calls=2)
    await gate.force("p", "open")
    adm = await gate.admit("p", None, 10)
    assert (adm.ok, adm.reason) == (False, "forced_open")
    assert adm.retry_in > 0

    await gate.force("p", "closed")
    for _ in range(5):
        await _call(gate, "failure")
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["calls"], snap["failures"]) == ("forced_closed", 5, 5)

    await gate.force("p", "disabled")
    for _ in range(5):
        await _call(gate, "failure")
    snap = await gate.snapshot("p")
    assert snap["state"] == "disabled"
    assert snap["calls"] == 5  # a disabled breaker records nothing

    await gate.reset("p")
    snap = await gate.snapshot("p")
    assert (snap["state"], snap["calls"], snap["trips"]) == ("closed", 0, 0)
    await _trip(gate, 2)  # automatic again

    events = [(e["from"], e["to"], e["reason"]) for e in reversed(await gate.transitions())]
    assert events == [
        ("closed", "forced_open", "ops"),
        ("forced_open", "forced_closed", "ops"),
        ("forced_closed", "disabled", "ops"),
        ("disabled", "closed", "ops_reset"),
        ("closed", "open", "failure_rate"),
    ]
    with pytest.raises(ValueError):
        await gate.force("p", "half_open")
    with pytest.raises(LookupError):
        await gate.force("nope", "open")
    with pytest.raises(LookupError):
        await gate.snapshot("p/not-a-scope")


async def test_open_wait_jitter_stays_in_bounds(redis, settings):
    gate = _gate(redis, settings, minimum_calls=1, wait_open_seconds=10.0, wait_open_jitter=0.5)
    waits = []
    for _ in range(6):
        await _trip(gate, 1)
        waits.append((await gate.snapshot("p"))["open_wait_seconds"])
        await gate.reset("p")
    assert all(5.0 <= w <= 15.0 for w in waits)
    assert len(set(waits)) > 1


async def test_per_model_breaker_is_its_own_scope(redis, settings):
    cfg = _cfg(minimum_calls=2)
    cfg.providers["p"].per_model["big"] = ModelLimitsConfig(max_concurrency=1)
    gate = Gate(redis, settings.keys, cfg)
    for _ in range(2):
        adm = await gate.admit("p", "big", 10)
        assert adm.scope == "p/big"
        await gate.settle(adm, "failure", 10, 0)
    assert (await gate.snapshot("p/big"))["state"] == "open"
    assert (await gate.admit("p", "big", 10)).reason == "open"
    other = await gate.admit("p", "small", 10)
    assert other.ok and other.scope == "p"
    assert [s.scope for s in gate.scopes()] == ["p", "p/big"]


def test_cli_breaker_commands(settings, capsys):
    import argparse
    import json

    from producer import breakers_cmd

    parser = argparse.ArgumentParser()
    breakers_cmd.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(argv)
        code = args.fn(args, settings)
        return code, capsys.readouterr().out

    code, out = run("breaker", "open", "simulated")
    assert (code, out.strip()) == (0, "simulated: forced open (state forced_open)")
    code, out = run("breakers", "--json")
    [snap] = [s for s in json.loads(out)["breakers"] if s["scope"] == "simulated"]
    assert (code, snap["state"], snap["last_transition"]["reason"]) == (0, "forced_open", "ops")
    code, out = run("breakers")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["PROVIDER", "STATE", "FAIL"]
    assert "forced_open" in next(line for line in out.splitlines() if line.startswith("simulated "))
    assert run("breaker", "reset", "simulated")[0] == 0
    code, out = run("breakers", "--json")
    assert [s["state"] for s in json.loads(out)["breakers"] if s["scope"] == "simulated"] == ["closed"]
    assert run("breaker", "disable", "nope")[0] == 2
