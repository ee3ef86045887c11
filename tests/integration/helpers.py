"""Helpers several integration test modules use: batch input lines, workers, polling."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from arq.worker import Function, Worker

from shared import codec
from worker.settings import FuseboxWorker, build_worker

if TYPE_CHECKING:
    from bench.harness import Stack
    from shared.schema import JobResult


def batch_lines(
    n: int, model: str = "simulated/chat", content: str = "q {i}", prefix: str = "c"
) -> list[str]:
    """``n`` OpenAI Batch JSONL chat lines: custom_id ``{prefix}{i}``, one user message ``content``
    with ``{i}`` replaced by the line's index."""
    return [
        json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": content.format(i=i)}]}})
        for i in range(n)
    ]  # fmt: skip


@asynccontextmanager
async def running_worker(settings: Any, redis: Any) -> AsyncIterator[Any]:
    """An in-process worker on this test's event loop, cancelled on exit; its shutdown hook then closes
    its HTTP sessions (providers, webhooks) as a stopping worker's does (the test's pool stays open)."""
    worker = build_worker(settings, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if worker.on_shutdown is not None:
            worker.ctx.setdefault("redis", redis)  # arq sets it at startup, which a quick cancel may precede
            await worker.on_shutdown(worker.ctx)


def arq_worker(
    settings: Any, pool: Any, functions: list[Function], cls: type[Worker] = FuseboxWorker, **options: Any
) -> Worker:
    """An arq worker on the namespace's queue with Fusebox's job codec, no signal handlers, no kept
    results; ``options`` are the test's own Worker arguments. A FuseboxWorker also takes batch lines
    from the namespace's lanes."""
    if issubclass(cls, FuseboxWorker):
        options = {"lane_keys": settings.keys, "lane_window": settings.file.worker.lane_window, **options}
    return cls(
        functions=functions, queue_name=settings.keys.queue, redis_pool=pool, handle_signals=False,
        keep_result=0, job_serializer=codec.arq_serializer, job_deserializer=codec.arq_deserializer,
        **options,
    )  # fmt: skip


@asynccontextmanager
async def serve_app(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def byok_config(fleet_url: str, fleet_key_env: str, models: list[str]) -> dict[str, Any]:
    """fusebox.toml for the BYOK tests: the fleet's ``openai`` provider on the simulator, one attempt
    per call, every breaker tripping after 3 failures in a row (tenants' scopes included), and
    tenants' own entries allowed to point at the simulator on loopback."""
    fleet = {"type": "openai", "base_url": fleet_url, "api_key_env": fleet_key_env, "models": models}
    return {
        "providers": {"openai": fleet},
        "breaker": {"minimum_calls": 3, "consecutive_failures": 3, "wait_open_seconds": 600},
        "retry": {"max_attempts": 1},
        "worker": {"max_jobs": 8},
        "api": {"provider_allow_hosts": ["127.0.0.1"]},
    }


def stop_processes(procs: Iterable[subprocess.Popen[Any]], timeout: float = 20) -> None:
    """SIGTERM every process still running, wait for each, SIGKILL the ones that do not exit."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def poll(check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """``check()``'s first truthy value, tried every ``every`` s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def stack_exactly_once(st: Stack, batch_id: str, n: int, prefix: str = "c") -> list[JobResult]:
    """The batch completed with every line answered once, in input order; its results."""
    assert st.client is not None
    counts = st.wait(batch_id, timeout=5)
    assert (counts.status, counts.total, counts.completed, counts.failed) == ("completed", n, n, 0)
    results = st.results(batch_id)
    assert [r.custom_id if r else None for r in results] == [f"{prefix}{i}" for i in range(n)]
    k = st.settings.keys
    assert st.run(st.client.redis.hlen(k.batch_results(batch_id))) == n
    assert st.run(st.client.redis.llen(k.batch_done(batch_id))) == n  # no line counted twice
    return [r for r in results if r is not None]


# An OpenAI-shaped tool definition the provider-fidelity tests share.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
