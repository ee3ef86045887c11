"""The worker's own mechanics on a real server: batched claims, and surviving a Redis outage."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from arq.worker import func

from producer.client import FuseboxClient
from shared.config import FileConfig, Settings
from shared.embedded import EmbeddedValkey, free_port
from shared.providers.http import HTTPProvider
from shared.providers.transport import AiohttpCaller
from shared.redis_conn import connect
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import arq_worker, batch_lines
from worker.jobs import CTX_KEY
from worker.settings import build_worker


async def test_batched_claim_never_runs_a_job_twice(settings: Settings):
    runs_key = f"{settings.namespace}:runs"

    async def count(ctx: dict[str, Any], raw: bytes) -> None:
        await ctx["redis"].hincrby(runs_key, raw.decode(), 1)
        await asyncio.sleep(0.001)

    producer = connect(settings.redis_url or "", settings.keys)
    n = 600
    for i in range(n):
        await producer.enqueue_job("count", f"j{i}".encode(), _job_id=f"{settings.namespace}-j{i}")
    workers = []
    for _ in range(3):  # three workers race for the same queue
        pool = connect(settings.redis_url or "", settings.keys)
        workers.append(
            arq_worker(settings, pool, [func(count, name="count")], burst=True, max_jobs=50, poll_delay=0.005)
        )
    await asyncio.gather(*(w.async_run() for w in workers))
    runs = await producer.hgetall(runs_key)
    assert len(runs) == n
    assert set(runs.values()) == {b"1"}
    assert sum(w.jobs_complete for w in workers) == n
    assert all(w.jobs_complete > 0 for w in workers)
    for w in workers:
        await w.close()
    await producer.aclose()


async def test_worker_waits_out_a_redis_outage_and_resumes(settings: Settings, tmp_path: Path):
    # Its own server: this test stops it, which it must never do to a shared one.
    port = free_port()
    server = EmbeddedValkey(tmp_path / "valkey", tcp_port=port, persist=True)
    url = server.start()
    s = Settings(redis_url=url, namespace=settings.namespace).with_file(settings.file)
    cfg = tmp_path / "fusebox.toml"
    # ~160 lines/s (8 at a time x 50 ms): the 400 lines outlast the moment Redis is stopped
    cfg.write_text("[simulated]\nlatency_ms = 50\n[worker]\nmax_jobs = 8\n")
    env = subprocess_env(s, FUSEBOX_CONFIG=str(cfg))
    log_path = tmp_path / "worker.log"  # a file, not a pipe: a full pipe would block the worker
    log_file = open(log_path, "wb")
    worker = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log_file
    )
    try:
        client = FuseboxClient(connect(url, s.keys), s)
        sub = await client.submit_batch(batch_lines(400))
        for _ in range(600):  # until the worker is running and part-way through
            c = await client.counts(sub.batch_id)
            if c is not None and c.done >= 20:
                break
            await asyncio.sleep(0.05)
        await client.aclose()
        server.stop()  # Redis goes away mid-batch (AOF keeps the queue)
        await asyncio.sleep(3)
        assert worker.poll() is None, "the worker must not die when Redis is unreachable"
        server = EmbeddedValkey(tmp_path / "valkey", tcp_port=port, persist=True)
        server.start()
        client = FuseboxClient(connect(url, s.keys), s)
        counts = await client.wait_batch(sub.batch_id, timeout=60)
        await client.aclose()
        assert (counts.status, counts.completed, counts.total) == ("completed", 400, 400)
        assert c.done < 400  # the outage really hit mid-batch
        for _ in range(300):  # its poll after the outage says so (it may still be backing off)
            if b"is back" in log_path.read_bytes():
                break
            await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log_file.close()
        server.stop()
    log = log_path.read_text()
    assert "is unreachable" in log and "not taking jobs" in log
    assert "is back: taking jobs again" in log


async def test_startup_builds_every_providers_http_session(
    settings: Settings, redis: Any, monkeypatch: Any
) -> None:
    """A new worker's first jobs do not wait while it builds its HTTP sessions and their TLS context
    (~30 ms of CPU each time: every job it just claimed waited that long for its first call)."""
    monkeypatch.setenv("FB_WARM_KEY", "sk-warm-" + "x" * 16)
    endpoint = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "FB_WARM_KEY"}
    cfg = FileConfig.model_validate({"providers": {"a": endpoint, "b": endpoint}})
    worker = build_worker(settings.with_file(cfg), redis, handle_signals=False)
    http = [p for p in worker.ctx[CTX_KEY].router.providers.values() if isinstance(p, HTTPProvider)]
    assert sorted(p.name for p in http) == ["a", "b"]
    assert [p._client for p in http] == [None, None]
    assert worker.on_startup is not None and worker.on_shutdown is not None
    worker.ctx["redis"] = redis  # as arq's startup sets it
    await worker.on_startup(worker.ctx)
    try:
        assert all(isinstance(p._client, AiohttpCaller) for p in http)
        assert all(p._client.session.connector.limit == 16 for p in http)  # type: ignore[union-attr]
    finally:
        await worker.on_shutdown(worker.ctx)
    assert [p._client for p in http] == [None, None]
