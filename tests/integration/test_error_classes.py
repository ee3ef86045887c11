"""OpenAI 429s that waiting cannot fix (issue 9, defect 8), through a real worker and route.

A quota 429 (``credit_balance_exhausted`` and friends, whatever their ``type``) fails the job at once;
a 429 "Request too large ... TPM" (one request above the whole tokens-per-minute limit) is final for
that candidate only: the job moves to the next candidate without another call to the first.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from producer.client import FuseboxClient
from shared.config import FileConfig, ProviderConfig, RetryConfig, RouteConfig, Settings
from tests.integration.helpers import serve_app
from worker.settings import build_worker

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
TPM = (
    "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Requested "
    "45128. The input or output tokens must be reduced in order to run successfully."
)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Counter[str]]]:
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        mode = request.match_info["mode"]
        calls[mode] += 1
        if mode == "tpm":
            err = {"message": TPM, "type": "tokens", "param": None, "code": "rate_limit_exceeded"}
            return web.json_response({"error": err}, status=429, headers={"retry-after": "1"})
        if mode == "credit":
            err = {
                "message": "Credit balance exhausted.",
                "type": "requests",
                "code": "credit_balance_exhausted",
            }
            return web.json_response({"error": err}, status=429, headers={"retry-after": "1"})
        if mode == "orglimit":
            err = {"message": "Usage limit.", "type": "tokens", "code": "organization_usage_limit_exceeded"}
            return web.json_response({"error": err}, status=429)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_route("POST", "/{mode}/{tail:.*}", handle)
    async with serve_app(app, handle_signals=False) as url:
        yield url, calls


async def test_quota_429_is_final_and_tpm_too_large_moves_to_the_next_candidate(
    settings: Settings, redis: Any, upstream: tuple[str, Counter[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, calls = upstream
    monkeypatch.setenv("FUSEBOX_TEST_KEY", "k" * 24)

    def provider(mode: str) -> ProviderConfig:
        return ProviderConfig(type="openai", base_url=f"{base}/{mode}", api_key_env="FUSEBOX_TEST_KEY",
                              models=["gpt-4o"], timeout=5)  # fmt: skip

    cfg = FileConfig(
        providers={m: provider(m) for m in ("tpm", "credit", "orglimit", "ok")},
        routes={
            "big": RouteConfig(candidates=["tpm/gpt-4o", "ok/gpt-4o"]),
            "broke": RouteConfig(candidates=["credit/gpt-4o", "ok/gpt-4o"]),
            "capped": RouteConfig(candidates=["orglimit/gpt-4o", "ok/gpt-4o"]),
        },
        retry=RetryConfig(max_attempts=3, backoff_base=0.01, backoff_max=0.02),
    )
    s = settings.with_file(cfg)
    client = FuseboxClient(redis, s)
    worker = build_worker(s, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        msgs = [{"role": "user", "content": "hi"}]
        big = await client.wait(await client.submit({"model": "big", "messages": msgs}), timeout=60)
        broke = await client.wait(await client.submit({"model": "broke", "messages": msgs}), timeout=60)
        capped = await client.wait(await client.submit({"model": "capped", "messages": msgs}), timeout=60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()

    # Too large for A's TPM: one call there, never retried or deferred, then B answers.
    assert big.ok and big.provider == "ok", big.error
    assert [(a.provider, a.error_class) for a in big.attempts] == [("tpm", "context_length"), ("ok", None)]
    assert calls["tpm"] == 1
    # Quota: final at the first call whatever the type; no retry, no fallback call.
    for res, mode in ((broke, "credit"), (capped, "orglimit")):
        assert not res.ok and res.error is not None
        assert (res.error.code, res.error.error_class) == ("insufficient_quota", "final")
        assert calls[mode] == 1
    assert calls["ok"] == 1  # only the TPM job's fallback
