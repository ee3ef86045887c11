"""After a Redis restart, the leases of calls the outage cut off are released by their own worker as
soon as it talks to Redis again, instead of holding the provider's slots until they expire."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import FileConfig, LimitsConfig, ProviderConfig, Settings
from shared.gate import Admission, Gate, RedisUnavailable
from shared.redis_conn import connect
from tests.conftest import make_server


async def test_leases_cut_off_by_a_restart_are_released_at_once(
    redis_server_kind: str, tmp_path: Path, namespace: str
):
    if redis_server_kind == "env":
        pytest.skip("restarts a server of its own; FUSEBOX_TEST_REDIS_URL names one it cannot restart")
    server = make_server(redis_server_kind, tmp_path / "server", persist=True)  # leases survive the restart
    server.start()
    settings = Settings(redis_url=server.url, namespace=namespace)
    cfg = FileConfig(
        limits=LimitsConfig(lease_seconds=60, adaptive=False),
        providers={"p": ProviderConfig(type="simulated", max_concurrency=4)},
    )
    redis = connect(server.url, settings.keys)
    gate = Gate(redis, settings.keys, cfg, timeout=3)
    try:
        held: list[Admission] = [await gate.admit("p", None, 10) for _ in range(4)]
        assert all(a.ok for a in held)
        assert not (await gate.admit("p", None, 10)).ok  # saturated

        server.stop()  # SIGTERM: the server writes its AOF, leases included
        for adm in held[:3]:  # three calls end during the outage; the fourth is still running
            with pytest.raises(RedisUnavailable):
                await gate.settle(adm, "success", 5.0, 10)
        server.start()

        assert await redis.zcard(settings.keys.gate_leases("p")) == 4  # the restart kept them
        again = [await gate.admit("p", None, 10) for _ in range(4)]
        # the three cut-off calls' slots are free at once; the running call keeps its own
        assert [a.ok for a in again] == [True, True, True, False]
        assert again[3].reason == "saturated"
        members = {m.decode() for m in await redis.zrange(settings.keys.gate_leases("p"), 0, -1)}
        assert held[3].lease in members and not members & {a.lease for a in held[:3]}
    finally:
        await redis.aclose()
        server.stop()
