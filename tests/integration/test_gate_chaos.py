"""Chaos through real worker processes and the simulator over HTTP: provider A answers 20% of calls
with 500s and 429s, fallback B goes hard down for 30 s mid-batch, the breaker window rolls every
few seconds. Every line is answered exactly once, no worker logs a traceback, attempts per line stay
bounded, and B's breaker opens within minimum_calls + its limit requests, then closes again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from bench.harness import Stack, chat_lines
from shared.config import RetryConfig

pytestmark = pytest.mark.slow

# A serves at most 4 / 150 ms = 27 lines/s: more lines than A alone can serve during the outage, so
# lines still need B after it (its probes and reclosing are driven by them).
N = 1000
OUTAGE_S = 30.0
B_LIMIT = 4
BREAKER = {
    "window_seconds": 2,  # rolls many times during the run (the "-0" defect hit on each roll)
    "minimum_calls": 10,
    "consecutive_failures": 5,
    "wait_open_seconds": 1.5,
    "wait_open_max_seconds": 3,
    "wait_open_jitter": 0.1,
    "half_open_probes": 2,
}


def _poll(check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(every)


def _first_open(st: Stack, scope: str, after_gen: int) -> dict[str, Any] | None:
    for ev in st.transitions(scope):
        if ev["to"] == "open" and int(ev["gen"]) > after_gen:
            return ev
    return None


def test_chaos_every_line_answered_once_and_the_down_fallback_is_cut_off_then_recloses(redis_url: str):
    sim = {
        # A: at most 4 x 150 ms in flight, so the batch lasts on any machine; 15% 500s, 5% 429s
        "a": {"format": "openai", "latency": {"ms": 150}, "errors": {"500": 0.15, "429": 0.05}},
        "b": {"format": "openai", "latency": {"ms": 20}},
    }
    providers = {
        "a": {"max_concurrency": 4, "models": ["m"]},
        "b": {"max_concurrency": B_LIMIT, "models": ["m"]},
    }
    extra: dict[str, Any] = {
        "breaker": BREAKER,
        "limits": {"adaptive": False},  # random 429s say nothing about capacity here
        "retry": {"max_attempts": 1, "backoff_base": 0.01},  # a failure on A moves the line to B at once
        "routes": {"r": {"candidates": ["a/m", "b/m"]}},
    }
    with Stack(sim_routes=sim, providers=providers, workers=4, extra_config=extra, redis_url=redis_url) as st:
        assert st.sim is not None and st.client is not None
        client = st.client
        sub = st.submit(chat_lines(N, "r"))
        _poll(lambda: st.run(client.counts(sub.batch_id)).done >= 60, 60)

        # B goes hard down mid-batch
        st.sim.reset()
        gen0 = st.gate_snapshot("b")["generation"]
        st.sim.configure({"routes": {"b": {"down": True}}})
        down_at = time.monotonic()
        trip = _poll(lambda: _first_open(st, "b", gen0), 20)
        time.sleep(0.3)  # calls admitted before the trip land
        # calls that failed on B while it was down, those in flight when it went down included: no success
        # lands after the outage begins to restart the count of failures in a row
        b_before_open = st.sim.stats()["routes"]["b"]["outage_rejections"]
        # on a busy machine the open wait (>= 1.35 s) may have ended by now: allow for its probes
        probes = st.probes_since("b", int(trip["gen"]), BREAKER["half_open_probes"])
        assert 0 < b_before_open <= BREAKER["minimum_calls"] + B_LIMIT + probes, (b_before_open, probes, trip)
        assert st.run(client.counts(sub.batch_id)).failed == 0  # lines wait for B, none fails

        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        st.sim.configure({"routes": {"b": {"down": False}}})
        _poll(lambda: st.gate_snapshot("b")["state"] == "closed", 30)  # lines waiting for B drive the probes
        counts = st.wait(sub.batch_id, 60)
        results = st.results(sub.batch_id)
        done_len = st.run(client.redis.llen(st.settings.keys.batch_done(sub.batch_id)))
        b_trans = [(ev["to"], ev["reason"]) for ev in st.transitions("b") if int(ev["gen"]) > gen0]
        logs = {p.name: p.read_text(errors="replace") for p in sorted(st.tmp.glob("worker-*.log"))}

    # every line answered exactly once, none failed for the transient errors or the outage
    assert (counts.status, counts.total, counts.completed, counts.failed) == ("completed", N, N, 0), counts
    assert done_len == N
    assert [r.custom_id if r else None for r in results] == [f"c{i}" for i in range(N)]
    assert all(r is not None and r.ok and r.provider in ("a", "b") for r in results)
    # bounded attempts per line (the line budget; in practice a handful)
    budget = RetryConfig().line_max_attempts
    assert max(sum(1 for a in r.attempts if a.provider) for r in results if r) <= budget
    # B was cut off by failures in a row, probed while down, and closed once back
    assert b_trans[0] == ("open", "consecutive_failures"), b_trans
    assert b_trans[-1] == ("closed", "probes_succeeded"), b_trans
    assert len(logs) == 4
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
