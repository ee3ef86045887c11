"""The unchanged official anthropic SDK against `fusebox api`, answered by an OpenAI-compatible provider.

The provider is Fusebox's simulator speaking OpenAI's wire format over real HTTP, so every Anthropic
request is translated, queued, routed, called, and translated back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

from shared.config import FileConfig, Settings
from shared.embedded import free_port
from tests.integration.api_fixtures import api, key_a, key_b, worker  # noqa: F401

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def simulator_url():  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "simulate", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/_sim/stats", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("the simulator exited")
            time.sleep(0.05)
        else:
            raise RuntimeError("the simulator did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def settings(redis_url: str, namespace: str, tmp_path, simulator_url: str) -> Settings:  # type: ignore[no-untyped-def]
    cfg = {
        "providers": {
            "compat": {
                "type": "openai",
                "base_url": simulator_url + "/v1",
                "models": ["gpt-4o-mini", "text-embedding-3-small"],
                "max_concurrency": 8,
            }
        }
    }
    os.environ.setdefault("FUSEBOX_TEST_DUMMY_KEY", "sk-test-not-a-real-key")
    cfg["providers"]["compat"]["api_key_env"] = "FUSEBOX_TEST_DUMMY_KEY"
    return Settings(redis_url=redis_url, namespace=namespace, data_dir=tmp_path / "data").with_file(
        FileConfig.model_validate(cfg)
    )


def _client(api, key: str) -> AsyncAnthropic:  # noqa: F811
    return AsyncAnthropic(base_url=api.base, api_key=key, max_retries=0, timeout=30)


async def test_messages_create_through_any_provider(api, key_a) -> None:  # noqa: F811
    c = _client(api, key_a)
    msg = await c.messages.create(
        model="gpt-4o-mini",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello there"}],
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0

    tools = [
        {
            "name": "get_weather",
            "description": "weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    msg = await c.messages.create(
        model="gpt-4o-mini",
        max_tokens=50,
        tools=tools,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict)
    assert msg.stop_reason == "tool_use"


async def test_errors_come_in_anthropic_shape(api, key_a) -> None:  # noqa: F811
    c = _client(api, key_a)
    with pytest.raises(anthropic.NotFoundError) as e:
        await c.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        await c.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    bad = AsyncAnthropic(base_url=api.base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        await bad.messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "authentication_error"


async def _ended(c: AsyncAnthropic, batch_id: str) -> anthropic.types.messages.MessageBatch:
    for _ in range(600):
        b = await c.messages.batches.retrieve(batch_id)
        if b.processing_status == "ended":
            return b
        await asyncio.sleep(0.1)
    raise AssertionError("batch never ended")


async def test_message_batches_workflow_and_tenant_isolation(api, key_a, key_b) -> None:  # noqa: F811
    c = _client(api, key_a)
    requests = [
        {
            "custom_id": f"q{i}",
            "params": {
                "model": "gpt-4o-mini",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(12)
    ]
    requests.append(
        {
            "custom_id": "bad-model",
            "params": {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        }
    )
    requests.append(
        {"custom_id": "bad-params", "params": {"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}}
    )
    batch = await c.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    done = await _ended(c, batch.id)
    assert done.request_counts.succeeded == 12 and done.request_counts.errored == 2
    assert done.results_url and done.ended_at is not None
    results = {r.custom_id: r async for r in await c.messages.batches.results(batch.id)}
    assert set(results) == {r["custom_id"] for r in requests}
    assert all(results[f"q{i}"].result.type == "succeeded" for i in range(12))
    assert results["q3"].result.message.content[0].text
    assert results["bad-model"].result.type == "errored"
    assert results["bad-params"].result.error.error.type == "invalid_request_error"

    listed = [b.id async for b in c.messages.batches.list(limit=10)]
    assert batch.id in listed
    # another tenant sees nothing of it
    other = _client(api, key_b)
    with pytest.raises(anthropic.NotFoundError):
        await other.messages.batches.retrieve(batch.id)
    assert [b.id async for b in other.messages.batches.list()] == []
    with pytest.raises(anthropic.NotFoundError):
        await other.messages.batches.cancel(batch.id)


async def test_duplicate_custom_ids_are_refused_whole(api, key_a) -> None:  # noqa: F811
    c = _client(api, key_a)
    p = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.BadRequestError) as e:
        await c.messages.batches.create(
            requests=[{"custom_id": "a", "params": p}, {"custom_id": "a", "params": p}]
        )
    assert "more than once" in e.value.body["error"]["message"]
    assert [b.id async for b in c.messages.batches.list()] == []


async def test_cancel_answers_unstarted_requests_as_canceled(api, key_a, settings, redis) -> None:  # noqa: F811
    c = _client(api, key_a)
    # force the provider's breaker open so nothing can start: every line is still queued at cancel
    from shared.gate import Gate
    from shared.providers.registry import build_providers

    providers = build_providers(settings.file)
    gate = Gate(redis, settings.keys, settings.file, {n: p.config for n, p in providers.items()})
    await gate.force("compat", "open")
    p = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    batch = await c.messages.batches.create(requests=[{"custom_id": f"c{i}", "params": p} for i in range(5)])
    cancelled = await c.messages.batches.cancel(batch.id)
    assert cancelled.processing_status in ("canceling", "ended")
    done = await _ended(c, batch.id)
    assert done.request_counts.canceled == 5 and done.request_counts.succeeded == 0
    results = [r async for r in await c.messages.batches.results(batch.id)]
    assert sorted(r.custom_id for r in results) == [f"c{i}" for i in range(5)]
    assert {r.result.type for r in results} == {"canceled"}
