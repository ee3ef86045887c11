"""Ops endpoints on a real `fusebox api` server: providers, breaker forcing (audited), SSE, /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.config import FileConfig, Settings
from tests.integration.api_fixtures import admin_key, api, key_a, worker  # noqa: F401
from tests.integration.helpers import batch_lines

CONFIG = {
    "providers": {
        "alpha": {"type": "simulated", "max_concurrency": 4, "rpm": 600, "models": ["m1"]},
        "beta": {"type": "simulated", "max_concurrency": 2},
    }
}


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "data").with_file(
        FileConfig.model_validate(CONFIG)
    )


def _client(api, key: str | None) -> httpx.AsyncClient:  # noqa: F811
    h = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=api.base, headers=h, timeout=30)


async def test_ops_endpoints_need_an_admin_key(api, key_a, admin_key) -> None:  # noqa: F811
    async with _client(api, None) as anon, _client(api, key_a) as tenant, _client(api, admin_key) as admin:
        for path in ("/v1/providers", "/v1/providers/alpha", "/v1/providers/alpha/health", "/v1/events"):
            r = await anon.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key", path
            r = await tenant.get(path)
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", path
        r = await tenant.post("/v1/providers/alpha/breaker", json={"action": "open"})
        assert r.status_code == 403
        r = await admin.get("/v1/providers")
        assert r.status_code == 200
        # the breaker was not touched by the refused call
        (alpha,) = [p for p in r.json() if p["name"] == "alpha"]
        assert alpha["scopes"][0]["state"] == "closed"


async def test_providers_list_state_and_limits(api, admin_key) -> None:  # noqa: F811
    async with _client(api, admin_key) as admin:
        r = await admin.get("/v1/providers")
        names = {p["name"] for p in r.json()}
        assert {"alpha", "beta", "simulated"} <= names
        alpha = (await admin.get("/v1/providers/alpha")).json()
        assert alpha["type"] == "simulated" and alpha["models"] == ["m1"]
        (scope,) = alpha["scopes"]
        assert scope["scope"] == "alpha" and scope["max_concurrency"] == 4 and scope["rpm"] == 600
        for k in (
            "failure_rate",
            "slow_rate",
            "calls",
            "failures",
            "in_flight",
            "effective_limit",
            "rpm_used",
            "latency_ms",
            "last_transition",
            "next_change_at",
        ):
            assert k in scope
        r = await admin.get("/v1/providers/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        h = (await admin.get("/v1/providers/alpha/health")).json()
        assert h["name"] == "alpha" and h["ok"] is True


async def test_force_breaker_is_applied_and_audited(api, admin_key) -> None:  # noqa: F811
    async with _client(api, admin_key) as admin:
        r = await admin.post(
            "/v1/providers/beta/breaker", json={"action": "open", "reason": "vendor incident 42"}
        )
        assert r.status_code == 200 and r.json()["state"] == "forced_open"
        assert (await admin.get("/v1/providers/beta")).json()["scopes"][0]["state"] == "forced_open"
        r = await admin.post("/v1/providers/beta/breaker", json={"action": "disable"})
        assert r.json()["state"] == "disabled"
        r = await admin.post("/v1/providers/beta/breaker", json={"action": "reset", "reason": "recovered"})
        assert r.json()["state"] == "closed"
        trail = (await admin.get("/v1/providers/beta/transitions")).json()
        assert [t["to"] for t in trail[:3]] == ["closed", "disabled", "forced_open"]
        assert trail[2]["actor"] == "ops" and trail[2]["why"] == "vendor incident 42"
        assert trail[0]["actor"] == "ops" and trail[0]["why"] == "recovered"
        r = await admin.post("/v1/providers/beta/breaker", json={"action": "explode"})
        assert r.status_code == 400


async def _sse_events(resp: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    event, data = "message", ""
    async for line in resp.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def test_event_stream_delivers_transitions_and_provider_state(api, admin_key) -> None:  # noqa: F811
    async with _client(api, admin_key) as admin:
        seen: list[tuple[str, Any]] = []

        async def read() -> None:
            async with admin.stream("GET", "/v1/events") as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                async for ev in _sse_events(resp):
                    seen.append(ev)
                    if ev[0] == "transition" and ev[1]["scope"] == "alpha" and ev[1]["to"] == "forced_open":
                        return

        reader = asyncio.create_task(read())
        for _ in range(200):  # wait until the stream has sent its first provider state
            if any(e == "providers" for e, _ in seen):
                break
            await asyncio.sleep(0.05)
        await admin.post("/v1/providers/alpha/breaker", json={"action": "open", "reason": "drill"})
        await asyncio.wait_for(reader, 30)
    kinds = [e for e, _ in seen]
    assert kinds[0] == "transitions" and "providers" in kinds and "batches" in kinds
    (tr,) = [d for e, d in seen if e == "transition"]
    assert tr["actor"] == "ops" and tr["why"] == "drill" and tr["from"] == "closed"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.usefixtures("worker")
async def test_metrics_move_as_a_batch_runs_and_a_breaker_is_forced(api, admin_key) -> None:  # noqa: F811
    async with _client(api, None) as anon, _client(api, admin_key) as admin:
        before = _samples((await anon.get("/metrics")).text)
        assert before[("fusebox_redis_up", ())] == 1
        assert before[("fusebox_breaker_state", (("scope", "alpha"), ("state", "closed")))] == 1
        assert before[("fusebox_concurrency_limit", (("scope", "alpha"),))] == 4
        # a small batch through the API and the worker
        lines = "\n".join(batch_lines(20, "alpha/m1", "q{i}", prefix="r"))
        f = await admin.post(
            "/v1/files", files={"file": ("b.jsonl", lines.encode())}, data={"purpose": "batch"}
        )
        assert f.status_code == 200, f.text
        b = await admin.post(
            "/v1/batches",
            json={
                "input_file_id": f.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        bid = b.json()["id"]
        for _ in range(600):
            st = (await admin.get(f"/v1/batches/{bid}")).json()
            if st["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert st["request_counts"]["completed"] == 20
        await admin.post("/v1/providers/alpha/breaker", json={"action": "open"})
        after = _samples((await anon.get("/metrics")).text)
        # the batch left nothing due; the worker's own cron job (every 5 s) may be, until it is claimed
        for _ in range(50):
            if after[("fusebox_queue_jobs", (("state", "due"),))] == 0:
                break
            await asyncio.sleep(0.1)
            after = _samples((await anon.get("/metrics")).text)
    assert after[("fusebox_breaker_state", (("scope", "alpha"), ("state", "forced_open")))] == 1
    assert after[("fusebox_breaker_state", (("scope", "alpha"), ("state", "closed")))] == 0
    assert after[("fusebox_queue_jobs", (("state", "due"),))] == 0
    assert ("fusebox_workers_wanted", ()) in after


async def test_the_api_closes_its_providers_http_sessions_on_shutdown(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health checks open a provider's HTTP session; the app's shutdown closes it (it was left for
    the garbage collector: 'Unclosed client session' at exit)."""
    from producer.api.app import create_app
    from shared.providers.http import HTTPProvider

    monkeypatch.setenv("FB_OPS_KEY", "sk-ops-" + "x" * 16)
    endpoint = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "FB_OPS_KEY"}
    app = create_app(settings.with_file(FileConfig.model_validate({"providers": {"gamma": endpoint}})))
    async with app.router.lifespan_context(app):
        p = app.state.ctx.router.providers["gamma"]
        assert isinstance(p, HTTPProvider)
        h = await p.health()  # nothing listens on port 9: a failed check, its session open
        assert h.ok is False and p._client is not None
        session = p._client.session  # type: ignore[union-attr]
        assert not session.closed
    assert p._client is None and session.closed
