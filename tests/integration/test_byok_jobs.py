"""Jobs of two tenants with their own provider keys, against the simulator in its own process.

The simulator counts which credential each request carried (a sha256 fingerprint in its stats), so
the test sees each tenant's calls use its own key and untenanted calls the fleet's. A tenant whose
own endpoint is down opens only its own breaker scope (``openai@tenant``); a tenant with no key that
may not use the fleet's gets ``tenant_key_missing``; master-key rotation keeps every key usable; no
piece of any key reaches Redis, results or logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import string
from collections.abc import Iterator
from typing import Any

import pytest

from producer.client import FuseboxClient
from shared import tenants
from shared.byok import store
from shared.byok.crypto import KeyRing, new_master_key
from shared.config import FileConfig, Settings
from shared.gate import Gate
from shared.redact import redact
from shared.simulator import SimulatorProcess
from shared.simulator.config import validate_config
from tests.integration.helpers import byok_config
from worker.jobs import CTX_KEY
from worker.settings import build_worker

FLEET_ENV = "FUSEBOX_TEST_BYOK_FLEET_KEY"
MODEL = "gpt-4o-mini"


def canary() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def fp(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def pieces(key: str) -> set[str]:
    return {key[i : i + 8] for i in range(len(key) - 7)}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    cfg = validate_config({"routes": {"openai": {}, "down": {"format": "openai", "down": True}}})
    with SimulatorProcess(cfg).start() as s:
        yield s


@pytest.fixture
def fleet_key(monkeypatch: pytest.MonkeyPatch) -> str:
    k = canary()
    monkeypatch.setenv(FLEET_ENV, k)
    monkeypatch.setenv("FUSEBOX_MASTER_KEY", new_master_key())
    monkeypatch.delenv("FUSEBOX_MASTER_KEY_NEW", raising=False)
    return k


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path, sim: SimulatorProcess, fleet_key: str) -> Settings:  # type: ignore[no-untyped-def]
    cfg = byok_config(sim.url_for("openai"), FLEET_ENV, [MODEL])
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "d").with_file(
        FileConfig.model_validate(cfg)
    )


async def _start_worker(settings: Settings, redis: Any) -> tuple[Any, asyncio.Task[None]]:
    w = build_worker(settings, redis, handle_signals=False)
    w.ctx[CTX_KEY].tenant_keys.ttl = 0.05  # see key changes at once
    return w, asyncio.create_task(w.async_run())


async def _run(client: FuseboxClient, tenant: str | None, n: int) -> list[Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ids = [await client.submit(body, tenant=tenant) for _ in range(n)]
    return [await client.wait(i, timeout=60) for i in ids]


async def _blob(redis: Any, ns: str) -> bytes:
    out = b""
    async for name in redis.scan_iter(match=f"{ns}:*", count=1000):
        out += name + (await redis.dump(name) or b"")
        kind = (await redis.type(name)).decode()
        if kind == "hash":
            out += b"".join(f + v for f, v in (await redis.hgetall(name)).items())
        elif kind == "string":
            out += await redis.get(name) or b""
        elif kind == "stream":
            out += b"".join(b"".join(k + v for k, v in f.items()) for _, f in await redis.xrange(name))
    return out


async def test_two_tenants_own_keys_scopes_and_fleet_fallback(
    settings: Settings,
    redis: Any,
    sim: SimulatorProcess,
    client: FuseboxClient,
    fleet_key: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = settings.keys
    ring = KeyRing.from_env()
    ka, kb = canary(), canary()
    await store.put(redis, keys, ring, "tenant-a", "openai", ka, None, actor="t")
    # tenant-b's own endpoint for "openai" (its own deployment): down for the whole test.
    down = store.ProviderEntry(type="openai", base_url=sim.url_for("down"), models=[MODEL])
    await store.put(redis, keys, ring, "tenant-b", "openai", kb, down, actor="t")
    await tenants.update_settings(redis, keys, "tenant-d", {"allow_fleet_keys": False}, actor="t")
    sim.reset()

    w, task = await _start_worker(settings, redis)
    try:
        ok = (
            await _run(client, "tenant-a", 5)
            + await _run(client, "tenant-c", 2)
            + await _run(client, None, 2)
        )
        assert [r.status_code for r in ok] == [200] * 9
        used = sim.stats()["routes"]["openai"]["keys"]
        assert used == {fp(ka): 5, fp(fleet_key): 4}  # each tenant's calls carried its own key

        # One at a time: the third failure in a row trips the breaker (consecutive_failures = 3);
        # a job arriving after that would wait for it (open for 600 s) instead of failing.
        failed = [r for _ in range(3) for r in await _run(client, "tenant-b", 1)]
        assert all(r.status_code != 200 for r in failed)
        assert sim.stats()["routes"]["down"]["keys"] == {fp(kb): 3}
        assert fp(fleet_key) not in sim.stats()["routes"]["down"]["keys"]

        gate = Gate(redis, keys, settings.file)
        states = {s["scope"]: s["state"] for s in await gate.snapshots()}
        assert states["openai@tenant-b"] == "open"  # only tenant-b's own scope tripped
        assert states["openai"] == "closed" and states["openai@tenant-a"] == "closed"
        again = await _run(client, "tenant-a", 3) + await _run(client, None, 2)
        assert [r.status_code for r in again] == [200] * 5

        (missing,) = await _run(client, "tenant-d", 1)
        assert missing.error is not None and missing.error.code == "tenant_key_missing"
        assert "openai" in missing.error.message and "tenant-d" in missing.error.message
        # The same tenant once allowed: the fleet key (the cached setting expires within the TTL).
        await tenants.update_settings(redis, keys, "tenant-d", {"allow_fleet_keys": True}, actor="t")
        await asyncio.sleep(0.1)
        (allowed,) = await _run(client, "tenant-d", 1)
        assert allowed.status_code == 200

        # Master-key rotation: workers read old and new meanwhile; afterwards the new key alone works.
        new = new_master_key()
        monkeypatch.setenv("FUSEBOX_MASTER_KEY_NEW", new)
        done, _ = await store.rotate(redis, keys, KeyRing.from_env(), actor="t")  # type: ignore[arg-type]
        assert done == 2
        await asyncio.sleep(0.1)
        with pytest.raises(Exception, match="master key id"):  # the running worker has only the old key
            await store.load(redis, keys, ring, "tenant-a")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()

    monkeypatch.setenv("FUSEBOX_MASTER_KEY", new)
    monkeypatch.delenv("FUSEBOX_MASTER_KEY_NEW")
    sim.reset()
    w, task = await _start_worker(settings, redis)
    try:
        after = await _run(client, "tenant-a", 3)
        assert [r.status_code for r in after] == [200] * 3
        assert sim.stats()["routes"]["openai"]["keys"] == {fp(ka): 3}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()

    # No piece of any key in Redis (records, results, audit), the results, or the logs; the worker
    # registered the tenants' keys with the redactor.
    blob = await _blob(redis, settings.namespace)
    text = "\n".join(r.getMessage() for r in caplog.records) + repr([*ok, *failed, *again, missing])
    for k in (ka, kb, fleet_key):
        assert not [p for p in pieces(k) if p.encode() in blob]
        assert not [p for p in pieces(k) if p in text]
        assert k[5:30] not in redact(f"echo {k[5:30]}")
