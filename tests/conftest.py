"""Shared fixtures: a real Redis-protocol server for integration tests.

The suite starts the bundled Valkey on a free port for the session, or uses
FUSEBOX_TEST_REDIS_URL. Every test gets its own key namespace and queue, so a
shared server (e.g. a developer's Redis on 6379) is never flushed.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.config import FileConfig, Settings
from shared.embedded import EmbeddedValkey, free_port
from shared.redis_conn import connect

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("FUSEBOX_TEST_REDIS_URL")
    if url:
        yield url
        return
    last: Exception | None = None
    for _ in range(5):  # a free port can be taken between probing and binding
        server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), tcp_port=free_port(), persist=False)
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
    raise RuntimeError(f"could not start the bundled valkey-server: {last}")


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
