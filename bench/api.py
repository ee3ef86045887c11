"""HTTP API benchmarks: upload + create throughput and API memory for a 100k-line batch; the latency a
synchronous chat completion through the queue adds over the provider's own (p50, p99, 50 clients).

    .venv/bin/python bench/api.py [--lines 100000] [--requests 2000] [--concurrency 50]

Everything runs on this machine: the bundled Valkey, the simulator (an OpenAI-format provider with a
fixed latency), `fusebox worker` processes and one `fusebox api` process (uvicorn, 1 worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import SIM_KEY_ENV, Stack
from shared.embedded import free_port
from shared.tenants import create_key


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of ``pid`` in MB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def write_batch(path: Path, n: int, pad: int) -> int:
    filler = "x" * pad  # lines of ~1 KB, like OpenAI's sizing (100k lines ~ 100 MB)
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "prov/m", "messages": [{"role": "user", "content": f"question {i} {filler}"}]}
            f.write(
                json.dumps(
                    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
            )
            f.write("\n")
    return path.stat().st_size


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def timed_calls(url: str, headers: dict[str, str], body: dict, n: int, conc: int) -> list[float]:
    lat: list[float] = []
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        left = n

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                r = await c.post(url, headers=headers, json=body)
                lat.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()

        await asyncio.gather(*(client() for _ in range(conc)))
    return lat


def start_api(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    log = open(stack.tmp / "api.log", "wb")
    cmd = [sys.executable, "-m", "producer.cli", "api", "--port", str(port), "--log-level", "warning"]
    p = subprocess.Popen(cmd, env=stack.env(), stdout=log, stderr=log)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"fusebox api did not start; see {stack.tmp / 'api.log'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--pad", type=int, default=960, help="filler bytes per line")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--latency-ms", type=float, default=50.0, help="the provider's own latency")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--poll-delay", type=float, default=0.01, help="worker poll_delay (s)")
    args = ap.parse_args()

    sim = {"prov": {"format": "openai", "latency": {"ms": args.latency_ms}}}
    providers = {"prov": {"max_concurrency": 4 * args.concurrency, "models": ["m"]}}
    extra = {
        "worker": {"max_jobs": 200, "poll_delay": args.poll_delay},
        "api": {"max_file_lines": max(100_000, args.lines)},
    }
    with Stack(sim_routes=sim, providers=providers, workers=0, extra_config=extra) as stack:
        port = free_port()
        api = start_api(stack, port)
        try:
            key = stack.run(create_key(stack.client.redis, stack.settings.keys, "bench"))  # type: ignore[union-attr]
            h = {"Authorization": f"Bearer {key}"}
            base = f"http://127.0.0.1:{port}/v1"

            # 1. upload + create: the file streams to Redis, then is validated and enqueued in the background
            path = Path(tempfile.mkdtemp()) / "batch.jsonl"
            size = write_batch(path, args.lines, args.pad)
            print(f"rss before upload: {rss_mb(api.pid)[0]:.0f} MB")
            with httpx.Client(base_url=base, headers=h, timeout=600) as c:
                t0 = time.perf_counter()
                with path.open("rb") as f:
                    r = c.post("/files", files={"file": ("batch.jsonl", f)}, data={"purpose": "batch"})
                r.raise_for_status()
                t_up = time.perf_counter() - t0
                t1 = time.perf_counter()
                b = c.post(
                    "/batches",
                    json={
                        "input_file_id": r.json()["id"],
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    },
                ).json()
                t_create_call = time.perf_counter() - t1
                while (b := c.get(f"/batches/{b['id']}").json())["status"] == "validating":
                    time.sleep(0.02)
                t_val = time.perf_counter() - t1
                cur, peak = rss_mb(api.pid)
                c.post(f"/batches/{b['id']}/cancel")
            n = args.lines
            print(
                f"upload: {n} lines, {size / 1e6:.0f} MB in {t_up:.2f}s = {n / t_up:,.0f} lines/s "
                f"({size / 1e6 / t_up:.0f} MB/s)"
            )
            print(
                f"create: the call answered in {t_create_call * 1000:.0f} ms ('validating'); validated and "
                f"enqueued in {t_val:.2f}s = {n / t_val:,.0f} lines/s; status {b['status']}"
            )
            print(f"upload+create: {n / (t_up + t_val):,.0f} lines/s end to end")
            print(f"api rss: {cur:.0f} MB now, {peak:.0f} MB peak")

            # 2. synchronous chat completions through the queue vs the provider itself
            for _ in range(args.workers):
                stack.start_worker()
            time.sleep(2)
            body = {"model": "prov/m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
            direct_url = stack.sim.url_for("prov") + "/chat/completions"  # type: ignore[union-attr]
            direct_h = {"Authorization": f"Bearer {stack.env()[SIM_KEY_ENV]}"}
            stack.run(timed_calls(direct_url, direct_h, body, 200, args.concurrency))  # warm up
            stack.run(timed_calls(base + "/chat/completions", h, body, 200, args.concurrency))
            direct = stack.run(timed_calls(direct_url, direct_h, body, args.requests, args.concurrency))
            via = stack.run(timed_calls(base + "/chat/completions", h, body, args.requests, args.concurrency))
            print(
                f"\nsync chat, {args.requests} requests, {args.concurrency} concurrent clients, "
                f"provider latency {args.latency_ms:.0f} ms, {args.workers} workers:"
            )
            for name, xs in (("provider direct", direct), ("through fusebox api", via)):
                print(
                    f"  {name:<20} p50 {pct(xs, 50):7.1f} ms  p99 {pct(xs, 99):7.1f} ms  "
                    f"mean {statistics.mean(xs):7.1f} ms"
                )
            print(
                f"  added latency        p50 {pct(via, 50) - pct(direct, 50):7.1f} ms  "
                f"p99 {pct(via, 99) - pct(direct, 99):7.1f} ms"
            )
        finally:
            api.terminate()
            api.wait(10)


if __name__ == "__main__":
    main()
