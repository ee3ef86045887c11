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
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Stack, chat_lines
from shared.schema import JobResult

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
    n: int = 5000,
    workers: int = 4,
    limit: int = 8,
    latency_ms: float = 50,
    say: Say = print,
    redis_url: str | None = None,
) -> dict[str, Any]:
    sim = {"a": {"format": "openai", "latency": {"ms": latency_ms}}}
    providers = {"a": {"max_concurrency": limit, "models": ["m"]}}
    with Stack(sim_routes=sim, providers=providers, workers=workers, redis_url=redis_url) as st:
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


# -- b. hard down provider, fallback, recovery through exactly N probes ---------------------------------
DOWN_BREAKER = {
    "minimum_calls": 10,
    "consecutive_failures": 5,
    "window_seconds": 30,
    "wait_open_seconds": 1.5,
    "wait_open_max_seconds": 3,
    "wait_open_jitter": 0.1,
    "half_open_probes": 2,
}


def _first_open(st: Stack, after_gen: int) -> dict[str, Any] | None:
    for ev in st.transitions("a"):
        if ev["to"] == "open" and int(ev["gen"]) > after_gen:
            return ev
    return None


def _down_phase(st: Stack, n: int, mode: str, limit: int, say: Say) -> dict[str, Any]:
    """A down in ``mode``; a batch on route r: count what reached A before its breaker opened."""
    assert st.sim is not None
    st.run(st.gate.reset("a"))
    st.sim.configure({"routes": {"a": {"down": True, "outage_mode": mode}}})
    st.sim.reset()
    gen0 = st.gate_snapshot("a")["generation"]
    sub = st.submit(chat_lines(n, "r", f"down-{mode}-"))
    trip = _poll(lambda: _first_open(st, gen0), 60)
    # Calls admitted before the trip may still be on their way to the simulator: let them land. If
    # the open wait ended meanwhile (a busy machine), the probes admitted since are allowed for.
    time.sleep(0.3)
    before_open = _route(st.sim.stats(), "a")["requests"]
    probes = st.probes_since("a", int(trip["gen"]), DOWN_BREAKER["half_open_probes"])
    counts = st.wait(sub.batch_id, 300)
    results = _all_results(st, sub.batch_id, n)
    total_a = _route(st.sim.stats(), "a")["requests"]
    on_b = sum(1 for r in results if r.ok and (r.provider, r.model) == ("b", "m"))
    a_attempts = [a for r in results for a in r.attempts if a.provider == "a"]
    trip_calls = int(trip.get("calls", 0))
    fig = {
        "mode": mode,
        "requests_before_open": before_open,
        "bound": DOWN_BREAKER["minimum_calls"] + limit + probes,
        "probes_before_read": probes,
        "trip_calls": trip_calls,
        "trip_reason": trip["reason"],
        "trip_consecutive": int(trip.get("consecutive", 0)),
        "completed": counts.completed,
        "n": n,
        "on_b": on_b,
        "a_attempts": len(a_attempts),
        "a_attempts_failed": sum(1 for a in a_attempts if a.error_class == "transient"),
        "a_requests_total": total_a,
        "jobs_with_a_attempts": sum(1 for r in results if any(a.provider == "a" for a in r.attempts)),
    }
    say(
        f"b. down ({mode}): A received {before_open} requests before its breaker opened "
        f"(bound minimum_calls {DOWN_BREAKER['minimum_calls']} + max_concurrency {limit} + probes "
        f"{probes} = {fig['bound']}; "
        f"window at trip: {trip_calls} calls, {trip['reason']}); {on_b}/{n} jobs completed on b/m; "
        f"{fig['jobs_with_a_attempts']} results record {len(a_attempts)} failed attempts on a "
        f"({total_a} requests reached A in all, probes during the outage included)"
    )
    return fig


def down_scenario(
    n: int = 1000,
    workers: int = 4,
    probe_latency_ms: float = 1000,
    say: Say = print,
    redis_url: str | None = None,
) -> dict[str, Any]:
    limit = 8
    sim = {
        "a": {"format": "openai", "latency": {"ms": probe_latency_ms}, "down": True},
        "b": {"format": "openai", "latency": {"ms": 20}},
    }
    providers = {
        "a": {"max_concurrency": limit, "models": ["m"]},
        "b": {"max_concurrency": 8, "models": ["m"]},
    }
    extra = {"breaker": DOWN_BREAKER, "routes": {"r": {"candidates": ["a/m", "b/m"]}}}
    n_probes = DOWN_BREAKER["half_open_probes"]
    with Stack(
        sim_routes=sim, providers=providers, workers=workers, extra_config=extra, redis_url=redis_url
    ) as st:
        assert st.sim is not None
        st.timed_batch(chat_lines(50, "b/m", "warm"))
        phases = [_down_phase(st, n, mode, limit, say) for mode in ("status", "disconnect")]

        # A comes back. Once the open wait is over, the next job's admission half-opens the breaker.
        st.sim.configure({"routes": {"a": {"down": False}}})
        snap = st.gate_snapshot("a")
        assert snap["state"] == "open", snap
        _poll(lambda: st.gate_snapshot("a")["next_change_at"] <= st.gate_snapshot("a")["now"], 30)
        st.sim.reset()
        gen0 = st.gate_snapshot("a")["generation"]
        sub = st.submit(chat_lines(n, "r", "back-"))

        def probing() -> dict[str, Any] | None:
            s = st.gate_snapshot("a")
            if s["state"] == "half_open" and s["probes_in_flight"] == n_probes:
                r = _route(st.sim.stats(), "a")
                if r["in_flight"] == n_probes:
                    return {"snap": s, "sim": r}
            return None

        seen = _poll(probing, 30, every=0.01)
        closed = _poll(lambda: st.gate_snapshot("a")["state"] == "closed", 30)
        counts = st.wait(sub.batch_id, 300)
        results = _all_results(st, sub.batch_id, n)
        trans = [ev for ev in st.transitions("a") if int(ev["gen"]) > gen0]
    half = seen["sim"]
    path = " -> ".join(f"{ev['to']}({ev['reason']})" for ev in trans)
    on_a = sum(1 for r in results if r.provider == "a")
    fig = {
        "phases": phases,
        "probe_max_in_flight": half["max_in_flight"],
        "probe_requests": half["requests"],
        "probes": n_probes,
        "closed": bool(closed),
        "transitions": [(ev["to"], ev["reason"]) for ev in trans],
        "recovered_completed": counts.completed,
        "recovered_on_a": on_a,
    }
    say(
        f"b. recovery: half-open admitted {half['requests']} requests to A, {half['max_in_flight']} "
        f"concurrently (half_open_probes {n_probes}); transitions {path}; "
        f"{counts.completed}/{n} jobs done, {on_a} on A after it closed"
    )
    return fig


# -- c. hidden capacity: adaptive concurrency -------------------------------------------------------------
def adaptive_scenario(
    n: int = 3000, workers: int = 4, capacity: int = 6, max_concurrency: int = 16, latency_ms: float = 50,
    say: Say = print, redis_url: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    sim = {"a": {"format": "openai", "latency": {"ms": latency_ms}, "capacity": capacity}}
    providers = {"a": {"max_concurrency": max_concurrency, "models": ["m"]}}
    with Stack(sim_routes=sim, providers=providers, workers=workers, redis_url=redis_url) as st:
        assert st.sim is not None and st.client is not None
        t0 = time.perf_counter()
        sub = st.submit(chat_lines(n, "a/m"))
        # the shared effective limit, sampled while the batch runs, with how far the batch had got
        samples: list[tuple[int, int]] = []
        while (c := st.run(st.client.counts(sub.batch_id))) is not None and c.done < n:
            samples.append((c.done, st.gate_snapshot("a")["effective_limit"]))
            time.sleep(0.05)
        secs = time.perf_counter() - t0
        counts = st.wait(sub.batch_id, 60)
        stats = _route(st.sim.stats(), "a")
        snap = st.gate_snapshot("a")
        results = _all_results(st, sub.batch_id, n)
    assert counts.completed == n, counts
    n429 = stats["by_status"].get("429", 0)
    share = n429 / stats["requests"]
    mean_ms = statistics.fmean(r.attempts[-1].latency_ms for r in results)
    rate = n / secs
    # Settled: the middle half of the batch, after the first descent from max_concurrency and before the
    # tail, where fewer jobs than the limit are left and successes grow it again (AIMD grows on any success).
    settled = [lim for done, lim in samples if n // 4 <= done <= 3 * n // 4] or [snap["effective_limit"]]
    fig = {
        "capacity": capacity,
        "effective_limit": snap["effective_limit"],
        "settled_mean_limit": statistics.fmean(settled),
        "settled_median_limit": statistics.median(settled),
        "settled_range": (min(settled), max(settled)),
        "limit_min": min([lim for _, lim in samples] + [snap["effective_limit"]]),
        "max_in_flight": stats["max_in_flight"],
        "requests": stats["requests"],
        "n429": n429,
        "share_429": share,
        "rate": rate,
        "ratio_vs_capacity": rate / (capacity / (mean_ms / 1000)),
    }
    say(
        f"c. adaptive: hidden capacity {capacity}, max_concurrency {max_concurrency}: effective limit "
        f"{snap['effective_limit']} at the end; over the middle half of the batch median "
        f"{fig['settled_median_limit']:g}, mean {fig['settled_mean_limit']:.1f}, "
        f"range {min(settled)}-{max(settled)}; provider max in flight {stats['max_in_flight']}; "
        f"{n429}/{stats['requests']} requests answered 429 = {share:.2%}; "
        f"{rate:.1f} jobs/s = {fig['ratio_vs_capacity']:.2f} of {capacity}/{mean_ms:.1f} ms"
    )
    return fig


# -- d. head-of-line: a slow provider's backlog does not slow a fast one ------------------------------------
def hol_scenario(
    n_b: int = 3000,
    backlog: int = 2000,
    workers: int = 4,
    say: Say = print,
    redis_url: str | None = None,
    measure_alone: bool = True,
    b_latency_ms: float = 20,
) -> dict[str, Any]:
    """Properties (every B line done while A's backlog is still pending, B's full concurrency reached
    with the backlog queued) and, with ``measure_alone``, B's throughput ratio with/without the backlog."""
    sim = {
        "a": {"format": "openai", "latency": {"ms": 1000}},
        "b": {"format": "openai", "latency": {"ms": b_latency_ms}},
    }
    providers = {
        "a": {"max_concurrency": 4, "models": ["m"]},
        "b": {"max_concurrency": 8, "models": ["m"]},
    }
    with Stack(sim_routes=sim, providers=providers, workers=workers, redis_url=redis_url) as st:
        assert st.sim is not None and st.client is not None
        st.timed_batch(chat_lines(200, "b/m", "warm"))
        alone_s = st.timed_batch(chat_lines(n_b, "b/m", "alone"))[1] if measure_alone else None
        slow = st.submit(chat_lines(backlog, "a/m", "slow"))
        # let every worker take its share of A's backlog: some wait in the worker, the rest are deferred
        _poll(lambda: _route(st.sim.stats(), "a")["max_in_flight"] >= 4, 60)  # type: ignore[union-attr]
        time.sleep(1)
        st.sim.reset()
        before = st.run(st.client.counts(slow.batch_id))
        b_counts, with_s, _ = st.timed_batch(chat_lines(n_b, "b/m", "with"))
        after = st.run(st.client.counts(slow.batch_id))
        stats = st.sim.stats()
        st.run(st.client.cancel(slow.batch_id))
    with_backlog = n_b / with_s
    fig: dict[str, Any] = {
        "b_completed": b_counts.completed,
        "b_failed": b_counts.failed,
        "b_max_in_flight": _route(stats, "b")["max_in_flight"],
        "b_requests": _route(stats, "b")["requests"],
        "b_with_backlog": with_backlog,
        "a_max_in_flight": _route(stats, "a")["max_in_flight"],
        "a_done_meanwhile": after.done - before.done,
        "a_pending": backlog - after.done,
    }
    ratio = ""
    if alone_s is not None:
        fig["b_alone"] = n_b / alone_s
        fig["ratio"] = with_backlog / fig["b_alone"]
        ratio = f"; B alone {fig['b_alone']:.1f} jobs/s; ratio {fig['ratio']:.3f}"
    say(
        f"d. head-of-line: with A's backlog of {backlog} queued ({fig['a_pending']} still pending, A at "
        f"{fig['a_max_in_flight']}/4 in flight) B did {b_counts.completed}/{n_b} at up to "
        f"{fig['b_max_in_flight']}/8 in flight, {with_backlog:.1f} jobs/s{ratio}"
    )
    return fig


# -- e. kill -9 the worker holding leases and a half-open probe -------------------------------------------
# Leases of a few seconds: reclaimed quickly, yet long enough that a starved live worker renews them
# (every third of a lease) and that the dead worker's slots are still held when inspected after the kill.
KILL_BREAKER = {
    "minimum_calls": 5,
    "window_seconds": 30,
    "wait_open_seconds": 1,
    "wait_open_jitter": 0,
    "half_open_probes": 1,
    "probe_lease_seconds": 5,
}


def kill9_scenario(n: int = 600, say: Say = print, redis_url: str | None = None) -> dict[str, Any]:
    sim = {
        "a": {"format": "openai", "latency": {"ms": 1500}, "down": True},
        # slow enough that B's 8 slots are all busy at once whatever the machine's load
        "b": {"format": "openai", "latency": {"ms": 200}},
    }
    providers = {
        "a": {"max_concurrency": 4, "models": ["m"]},
        "b": {"max_concurrency": 8, "models": ["m"]},
    }
    extra = {
        "breaker": KILL_BREAKER,
        "limits": {"lease_seconds": 5},
        # arq re-runs a killed worker's jobs once their in-progress key lapses (job_timeout + 10 s); a
        # shorter job_timeout makes arq cancel calls that a loaded machine slows past it
        "worker": {"job_timeout": 30},
        "routes": {"r": {"candidates": ["a/m", "b/m"]}},
    }
    with Stack(sim_routes=sim, providers=providers, workers=1, extra_config=extra, redis_url=redis_url) as st:
        assert st.sim is not None and st.client is not None
        st.timed_batch(chat_lines(40, "r", "trip"))  # A is down: its breaker opens, B serves
        assert st.gate_snapshot("a")["state"] == "open"
        st.sim.configure({"routes": {"a": {"down": False}}})
        _poll(lambda: (s := st.gate_snapshot("a"))["next_change_at"] <= s["now"], 60)
        sub = st.submit(chat_lines(n, "r", "k"))

        def holding() -> tuple[dict[str, Any], int] | None:
            # the probe is in flight on A and the worker's other jobs fill B's slots
            a, b = st.gate_snapshot("a"), st.gate_snapshot("b")["in_flight"]
            ok = a["state"] == "half_open" and a["probes_in_flight"] == 1 and b >= 6
            return (a, b) if ok else None

        a_held, b_held = _poll(holding, 90, every=0.005)
        st.kill_worker(0)  # the only worker: it holds the probe and every lease in flight
        killed_at = time.monotonic()
        # the dead worker's leases still count until they expire: nobody else may take them meanwhile
        dead = (st.gate_snapshot("a")["probes_in_flight"], st.gate_snapshot("b")["in_flight"])
        st.sim.reset()
        for _ in range(2):
            st.start_worker()
        closed = _poll(lambda: st.gate_snapshot("a")["state"] == "closed", 180)
        reclaimed_s = time.monotonic() - killed_at
        counts = st.wait(sub.batch_id, 300)
        finished_s = time.monotonic() - killed_at
        results = _all_results(st, sub.batch_id, n)
        k = st.settings.keys
        done_list = st.run(st.client.redis.llen(k.batch_done(sub.batch_id)))
        stored = st.run(st.client.redis.hlen(k.batch_results(sub.batch_id)))
        a_end, b_end = st.gate_snapshot("a"), st.gate_snapshot("b")
        stats = st.sim.stats()
        trans = [(ev["to"], ev["reason"]) for ev in st.transitions("a")]
    ids = [r.custom_id for r in results]
    once = (
        counts.completed == n
        and counts.failed == 0
        and done_list == n
        and stored == n
        and sorted(ids) == sorted(f"k{i}" for i in range(n))
    )
    fig = {
        "held_leases": a_held["in_flight"] + b_held,
        "held_probe": a_held["probes_in_flight"],
        "right_after_kill": dead,
        "closed": bool(closed),
        "reclaimed_s": reclaimed_s,
        "finished_s": finished_s,
        "completed": counts.completed,
        "done_list": done_list,
        "stored": stored,
        "exactly_once": once,
        "in_flight_end": (a_end["in_flight"], b_end["in_flight"], a_end["probes_in_flight"]),
        "b_max_in_flight_after": _route(stats, "b")["max_in_flight"],
        "a_requests_after": _route(stats, "a")["requests"],
        "transitions": trans,
    }
    say(
        f"e. kill -9: the worker held {fig['held_leases']} leases ({a_held['in_flight']} on A incl. the "
        f"half-open probe, {b_held} on B; right after the kill: probe {dead[0]}, B leases {dead[1]}); "
        f"then a new probe ran and the breaker closed in "
        f"{reclaimed_s:.1f}s (probe lease {KILL_BREAKER['probe_lease_seconds']}s); B reached "
        f"{fig['b_max_in_flight_after']}/8 in flight again; batch finished {finished_s:.1f}s after the kill: "
        f"{counts.completed}/{n} completed, {done_list} counted, {stored} stored, exactly once: {once}; "
        f"in flight at the end (A, B, probes) = {fig['in_flight_end']}"
    )
    return fig


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
