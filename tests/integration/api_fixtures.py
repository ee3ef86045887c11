"""Fixtures for HTTP API tests: a real uvicorn server on a free port, a worker, tenants' keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn

from producer.api.app import create_app
from shared.config import Settings
from shared.embedded import free_port
from shared.tenants import create_key
from worker.settings import build_worker


@dataclass
class Api:
    base: str  # http://127.0.0.1:PORT
    settings: Settings

    @property
    def v1(self) -> str:
        return self.base + "/v1"


async def serve(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    return server, task, f"http://127.0.0.1:{port}"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    server, task, base = await serve(settings)
    try:
        yield Api(base, settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def worker(settings: Settings, redis) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    w = build_worker(settings, redis, handle_signals=False)
    task = asyncio.create_task(w.async_run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def key_a(settings: Settings, redis) -> str:  # type: ignore[no-untyped-def]
    return await create_key(redis, settings.keys, "tenant-a")


@pytest.fixture
async def key_b(settings: Settings, redis) -> str:  # type: ignore[no-untyped-def]
    return await create_key(redis, settings.keys, "tenant-b")


@pytest.fixture
async def admin_key(settings: Settings, redis) -> str:  # type: ignore[no-untyped-def]
    return await create_key(redis, settings.keys, "ops", admin=True)
