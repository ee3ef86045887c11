"""bench/resilience.py's failure scenarios: (b) a provider hard down (its breaker opens, jobs fall back,
exactly ``half_open_probes`` probes close it again) and (e) ``kill -9`` of the worker holding leases and a
half-open probe (reclaimed by lease expiry, every line answered exactly once)."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Stack, chat_lines
from bench.resilience_support import Say, all_results, poll, route

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
    trip = poll(lambda: _first_open(st, gen0), 60)
    # Calls admitted before the trip may still be on their way to the simulator: let them land. If
    # the open wait ended meanwhile (a busy machine), the probes admitted since are allowed for.
    time.sleep(0.3)
    before_open = route(st.sim.stats(), "a")["requests"]
    probes = st.probes_since("a", int(trip["gen"]), DOWN_BREAKER["half_open_probes"])
    counts = st.wait(sub.batch_id, 300)
    results = all_results(st, sub.batch_id, n)
    total_a = route(st.sim.stats(), "a")["requests"]
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
        poll(lambda: st.gate_snapshot("a")["next_change_at"] <= st.gate_snapshot("a")["now"], 30)
        st.sim.reset()
        gen0 = st.gate_snapshot("a")["generation"]
        sub = st.submit(chat_lines(n, "r", "back-"))

        def probing() -> dict[str, Any] | None:
            s = st.gate_snapshot("a")
            if s["state"] == "half_open" and s["probes_in_flight"] == n_probes:
                r = route(st.sim.stats(), "a")
                if r["in_flight"] == n_probes:
                    return {"snap": s, "sim": r}
            return None

        seen = poll(probing, 30, every=0.01)
        closed = poll(lambda: st.gate_snapshot("a")["state"] == "closed", 30)
        counts = st.wait(sub.batch_id, 300)
        results = all_results(st, sub.batch_id, n)
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
        poll(lambda: (s := st.gate_snapshot("a"))["next_change_at"] <= s["now"], 60)
        sub = st.submit(chat_lines(n, "r", "k"))

        def holding() -> tuple[dict[str, Any], int] | None:
            # the probe is in flight on A and the worker's other jobs fill B's slots
            a, b = st.gate_snapshot("a"), st.gate_snapshot("b")["in_flight"]
            ok = a["state"] == "half_open" and a["probes_in_flight"] == 1 and b >= 6
            return (a, b) if ok else None

        a_held, b_held = poll(holding, 90, every=0.005)
        st.kill_worker(0)  # the only worker: it holds the probe and every lease in flight
        killed_at = time.monotonic()
        # the dead worker's leases still count until they expire: nobody else may take them meanwhile
        dead = (st.gate_snapshot("a")["probes_in_flight"], st.gate_snapshot("b")["in_flight"])
        st.sim.reset()
        for _ in range(2):
            st.start_worker()
        closed = poll(lambda: st.gate_snapshot("a")["state"] == "closed", 180)
        reclaimed_s = time.monotonic() - killed_at
        counts = st.wait(sub.batch_id, 300)
        finished_s = time.monotonic() - killed_at
        results = all_results(st, sub.batch_id, n)
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
        "b_max_in_flight_after": route(stats, "b")["max_in_flight"],
        "a_requests_after": route(stats, "a")["requests"],
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
