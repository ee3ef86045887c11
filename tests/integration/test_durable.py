"""Durability: the embedded server's Redis settings, and ``[redis] durable = true`` (WAITAOF)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis as redis_sync

from producer.client import FuseboxClient
from shared.config import ConfigError, FileConfig, RedisConfig, Settings
from shared.embedded import EmbeddedValkey, free_port
from shared.redis_conn import connect
from tests.conftest import PYTHON, ROOT
from tests.integration.helpers import batch_lines

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _durable_settings(url: str, namespace: str) -> Settings:
    cfg = FileConfig(redis=RedisConfig(durable=True))
    return Settings(redis_url=url, namespace=namespace).with_file(cfg)


def test_fusebox_redis_runs_with_the_recommended_settings(tmp_path: Path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "redis", "--dir", str(tmp_path / "v"), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert b"REDIS_URL=" in proc.stdout.readline()
        r = redis_sync.Redis(port=port)
        conf = {k: r.config_get(k)[k] for k in ("appendonly", "appendfsync", "maxmemory-policy")}
        assert conf == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


async def test_acknowledged_submission_survives_a_kill_9(tmp_path: Path, namespace: str):
    server = EmbeddedValkey(tmp_path / "v", tcp_port=free_port())
    url = server.start()
    settings = _durable_settings(url, namespace)
    redis = connect(url, settings.keys)
    try:
        client = FuseboxClient(redis, settings)
        sub = await client.submit_batch(batch_lines(300))
        job = await client.submit({"model": "simulated/chat", "messages": [{"role": "user", "content": "x"}]})
        stats = await redis.info("commandstats")
        assert stats["cmdstat_waitaof"]["calls"] >= 2  # each submission waited for its fsync
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)  # no shutdown, no final AOF flush
        server.proc.wait(10)
    finally:
        await redis.aclose()
    server = EmbeddedValkey(tmp_path / "v", tcp_port=free_port())
    url = server.start()
    redis = connect(url, settings.keys)
    try:
        client = FuseboxClient(redis, settings)
        counts = await client.counts(sub.batch_id)
        assert counts is not None and (counts.status, counts.total) == ("in_progress", 300)
        queued = await redis.zrange(settings.keys.queue, 0, -1)
        lane = await redis.zrange(settings.keys.lane(None), 0, -1)
        assert {f"{sub.batch_id}:c{i}".encode() for i in range(300)} <= set(lane)
        assert job.encode() in queued
    finally:
        await redis.aclose()
        server.stop()


async def test_durable_without_aof_is_refused_before_anything_is_written(redis_url: str, namespace: str):
    # The session server runs without AOF (persist=False).
    settings = _durable_settings(redis_url, namespace)
    redis = connect(redis_url, settings.keys)
    try:
        if (await redis.config_get("appendonly"))["appendonly"] == "yes":
            pytest.skip("FUSEBOX_TEST_REDIS_URL points at a server with AOF on")
        client = FuseboxClient(redis, settings)
        with pytest.raises(ConfigError, match=r"appendonly yes|needs WAITAOF"):  # redis 7.0: no WAITAOF
            await client.submit_batch(batch_lines(3), batch_id="b-durable")
        assert await redis.exists(settings.keys.batch("b-durable")) == 0
    finally:
        await redis.aclose()


async def test_durable_on_a_server_without_waitaof_is_a_clear_error(tmp_path: Path, namespace: str):
    if not os.path.exists(REDIS_SERVER):  # noqa: ASYNC240
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REDIS_SERVER} is missing (CI must install Debian's redis-server)")
        pytest.skip("redis-server (Debian package) is not installed")
    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    if "v=7.0." not in version and "v=6." not in version:
        pytest.skip(f"this redis-server supports WAITAOF: {version.strip()}")
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
         "--appendonly", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    settings = _durable_settings(url, namespace)
    redis = connect(url, settings.keys)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await redis.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        client = FuseboxClient(redis, settings)
        with pytest.raises(ConfigError, match=r"needs WAITAOF \(Redis >= 7.2 or Valkey >= 8\).*redis 7\.0"):
            await client.submit_batch(batch_lines(2), batch_id="b-old")
        assert await redis.exists(settings.keys.batch("b-old")) == 0
    finally:
        await redis.aclose()
        proc.kill()
        proc.wait(10)
