"""Redis Sentinel: workers and producer connect through real sentinels and ride out a failover.

Debian's redis-server plays primary, replica and three sentinels on loopback ports. Mid-batch the
primary is killed with SIGKILL (or handed over with SENTINEL FAILOVER, so clients still connected
to it get READONLY); the sentinels promote the replica and the batch still completes, every
custom_id answered exactly once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from producer.client import FuseboxClient
from shared.config import FileConfig, Settings
from shared.embedded import free_port
from shared.redis_conn import connect
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import batch_lines, stop_processes

pytestmark = pytest.mark.slow

MASTER = "fbmaster"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CONFIG = """
[worker]
max_jobs = 8
poll_delay = 0.01
# A job whose end was lost with the primary runs again once its in-progress key expires.
job_timeout = 3
# A failover can split one job's writes between the two primaries (its result on the old one, lost;
# its end on the new one): reconciliation queues such lines again, checked often here.
reconcile_seconds = 2
[simulated]
latency_ms = 60
"""


def _need_redis_server() -> None:
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REDIS_SERVER} is missing (CI must install Debian's redis-server)")
        pytest.skip("redis-server (Debian package redis-server) is not installed; Sentinel needs it")


class Topology:
    """Primary + replica + 3 sentinels, all children of this test, on free loopback ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.primary, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _server(self, name: str, port: int, *extra: str) -> None:
        d = self.root / name
        d.mkdir()
        self._spawn(name, [
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
            "--appendonly", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            *extra,
        ])  # fmt: skip

    def start(self) -> None:
        self._server("primary", self.primary)
        self._server("replica", self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        for i, port in enumerate(self.sentinels):
            conf = self.root / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 800\n"
                f"sentinel failover-timeout {MASTER} 4000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self._spawn(f"sentinel{i}", [REDIS_SERVER, str(conf), "--sentinel"])
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                raise AssertionError("sentinel topology not ready in 30 s: " + self.logs())
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            link = redis_sync.Redis(port=self.replica).info("replication").get("master_link_status")
            if link != "up":
                return False
            for port in self.sentinels:
                s = redis_sync.Redis(port=port)
                if len(s.sentinel_slaves(MASTER)) < 1 or len(s.sentinel_sentinels(MASTER)) < 2:
                    return False
            return True
        except redis_sync.RedisError:
            return False

    def master_port(self) -> int:
        return int(redis_sync.Redis(port=self.sentinels[0]).sentinel_get_master_addr_by_name(MASTER)[1])

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait(10)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    _need_redis_server()
    t = Topology(tmp_path)
    try:
        t.start()
        yield t
    finally:
        t.stop()


async def _done(client: FuseboxClient, batch_id: str) -> int:
    c = await client.counts(batch_id)
    return c.done if c else 0


async def _run_through_failover(topology: Topology, namespace: str, tmp_path: Path, failover) -> None:
    """A batch through 2 worker processes; ``failover(topology)`` is called once 10% is done."""
    cfg = tmp_path / "fusebox.toml"
    cfg.write_text(CONFIG)
    sentinels = ",".join(f"127.0.0.1:{p}" for p in topology.sentinels)
    settings = Settings(
        redis_sentinels=sentinels, redis_sentinel_master=MASTER, namespace=namespace
    ).with_file(FileConfig())
    assert settings.redis_url and settings.redis_url.startswith("redis+sentinel://")
    env = subprocess_env(settings, FUSEBOX_CONFIG=str(cfg), REDIS_SENTINELS=sentinels,
                         REDIS_SENTINEL_MASTER=MASTER)  # fmt: skip
    env.pop("REDIS_URL", None)
    redis = connect(settings.redis_url, settings.keys)
    client = FuseboxClient(redis, settings)
    workers: list[subprocess.Popen[bytes]] = []
    n = 1200
    try:
        sub = await client.submit_batch(batch_lines(n))
        assert sub.queued == n
        # Asynchronous replication: make sure the replica has the submission before the failover.
        assert await redis.execute_command("WAIT", 1, 5000) >= 1
        for i in range(2):
            log = open(tmp_path / f"worker{i}.log", "wb")
            workers.append(subprocess.Popen([PYTHON, "-m", "producer.cli", "worker"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        deadline = time.monotonic() + 40
        while await _done(client, sub.batch_id) < n // 10:
            assert time.monotonic() < deadline, "workers made no progress"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(failover, topology)
        at_failover = await _done(client, sub.batch_id)  # answered by the promoted replica
        assert at_failover < n, "the batch ended before the failover; it tests nothing"

        counts = await client.wait_batch(sub.batch_id, timeout=120, poll=0.2)
        assert topology.master_port() == topology.replica
        assert (counts.status, counts.total, counts.completed, counts.failed) == ("completed", n, n, 0)
        ids = [r.custom_id async for r in client.results(sub.batch_id) if r is not None]
        assert ids == [f"c{i}" for i in range(n)]  # every line answered, once, in input order
        done = await redis.lrange(settings.keys.batch_done(sub.batch_id), 0, -1)
        assert len(done) == n and len(set(done)) == n  # never counted twice
        assert all(w.poll() is None for w in workers), "a worker died during the failover"
        for i in range(len(workers)):
            assert "Traceback" not in (tmp_path / f"worker{i}.log").read_text()
    except BaseException:
        print(topology.logs())
        for i in range(len(workers)):
            print(f"--- worker{i}\n" + (tmp_path / f"worker{i}.log").read_text()[-3000:])
        raise
    finally:
        stop_processes(workers)
        await redis.aclose()


async def test_batch_survives_the_primary_killed(topology: Topology, namespace: str, tmp_path: Path):
    await _run_through_failover(topology, namespace, tmp_path, lambda t: t.kill("primary"))


def _switch_over(t: Topology) -> None:
    """A manual failover: the old primary stays up and becomes a replica (its clients get READONLY)."""
    redis_sync.Redis(port=t.sentinels[0]).execute_command("SENTINEL", "FAILOVER", MASTER)
    deadline = time.monotonic() + 20
    while t.master_port() != t.replica:
        assert time.monotonic() < deadline, "sentinels did not switch over"
        time.sleep(0.05)


async def test_batch_survives_a_switchover(topology: Topology, namespace: str, tmp_path: Path):
    await _run_through_failover(topology, namespace, tmp_path, _switch_over)
