"""Batch benchmark: submit time for a 100k-line file, and end-to-end throughput vs the providers' ceiling.

1. submit: validate and enqueue N_SUBMIT lines (default 100,000) from a JSONL file, streamed and
   pipelined, no workers running; reports lines/s and seconds.
2. end to end: N lines through a route over two simulated providers (real HTTP to the simulator,
   OpenAI wire format) with worker processes; the best possible throughput is the providers'
   ceiling sum(limit / latency); reports achieved / ceiling.

Usage: python bench/batch.py [--submit 100000] [-n 10000] [--workers 2]
Last line: ``submit_s: X submit_lines_per_s: Y e2e_ratio: Z``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Stack, chat_lines

PROVIDERS = {  # name: (max_concurrency, latency_ms)
    "fast": (16, 100),
    "slow": (16, 200),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submit", type=int, default=100_000, help="lines for the submit benchmark")
    ap.add_argument("-n", type=int, default=10_000, help="lines for the end-to-end run")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    sim_routes = {name: {"format": "openai", "latency": {"ms": lat}} for name, (_, lat) in PROVIDERS.items()}
    providers = {name: {"max_concurrency": conc, "models": ["m"]} for name, (conc, _) in PROVIDERS.items()}
    extra = {"routes": {"both": {"candidates": [f"{p}/m" for p in PROVIDERS], "strategy": "priority"}}}
    ceiling = sum(conc / (lat / 1000) for conc, lat in PROVIDERS.values())

    with Stack(sim_routes=sim_routes, providers=providers, workers=0, extra_config=extra) as stack:
        # 1. submit a 100k-line file: streamed from disk, validated, enqueued in pipelined chunks
        path = Path(tempfile.mkdtemp()) / "batch.jsonl"
        with path.open("w") as f:
            for line in chat_lines(args.submit, "both", "s"):
                f.write(line + "\n")
        t0 = time.perf_counter()
        with path.open("rb") as f:
            sub = stack.submit(f)
        submit_s = time.perf_counter() - t0
        assert sub.queued == args.submit, sub
        print(f"submit: {args.submit} lines in {submit_s:.2f}s = {args.submit / submit_s:,.0f} lines/s")
        stack.run(stack.client.cancel(sub.batch_id))  # type: ignore[union-attr]

        # 2. end to end through worker processes
        for _ in range(args.workers):
            stack.start_worker()
        stack.timed_batch(chat_lines(200, "both", "warm"))
        stack.sim.reset()  # type: ignore[union-attr]
        counts, secs, _ = stack.timed_batch(chat_lines(args.n, "both", "e"))
        stats = stack.sim.stats()  # type: ignore[union-attr]
    rate = counts.completed / secs
    print(f"end to end: {counts.completed}/{counts.total} ok in {secs:.1f}s = {rate:.0f} req/s")
    for name, (conc, lat) in PROVIDERS.items():
        r = stats["routes"][name] if "routes" in stats else stats[name]
        print(f"  {name}: limit {conc} x {lat} ms -> {conc / lat * 1000:.0f}/s; served {r['requests']}, "
              f"max in flight {r['max_in_flight']}")  # fmt: skip
    print(f"ceiling sum(limit/latency) = {ceiling:.0f}/s; achieved / ceiling = {rate / ceiling:.2f}")
    per_s = args.submit / submit_s
    print(f"submit_s: {submit_s:.2f} submit_lines_per_s: {per_s:.0f} e2e_ratio: {rate / ceiling:.2f}")


if __name__ == "__main__":
    main()
