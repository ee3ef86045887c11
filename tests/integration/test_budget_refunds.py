"""A spend reservation made before a call is refunded whenever the call never happens or is cut off:
the job cancelled mid-call (worker shutdown past its grace, an abort), a run past job_timeout, an
unexpected error between reserving and calling or inside the call, a provider error. After any mix of
those, the tenant's and the batch's spend equal exactly the real cost of the calls that answered,
and the gate's token reservations and leases are given back too.

The executor runs in-process on a real server; the provider is the simulated one wrapped so each
test decides what its calls do (answer, hang, raise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from arq import Retry
from redis.exceptions import ResponseError

from shared import budget, codec
from shared.config import FileConfig, Settings
from shared.errors import ErrorClass, ProviderError
from shared.schema import ChatRequest, JobSpec
from worker.executor import Executor
from worker.settings import build_executor

MODEL = "simulated/chat"
CAP = 100.0  # never reached: only the accounting is under test
CONFIG = {
    # $1000 per 1M tokens: a call costs about a cent, so a leaked reservation shows.
    "prices": {MODEL: {"input": 1000.0, "output": 1000.0}},
    "providers": {"simulated": {"type": "simulated", "tpm": 1_000_000}},
    "retry": {"max_attempts": 1},
}

Behaviour = Callable[[], Awaitable[None]]


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "d").with_file(
        FileConfig.model_validate(CONFIG)
    )


@pytest.fixture
async def ex(settings: Settings, redis: Any) -> Any:
    e = build_executor(settings, redis)
    await budget.set_cap(redis, settings.keys, tenant="t1", usd=CAP, actor="test")
    await budget.set_cap(redis, settings.keys, batch_id=await _batch(redis, settings), usd=CAP, actor="test")
    yield e
    await e.router.providers["simulated"].aclose()


async def _batch(redis: Any, settings: Settings) -> str:
    await redis.hset(settings.keys.batch("b1"), mapping={"status": "in_progress"})
    return "b1"


class Scripted:
    """Wraps the provider's ``chat``: each call runs the next behaviour, then answers (if it returns)."""

    def __init__(self, ex: Executor, *behaviours: Behaviour) -> None:
        self.todo = list(behaviours)
        self.entered = asyncio.Event()
        p = ex.router.providers["simulated"]
        real = p.chat

        async def chat(req: Any, model: str) -> Any:
            self.entered.set()
            if self.todo:
                await self.todo.pop(0)()
            return await real(req, model)

        p.chat = chat  # type: ignore[method-assign]


async def hang() -> None:
    await asyncio.sleep(3600)


async def boom() -> None:
    raise RuntimeError("a bug in an adapter")


async def server_error() -> None:
    raise ProviderError(ErrorClass.TRANSIENT, "upstream 500", status=500, code="server_error")


async def ok() -> None:
    return None


def _spec(i: int, batch: bool = False) -> bytes:
    req = ChatRequest(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8)
    spec = JobSpec(id=f"j{i}", request=req, tenant="t1", batch_id="b1" if batch else None, line=i)
    return codec.encode_spec(spec)


async def _spend(redis: Any, settings: Settings) -> tuple[float, float]:
    return (
        await budget.spent(redis, settings.keys, tenant="t1"),
        await budget.spent(redis, settings.keys, batch_id="b1"),
    )


async def _run_until_done(ex: Executor, raw: bytes) -> Any:
    """Run a job the way arq would: again after each Retry (no wait), until it has a result."""
    for try_ in range(1, 20):
        try:
            return await ex.run(raw, try_)
        except Retry:
            continue
    raise AssertionError("the job never finished")


async def _gate_held(ex: Executor) -> tuple[int, float | None]:
    """The simulated scope's leases and tokens counted this minute: (0, 0) once every call that
    never answered gave its lease and its token reservation back."""
    snap = await ex.gate.snapshot("simulated")
    return snap["in_flight"], snap["tpm_used"]


async def test_cancelled_mid_call_refunds_its_reservation(
    ex: Executor, redis: Any, settings: Settings
) -> None:
    s = Scripted(ex, hang)
    task = asyncio.create_task(ex.run(_spec(1, batch=True)))
    await asyncio.wait_for(s.entered.wait(), 10)
    assert (await _spend(redis, settings))[0] > 0  # reserved while the call runs
    task.cancel()  # a worker shutdown past its grace, or an abort: arq cancels the job's task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _spend(redis, settings) == (0.0, 0.0)
    assert await _gate_held(ex) == (0, 0)


async def test_job_timeout_mid_call_refunds(ex: Executor, redis: Any, settings: Settings) -> None:
    ex.job_timeout = 1.0
    Scripted(ex, hang)
    with pytest.raises(Retry):  # the run is cut off before arq's timeout and runs again later
        await ex.run(_spec(2), 1)
    assert await _spend(redis, settings) == (0.0, 0.0)


async def test_unexpected_error_in_the_call_refunds(ex: Executor, redis: Any, settings: Settings) -> None:
    Scripted(ex, boom)
    with pytest.raises(Retry):  # an internal error: the job runs again with backoff
        await ex.run(_spec(3, batch=True), 1)
    assert await _spend(redis, settings) == (0.0, 0.0)
    assert await _gate_held(ex) == (0, 0)


async def test_error_between_reserve_and_call_refunds(
    ex: Executor, redis: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def admit(*a: Any, **kw: Any) -> Any:
        raise ResponseError("a script error")

    monkeypatch.setattr(ex.gate, "admit", admit)
    with pytest.raises(Retry):
        await ex.run(_spec(4, batch=True), 1)
    assert await _spend(redis, settings) == (0.0, 0.0)


async def test_spend_equals_the_real_cost_after_every_kind_of_cut_off_call(
    ex: Executor, redis: Any, settings: Settings
) -> None:
    # Three jobs: each is cut off or fails first (bug, provider 500, timeout) and answers on a later run.
    ex.job_timeout = 1.0
    Scripted(ex, boom, ok, server_error, ok, hang, ok)
    results = [await _run_until_done(ex, _spec(10 + i, batch=True)) for i in range(3)]
    assert [r.status_code for r in results] == [200, 200, 200]
    real = sum(r.cost_usd for r in results)
    assert real > 0
    tenant, batch = await _spend(redis, settings)
    assert tenant == pytest.approx(real, abs=1e-12) and batch == pytest.approx(real, abs=1e-12)
