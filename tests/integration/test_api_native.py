"""Fusebox's native API, upload limits, health, priorities, and `fusebox keys`."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import pytest

from shared.config import ApiConfig, FileConfig
from shared.tenants import create_key
from tests.conftest import PYTHON, subprocess_env
from tests.integration.api_fixtures import admin_key, api, key_a, key_b, serve, worker  # noqa: F401


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _line(i: int, model: str = "simulated/chat") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
    return json.dumps(
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


async def _upload(c: httpx.AsyncClient, key: str, data: bytes) -> httpx.Response:
    return await c.post(
        "/v1/files", headers=_h(key), files={"file": ("f.jsonl", data)}, data={"purpose": "batch"}
    )


async def _batch(c: httpx.AsyncClient, key: str, n: int) -> str:
    f = (await _upload(c, key, b"\n".join(_line(i) for i in range(n)))).json()
    r = await c.post(
        "/v1/batches", headers=_h(key), json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions"}
    )
    assert r.status_code == 200, r.text
    return r.json()["id"]


async def test_health_and_openapi(api):  # noqa: F811
    async with httpx.AsyncClient(base_url=api.base) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        assert (await c.get("/readyz")).json() == {"status": "ok"}
        doc = (await c.get("/openapi.json")).json()
    assert {"/v1/files", "/v1/batches", "/v1/chat/completions", "/v1/jobs", "/v1/fusebox/usage"} <= set(
        doc["paths"]
    )


async def test_jobs_results_usage_and_isolation(api, worker, key_a, key_b, admin_key):  # noqa: F811
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}
        r = await c.post("/v1/jobs", headers={"x-api-key": key_a}, json={"body": body, "priority": 3})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        for _ in range(300):
            job = (await c.get(f"/v1/jobs/{job_id}", headers=_h(key_a))).json()
            if job["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["status"] == "completed" and job["result"]["body"]["choices"]
        assert (await c.get(f"/v1/jobs/{job_id}", headers=_h(key_b))).status_code == 404

        batch_id = await _batch(c, key_a, 30)
        # completion order: the stream follows the batch until its last line
        async with c.stream("GET", f"/v1/fusebox/batches/{batch_id}/results", headers=_h(key_a)) as s:
            lines = [json.loads(x) async for x in s.aiter_lines() if x]
        assert sorted(x["custom_id"] for x in lines) == sorted(f"c{i}" for i in range(30))
        r = await c.get(f"/v1/fusebox/batches/{batch_id}/results?order=input", headers=_h(key_a))
        assert [json.loads(x)["custom_id"] for x in r.text.splitlines()] == [f"c{i}" for i in range(30)]
        assert (await c.get(f"/v1/fusebox/batches/{batch_id}/results", headers=_h(key_b))).status_code == 404

        await c.post("/v1/chat/completions", headers=_h(key_b), json=body)
        mine = (await c.get("/v1/fusebox/usage", headers=_h(key_a))).json()
        assert {r["tenant"] for r in mine["data"]} == {"tenant-a"} and mine["totals"]["requests"] == 31
        assert (await c.get("/v1/fusebox/usage?tenant=tenant-b", headers=_h(key_a))).status_code == 403
        every = (await c.get("/v1/fusebox/usage", headers=_h(admin_key))).json()
        assert {r["tenant"] for r in every["data"]} == {"tenant-a", "tenant-b"}


async def test_interactive_jobs_go_ahead_of_batch_lines(api, redis, settings, key_a):  # noqa: F811
    # no worker: look at the queue order the jobs were given
    async with httpx.AsyncClient(base_url=api.base, timeout=30) as c:
        batch_id = await _batch(c, key_a, 20)
        for _ in range(100):
            if (await c.get(f"/v1/batches/{batch_id}", headers=_h(key_a))).json()["status"] != "validating":
                break
            await asyncio.sleep(0.05)
        body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "now"}]}
        low = (await c.post("/v1/jobs", headers=_h(key_a), json={"body": body})).json()["id"]
        high = (await c.post("/v1/jobs", headers=_h(key_a), json={"body": body, "priority": 10})).json()["id"]
        sync = asyncio.create_task(c.post("/v1/chat/completions", headers=_h(key_a), json=body))
        for _ in range(100):
            if await redis.zcard(settings.keys.queue) == 3:
                break
            await asyncio.sleep(0.02)
        order = [m.decode() for m in await redis.zrange(settings.keys.queue, 0, -1)]
        lane = [m.decode() for m in await redis.zrange(settings.keys.lane("tenant-a"), 0, -1)]
        sync.cancel()
    # single jobs, whatever their priority, go ahead of batch lines: those wait in the tenant's lane
    # until the queue has nothing due (worker/fuse_worker.py, worker/claim.lua)
    assert len(order) == 3 and all(o.startswith("job_") for o in order)
    assert high in order[:2] and order[2] == low  # priority 10 before priority 0
    assert len(lane) == 20 and all(o.startswith(batch_id + ":") for o in lane)


async def test_upload_limits(settings, redis):
    s = settings.with_file(FileConfig(api=ApiConfig(max_file_lines=5, max_file_bytes=4096, chunk_bytes=4096)))
    key = await create_key(redis, s.keys, "t")
    server, task, base = await serve(s)
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            r = await _upload(c, key, b"\n".join(_line(i) for i in range(6)))
            assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_lines"
            r = await _upload(c, key, b"x" * 5000)
            assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
            r = await _upload(c, key, b"x" * 100_000)  # refused on its Content-Length alone
            assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
            r = await c.post(
                "/v1/files", headers=_h(key), files={"file": ("f", b"{}")}, data={"purpose": "vision"}
            )
            assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
            ok = await _upload(c, key, b"\n".join(_line(i) for i in range(5)))
            assert ok.status_code == 200 and ok.json()["bytes"] > 0
    finally:
        server.should_exit = True
        await task
    left = [k async for k in redis.scan_iter(match=f"{s.keys.ns}:file:*")]
    assert len(left) == 2  # the accepted file's metadata and chunks; refused uploads leave nothing


@pytest.mark.one_server
def test_keys_cli(settings):
    env = subprocess_env(settings)

    def fb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "producer.cli", *args], env=env, capture_output=True, text=True, timeout=60
        )

    created = fb("keys", "create", "acme")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("fbx_") and len(key) > 40
    listed = fb("keys", "list")
    assert "acme" in listed.stdout and key not in listed.stdout
    key_id = listed.stdout.splitlines()[1].split()[0]
    assert fb("keys", "revoke", key_id).returncode == 0
    assert "acme" not in fb("keys", "list").stdout
    assert fb("keys", "revoke", key_id).returncode == 1
    assert fb("keys", "create", "bad name!").returncode == 2


async def test_cancel_while_queued_answers_every_line(api, key_a):  # noqa: F811
    # no worker: every line is still queued when the cancel comes (maybe during validation)
    from openai import AsyncOpenAI

    c = AsyncOpenAI(base_url=api.v1, api_key=key_a, max_retries=0)
    f = await c.files.create(file=("q.jsonl", b"\n".join(_line(i) for i in range(3000))), purpose="batch")
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    got = await c.batches.cancel(b.id)
    assert got.status in ("cancelling", "cancelled")
    for _ in range(300):
        got = await c.batches.retrieve(b.id)
        if got.status == "cancelled":
            break
        await asyncio.sleep(0.05)
    assert (got.status, got.request_counts.total, got.request_counts.failed) == ("cancelled", 3000, 3000)
    assert got.error_file_id and got.output_file_id is None
    errs = (await c.files.content(got.error_file_id)).text.splitlines()
    assert len(errs) == 3000 and all(json.loads(e)["error"]["code"] == "batch_cancelled" for e in errs)


async def test_sync_request_times_out_without_a_worker_and_the_job_stays(settings, redis):
    s = settings.with_file(FileConfig(api=ApiConfig(sync_timeout_s=0.5)))
    key = await create_key(redis, s.keys, "t")
    server, task, base = await serve(s)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}
            r = await c.post("/v1/chat/completions", headers=_h(key), json=body)
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            job_id = r.json()["error"]["message"].split()[1]
            assert (await c.get(f"/v1/jobs/{job_id}", headers=_h(key))).json()["status"] == "queued"
    finally:
        server.should_exit = True
        await task
