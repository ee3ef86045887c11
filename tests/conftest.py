"""Shared fixtures: a real Redis-protocol server for integration tests.

The integration tests run twice: on the bundled Valkey and on Debian's redis-server
(each started on a free port for the session), or once on FUSEBOX_TEST_REDIS_URL.
FUSEBOX_TEST_SERVERS=valkey (or redis) picks one server for a quicker local run.
Every test gets its own key namespace and queue, so a shared server (e.g. a
developer's Redis on 6379) is never flushed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.config import FileConfig, Settings
from shared.embedded import EmbeddedValkey, _ping_tcp, free_port
from shared.redis_conn import connect

ROOT = Path(__file__).resolve().parent.parent


# The integration tests run on every server Fusebox supports: the bundled Valkey and Debian's
# redis-server (Redis 7), which differ in ways that matter (Redis 7 rejects HINCRBY by "-0").
REDIS_SERVER = "/usr/bin/redis-server"
SERVERS = ("valkey", "redis")


def _server_params() -> list[str]:
    if os.environ.get("FUSEBOX_TEST_REDIS_URL"):
        return ["env"]
    wanted = os.environ.get("FUSEBOX_TEST_SERVERS")  # e.g. "valkey" for a quicker local run
    return [s for s in SERVERS if not wanted or s in wanted.split(",")]


class RedisServer:
    """A throwaway ``redis-server`` child process on a loopback port, no persistence by default."""

    def __init__(self, data_dir: Path, *, tcp_port: int, persist: bool = False) -> None:
        self.data_dir = data_dir
        self.tcp_port = tcp_port
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.tcp_port}/0"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER, "--port", str(self.tcp_port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--daemonize", "no", "--save", "", "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec", "--logfile", str(self.data_dir / "redis.log"),
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"redis-server exited with {code} (log in {self.data_dir})")
            if _ping_tcp(self.tcp_port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s (log in {self.data_dir})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def make_server(kind: str, data_dir: Path, *, persist: bool = False) -> EmbeddedValkey | RedisServer:
    """A stopped server of ``kind`` ('valkey' or 'redis') on a free loopback port; call start()."""
    if kind == "redis":
        return RedisServer(data_dir, tcp_port=free_port(), persist=persist)
    return EmbeddedValkey(data_dir, tcp_port=free_port(), persist=persist)


def _require_redis_server() -> None:
    if os.path.exists(REDIS_SERVER):
        return
    msg = f"{REDIS_SERVER} is not installed (Debian: apt-get install redis-server); the Redis 7 runs need it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session", params=_server_params())
def redis_server_kind(request: pytest.FixtureRequest) -> str:
    """Which server this run of the integration tests uses: 'valkey', 'redis' or 'env' (the URL given)."""
    kind: str = request.param
    if kind == "redis":
        _require_redis_server()
    return kind


@pytest.fixture(scope="session")
def redis_url(redis_server_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if redis_server_kind == "env":
        yield os.environ["FUSEBOX_TEST_REDIS_URL"]
        return
    last: Exception | None = None
    for _ in range(5):  # a free port can be taken between probing and binding
        server = make_server(redis_server_kind, tmp_path_factory.mktemp(redis_server_kind))
        try:
            server.start()
        except Exception as e:
            last = e
            continue
        try:
            yield server.url
        finally:
            server.stop()
        return
    raise RuntimeError(f"could not start {redis_server_kind}: {last}")


@pytest.fixture
def namespace() -> str:
    return "fbtest-" + uuid.uuid4().hex[:12]


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "data").with_file(
        FileConfig()
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator:
    r = connect(settings.redis_url or "", settings.keys)
    yield r
    await r.aclose()


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process (worker, CLI) sharing this test's Redis and namespace."""
    env = dict(os.environ)
    env.pop("FUSEBOX_CONFIG", None)  # only what the test passes in ``extra``
    env.update(
        REDIS_URL=settings.redis_url or "",
        FUSEBOX_NAMESPACE=settings.namespace,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        **extra,
    )
    return env


PYTHON = sys.executable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow chaos/scale tests, and slow tests of the CLI and HTTP surface whose Redis use is plain
    (``one_server``), run on the bundled Valkey only, unless FUSEBOX_TEST_SLOW_SERVERS names
    more (e.g. "valkey,redis"): every other integration test runs on both servers, which is where
    their differences show (Redis 7 rejecting HINCRBY by "-0" is covered by test_gate_lua), and the
    whole suite stays within its 10 minutes on 2 cores."""
    slow_servers = set(os.environ.get("FUSEBOX_TEST_SLOW_SERVERS", "valkey").split(","))
    keep, drop = [], []
    for item in items:
        kind = getattr(item, "callspec", None) and item.callspec.params.get("redis_server_kind")
        narrow = item.get_closest_marker("slow") or item.get_closest_marker("one_server")
        if kind in SERVERS and kind not in slow_servers and narrow:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
