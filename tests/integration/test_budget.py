"""Spend caps: a batch stops at its cap (status says why) and resumes when it is raised; a single
job over its tenant's daily budget fails with ``budget_exceeded``; spending never passes a cap by
more than one reservation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from producer.client import FuseboxClient
from shared import audit, budget
from shared.config import FileConfig, Settings
from worker.jobs import CTX_KEY
from worker.settings import build_worker

# $1000 per 1M tokens: about a cent per call of these few-token lines.
CONFIG = {
    "prices": {"simulated/chat": {"input": 1000.0, "output": 1000.0}},
    "worker": {"max_jobs": 4},
}
MAX_TOKENS = 4


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "d").with_file(
        FileConfig.model_validate(CONFIG)
    )


@pytest.fixture
async def worker(settings: Settings, redis: Any) -> AsyncIterator[Any]:
    w = build_worker(settings, redis, handle_signals=False)
    ex = w.ctx[CTX_KEY]
    ex.calls.budget_recheck_s = 0.2  # a waiting line checks its budget again soon
    ex.budgets.ttl = 0.05  # and sees a raised cap at once
    task = asyncio.create_task(w.async_run())
    yield w
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await w.close()


def _line(i: int) -> str:
    body = {
        "model": "simulated/chat",
        "messages": [{"role": "user", "content": f"q{i}"}],
        "max_tokens": MAX_TOKENS,
    }
    return json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})


async def test_batch_pauses_at_its_cap_and_resumes_when_raised(
    client: FuseboxClient, redis: Any, settings: Settings
) -> None:
    keys = settings.keys
    sub = await client.submit_batch([_line(i) for i in range(20)], tenant="tenant-a", batch_id="b-budget")
    cap = 0.05
    await budget.set_cap(redis, keys, batch_id=sub.batch_id, usd=cap, actor="test")
    w = build_worker(settings, redis, handle_signals=False)
    ex = w.ctx[CTX_KEY]
    ex.calls.budget_recheck_s, ex.budgets.ttl = 0.2, 0.05
    task = asyncio.create_task(w.async_run())
    try:
        obj: dict[str, Any] = {}
        for _ in range(300):  # until lines wait for the budget
            obj = await client.batch(sub.batch_id)
            if obj.get("paused"):
                break
            await asyncio.sleep(0.05)
        assert obj.get("paused") and "budget" in obj["paused"], obj
        await asyncio.sleep(1.0)  # several re-checks: nothing more runs while the cap holds
        obj = await client.batch(sub.batch_id)
        done = obj["request_counts"]["completed"]
        assert 0 < done < 20 and obj["request_counts"]["failed"] == 0
        spent = await budget.spent(redis, keys, batch_id=sub.batch_id)
        costs = [r.cost_usd for r in [x async for x in client.results(sub.batch_id)] if r is not None]
        one_reservation = max(costs)  # actual == estimate here (max_tokens replies)
        assert spent <= cap + one_reservation + 1e-9
        assert sum(costs) == pytest.approx(spent)  # reservations were replaced by real costs

        await budget.set_cap(redis, keys, batch_id=sub.batch_id, usd=10.0, actor="test")
        await client.wait_batch(sub.batch_id, timeout=60)
        obj = await client.batch(sub.batch_id)
        assert obj["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
        assert obj["paused"] is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await w.close()
    trail = await audit.read(redis, keys, 10)
    assert [(e["action"], e["target"], e["details"]["usd"]) for e in trail[:2]] == [
        ("budget.set", f"batch:{sub.batch_id}", 10.0),
        ("budget.set", f"batch:{sub.batch_id}", cap),
    ]


async def test_single_job_over_its_tenant_budget_fails(
    client: FuseboxClient, redis: Any, settings: Settings, worker: Any
) -> None:
    keys = settings.keys
    body = {
        "model": "simulated/chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": MAX_TOKENS,
    }
    await budget.set_cap(redis, keys, tenant="tenant-a", usd=0.025, actor="test")
    results = [await client.wait(await client.submit(body, tenant="tenant-a"), timeout=30) for _ in range(6)]
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert ok and refused
    assert all(r.error is not None and r.error.code == "budget_exceeded" for r in refused)
    assert "tenant tenant-a's daily budget" in refused[0].error.message  # type: ignore[union-attr]
    spent = await budget.spent(redis, keys, tenant="tenant-a")
    assert spent <= 0.025 + max(r.cost_usd for r in ok) + 1e-9
    assert sum(r.cost_usd for r in ok) == pytest.approx(spent)
    # Another tenant, and jobs with no tenant, are not limited by it.
    other = await client.wait(await client.submit(body, tenant="tenant-b"), timeout=30)
    plain = await client.wait(await client.submit(body), timeout=30)
    assert other.status_code == 200 and plain.status_code == 200
