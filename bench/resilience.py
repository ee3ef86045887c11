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

Usage: python bench/resilience.py [--quick] [--only abcde]
Last line: ``resilience: limit_max_inflight=8/8 throughput_ratio=... kill9_ok=...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.resilience_failures import DOWN_BREAKER, KILL_BREAKER, down_scenario, kill9_scenario
from bench.resilience_limits import adaptive_scenario, hol_scenario, limit_scenario

# the scenarios stay importable from here (tests/integration/test_resilience_e2e.py)
__all__ = [
    "DOWN_BREAKER",
    "KILL_BREAKER",
    "adaptive_scenario",
    "down_scenario",
    "hol_scenario",
    "kill9_scenario",
    "limit_scenario",
]


# -- the run -------------------------------------------------------------------------------------------------
SCENARIOS = "abcde"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller batches (about a third of the time)")
    ap.add_argument("--only", default=SCENARIOS, help="which scenarios, e.g. 'ad' (default: all)")
    args = ap.parse_args()
    q = args.quick
    t0 = time.perf_counter()
    out: list[str] = []
    if "a" in args.only:
        a = limit_scenario(n=1500 if q else 5000)
        out.append(
            f"limit_max_inflight={a['max_in_flight']}/{a['limit']} throughput_ratio={a['ratio_nominal']:.2f}"
            f" (vs_measured_latency={a['ratio_measured']:.2f})"
        )
    if "b" in args.only:
        b = down_scenario(n=600 if q else 1000)
        reqs = ",".join(f"{p['requests_before_open']}/{p['bound']}" for p in b["phases"])
        fallback = all(p["on_b"] == p["n"] and p["a_attempts"] == p["a_requests_total"] for p in b["phases"])
        out.append(
            f"down_requests={reqs} fallback_ok={fallback} probes={b['probe_max_in_flight']}/{b['probes']}"
            f" closed={b['closed']}"
        )
    if "c" in args.only:
        c = adaptive_scenario(n=1500 if q else 3000)
        out.append(
            f"adaptive_limit={c['settled_median_limit']:g} (K={c['capacity']},"
            f" mean {c['settled_mean_limit']:.1f}, at the end {c['effective_limit']})"
            f" 429_share={c['share_429']:.1%}"
        )
    if "d" in args.only:
        d = hol_scenario(n_b=2000 if q else 3000)
        out.append(f"hol_ratio={d['ratio']:.2f} hol_b_max_in_flight={d['b_max_in_flight']}/8")
    if "e" in args.only:
        e = kill9_scenario(n=400 if q else 600)
        ok = e["exactly_once"] and e["closed"] and e["in_flight_end"] == (0, 0, 0)
        out.append(f"kill9_ok={ok}")
    print(f"({time.perf_counter() - t0:.0f}s)")
    print("resilience: " + " ".join(out))


if __name__ == "__main__":
    main()
