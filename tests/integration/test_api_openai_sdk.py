"""The unchanged official openai SDK against `fusebox api`: files, batches, chat, embeddings, tenants."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI

from tests.integration.api_fixtures import admin_key, api, key_a, key_b, worker  # noqa: F401

pytestmark = pytest.mark.usefixtures("worker")


def _jsonl(n: int, bad: tuple[int, ...] = (), url: str = "/v1/chat/completions") -> bytes:
    rows = []
    for i in range(n):
        if i in bad:
            rows.append("{not json")
            continue
        body = (
            {"model": "simulated/chat", "messages": [{"role": "user", "content": f"hi {i}"}]}
            if url.endswith("completions")
            else {"model": "simulated/embed", "input": f"text {i}"}
        )
        rows.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body}))
    return ("\n".join(rows) + "\n").encode()


def _client(api, key: str) -> AsyncOpenAI:  # noqa: F811
    return AsyncOpenAI(base_url=api.v1, api_key=key, max_retries=0, timeout=30)


async def _wait(client: AsyncOpenAI, batch_id: str, timeout: float = 60):
    for _ in range(int(timeout / 0.1)):
        b = await client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not end: {b.status}")


async def test_files_and_batches_workflow(api, key_a):  # noqa: F811
    c = _client(api, key_a)
    data = _jsonl(40, bad=(3, 17))
    f = await c.files.create(file=("in.jsonl", data), purpose="batch")
    assert (f.bytes, f.purpose, f.filename) == (len(data), "batch", "in.jsonl")
    assert (await c.files.content(f.id)).content == data
    assert [x.id async for x in c.files.list()] == [f.id]

    b = await c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert b.status in ("validating", "in_progress", "finalizing", "completed")
    assert b.metadata == {"job": "nightly"} and b.input_file_id == f.id
    done = await _wait(c, b.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        40,
        38,
        2,
    )
    assert done.output_file_id and done.error_file_id

    out = [json.loads(x) for x in (await c.files.content(done.output_file_id)).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"r{i}" for i in range(40) if i not in (3, 17))
    assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["choices"] for o in out)
    errs = [json.loads(x) for x in (await c.files.content(done.error_file_id)).text.splitlines()]
    assert [e["error"]["code"] for e in errs] == ["invalid_json", "invalid_json"]
    assert [e["error"]["message"].split(":")[0] for e in errs] == ["line 4", "line 18"]

    listed = [x.id async for x in c.batches.list(limit=10)]
    assert listed == [b.id]
    meta = await c.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output"

    assert (await c.files.delete(f.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(f.id)


async def test_embedding_batch_and_chat_and_embeddings(api, key_a):  # noqa: F811
    c = _client(api, key_a)
    f = await c.files.create(file=("e.jsonl", _jsonl(10, url="/v1/embeddings")), purpose="batch")
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    done = await _wait(c, b.id)
    assert (done.status, done.request_counts.completed) == ("completed", 10)

    chat = await c.chat.completions.create(
        model="simulated/chat", messages=[{"role": "user", "content": "hello"}]
    )
    assert chat.choices[0].message.content and chat.usage and chat.usage.total_tokens > 0
    emb = await c.embeddings.create(model="simulated/embed", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    models = [m.id async for m in c.models.list()]
    assert "simulated/chat" in models

    with pytest.raises(openai.BadRequestError, match="stream"):
        await c.chat.completions.create(
            model="simulated/chat", messages=[{"role": "user", "content": "x"}], stream=True
        )
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.create(model="nope/none", messages=[{"role": "user", "content": "x"}])


async def test_batch_with_no_valid_line_fails_with_errors(api, key_a):  # noqa: F811
    c = _client(api, key_a)
    f = await c.files.create(file=("bad.jsonl", b"{oops\n\n[1]\n"), purpose="batch")
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await _wait(c, b.id)
    assert done.status == "failed"
    assert done.errors is not None
    assert [(e.code, e.line) for e in done.errors.data] == [("invalid_json", 1), ("invalid_line", 3)]


async def test_cancelling_an_ended_batch_changes_nothing(api, key_a):  # noqa: F811
    c = _client(api, key_a)
    body = b"".join(
        json.dumps(
            {
                "custom_id": f"s{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "slow/chat", "messages": [{"role": "user", "content": "x"}]},
            }
        ).encode()
        + b"\n"
        for i in range(5)
    )
    f = await c.files.create(file=("s.jsonl", body), purpose="batch")
    # 'slow/chat' names no provider: every line fails validation, so the batch ends; cancel must not
    # change an ended batch.
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    await _wait(c, b.id)
    after = await c.batches.cancel(b.id)
    assert after.status == "failed"


async def test_tenants_are_isolated_and_keys_checked(api, key_a, key_b, admin_key):  # noqa: F811
    a, b = _client(api, key_a), _client(api, key_b)
    f = await a.files.create(file=("in.jsonl", _jsonl(3)), purpose="batch")
    batch = await a.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        b.files.retrieve(f.id),
        b.files.content(f.id),
        b.files.delete(f.id),
        b.batches.retrieve(batch.id),
        b.batches.cancel(batch.id),
        b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert [x.id async for x in b.files.list()] == []
    assert [x.id async for x in b.batches.list()] == []
    done = await _wait(a, batch.id)
    with pytest.raises(openai.NotFoundError):
        await b.files.content(done.output_file_id)

    for bad in ("", "fbx_wrong"):
        with pytest.raises(openai.AuthenticationError) as e:
            await _client(api, bad or "x").models.list()
        assert e.value.body["code"] == "invalid_api_key"  # type: ignore[index]


async def test_a_batch_whose_submitter_died_is_resumed_by_the_next_reader(api, key_a, settings, redis):  # noqa: F811
    from producer.batch_input import Validator
    from shared.jobs.store import Store

    c = _client(api, key_a)
    data = _jsonl(40)
    f = await c.files.create(file=("in.jsonl", data), purpose="batch")
    # What a replica leaves behind when it dies after enqueueing the first 15 lines: the record, no lease.
    store = Store(redis, settings.keys)
    batch_id = "batch_" + "d" * 24
    fields = {"tenant": "tenant-a", "input_file_id": f.id, "endpoint": "/v1/chat/completions"}
    await store.create_batch(batch_id, fields)
    v = Validator(batch_id, None, tenant="tenant-a")
    first = [v.parse_jsonl(line, i + 1, i) for i, line in enumerate(data.splitlines()[:15])]
    assert await store.enqueue_chunk(batch_id, first, []) == (15, 0, 0)

    done = await _wait(c, batch_id)
    assert (done.status, done.request_counts.total, done.request_counts.completed) == ("completed", 40, 40)
    out = (await c.files.content(done.output_file_id)).text.splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in out) == sorted(f"r{i}" for i in range(40))
