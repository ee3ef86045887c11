"""Tenants' own provider keys over the HTTP API and CLI, against the simulator in its own process
(``python -m shared.simulator``): stored encrypted, listed masked, tested with a real call, audited."""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from shared import audit
from shared.byok import store
from shared.byok.crypto import KeyRing, MasterKeyError, new_master_key
from shared.config import FileConfig, Settings
from shared.embedded import free_port
from shared.simulator import SimulatorProcess
from shared.simulator.config import validate_config
from tests.conftest import subprocess_env
from tests.integration.api_fixtures import admin_key, api, key_a, key_b  # noqa: F401

FLEET_ENV = "FUSEBOX_TEST_FLEET_OPENAI_KEY"
STRICT_KEY = "strict-" + "k" * 30


def canary() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def pieces(key: str) -> set[str]:
    return {key[i : i + 8] for i in range(len(key) - 7)}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    cfg = validate_config({"routes": {"openai": {}, "strict": {"format": "openai", "api_key": STRICT_KEY}}})
    with SimulatorProcess(cfg).start() as s:
        yield s


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> str:
    k = new_master_key()
    monkeypatch.setenv("FUSEBOX_MASTER_KEY", k)
    monkeypatch.delenv("FUSEBOX_MASTER_KEY_NEW", raising=False)
    monkeypatch.setenv(FLEET_ENV, "fleet-" + canary())
    return k


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path, sim: SimulatorProcess, master: str) -> Settings:  # type: ignore[no-untyped-def]
    cfg = {
        "providers": {
            "openai": {"type": "openai", "base_url": sim.url_for("openai"), "api_key_env": FLEET_ENV},
            "strict": {"type": "openai", "base_url": sim.url_for("strict"), "api_key_env": FLEET_ENV},
        },
        "api": {"provider_allow_hosts": ["127.0.0.1"]},
    }
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "d").with_file(
        FileConfig.model_validate(cfg)
    )


@pytest.fixture
async def clients(api, key_a, key_b, admin_key) -> AsyncIterator[dict[str, httpx.AsyncClient]]:  # noqa: F811
    out = {
        n: httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {k}"}, timeout=30)
        for n, k in (("a", key_a), ("b", key_b), ("admin", admin_key))
    }
    yield out
    for c in out.values():
        await c.aclose()


async def _namespace_blob(redis: Any, ns: str) -> bytes:
    blob = b""
    async for name in redis.scan_iter(match=f"{ns}:*", count=1000):
        blob += name + b"\0" + (await redis.dump(name) or b"")
        kind = (await redis.type(name)).decode()
        if kind == "hash":
            blob += b"".join(f + b"=" + v for f, v in (await redis.hgetall(name)).items())
        elif kind == "stream":
            for _, fields in await redis.xrange(name):
                blob += b"".join(k + b"=" + v for k, v in fields.items())
    return blob


async def test_keys_are_stored_encrypted_listed_masked_and_tested(
    clients: dict[str, httpx.AsyncClient], redis: Any, settings: Settings
) -> None:
    a, b, admin = clients["a"], clients["b"], clients["admin"]
    key_a_openai, key_a_strict, key_b_openai = canary(), canary(), canary()
    r = await a.put("/v1/fusebox/provider-keys/openai", json={"key": key_a_openai})
    assert r.status_code == 200, r.text
    assert r.json()["key"] == f"{key_a_openai[:3]}…{key_a_openai[-4:]}"
    assert (await a.put("/v1/fusebox/provider-keys/strict", json={"key": key_a_strict})).status_code == 200
    assert (await b.put("/v1/fusebox/provider-keys/openai", json={"key": key_b_openai})).status_code == 200

    listed = (await a.get("/v1/fusebox/provider-keys")).json()
    assert [d["provider"] for d in listed["data"]] == ["openai", "strict"]
    assert listed["allow_fleet_keys"] is True
    assert not any(p in json.dumps(listed) for p in pieces(key_a_openai) | pieces(key_a_strict))
    # Tenants see only their own keys; only admins may act for another tenant.
    assert [d["provider"] for d in (await b.get("/v1/fusebox/provider-keys")).json()["data"]] == ["openai"]
    assert (await b.get("/v1/fusebox/provider-keys", params={"tenant": "tenant-a"})).status_code == 403
    as_admin = await admin.get("/v1/fusebox/provider-keys", params={"tenant": "tenant-a"})
    assert len(as_admin.json()["data"]) == 2

    # Test connection: a real call to the simulator with the tenant's key.
    ok = (await a.post("/v1/fusebox/provider-keys/openai/test")).json()
    assert ok["status"] == "ok", ok
    denied = (await a.post("/v1/fusebox/provider-keys/strict/test")).json()
    assert denied["status"] == "auth_failed", denied
    port = free_port()  # nothing listens there
    r = await a.put(
        "/v1/fusebox/provider-keys/mine",
        json={"key": canary(), "type": "vllm", "base_url": f"http://127.0.0.1:{port}/v1", "models": ["x"]},
    )
    assert r.status_code == 200, r.text
    assert (await a.post("/v1/fusebox/provider-keys/mine/test")).json()["status"] == "unreachable"
    # The SSRF guard refuses a tenant entry aimed at the cloud metadata service.
    r = await a.put(
        "/v1/fusebox/provider-keys/meta",
        json={"key": canary(), "type": "vllm", "base_url": "http://169.254.169.254/v1"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_provider_entry"
    r = await a.put("/v1/fusebox/provider-keys/nosuch", json={"key": canary()})
    assert r.status_code == 404

    # Never plaintext in Redis (records, audit stream, anything under the namespace).
    blob = await _namespace_blob(redis, settings.namespace)
    for k in (key_a_openai, key_a_strict, key_b_openai):
        assert not [p for p in pieces(k) if p.encode() in blob]

    assert (await a.delete("/v1/fusebox/provider-keys/strict")).status_code == 200
    assert (await a.delete("/v1/fusebox/provider-keys/strict")).status_code == 404

    # Audit: admins only; every change with its actor and target, never the key.
    assert (await a.get("/v1/fusebox/audit")).status_code == 403
    r = await admin.patch("/v1/fusebox/tenants/tenant-a/settings", json={"allow_fleet_keys": False})
    assert r.json()["allow_fleet_keys"] is False
    assert (await a.get("/v1/fusebox/provider-keys")).json()["allow_fleet_keys"] is False
    trail = (await admin.get("/v1/fusebox/audit", params={"limit": 50})).json()["data"]
    seen = [(e["actor"], e["action"], e["target"]) for e in reversed(trail)]
    for want in [
        ("tenant-a", "provider_key.set", "tenant-a"),
        ("tenant-b", "provider_key.set", "tenant-b"),
        ("tenant-a", "provider_key.test", "tenant-a"),
        ("tenant-a", "provider_key.delete", "tenant-a"),
        ("ops", "tenant.settings", "tenant-a"),
    ]:
        assert want in seen
    assert ("system", "api_key.create", "tenant-a") in seen
    assert next(e for e in trail if e["action"] == "tenant.settings")["details"] == {
        "allow_fleet_keys": {"from": True, "to": False}
    }
    assert not any(p in json.dumps(trail) for p in pieces(key_a_openai))


async def test_breaker_forcing_is_audited(clients: dict[str, httpx.AsyncClient]) -> None:
    r = await clients["admin"].post(
        "/v1/providers/openai/breaker", json={"action": "open", "reason": "drill"}
    )
    assert r.status_code == 200, r.text
    trail = (await clients["admin"].get("/v1/fusebox/audit")).json()["data"]
    e = next(e for e in trail if e["action"] == "breaker.force")
    assert (e["actor"], e["target"], e["details"]) == ("ops", "openai", {"action": "open", "reason": "drill"})


async def test_startup_and_use_without_the_master_key_fail_clearly(redis: Any, settings: Settings) -> None:
    keys = settings.keys
    ring = KeyRing.from_env()
    secret = canary()
    await store.put(redis, keys, ring, "tenant-a", "openai", secret, None, actor="t")
    assert await store.check_startup(redis, keys, ring) == 1
    with pytest.raises(MasterKeyError, match="FUSEBOX_MASTER_KEY") as e:
        await store.check_startup(redis, keys, None)
    assert secret not in str(e.value)
    wrong = KeyRing.from_env({"FUSEBOX_MASTER_KEY": new_master_key()})
    with pytest.raises(MasterKeyError, match="master key id"):
        await store.check_startup(redis, keys, wrong)
    with pytest.raises(MasterKeyError, match="FUSEBOX_MASTER_KEY"):
        await store.load(redis, keys, None, "tenant-a")


async def _cli(settings: Settings, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "producer.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(settings, **env),
    )
    out, err = await proc.communicate(stdin.encode())
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.one_server
async def test_cli_set_list_rotate_delete_and_audit(redis: Any, settings: Settings, master: str) -> None:
    keys = settings.keys
    secrets_ = {t: canary() for t in ("tenant-a", "tenant-b")}
    for t, k in secrets_.items():
        rc, out, err = await _cli(settings, "keys", "provider", "set", t, "openai", stdin=k + "\n")
        assert rc == 0, err
        assert k not in out + err
    rc, out, _ = await _cli(settings, "keys", "provider", "list", "tenant-a", "--json")
    listed = json.loads(out)
    assert listed["data"][0]["key"] == f"{secrets_['tenant-a'][:3]}…{secrets_['tenant-a'][-4:]}"

    # Rotation: every process reads old and new meanwhile; afterwards the new key alone suffices.
    new = new_master_key()
    rc, _, err = await _cli(settings, "keys", "rotate-master")
    assert rc == 2 and "FUSEBOX_MASTER_KEY_NEW" in err
    rc, out, err = await _cli(settings, "keys", "rotate-master", FUSEBOX_MASTER_KEY_NEW=new)
    assert rc == 0 and "re-wrapped 2 key(s)" in out, err
    after = KeyRing.from_env({"FUSEBOX_MASTER_KEY": new})
    for t, k in secrets_.items():
        assert (await store.load(redis, keys, after, t))["openai"].secret == k
    with pytest.raises(MasterKeyError):
        await store.load(redis, keys, KeyRing.from_env({"FUSEBOX_MASTER_KEY": master}), "tenant-a")
    rc, out, _ = await _cli(
        settings, "keys", "rotate-master", FUSEBOX_MASTER_KEY=new, FUSEBOX_MASTER_KEY_NEW=new
    )
    assert "re-wrapped 0 key(s)" in out  # idempotent

    # The CLI without the master key: a clear error, never a key.
    rc, _, err = await _cli(
        settings, "keys", "provider", "set", "tenant-a", "openai", stdin="x" * 20, FUSEBOX_MASTER_KEY=""
    )
    assert rc == 2 and "FUSEBOX_MASTER_KEY" in err

    rc, _, _ = await _cli(settings, "keys", "settings", "tenant-b", "--allow-fleet-keys", "no")
    assert rc == 0
    rc, _, _ = await _cli(settings, "keys", "provider", "delete", "tenant-b", "openai")
    assert rc == 0
    rc, out, _ = await _cli(settings, "audit", "--json", "--limit", "20")
    actions = [(e["action"], e["target"]) for e in json.loads(out)["data"]]
    assert actions[:3] == [
        ("provider_key.delete", "tenant-b"),
        ("tenant.settings", "tenant-b"),
        ("master_key.rotate", "*"),
    ]
    assert actions.count(("provider_key.set", "tenant-a")) == 1
    assert all(e["actor"].startswith("cli:") for e in json.loads(out)["data"])
    blob = await _namespace_blob(redis, settings.namespace)
    for k in secrets_.values():
        assert not [p for p in pieces(k) if p.encode() in blob]
    rc, out, _ = await _cli(settings, "audit")
    assert rc == 0 and "provider_key.delete" in out
    assert len(await audit.read(redis, keys, 1)) == 1
