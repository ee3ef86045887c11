"""Fixtures shared by the integration tests (the Redis server ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from producer.client import FuseboxClient
from shared.config import Settings
from shared.simulator import SimulatorServer
from shared.simulator.config import validate_config


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    """The strict simulator with its default config, in this test's event loop.

    A module that needs it in another form (a separate process, a custom config) defines its own
    ``sim``, which takes precedence.
    """
    server = SimulatorServer(validate_config({}))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[FuseboxClient]:
    """A FuseboxClient on this test's settings (a module may define its own ``client``)."""
    c = FuseboxClient.connect(settings)
    try:
        yield c
    finally:
        await c.aclose()
