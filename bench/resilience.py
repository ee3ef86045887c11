"""Proofs of the resilience gate with real worker processes, Redis and the simulator, as ratios in one run.

a. limit: W workers, N jobs, max_concurrency 8, latency 50 ms: the provider never sees more than 8
   concurrent requests; throughput / (8 / latency), with the nominal latency and with the mean latency
   the workers measured.
b. down: provider A hard down (503s, then dropped connections) with fallback B on a route: requests A
   receives before its breaker opens <= minimum_calls + max_concurrency; every job completes on B; when A
   comes back exactly ``half_open_probes`` probes run concurrently on it, then the breaker closes.
c. adaptive: hidden capacity K (429 beyond it) under max_concurrency 16: the effective limit settles near
   K with < 5% of requests answered 429.
d. head-of-line: A slow and saturated with a big backlog queued, B fast: B's throughput with A's backlog
   queued / B's throughput alone.
e. kill -9: the worker holding leases and a half-open probe is SIGKILLed: the slots and the probe are
   reclaimed by lease expiry and the batch finishes with every line answered exactly once.

Usage: python bench/resilience.py [--quick] [--only a,b,...]
Last line: ``resilience: limit_max_inflight=8/8 throughput_ratio=... kill9_ok=...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Stack, chat_lines  # noqa: E402
from shared.schema import JobResult  # noqa: E402

Say = Callable[[str], None]


def _route(stats: dict[str, Any], name: str) -> dict[str, Any]:
    out: dict[str, Any] = stats["routes"][name]
    return out


def _poll(check: Callable[[], Any], timeout: float, every: float = 0.02) -> Any:
    """``check()``'s first truthy value, or AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def _all_results(st: Stack, batch_id: str, n: int) -> list[JobResult]:
    res = st.results(batch_id)
    missing = [i for i, r in enumerate(res) if r is None]
    assert not missing, f"{len(missing)} lines without a result (first {missing[:5]})"
    assert len(res) == n
    return [r for r in res if r is not None]


# -- a. fleet-wide concurrency limit and throughput ------------------------------------------------------
def limit_scenario(
    n: int = 5000, workers: int = 4, limit: int = 8, latency_ms: float = 50, say: Say = print
) -> dict[str, Any]:
    sim = {"a": {"format": "openai", "latency": {"ms": latency_ms}}}
    providers = {"a": {"max_concurrency": limit, "models": ["m"]}}
    with Stack(sim_routes=sim, providers=providers, workers=workers) as st:
        assert st.sim is not None
        st.timed_batch(chat_lines(100, "a/m", "warm"))
        st.sim.reset()
        counts, secs, bid = st.timed_batch(chat_lines(n, "a/m"))
        stats = _route(st.sim.stats(), "a")
        results = _all_results(st, bid, n)
    assert counts.completed == n, counts
    rate = n / secs
    # the latency each call took as the worker saw it (the simulator's sleep plus HTTP and scheduling)
    mean_ms = statistics.fmean(r.attempts[-1].latency_ms for r in results)
    nominal = rate / (limit / (latency_ms / 1000))
    measured = rate / (limit / (mean_ms / 1000))
    fig = {
        "n": n,
        "seconds": secs,
        "rate": rate,
        "max_in_flight": stats["max_in_flight"],
        "limit": limit,
        "mean_latency_ms": mean_ms,
        "ratio_nominal": nominal,
        "ratio_measured": measured,
        "requests": stats["requests"],
    }
    say(
        f"a. limit: {n} jobs, {workers} workers, max_concurrency {limit}, latency {latency_ms:g} ms: "
        f"{rate:.1f} jobs/s in {secs:.1f}s; provider max in flight {stats['max_in_flight']}/{limit}; "
        f"throughput / ({limit}/{latency_ms:g} ms) = {nominal:.3f}; "
        f"vs measured mean latency {mean_ms:.1f} ms: {measured:.3f}"
    )
    return fig
