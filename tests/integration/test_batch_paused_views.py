"""A batch waiting at its spend cap says so in every API family's batch object, read by the official
SDK clients: the OpenAI Batch keeps ``status`` in_progress and the Anthropic MessageBatch keeps a valid
``processing_status`` (in_progress), and both carry ``fusebox.paused`` (the reason); the native
``GET /v1/fusebox/batches/{id}`` shows ``paused``, the cap and the spend. Raising the cap resumes
them and the note goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from shared.config import FileConfig, Settings
from tests.integration.api_fixtures import admin_key, api, key_a  # noqa: F401
from worker.jobs import CTX_KEY
from worker.settings import build_worker

MODEL = "simulated/chat"
N = 4


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "d").with_file(
        FileConfig.model_validate({"worker": {"max_jobs": 4}})
    )


@pytest.fixture
async def worker_later(settings: Settings, redis: Any) -> AsyncIterator[Any]:
    """Starts the worker when the test calls it (after the caps are set)."""
    started: list[tuple[Any, asyncio.Task[None]]] = []

    def start() -> None:
        w = build_worker(settings, redis, handle_signals=False)
        ex = w.ctx[CTX_KEY]
        ex.calls.budget_recheck_s, ex.budgets.ttl = 0.2, 0.05  # waiting lines see a raised cap soon
        started.append((w, asyncio.create_task(w.async_run())))

    yield start
    for w, task in started:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()


async def _poll(check: Any, timeout: float = 30) -> Any:
    for _ in range(int(timeout / 0.05)):
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_paused_batches_say_why_in_every_api_family(api, key_a, admin_key, worker_later) -> None:  # noqa: F811
    oa = AsyncOpenAI(base_url=api.v1, api_key=key_a, max_retries=0, timeout=30)
    an = AsyncAnthropic(base_url=api.base, api_key=key_a, max_retries=0, timeout=30)
    native = httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {key_a}"}, timeout=30)
    admin = httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    try:
        lines = "".join(
            json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
            for i in range(N)
        )  # fmt: skip
        f = await oa.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
        ob = await oa.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        mb = await an.messages.batches.create(
            requests=[{"custom_id": f"m{i}", "params": params} for i in range(N)]
        )
        ids = (ob.id, mb.id)

        async def native_view(bid: str) -> dict[str, Any]:
            r = await native.get(f"/v1/fusebox/batches/{bid}")
            assert r.status_code == 200, r.text
            return r.json()

        async def views() -> list[dict[str, Any]]:
            return [await native_view(b) for b in ids]

        async def submitted() -> bool:
            return all(v["request_counts"]["total"] == N for v in await views())

        await _poll(submitted)  # the OpenAI batch's lines are queued in the background
        for bid in ids:  # a cap of $0: no line may start
            r = await admin.put(f"/v1/fusebox/budgets/batches/{bid}", json={"usd": 0})
            assert r.status_code == 200, r.text
        worker_later()

        async def both_paused() -> bool:
            return all(v["paused"] for v in await views())

        await _poll(both_paused)
        for bid in ids:
            v = await native_view(bid)
            assert "budget" in v["paused"] and v["budget_usd"] == 0.0 and v["spent_usd"] == 0.0
            assert v["request_counts"] == {"total": N, "completed": 0, "failed": 0}
        o = await oa.batches.retrieve(ob.id)
        assert o.status == "in_progress"
        assert (
            "budget" in o.model_extra["fusebox"]["paused"] and o.model_extra["fusebox"]["budget_usd"] == 0.0
        )
        a = await an.messages.batches.retrieve(mb.id)
        assert a.processing_status == "in_progress"  # a valid value of Anthropic's enum
        assert a.request_counts.processing == N
        assert "budget" in a.model_extra["fusebox"]["paused"]
        listed = {b.id: b async for b in an.messages.batches.list()}
        assert "budget" in listed[mb.id].model_extra["fusebox"]["paused"]

        for bid in ids:
            assert (
                await admin.put(f"/v1/fusebox/budgets/batches/{bid}", json={"usd": 10})
            ).status_code == 200

        async def both_done() -> bool:
            return all(v["status"] == "completed" for v in await views())

        await _poll(both_done, 60)
        o = await oa.batches.retrieve(ob.id)
        assert o.status == "completed" and o.request_counts is not None and o.request_counts.completed == N
        assert o.model_extra["fusebox"] == {"paused": None, "budget_usd": 10.0}
        a = await an.messages.batches.retrieve(mb.id)
        assert a.processing_status == "ended" and a.request_counts.succeeded == N
        assert a.model_extra["fusebox"]["paused"] is None
        assert (await native_view(ob.id))["paused"] is None
    finally:
        await oa.close()
        await an.close()
        await native.aclose()
        await admin.aclose()
