"""Two tenants' batches on one saturated provider: do they progress at their configured weights?

A simulated provider (its own process) with a fixed latency sits behind a Fusebox provider entry
whose max_concurrency is far below what the workers could run, so the provider is the bottleneck
and both batches wait for it. Tenant A has weight ``--weights``[0], tenant B ``--weights``[1]; both
batches are queued before the worker processes start, so both are backlogged from the first line.
Completed lines per tenant are sampled; the measured window runs from ``--skip`` of the lines done
until the first batch has ``--until`` of its lines done (both tenants still backlogged throughout).

Not a timed test: it prints counts and the ratio against the weights (issue 12 wants within 10%).

Usage: python bench/fairness.py [-n 3000] [--weights 3,1] [--workers 2] [--latency-ms 30]
       [--concurrency 8] [--window 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Stack, chat_lines  # noqa: E402
from shared import tenants  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3000, help="lines per tenant")
    ap.add_argument("--weights", default="3,1", help="tenant A's and tenant B's weight")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="the provider's latency per call")
    ap.add_argument("--concurrency", type=int, default=8, help="the provider's max_concurrency")
    ap.add_argument("--window", type=int, default=50, help="[worker] lane_window (lines out per weight)")
    ap.add_argument("--skip", type=float, default=0.1, help="start measuring after this share is done")
    ap.add_argument("--until", type=float, default=0.9, help="stop when a batch has this share done")
    args = ap.parse_args()
    wa, wb = (int(x) for x in args.weights.split(","))

    sim = {"a": {"format": "openai", "latency": {"ms": args.latency_ms}}}
    providers = {"a": {"max_concurrency": args.concurrency, "models": ["m"]}}
    extra = {
        "routes": {"r": {"candidates": ["a/m"]}},
        "worker": {"max_jobs": 200, "poll_delay": 0.01, "lane_window": args.window},
    }
    with Stack(sim_routes=sim, providers=providers, workers=0, extra_config=extra) as st:
        assert st.client is not None
        r, k = st.client.redis, st.settings.keys
        st.run(tenants.update_settings(r, k, "tenant-a", {"weight": wa}, actor="bench"))
        st.run(tenants.update_settings(r, k, "tenant-b", {"weight": wb}, actor="bench"))
        a = st.submit(chat_lines(args.n, "r", prefix="a"), tenant="tenant-a").batch_id
        b = st.submit(chat_lines(args.n, "r", prefix="b"), tenant="tenant-b").batch_id
        for _ in range(args.workers):
            st.start_worker()
        t0 = time.perf_counter()
        samples: list[tuple[float, int, int]] = []
        start: tuple[float, int, int] | None = None
        end: tuple[float, int, int] | None = None
        while end is None:
            ca, cb = st.run(st.client.counts(a)), st.run(st.client.counts(b))
            assert ca is not None and cb is not None
            s = (time.perf_counter() - t0, ca.done, cb.done)
            samples.append(s)
            if start is None and ca.done + cb.done >= args.skip * 2 * args.n:
                start = s
            if start is not None and max(ca.done, cb.done) >= args.until * args.n:
                end = s
            if s[0] > 900:
                raise SystemExit(f"no progress: {s}")
            time.sleep(0.2)
        assert start is not None
        da, db = end[1] - start[1], end[2] - start[2]
        ratio = da / max(1, db)
        want = wa / wb
        print(f"provider: max_concurrency {args.concurrency}, latency {args.latency_ms:g} ms (saturated)")
        print(f"workers: {args.workers} processes, lane_window {args.window}; weights A:B = {wa}:{wb}")
        print(f"window: {start[0]:.1f}s .. {end[0]:.1f}s (both tenants backlogged)")
        print(f"  tenant A completed {da} lines ({start[1]} -> {end[1]})")
        print(f"  tenant B completed {db} lines ({start[2]} -> {end[2]})")
        share = da / max(1, da + db)
        print(
            f"ratio A/B {ratio:.3f} vs configured {want:.3f}: off by {abs(ratio / want - 1) * 100:.1f}%; "
            f"A's share {share:.3f} vs {wa / (wa + wb):.3f}"
        )
        print("progress (s, A done, B done):")
        step = max(1, len(samples) // 10)
        for t, x, y in samples[::step]:
            print(f"  {t:6.1f} {x:6d} {y:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
