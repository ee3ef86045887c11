"""The whole path: a batch submitted with a webhook, run by a worker, finalized, and announced by a
signed webhook that the `standardwebhooks` package verifies; a single job's webhook too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from producer.client import FuseboxClient
from shared.config import FileConfig, WebhookConfig
from shared.ssrf import UnsafeURLError
from shared.webhooks import generate_secret
from tests.integration.helpers import running_worker, serve_app


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serve_app(app, access_log=None) as url:
        yield f"{url}/hook", got


async def _until(pred, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_batch_and_job_webhooks_are_signed_and_delivered(settings, redis, hook, monkeypatch):
    url, got = hook
    secret = generate_secret()
    monkeypatch.setenv("FUSEBOX_WEBHOOK_SECRET", secret)
    s = settings.with_file(FileConfig(webhooks=WebhookConfig(allow_hosts=["127.0.0.1"])))
    client = FuseboxClient(redis, s)
    body = {"model": "simulated/chat", "messages": [{"role": "user", "content": "hi"}]}
    lines = [
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        for i in range(30)
    ] + ["{broken"]
    async with running_worker(s, redis):
        sub = await client.submit_batch(lines, webhook=url, metadata={"run": "nightly"})
        job_id = await client.submit(
            {"model": "simulated/chat", "messages": [{"role": "user", "content": "one"}]}, webhook=url
        )
        await _until(lambda: len(got) >= 2)
    verifier = Webhook(secret)
    events = {}
    for headers, body in got:
        payload = verifier.verify(body, headers)  # raises if the signature does not match
        events[payload["type"]] = payload
        assert headers["webhook-id"] == payload["id"]
    batch = events["batch.completed"]["data"]
    assert batch["batch_id"] == sub.batch_id and batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 31, "completed": 30, "failed": 1}
    assert batch["metadata"] == {"run": "nightly"} and batch["usage"]["prompt_tokens"] > 0
    job = events["job.completed"]["data"]
    assert job["job_id"] == job_id and job["provider"] == "simulated"
    assert secret not in b"".join(body for _, body in got).decode()


async def test_private_webhook_url_is_refused_at_submission(settings, redis):
    client = FuseboxClient(redis, settings)  # no allow-list
    with pytest.raises(UnsafeURLError) as e:
        await client.submit_batch(['{"custom_id": "a"}'], webhook="http://127.0.0.1:9/hook")
    assert "127.0.0.1" in str(e.value)
    with pytest.raises(UnsafeURLError):
        await client.submit(
            {"model": "simulated/x", "messages": [{"role": "user", "content": "x"}]},
            webhook="http://169.254.169.254/latest/meta-data",
        )
    assert await client.batches() == []  # nothing was created
