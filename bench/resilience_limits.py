"""bench/resilience.py's scenarios under load, with every provider up: (a) the fleet-wide concurrency limit
and the throughput it allows, (c) adaptive concurrency against a hidden capacity, (d) head-of-line:
a slow provider's backlog does not slow a fast one."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.harness import Stack, chat_lines
from bench.resilience_support import Say, all_results, poll, route


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
        stats = route(st.sim.stats(), "a")
        results = all_results(st, bid, n)
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
        stats = route(st.sim.stats(), "a")
        snap = st.gate_snapshot("a")
        results = all_results(st, sub.batch_id, n)
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
        poll(lambda: route(st.sim.stats(), "a")["max_in_flight"] >= 4, 60)  # type: ignore[union-attr]
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
        "b_max_in_flight": route(stats, "b")["max_in_flight"],
        "b_requests": route(stats, "b")["requests"],
        "b_with_backlog": with_backlog,
        "a_max_in_flight": route(stats, "a")["max_in_flight"],
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
