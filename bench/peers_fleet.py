"""bench/peers.py's Fusebox run: a batch submitted through ``FuseboxClient`` -> N ``fusebox worker``
processes -> results against the mock, with the CPU of every process involved (workers, Redis, the
submitter), Redis commands and reads per request, the workers' metrics, and the fleet's idle cost."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.peers_mock import MODEL, Mock

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY_ENV = "FUSEBOX_PEERS_KEY"
WORKER_OVERRIDES: dict[str, Any] = {}  # [worker] settings from peers.py's --worker KEY=VALUE
PERF_DIR: list[str | None] = [None]  # peers.py's --perf DIR
IDLE_S = 3.0  # the idle window measured after the warm-up


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
        perfs = _perf(procs, PERF_DIR[0])
        t_submit, secs, counts = loop.run_until_complete(batch(lines))
        for p in perfs:
            p.send_signal(signal.SIGINT)
        for p in perfs:
            p.wait(60)
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
            "mid_held": st.get("mid_held"),
            "calls": st["count"],
            "first_call_ms": (st["first"] - t_submit) * 1000 if st["first"] else None,
            # the tail: 99% of the calls answered, the last answered, the batch seen complete (from submit)
            "tail_s": (st["t99"] - t_submit, st["last"] - t_submit, secs),
            "redis_per_req": ((cmds1 - cmds0) / n, (reads1 - reads0) / n),
            "deferrals": {k: v / n for k, v in deferrals.most_common()},
            "call_ms": call_s * 1000 / call_n if call_n else None,
            # how the calls split over the workers: a fleet's throughput drops when a few hold most slots
            "per_worker": [round(c - c0) for (_, c), (_, c0) in zip(seen, seen0, strict=True)],
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


def _perf(procs: list[subprocess.Popen[bytes]], out: str | None) -> list[subprocess.Popen[bytes]]:
    """With ``--perf DIR``: Linux perf on the workers for the measured batch, on-CPU only (software
    clock, so it works in a VM without hardware counters): ``statN.txt`` (CPU, context switches,
    syscalls) and ``recN.data`` (``perf report -i DIR/recN.data --sort dso,sym``)."""
    if not out:
        return []
    pids = ",".join(str(p.pid) for p in procs)
    n = len(procs)
    events = "task-clock,context-switches,raw_syscalls:sys_enter"
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    perfs = [
        subprocess.Popen(["perf", "stat", "-e", events, "-p", pids, "-o", f"{out}/stat{n}.txt"], **quiet),
        subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "999", "-p", pids, "-o", f"{out}/rec{n}.data"],
            **quiet,
        ),
    ]
    time.sleep(0.3)  # attached before the batch starts
    return perfs


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
