"""Batches at scale through real worker processes, including a worker killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from producer.client import FuseboxClient
from shared import usage
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import batch_lines, stop_processes

pytestmark = pytest.mark.slow

CONFIG = """
[worker]
max_jobs = 100
poll_delay = 0.01
job_timeout = 2     # arq re-runs a killed worker's jobs after job_timeout + 10 s
[simulated]
latency_ms = {latency}
"""


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_done(client: FuseboxClient, batch_id: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = await client.counts(batch_id)
        if c is not None and c.done >= at_least:
            return c.done
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} stuck below {at_least}: {await client.counts(batch_id)}")


async def _check_exactly_once(client: FuseboxClient, redis, settings, batch_id: str, n: int) -> None:
    counts = await client.wait_batch(batch_id, timeout=900)  # a bound for a busy machine, not a measure
    assert (counts.status, counts.total, counts.completed, counts.failed) == ("completed", n, n, 0)
    ids = [r.custom_id async for r in client.results(batch_id) if r is not None]
    assert ids == [f"c{i}" for i in range(n)]  # one result per line, in input order
    assert await redis.hlen(settings.keys.batch_results(batch_id)) == n
    assert await redis.llen(settings.keys.batch_done(batch_id)) == n  # never counted twice
    rows = await usage.read_usage(redis, settings.keys, 900, batch=batch_id)
    assert sum(r.requests for r in rows) == n


async def test_20k_lines_through_two_worker_processes(settings, redis, tmp_path: Path):
    cfg = tmp_path / "fusebox.toml"
    cfg.write_text(CONFIG.format(latency=0))
    env = subprocess_env(settings, FUSEBOX_CONFIG=str(cfg))
    client = FuseboxClient(redis, settings)
    n = 20_000
    sub = await client.submit_batch(batch_lines(n))
    assert (sub.total, sub.queued) == (n, n)
    procs = [_worker(env), _worker(env)]
    try:
        await _check_exactly_once(client, redis, settings, sub.batch_id, n)
    finally:
        stop_processes(procs)


async def test_kill_9_a_worker_mid_batch_still_exactly_once(settings, redis, tmp_path: Path):
    cfg = tmp_path / "fusebox.toml"
    cfg.write_text(CONFIG.format(latency=20))
    env = subprocess_env(settings, FUSEBOX_CONFIG=str(cfg))
    client = FuseboxClient(redis, settings)
    n = 10_000
    sub = await client.submit_batch(batch_lines(n))
    procs = [_worker(env), _worker(env)]
    try:
        await _wait_done(client, sub.batch_id, int(n * 0.3), timeout=600)
        os.kill(procs[0].pid, signal.SIGKILL)  # dies holding up to max_jobs in-progress jobs
        procs[0].wait(10)
        procs.append(_worker(env))
        await _check_exactly_once(client, redis, settings, sub.batch_id, n)
    finally:
        stop_processes(procs)
