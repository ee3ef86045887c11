"""A worker's Prometheus counters move with the jobs it runs: calls by status and error class,
latency, tokens, cost, job outcomes, retries and deferrals."""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families

from producer.client import FuseboxClient
from shared import metrics
from shared.config import FileConfig, Settings
from worker.settings import build_worker


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.render_process().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_worker_counters_follow_the_jobs(settings: Settings, redis) -> None:  # type: ignore[no-untyped-def]
    cfg = FileConfig.model_validate(
        {
            "retry": {"max_attempts": 2, "backoff_base": 0.0},
            "breaker": {"minimum_calls": 1000, "consecutive_failures": 1000},
            "providers": {
                "good": {"type": "simulated", "max_concurrency": 4},
                "bad": {"type": "simulated", "max_concurrency": 4, "options": {"failure_rate": 1.0}},
            },
        }
    )
    settings = settings.with_file(cfg)
    lines = [
        json.dumps(
            {
                "custom_id": f"g{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "good/m", "messages": [{"role": "user", "content": f"hi {i}"}]},
            }
        )
        for i in range(10)
    ] + [
        json.dumps(
            {
                "custom_id": f"b{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "bad/m", "messages": [{"role": "user", "content": f"hi {i}"}]},
            }
        )
        for i in range(3)
    ]
    before = _samples()
    client = FuseboxClient(redis, settings)
    worker = build_worker(settings, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        await client.submit_batch(lines)
        # the failing lines keep being deferred (transient errors never fail a batch line early):
        # wait for the good ones and a few rounds of the bad ones
        for _ in range(600):
            after = _samples()
            if (
                _delta(before, after, "fusebox_jobs_total", kind="chat", outcome="succeeded") >= 10
                and _delta(before, after, "fusebox_provider_retries_total", provider="bad") >= 3
            ):
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ok = dict(provider="good", model="m", status_class="2xx", error_class="")
    assert _delta(before, after, "fusebox_provider_requests_total", **ok) == 10
    bad = dict(provider="bad", model="m", status_class="5xx", error_class="transient")
    assert _delta(before, after, "fusebox_provider_requests_total", **bad) >= 6
    assert (
        _delta(before, after, "fusebox_provider_request_duration_seconds_count", provider="good", model="m")
        == 10
    )
    assert _delta(before, after, "fusebox_jobs_total", kind="chat", outcome="succeeded") == 10
    assert _delta(before, after, "fusebox_tokens_total", provider="good", model="m", type="prompt") > 0
    assert _delta(before, after, "fusebox_provider_retries_total", provider="bad") >= 3
    assert _delta(before, after, "fusebox_job_deferrals_total", reason="retry_wait") >= 1


async def test_fusebox_worker_serves_its_metrics_on_a_port(settings: Settings, redis) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    import httpx

    from shared.embedded import free_port
    from tests.conftest import PYTHON, subprocess_env

    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "worker", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        env=subprocess_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = FuseboxClient(redis, settings)
        lines = [
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "simulated/chat", "messages": [{"role": "user", "content": f"q{i}"}]},
                }
            )
            for i in range(5)
        ]
        sub = await client.submit_batch(lines)
        counts = await client.wait_batch(sub.batch_id, timeout=120)
        assert counts.completed == 5
        seen = 0.0
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(100):
                try:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
                    continue
                fams = {f.name: f for f in text_string_to_metric_families(text)}
                seen = sum(
                    s.value
                    for s in fams["fusebox_jobs"].samples
                    if s.name == "fusebox_jobs_total" and s.labels.get("outcome") == "succeeded"
                )
                if seen >= 5:
                    break
                await asyncio.sleep(0.1)
        assert seen == 5
    finally:
        proc.terminate()
        proc.wait(30)
