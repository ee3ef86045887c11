"""Fusebox beside its peers on one loopback mock provider, in one run.

The mock (an aiohttp server in its own process) answers OpenAI chat completions after a fixed
latency and records how many requests it holds at once. Its ceiling is concurrency / latency
(40 x 50 ms: 800 req/s). Measured against it, each on the same mock:

- a plain aiohttp client with 40 tasks (the Python floor), and the same split over as many processes
  as the most Fusebox workers measured (the floor for that many processes);
- LiteLLM Router ``acompletion`` with 40 tasks, if litellm is installed;
- Fusebox end to end: a batch submitted through ``FuseboxClient`` -> N ``fusebox worker``
  processes -> results, for each N in ``--workers`` (provider max_concurrency = the mock's 40).

CPU ms per request sums every process involved except the mock: the client process for the
peers; for Fusebox the workers, Redis (Valkey) and the submitter (this process). For Fusebox it
also prints the Redis commands and client reads (INFO stats: about one per round trip) per request,
and what the same fleet costs idle (CPU per worker and of Redis, and Redis commands, per second).

Usage: python bench/peers.py [-n 3000] [--workers 1,2,4] [--latency-ms 50] [--concurrency 40]
LiteLLM runs from its own venv (.venv-litellm, or PEERS_LITELLM_PYTHON); without one it is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the modules below import only the standard library at load time: peers.py also runs the mock and each
# peer (its hidden options), the LiteLLM peer under its own venv's Python
from bench.peers_clients import package_version, peer, run_aiohttp, run_litellm  # noqa: E402
from bench.peers_fleet import PERF_DIR, WORKER_OVERRIDES, fusebox  # noqa: E402
from bench.peers_mock import Mock, serve_mock  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--concurrency", type=int, default=40)
    ap.add_argument("--peers", default="aiohttp,litellm", help="comma list; empty for Fusebox only")
    ap.add_argument("--worker", action="append", default=[], help="[worker] setting KEY=VALUE (repeatable)")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    ap.add_argument(
        "--commands", action="store_true", help="also print Fusebox's Redis calls per request by command"
    )
    ap.add_argument("--perf", metavar="DIR", help="Linux perf on the workers (peers_fleet._perf)")
    ap.add_argument("--serve-mock", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_mock:
        serve_mock(args.serve_mock, args.latency_ms)
        return
    if args.peer:
        fn = {"aiohttp": run_aiohttp, "litellm": run_litellm}[args.peer]
        print(json.dumps(asyncio.run(fn(args.base, args.n, args.concurrency))))
        return

    from shared.embedded import EmbeddedValkey, free_port

    for kv in args.worker:
        k, _, v = kv.partition("=")
        WORKER_OVERRIDES[k] = json.loads(v)
    if args.perf:
        os.makedirs(args.perf, exist_ok=True)
        PERF_DIR[0] = os.path.abspath(args.perf)
    ceiling = args.concurrency / (args.latency_ms / 1000)
    server = None
    url, redis_pid = args.redis_url, None
    if not url:
        server = EmbeddedValkey(tempfile.mkdtemp(prefix="fbpeers-"), tcp_port=free_port(), persist=False)
        url = server.start()
        redis_pid = server.proc.pid if server.proc else None
    mock = Mock(args.latency_ms)
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        for kind in [k for k in args.peers.split(",") if k]:
            mock.reset()
            r = peer(kind, mock, args.n, args.concurrency)
            if r is not None:
                r["max_inflight"] = mock.stats()["max"]
                rows.append((kind if kind != "litellm" else "LiteLLM Router acompletion", r))
            elif kind == "litellm":
                print("  LiteLLM: not installed or failed; skipped", file=sys.stderr)
        split = max([int(x) for x in args.workers.split(",") if x] or [1])
        if "aiohttp" in args.peers.split(",") and split > 1:
            mock.reset()
            r = peer("aiohttp", mock, args.n, args.concurrency, split)
            if r is not None:
                r["max_inflight"] = mock.stats()["max"]
                rows.append((f"aiohttp, {split} processes", r))
        for w in [int(x) for x in args.workers.split(",") if x]:
            rows.append(
                (
                    f"Fusebox, {w} worker{'s' if w > 1 else ''}",
                    fusebox(mock, url, redis_pid, args.n, args.concurrency, w),
                )
            )
    finally:
        mock.close()
        if server is not None:
            server.wipe()

    print(
        f"\nmock: {args.concurrency} concurrent x {args.latency_ms:.0f} ms (ceiling {ceiling:.0f} req/s), "
        f"n={args.n}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        + (f", worker settings {WORKER_OVERRIDES}" if WORKER_OVERRIDES else "")
    )
    vers = (
        ["python " + sys.version.split()[0]]
        + [
            f"{p} {package_version(p)}"
            for p in ("arq", "redis", "hiredis", "httpx", "aiohttp", "msgspec", "uvloop")
        ]
        + [r["version"] for _, r in rows if "version" in r]
    )
    print("versions: " + ", ".join(vers))
    print(f"{'system':<28} {'req/s':>7} {'ceiling':>7} {'CPU ms/req':>10} {'max in-flight':>13}  detail")
    for name, r in rows:
        rps = args.n / r["secs"]
        detail = ""
        if "parts" in r:
            p = r["parts"]
            detail = ", ".join(f"{k} {v * 1000 / args.n:.2f}" for k, v in p.items())
            if r.get("first_call_ms") is not None:
                detail += f"; submit->first call {r['first_call_ms']:.0f} ms"
            if r.get("tail_s"):
                detail += "; 99%/all calls/done at {:.1f}/{:.1f}/{:.1f} s".format(*r["tail_s"])
            if r.get("mid_held") is not None:  # below the limit: slots idle between calls
                detail += f"; mean in flight mid-run {r['mid_held']:.1f}"
            if r.get("call_ms") is not None:
                detail += f"; calls took {r['call_ms']:.0f} ms"
            if len(r.get("per_worker") or ()) > 1:
                detail += "; calls per worker " + "/".join(str(c) for c in r["per_worker"])
            if "redis_per_req" in r:  # all clients' (workers and submitter), per request
                detail += "; Redis per req: {:.1f} commands, {:.1f} reads".format(*r["redis_per_req"])
        print(
            f"{name:<28} {rps:7.0f} {rps / ceiling:7.2f} {r['cpu'] * 1000 / args.n:10.2f} "
            f"{r['max_inflight']:>13}  {detail}"
        )
        if args.commands and r.get("by_command"):
            top = [f"{c} {v:.2f}" for c, v in r["by_command"].items() if v >= 0.05]
            print("  Redis calls per req by command: " + ", ".join(top))
        if r.get("idle"):
            idle = "  idle: {:.1f} CPU ms/s per worker, Redis {:.1f} CPU ms/s and {:.0f} commands/s"
            print(idle.format(*r["idle"]))
        if r.get("deferrals"):
            print("  deferrals per req: " + ", ".join(f"{k} {v:.2f}" for k, v in r["deferrals"].items()))
        if r["max_inflight"] > args.concurrency:
            print(f"  !! {name} exceeded the provider's limit of {args.concurrency}")


if __name__ == "__main__":
    main()
