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
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY_ENV = "FUSEBOX_PEERS_KEY"
MODEL = "bench-model"
WORKER_OVERRIDES: dict[str, Any] = {}
IDLE_S = 3.0  # the idle window measured after the warm-up
LITELLM_VENV = (
    ROOT / ".venv-litellm"
)  # python3 -m venv .venv-litellm && .venv-litellm/bin/pip install litellm


# -- the mock provider (runs in its own process) ------------------------------------------------------


def serve_mock(port: int, latency_ms: float) -> None:
    from aiohttp import web

    state = {"inflight": 0, "max": 0, "count": 0, "first": 0.0, "t99": 0.0, "last": 0.0}
    ends: list[float] = []  # when each call was answered, for the tail
    body = json.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        state["inflight"] += 1
        state["count"] += 1
        if not state["first"]:
            state["first"] = time.time()
        state["max"] = max(state["max"], state["inflight"])
        try:
            await asyncio.sleep(latency_ms / 1000)
        finally:
            state["inflight"] -= 1
            ends.append(time.time())
        return web.Response(body=body, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        if ends:
            state.update(t99=ends[int(len(ends) * 0.99) - 1 if len(ends) >= 100 else -1], last=ends[-1])
        return web.json_response(state)

    async def reset(request: web.Request) -> web.Response:
        state.update(max=0, count=0, first=0.0, t99=0.0, last=0.0)
        ends.clear()
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Mock:
    def __init__(self, latency_ms: float) -> None:
        from shared.embedded import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-mock", str(self.port), "--latency-ms", str(latency_ms)]
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _req(self, path: str, method: str = "GET") -> dict[str, Any]:
        import urllib.request

        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._req("/stats")

    def reset(self) -> None:
        self._req("/reset", "POST")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- peers (each in its own process, so imports and threads are its own) ---------------------------


def _payload(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}


async def run_aiohttp(base: str, n: int, conc: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        url = base + "/v1/chat/completions"
        headers = {"Authorization": "Bearer sk-peers"}
        todo = iter(range(n))

        async def one_task() -> None:
            for i in todo:
                async with s.post(url, json=_payload(i), headers=headers) as r:
                    await r.json()

        await asyncio.gather(*[one_task() for _ in range(conc)])  # warm-up: connections
        todo = iter(range(n))
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*[one_task() for _ in range(conc)])
        return {"secs": time.perf_counter() - t0, "cpu": time.process_time() - c0}


async def run_litellm(base: str, n: int, conc: int) -> dict[str, Any]:
    import litellm
    from litellm import Router

    litellm.telemetry = False
    router = Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": "openai/" + MODEL,
                    "api_base": base + "/v1",
                    "api_key": "sk-peers",
                },
            }
        ]
    )
    todo = iter(range(n))

    async def one_task() -> None:
        for i in todo:
            await router.acompletion(model=MODEL, messages=_payload(i)["messages"])

    todo = iter(range(conc))
    await asyncio.gather(*[one_task() for _ in range(conc)])
    todo = iter(range(n))
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*[one_task() for _ in range(conc)])
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"secs": secs, "cpu": cpu, "version": "litellm " + _version("litellm")}


def peer(kind: str, mock: Mock, n: int, conc: int, procs: int = 1) -> dict[str, Any] | None:
    """``procs`` > 1: that many client processes at once, each with its share of the tasks and requests
    (the floor for as many processes as Fusebox has workers: each process's event loop then handles a
    share of the calls, and wakes up for fewer of them at a time)."""
    python = sys.executable
    if kind == "litellm":  # its own venv keeps litellm's pins out of Fusebox's
        python = os.environ.get("PEERS_LITELLM_PYTHON") or str(LITELLM_VENV / "bin" / "python")
        if not Path(python).exists():
            return None
    cmd = [python, __file__, "--peer", kind, "--base", mock.base, "-n", str(n // procs)]
    children = [
        subprocess.Popen(
            [*cmd, "--concurrency", str(conc // procs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    outs = [c.communicate(timeout=900) for c in children]
    if any(c.returncode != 0 for c in children):
        print(f"  {kind}: failed: {' '.join(e for _, e in outs).strip()[-400:]}", file=sys.stderr)
        return None
    got = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    return {**got[0], "secs": max(g["secs"] for g in got), "cpu": sum(g["cpu"] for g in got)}


# -- Fusebox -------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def redis_counts(url: str) -> tuple[int, int, dict[str, int]]:
    """(commands processed, client reads, calls by command): reads are close to the round trips
    clients made; commands and calls by command include those run inside Lua scripts."""
    import redis

    with redis.Redis.from_url(url) as r:
        st = r.info("stats")
        cs = r.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in cs.items()}
    return int(st["total_commands_processed"]), int(st.get("total_reads_processed", 0)), calls


def fusebox(
    mock: Mock, redis_url: str, redis_pid: int | None, n: int, conc: int, workers: int
) -> dict[str, Any]:
    from bench.harness import chat_lines, to_toml
    from producer.client import FuseboxClient
    from shared.config import FileConfig, Settings
    from shared.redis_conn import connect

    tmp = Path(tempfile.mkdtemp(prefix="fusebox-peers-"))
    ns = "fbpeers-" + uuid.uuid4().hex[:8]
    cfg = {
        "worker": {"max_jobs": 200, "poll_delay": 0.01, **WORKER_OVERRIDES},
        "providers": {
            "mock": {
                "type": "openai",
                "base_url": mock.base + "/v1",
                "api_key_env": KEY_ENV,
                "max_concurrency": conc,
            }
        },
    }
    (tmp / "fusebox.toml").write_text(to_toml(cfg) + "\n")
    settings = Settings(redis_url=redis_url, namespace=ns).with_file(FileConfig.model_validate(cfg))
    env = dict(
        os.environ, REDIS_URL=redis_url, FUSEBOX_NAMESPACE=ns, FUSEBOX_CONFIG=str(tmp / "fusebox.toml")
    )
    env[KEY_ENV] = "sk-peers-" + "x" * 16
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    from shared.embedded import free_port

    ports = [free_port() for _ in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "producer.cli", "worker", "--metrics-port", str(ports[i])],
            env=env,
            stdout=open(tmp / f"worker-{i}.log", "wb"),  # open while the worker lives
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    loop = asyncio.new_event_loop()
    client = FuseboxClient(connect(redis_url, settings.keys), settings)
    try:

        async def batch(lines: list[str]) -> tuple[float, float, Any]:
            t_submit = time.time()
            t0 = time.perf_counter()
            sub = await client.submit_batch(lines)
            counts = await client.wait_batch(sub.batch_id, poll=0.02, timeout=600)
            return t_submit, time.perf_counter() - t0, counts

        loop.run_until_complete(batch(chat_lines(conc * 4, "mock/" + MODEL, "w")))  # warm-up: all ready
        pids = [p.pid for p in procs] + ([redis_pid] if redis_pid else [])
        # idle: what the waiting fleet costs (its polls), once its workers have settled into idling
        time.sleep(1.0)
        idle0, (icmds0, _, _) = {pid: cpu_s(pid) for pid in pids}, redis_counts(redis_url)
        time.sleep(IDLE_S)
        idle = {pid: cpu_s(pid) - c for pid, c in idle0.items()}
        idle_cmds = redis_counts(redis_url)[0] - icmds0
        mock.reset()
        cpu0 = {pid: cpu_s(pid) for pid in pids}
        seen0 = [call_seconds(scrape(port)) for port in ports]
        cmds0, reads0, calls0 = redis_counts(redis_url)
        self0 = time.process_time()
        lines = chat_lines(n, "mock/" + MODEL, "m")
        t_submit, secs, counts = loop.run_until_complete(batch(lines))
        cpu_self = time.process_time() - self0
        cpu = {pid: cpu_s(pid) - c for pid, c in cpu0.items()}
        cmds1, reads1, calls1 = redis_counts(redis_url)
        by_cmd = {c: (k - calls0.get(c, 0)) / n for c, k in calls1.items() if k > calls0.get(c, 0)}
        st = mock.stats()
        texts = [scrape(port) for port in ports]
        deferrals = sum((deferrals_by_reason(t) for t in texts), Counter[str]())
        seen = [call_seconds(t) for t in texts]
        call_s = sum(s for s, _ in seen) - sum(s for s, _ in seen0)
        call_n = sum(c for _, c in seen) - sum(c for _, c in seen0)
        assert counts.completed == n, f"fusebox completed {counts} of {n}"
        worker_cpu = sum(cpu[p.pid] for p in procs)
        redis_cpu = cpu.get(redis_pid, 0.0) if redis_pid else 0.0
        return {
            "secs": secs,
            "cpu": worker_cpu + redis_cpu + cpu_self,
            "parts": {"workers": worker_cpu, "redis": redis_cpu, "submitter": cpu_self},
            "max_inflight": st["max"],
            "calls": st["count"],
            "first_call_ms": (st["first"] - t_submit) * 1000 if st["first"] else None,
            # the tail: 99% of the calls answered, the last answered, the batch seen complete (from submit)
            "tail_s": (st["t99"] - t_submit, st["last"] - t_submit, secs),
            "redis_per_req": ((cmds1 - cmds0) / n, (reads1 - reads0) / n),
            "deferrals": {k: v / n for k, v in deferrals.most_common()},
            "call_ms": call_s * 1000 / call_n if call_n else None,
            "by_command": dict(sorted(by_cmd.items(), key=lambda kv: -kv[1])),
            # per idle second: CPU ms of each worker (mean), of Redis, and Redis commands
            "idle": (
                sum(idle[p.pid] for p in procs) * 1000 / IDLE_S / workers,
                idle.get(redis_pid, 0.0) * 1000 / IDLE_S if redis_pid else 0.0,
                idle_cmds / IDLE_S,
            ),
        }
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def deferrals_by_reason(text: str) -> Counter[str]:
    """A worker's job deferrals so far (re-queued to arq instead of run now), by reason."""
    got: Counter[str] = Counter()
    for m in re.finditer(r'^fusebox_job_deferrals_total\{reason="([^"]*)"\} (\S+)$', text, re.M):
        got[m.group(1)] += int(float(m.group(2)))
    return got


def call_seconds(text: str) -> tuple[float, float]:
    """(seconds, calls) a worker's provider calls took so far, as its workers saw them: above the mock's
    latency when a worker's event loop (or the mock's) is late."""
    total = count = 0.0
    for m in re.finditer(
        r"^fusebox_provider_request_duration_seconds_(sum|count)\{[^}]*\} (\S+)$", text, re.M
    ):
        if m.group(1) == "sum":
            total += float(m.group(2))
        else:
            count += float(m.group(2))
    return total, count


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


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
        + [f"{p} {_version(p)}" for p in ("arq", "redis", "hiredis", "httpx", "aiohttp", "msgspec", "uvloop")]
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
            if r.get("call_ms") is not None:
                detail += f"; calls took {r['call_ms']:.0f} ms"
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
