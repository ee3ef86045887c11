"""A tenant's provider entry of its own, under a name no fleet provider has (``my-vllm``: type,
base URL, models, key), end to end with two real ``fusebox worker`` processes and the simulator in
its own process (which records the key each request carried, as a sha256 fingerprint).

- registered through the CLI (key on stdin) and the API; a base URL inside the deployment is refused
  unless ``[api] provider_allow_hosts`` allows it, at registration and again in the worker;
- the tenant's jobs for a model in the entry's ``models`` (or ``my-vllm/<model>``) go to its entry
  with its key, under its own gate scope ``my-vllm@tenant``; another tenant never routes to it, and
  a second tenant's entry of the same name is its own scope: its outage trips only that breaker;
- ``/v1/providers`` and ``fusebox breakers`` show those scopes; no key appears in either.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import to_toml
from producer.client import FuseboxClient
from shared import codec
from shared.byok import store
from shared.byok.crypto import KeyRing, new_master_key
from shared.config import FileConfig, Settings
from shared.gate import Gate
from shared.jobs.store import JOB_FUNCTION
from shared.schema import ChatRequest, JobSpec, ProviderEntry, RequestError
from shared.simulator import SimulatorProcess
from shared.simulator.config import validate_config
from shared.tenants import create_key
from tests.conftest import PYTHON, subprocess_env
from tests.integration.api_fixtures import serve
from tests.integration.helpers import byok_config, stop_processes

FLEET_ENV = "FUSEBOX_TEST_BYOK_ENTRY_FLEET_KEY"
FLEET_MODEL = "gpt-4o-mini"
LLAMA, QWEN = "llama-3-8b", "qwen-2"
PRIVATE_URL = "http://10.1.2.3:9/v1"  # inside the deployment, not allow-listed


def canary() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))


def fp(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    cfg = validate_config(
        {
            "routes": {
                "openai": {"models": [FLEET_MODEL]},
                "vllm": {"format": "openai", "models": [LLAMA, QWEN]},
                "vllm_down": {"format": "openai", "models": [LLAMA], "down": True},
            }
        }
    )
    with SimulatorProcess(cfg).start() as s:
        yield s


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    e = {"FUSEBOX_MASTER_KEY": new_master_key(), FLEET_ENV: canary()}
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("FUSEBOX_MASTER_KEY_NEW", raising=False)
    return e


@pytest.fixture
def config(sim: SimulatorProcess) -> dict[str, Any]:
    return byok_config(sim.url_for("openai"), FLEET_ENV, [FLEET_MODEL])


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path: Path, config: dict[str, Any], env: Any) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "d").with_file(
        FileConfig.model_validate(config)
    )


@pytest.fixture
def config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    p = tmp_path / "fusebox.toml"
    p.write_text(to_toml(config) + "\n")
    return p


def _cli(
    settings: Settings, config_file: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(settings, FUSEBOX_CONFIG=str(config_file))
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args], input=stdin, capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip


async def _enqueue_unchecked(client: FuseboxClient, tenant: str, model: str) -> str:
    """A job as the client would enqueue it, without its model check."""
    req = ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    spec = JobSpec(id=uuid.uuid4().hex, request=req, tenant=tenant, submitted_at=time.time())
    await client.redis.enqueue_job(JOB_FUNCTION["chat"], codec.encode_spec(spec), _job_id=spec.id)
    return spec.id


def _read_logs(d: Path) -> str:
    return "".join(p.read_text() for p in sorted(d.glob("worker*.log")))


async def _run(client: FuseboxClient, tenant: str, model: str, n: int = 1) -> list[Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ids = [await client.submit(body, tenant=tenant) for _ in range(n)]
    return [await client.wait(i, timeout=60) for i in ids]


async def test_a_tenants_own_entry_routes_its_jobs_only_under_its_own_scope(
    settings: Settings,
    config_file: Path,
    redis: Any,
    sim: SimulatorProcess,
    client: FuseboxClient,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    keys = settings.keys
    ka, kb = canary(), canary()
    # tenant-a registers its vLLM through the CLI (the key on stdin, never argv).
    cli = _cli(
        settings, config_file, "keys", "provider", "set", "tenant-a", "my-vllm", "--type", "openai",
        "--base-url", sim.url_for("vllm"), "--model", LLAMA, "--model", QWEN, stdin=ka + "\n",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    # tenant-b registers an entry of the same name, its own server (down), through the API; an
    # entry pointing inside the deployment is refused.
    server, task, base = await serve(settings)
    headers = {"Authorization": f"Bearer {await create_key(redis, keys, 'tenant-b')}"}
    admin = {"Authorization": f"Bearer {await create_key(redis, keys, 'ops', admin=True)}"}
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api:
            entry = {"type": "openai", "base_url": sim.url_for("vllm_down"), "models": [LLAMA]}
            r = await api.put("/v1/fusebox/provider-keys/my-vllm", json={"key": kb, **entry})
            assert r.status_code == 200, r.text
            r = await api.put(
                "/v1/fusebox/provider-keys/mine",
                json={"key": canary(), "type": "openai", "base_url": PRIVATE_URL},
            )
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_provider_entry"
        # A record that got past registration (stored directly) is refused by the worker too.
        ring = KeyRing.from_env()
        private = ProviderEntry(type="openai", base_url=PRIVATE_URL, models=[LLAMA])
        await store.put(redis, keys, ring, "tenant-d", "my-vllm", canary(), private, actor="test")

        wenv = subprocess_env(settings, FUSEBOX_CONFIG=str(config_file), **env)
        logs = [open(tmp_path / f"worker{i}.log", "wb") for i in range(2)]
        workers = [
            subprocess.Popen(
                [PYTHON, "-m", "producer.cli", "worker"], env=wenv, stdout=subprocess.DEVNULL, stderr=f
            )
            for f in logs
        ]
        try:
            sim.reset()
            own = await _run(client, "tenant-a", LLAMA, 3) + await _run(
                client, "tenant-a", f"my-vllm/{QWEN}", 2
            )
            assert [(r.status_code, r.provider, r.model) for r in own] == [(200, "my-vllm", LLAMA)] * 3 + [
                (200, "my-vllm", QWEN)
            ] * 2
            fleet = await _run(client, "tenant-a", FLEET_MODEL, 2)  # no key of its own there: the fleet's
            assert [r.status_code for r in fleet] == [200, 200]
            stats = sim.stats()["routes"]
            assert stats["vllm"]["keys"] == {fp(ka): 5}
            assert stats["openai"]["keys"] == {fp(env[FLEET_ENV]): 2}

            # Another tenant never routes to tenant-a's entry, by model or by name: refused at
            # submission, and by the worker for a job that got past it.
            for model in (LLAMA, f"my-vllm/{LLAMA}"):
                with pytest.raises(RequestError, match=r"no (registered )?provider"):
                    await _run(client, "tenant-c", model)
                r = await client.wait(await _enqueue_unchecked(client, "tenant-c", model), timeout=60)
                assert r.error is not None and r.error.code == "model_not_found", r
            assert sim.stats()["routes"]["vllm"]["keys"] == {fp(ka): 5}

            # tenant-b's entry of the same name is down: one at a time, the third failure trips only
            # its own scope; tenant-a's entry keeps serving.
            failed = [r for _ in range(3) for r in await _run(client, "tenant-b", LLAMA)]
            assert all(r.status_code != 200 and r.attempts[-1].provider == "my-vllm" for r in failed)
            assert sim.stats()["routes"]["vllm_down"]["keys"] == {fp(kb): 3}
            states = {s["scope"]: s["state"] for s in await Gate(redis, keys, settings.file).snapshots()}
            assert states["my-vllm@tenant-b"] == "open"
            assert states["my-vllm@tenant-a"] == "closed" and states["openai"] == "closed"
            again = await _run(client, "tenant-a", LLAMA, 2)
            assert [r.status_code for r in again] == [200, 200]

            (refused,) = await _run(client, "tenant-d", LLAMA)
            assert refused.error is not None and refused.error.code == "provider_entry_refused"
            assert "private address" in refused.error.message
        finally:
            stop_processes(workers)
            for f in logs:
                f.close()

        # The ops views show each tenant entry's own scope; no key, only its masked form.
        async with httpx.AsyncClient(base_url=base, headers=admin, timeout=30) as ops:
            r = await ops.get("/v1/providers")
            assert r.status_code == 200
            views = {v["name"]: v for v in r.json()}
            assert {"openai", "my-vllm@tenant-a", "my-vllm@tenant-b", "my-vllm@tenant-d"} <= set(views)
            b = views["my-vllm@tenant-b"]
            assert (b["tenant"], b["type"], b["models"]) == ("tenant-b", "openai", [LLAMA])
            assert [s["state"] for s in b["scopes"]] == ["open"]
            assert [s["state"] for s in views["my-vllm@tenant-a"]["scopes"]] == ["closed"]
            one = (await ops.get("/v1/providers/my-vllm@tenant-b")).json()
            assert one["name"] == "my-vllm@tenant-b" and one["scopes"][0]["scope"] == "my-vllm@tenant-b"
            r = await ops.post("/v1/providers/my-vllm@tenant-b/breaker", json={"action": "reset"})
            assert r.status_code == 200 and r.json()["state"] == "closed"
            assert (await ops.get("/v1/providers/my-vllm@tenant-x")).status_code == 404
            text = (await ops.get("/v1/providers")).text
            assert ka not in text and kb not in text
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    out = _cli(settings, config_file, "breakers", "--json")
    assert out.returncode == 0, out.stderr
    scopes = {s["scope"]: s["state"] for s in json.loads(out.stdout)["breakers"]}
    assert scopes["my-vllm@tenant-a"] == "closed" and scopes["my-vllm@tenant-b"] == "closed"
    logged = _read_logs(tmp_path)
    assert ka not in logged and kb not in logged
