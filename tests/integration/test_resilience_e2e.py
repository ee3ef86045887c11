"""The resilience proofs end to end: real Redis, real ``fusebox worker`` processes, the simulator serving the
OpenAI wire format. The scenarios are bench/resilience.py's (smaller batches); every check is a count, an
ordering or a limit that holds on any machine however busy: throughput ratios are bench/resilience.py's."""

from __future__ import annotations

from typing import Any

import pytest

from bench.harness import Stack, chat_lines
from bench.resilience import (
    DOWN_BREAKER,
    adaptive_scenario,
    down_scenario,
    hol_scenario,
    kill9_scenario,
    limit_scenario,
)

A_503 = ("a", "m", 503, "transient")


def _quiet(_: str) -> None:
    return None


@pytest.mark.slow
def test_fleet_wide_limit_is_never_exceeded_and_every_line_runs_once(redis_url: str) -> None:
    fig = limit_scenario(n=800, workers=4, limit=8, latency_ms=100, say=_quiet, redis_url=redis_url)
    assert fig["requests"] == fig["n"] == 800  # one request per line: none lost, none run twice
    # reached (the backlog keeps every slot busy), never exceeded, across 4 worker processes
    assert fig["max_in_flight"] == 8, fig


@pytest.mark.slow
def test_down_provider_is_bounded_jobs_fall_back_and_exactly_n_probes_close_it(redis_url: str) -> None:
    fig = down_scenario(n=600, workers=4, probe_latency_ms=500, say=_quiet, redis_url=redis_url)
    assert [p["mode"] for p in fig["phases"]] == ["status", "disconnect"]
    for p in fig["phases"]:
        # a provider that went hard down trips on failures in a row, before the window's minimum
        assert p["trip_reason"] == "consecutive_failures"
        assert p["trip_calls"] == p["trip_consecutive"] == DOWN_BREAKER["consecutive_failures"]
        assert 0 < p["requests_before_open"] <= p["bound"], p  # minimum_calls + max_concurrency, fleet-wide
        assert p["completed"] == p["on_b"] == p["n"], p  # every job completed on the fallback
        # every request the dead provider received is a failed attempt recorded in some job's result
        assert p["a_attempts"] == p["a_attempts_failed"] == p["a_requests_total"], p
    n = fig["probes"]
    assert (fig["probe_requests"], fig["probe_max_in_flight"]) == (n, n)  # exactly N, concurrently
    assert fig["transitions"] == [("half_open", "wait_elapsed"), ("closed", "probes_succeeded")]
    assert fig["closed"] and fig["recovered_completed"] == 600
    assert fig["recovered_on_a"] > 0  # traffic went back to the primary once it closed


@pytest.mark.slow
def test_adaptive_concurrency_finds_hidden_capacity_without_a_429_storm(redis_url: str) -> None:
    k = 6
    fig = adaptive_scenario(n=1500, capacity=k, max_concurrency=16, say=_quiet, redis_url=redis_url)
    assert fig["share_429"] < 0.05, fig  # a handful of 429s while it adapts, never a storm
    assert fig["max_in_flight"] <= k
    # the 429s shrank the fleet-wide limit from 16 (how close it settles to K depends on how fast the
    # machine fills the slots, so that figure is bench/resilience.py's)
    assert fig["n429"] > 0 and fig["limit_min"] < 16, fig


@pytest.mark.slow
def test_slow_providers_backlog_does_not_block_a_fast_one(redis_url: str) -> None:
    # A: 4 slots, 1 s per call, 1,000 queued (>= 250 s of work); B: 8 slots, 100 ms per call
    fig = hol_scenario(
        n_b=400, backlog=1000, say=_quiet, redis_url=redis_url, measure_alone=False, b_latency_ms=100
    )
    assert (fig["b_completed"], fig["b_failed"], fig["b_requests"]) == (400, 0, 400), fig
    assert fig["a_max_in_flight"] == 4  # A stayed saturated with its backlog while B ran...
    assert fig["a_pending"] > 0 and fig["a_done_meanwhile"] < 1000, fig  # ...and B finished first
    # not blocked at all: A's waiting jobs never held B's slots, B reached its full concurrency
    assert fig["b_max_in_flight"] == 8, fig


@pytest.mark.slow
def test_kill_9_of_the_worker_holding_leases_and_the_probe(redis_url: str) -> None:
    fig = kill9_scenario(n=400, say=_quiet, redis_url=redis_url)
    assert fig["held_probe"] == 1 and fig["held_leases"] >= 7
    assert fig["right_after_kill"][0] == 1  # the dead probe still holds the half-open slot...
    assert fig["closed"]  # ...until its lease expires: a new probe ran and closed the breaker
    assert fig["b_max_in_flight_after"] == 8  # the dead worker's slots on B came back
    assert fig["in_flight_end"] == (0, 0, 0)
    assert fig["exactly_once"], fig
    assert fig["transitions"][-2:] == [("half_open", "wait_elapsed"), ("closed", "probes_succeeded")]


def test_batch_completes_on_the_fallback_and_results_record_every_attempt(redis_url: str) -> None:
    """Issue 3: one provider answers 503 to everything; every job completes on the fallback, and each
    result names the provider and model used and lists the failed attempts before it."""
    n = 120
    sim = {"a": {"format": "openai", "errors": {"503": 1.0}}, "b": {"format": "openai", "latency": {"ms": 5}}}
    # A never saturates, so every job makes both its attempts there; B's 4 slots make most jobs wait in a
    # worker or be deferred through arq, and their attempts must survive that
    providers = {"a": {"max_concurrency": 256, "models": ["m"]}, "b": {"max_concurrency": 4, "models": ["m"]}}
    extra: dict[str, Any] = {
        # never trips: every job tries A, retries, then falls back
        "breaker": {"minimum_calls": 1_000_000, "consecutive_failures": 1_000_000},
        "retry": {"max_attempts": 2, "backoff_base": 0.01},
        "routes": {"r": {"candidates": ["a/m", "b/m"]}},
    }
    with Stack(sim_routes=sim, providers=providers, workers=2, extra_config=extra, redis_url=redis_url) as st:
        assert st.sim is not None
        counts, _, bid = st.timed_batch(chat_lines(n, "r"), timeout=120)
        results = st.results(bid)
        stats = st.sim.stats()["routes"]
    assert (counts.completed, counts.failed) == (n, 0)
    assert all(r is not None for r in results)
    seen_a = 0
    for r in results:
        assert r is not None and r.ok and r.status_code == 200
        assert (r.provider, r.model) == ("b", "m")
        assert r.body is not None and r.body["object"] == "chat.completion"
        # A's two attempts (the job's whole budget there, however often it ran), then B served it
        got = [(a.provider, a.model, a.status, a.error_class) for a in r.attempts]
        assert got == [A_503, A_503, ("b", "m", 200, None)], r.attempts
        seen_a += 2
    # every request A answered with a 503 is one recorded attempt: none lost when a job was deferred
    assert seen_a == stats["a"]["requests"] == stats["a"]["by_status"]["503"] == 2 * n
    assert stats["b"]["requests"] == n
