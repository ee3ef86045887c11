"""The provider simulator over real loopback HTTP: wire formats, chaos, capacity, outages, admin."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.simulator import (
    SimConfig,
    SimConfigError,
    SimulatorProcess,
    SimulatorServer,
    SimulatorThread,
    load_config,
)
from shared.simulator.behaviour import latency_sampler
from shared.simulator.cli import config_from_args
from shared.simulator.config import LatencyConfig, validate_config

Start = Callable[..., Awaitable[SimulatorServer]]

USER = [{"role": "user", "content": "Say hello to the simulator."}]
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[SimulatorServer] = []

    async def _start(cfg: dict[str, Any] | None = None) -> SimulatorServer:
        sim = SimulatorServer(validate_config(cfg or {}))
        await sim.start()
        servers.append(sim)
        return sim

    yield _start
    for s in servers:
        await s.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=200)) as c:
        yield c


def openai_chat(model: str = "gpt-4o-mini", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **kw}


async def chat_status(c: httpx.AsyncClient, sim: SimulatorServer, route: str = "openai") -> int:
    r = await c.post(sim.url_for(route) + "/chat/completions", json=openai_chat())
    return r.status_code


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# ---- wire formats ----------------------------------------------------------------------------


async def test_openai_chat_completion_shape(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    r = await client.post(sim.base_url + "/v1/chat/completions", json=openai_chat("gpt-4o"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"].startswith("req_")
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and len(choice["message"]["content"]) > 10
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    # a longer prompt costs more prompt tokens
    long = await client.post(
        sim.base_url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 400}]},
    )
    assert long.json()["usage"]["prompt_tokens"] > usage["prompt_tokens"] + 400


async def test_openai_max_tokens_and_n(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    r = (
        await client.post(sim.url_for("openai") + "/chat/completions", json=openai_chat(max_tokens=3))
    ).json()
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 3
    r = (await client.post(sim.url_for("openai") + "/chat/completions", json=openai_chat(n=3))).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in r["choices"]}) == 3
    assert r["usage"]["completion_tokens"] == sum(
        max(1, (len(c["message"]["content"]) + 3) // 4) for c in r["choices"]
    )


async def test_openai_forced_tool_call(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    url = sim.url_for("openai") + "/chat/completions"
    other = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
    r = await client.post(url, json=openai_chat(tools=[WEATHER_TOOL, other], tool_choice="required"))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert isinstance(args["city"], str) and isinstance(args["days"], int) and args["unit"] in ("c", "f")

    named = {"type": "function", "function": {"name": "noop"}}
    r = await client.post(url, json=openai_chat(tools=[WEATHER_TOOL, other], tool_choice=named))
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "noop",
        "arguments": "{}",
    }

    r = await client.post(url, json=openai_chat(tools=[WEATHER_TOOL], tool_choice="auto"))
    msg = r.json()["choices"][0]["message"]
    assert isinstance(msg["content"], str) and "tool_calls" not in msg

    r = await client.post(url, json=openai_chat(tool_choice="required"))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"


async def test_openai_stream_is_sse(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    url = sim.url_for("openai") + "/chat/completions"
    plain = (await client.post(url, json=openai_chat())).json()
    r = await client.post(url, json=openai_chat(stream=True, stream_options={"include_usage": True}))
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert (
        chunks[-1]["choices"] == []
        and chunks[-1]["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    )


async def test_openai_validation_errors(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    url = sim.url_for("openai") + "/chat/completions"
    r = await client.post(url, json={"model": "gpt-4o"})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "Missing required parameter: 'messages'.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "missing_required_parameter",
        }
    }
    r = await client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "We could not parse the JSON body"
    )
    r = await client.post(url, json={"messages": USER})
    assert r.json()["error"]["message"] == "you must provide a model parameter"
    assert sim.stats()["routes"]["openai"]["by_status"] == {"400": 3}


async def test_openai_embeddings(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    url = sim.url_for("openai") + "/embeddings"
    r = await client.post(url, json={"model": "text-embedding-3-small", "input": ["alpha", "beta gamma"]})
    body = r.json()
    assert body["object"] == "list" and body["model"] == "text-embedding-3-small"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 1536 for d in body["data"])
    assert math.isclose(math.fsum(x * x for x in body["data"][0]["embedding"]), 1.0, abs_tol=1e-3)
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}  # ~4 characters a token
    # a text's vector does not depend on its batch
    alone = (await client.post(url, json={"model": "text-embedding-3-small", "input": "beta gamma"})).json()
    assert alone["data"][0]["embedding"] == body["data"][1]["embedding"]
    b64 = await client.post(
        url, json={"model": "m", "input": "x", "dimensions": 8, "encoding_format": "base64"}
    )
    floats = (await client.post(url, json={"model": "m", "input": "x", "dimensions": 8})).json()
    decoded = struct.unpack("<8f", base64.b64decode(b64.json()["data"][0]["embedding"]))
    assert [round(x, 5) for x in decoded] == [round(x, 5) for x in floats["data"][0]["embedding"]]
    tokens = await client.post(url, json={"model": "m", "input": [[1, 2, 3], [4, 5]], "dimensions": 4})
    assert tokens.json()["usage"]["prompt_tokens"] == 5


async def test_anthropic_messages(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    url = sim.url_for("anthropic") + "/v1/messages"
    req = {"model": "claude-sonnet-4-20250514", "max_tokens": 1024, "system": "Be brief.", "messages": USER}
    r = await client.post(url, json=req, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
    assert body["model"] == "claude-sonnet-4-20250514"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert body["usage"]["cache_read_input_tokens"] == 0

    r = await client.post(url, json={**req, "max_tokens": 2}, headers=ANTHROPIC_HEADERS)
    assert r.json()["stop_reason"] == "max_tokens" and r.json()["usage"]["output_tokens"] == 2

    tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    r = await client.post(
        url, json={**req, "tools": [tool], "tool_choice": {"type": "any"}}, headers=ANTHROPIC_HEADERS
    )
    body = r.json()
    assert body["stop_reason"] == "tool_use"
    block = body["content"][0]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["id"].startswith("toolu_")
    assert isinstance(block["input"]["city"], str)


@pytest.mark.parametrize(
    ("mutate", "headers", "message"),
    [
        (lambda b: b.pop("max_tokens"), ANTHROPIC_HEADERS, "max_tokens: Field required"),
        (
            lambda b: b.update(messages=[{"role": "system", "content": "x"}, *USER]),
            ANTHROPIC_HEADERS,
            'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
            'not "system" as an input message role.',
        ),
        (lambda b: None, {"x-api-key": "k"}, "anthropic-version: header is required"),
    ],
)
async def test_anthropic_rejects_what_the_real_api_rejects(
    start: Start,
    client: httpx.AsyncClient,
    mutate: Callable[[dict[str, Any]], Any],
    headers: dict,
    message: str,
) -> None:
    sim = await start()
    body: dict[str, Any] = {"model": "claude-3-5-haiku-20241022", "max_tokens": 10, "messages": USER}
    mutate(body)
    r = await client.post(sim.base_url + "/v1/messages", json=body, headers=headers)
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
        "request_id": r.headers["request-id"],
    }


async def test_gemini_generate_and_embed(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    assert sim.url_for("gemini") == sim.base_url + "/gemini/v1beta"
    base = sim.url_for("gemini") + "/models/"
    req = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
        "generationConfig": {"maxOutputTokens": 500},
    }
    r = await client.post(
        base + "gemini-2.5-flash:generateContent", json=req, headers={"x-goog-api-key": "k"}
    )
    body = r.json()
    cand = body["candidates"][0]
    assert cand["content"]["role"] == "model" and cand["finishReason"] == "STOP"
    assert isinstance(cand["content"]["parts"][0]["text"], str) and cand["content"]["parts"][0]["text"]
    um = body["usageMetadata"]
    assert um["promptTokenCount"] > 0
    assert um["totalTokenCount"] == um["promptTokenCount"] + um["candidatesTokenCount"]
    assert body["modelVersion"] == "gemini-2.5-flash"

    fn = {"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}
    forced = {
        **req,
        "tools": [{"functionDeclarations": [fn]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    r = await client.post(base + "gemini-2.5-flash:generateContent", json=forced)
    part = r.json()["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"]["name"] == "get_weather" and isinstance(
        part["functionCall"]["args"]["city"], str
    )

    bad = {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}
    r = await client.post(base + "gemini-2.5-flash:generateContent", json=bad)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "code": 400,
        "message": "Please use a valid role: user, model.",
        "status": "INVALID_ARGUMENT",
    }

    one = await client.post(
        base + "text-embedding-004:embedContent", json={"content": {"parts": [{"text": "hi"}]}}
    )
    assert len(one.json()["embedding"]["values"]) == 768
    batch = {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": t}]},
                "outputDimensionality": 16,
            }
            for t in ("hi", "there", "you")
        ]
    }
    many = await client.post(base + "text-embedding-004:batchEmbedContents", json=batch)
    vals = [e["values"] for e in many.json()["embeddings"]]
    assert [len(v) for v in vals] == [16, 16, 16]
    # bare path (no route prefix) serves the gemini route too
    r = await client.post(sim.base_url + "/v1beta/models/gemini-2.0-flash:generateContent", json=req)
    assert r.status_code == 200 and r.json()["modelVersion"] == "gemini-2.0-flash"


async def test_ollama_chat_embed_tags(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    base = sim.url_for("ollama")
    req = {"model": "llama3.2", "messages": USER, "stream": False, "options": {"num_predict": 400}}
    body = (await client.post(base + "/api/chat", json=req)).json()
    assert body["model"] == "llama3.2" and body["done"] is True and body["done_reason"] == "stop"
    assert body["message"]["role"] == "assistant" and body["message"]["content"]
    assert body["prompt_eval_count"] > 0 and body["eval_count"] > 0
    assert body["created_at"].endswith("Z")
    # like the real server, /api/chat streams NDJSON unless told not to
    r = await client.post(base + "/api/chat", json={k: v for k, v in req.items() if k != "stream"})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(x["message"]["content"] for x in lines) == body["message"]["content"]
    emb = (
        await client.post(base + "/api/embed", json={"model": "nomic-embed-text", "input": ["a", "b"]})
    ).json()
    assert emb["model"] == "nomic-embed-text" and [len(v) for v in emb["embeddings"]] == [768, 768]
    assert emb["prompt_eval_count"] == 2
    tags = (await client.get(base + "/api/tags")).json()
    assert "llama3.2:latest" in [m["name"] for m in tags["models"]]


async def test_cohere_chat_and_embed(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    base = sim.url_for("cohere")
    auth = {"Authorization": "Bearer co-test"}
    req = {"model": "command-r-plus-08-2024", "messages": [{"role": "system", "content": "Be brief."}, *USER]}
    body = (await client.post(base + "/v2/chat", json=req, headers=auth)).json()
    assert body["finish_reason"] == "COMPLETE"
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"][0]["type"] == "text" and body["message"]["content"][0]["text"]
    assert body["usage"]["billed_units"]["input_tokens"] > 0
    assert body["usage"]["billed_units"]["output_tokens"] == body["usage"]["tokens"]["output_tokens"]
    tool = {"type": "function", "function": WEATHER_TOOL["function"]}
    body = (
        await client.post(base + "/v2/chat", json={**req, "tools": [tool], "tool_choice": "REQUIRED"})
    ).json()
    assert body["finish_reason"] == "TOOL_CALL"
    assert body["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    emb_req = {
        "model": "embed-v4.0",
        "texts": ["a", "b"],
        "input_type": "search_document",
        "output_dimension": 32,
    }
    emb = (await client.post(base + "/v2/embed", json=emb_req)).json()
    assert emb["response_type"] == "embeddings_by_type" and emb["texts"] == ["a", "b"]
    assert [len(v) for v in emb["embeddings"]["float"]] == [32, 32]
    assert emb["meta"]["billed_units"]["input_tokens"] == 2
    r = await client.post(base + "/v2/embed", json={"model": "embed-v4.0", "texts": ["a"]})
    assert r.status_code == 400
    assert r.json() == {
        "message": "invalid request: valid input_type must be provided with the provided model"
    }


async def test_model_lists_and_unknown_models(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"routes": {"openai": {"models": ["gpt-4o"]}, "cohere": {"models": ["command-r"]}}})
    openai = (await client.get(sim.base_url + "/v1/models")).json()
    assert openai == {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}],
    }
    anthropic = (await client.get(sim.base_url + "/v1/models", headers=ANTHROPIC_HEADERS)).json()
    assert (
        "claude-sonnet-4-20250514" in [m["id"] for m in anthropic["data"]] and anthropic["has_more"] is False
    )
    cohere = (await client.get(sim.url_for("cohere") + "/v1/models")).json()
    assert [m["name"] for m in cohere["models"]] == ["command-r"]
    gemini = (await client.get(sim.base_url + "/v1beta/models")).json()
    assert "models/gemini-2.5-flash" in [m["name"] for m in gemini["models"]]

    r = await client.post(sim.url_for("openai") + "/chat/completions", json=openai_chat("gpt-5-nope"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert (
        r.json()["error"]["message"]
        == "The model `gpt-5-nope` does not exist or you do not have access to it."
    )
    r = await client.post(sim.url_for("cohere") + "/v2/chat", json={"model": "command-x", "messages": USER})
    assert r.status_code == 404 and "model 'command-x' not found" in r.json()["message"]
    stats = sim.stats()["routes"]
    assert stats["openai"]["model_list_requests"] == 1 and stats["openai"]["requests"] == 1


async def test_replies_are_deterministic(start: Start, client: httpx.AsyncClient) -> None:
    one, two = await start(), await start()
    req = openai_chat(temperature=0.2)
    a = (await client.post(one.url_for("openai") + "/chat/completions", json=req)).json()
    b = (await client.post(two.url_for("openai") + "/chat/completions", json=req)).json()
    c = (
        await client.post(one.url_for("openai") + "/chat/completions", json=openai_chat(temperature=0.3))
    ).json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"] and a["id"] == b["id"]
    assert c["choices"][0]["message"]["content"] != a["choices"][0]["message"]["content"]
    e1 = (await client.post(one.url_for("ollama") + "/api/embed", json={"model": "m", "input": "x"})).json()
    e2 = (await client.post(two.url_for("ollama") + "/api/embed", json={"model": "m", "input": "x"})).json()
    assert e1["embeddings"] == e2["embeddings"]


# ---- error mix -------------------------------------------------------------------------------


def _route_req(route: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(url suffix, body, headers) for one chat request of the route's format."""
    if route == "openai":
        return "/chat/completions", openai_chat(), {}
    if route == "anthropic":
        return "/v1/messages", {"model": "claude-x", "max_tokens": 50, "messages": USER}, ANTHROPIC_HEADERS
    if route == "gemini":
        return (
            "/models/gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "hi"}]}]},
            {},
        )
    if route == "ollama":
        return "/api/chat", {"model": "llama3.2", "messages": USER, "stream": False}, {}
    return "/v2/chat", {"model": "command-r", "messages": USER}, {}


async def _call(client: httpx.AsyncClient, sim: SimulatorServer, route: str, **kw: Any) -> httpx.Response:
    suffix, body, headers = _route_req(route)
    return await client.post(sim.url_for(route) + suffix, json=body, headers=headers, **kw)


async def test_rate_limit_bodies_and_headers_per_format(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"defaults": {"errors": {"429": 1.0}, "retry_after_s": 1.5}})
    r = await _call(client, sim, "openai")
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert (
        r.headers["x-ratelimit-reset-requests"] == "1.5s"
        and r.headers["x-ratelimit-remaining-requests"] == "0"
    )
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "requests"

    r = await _call(client, sim, "anthropic")
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    reset = datetime.strptime(r.headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(reset.replace(tzinfo=UTC).timestamp() - time.time()) < 60
    assert r.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "rate_limit_error"

    r = await _call(client, sim, "gemini")
    err = r.json()["error"]
    assert r.status_code == 429 and err["code"] == 429 and err["status"] == "RESOURCE_EXHAUSTED"
    retry = [d for d in err["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]

    r = await _call(client, sim, "ollama")
    assert r.status_code == 429 and set(r.json()) == {"error"}
    r = await _call(client, sim, "cohere")
    assert r.status_code == 429 and set(r.json()) == {"message"}
    assert all(
        sim.stats()["routes"][n]["injected"] == {"rate_limit": 1} for n in ("openai", "gemini", "cohere")
    )


async def test_retry_after_header_can_be_turned_off(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"routes": {"gemini": {"errors": {"rate_limit": 1.0}, "retry_after_header": False}}})
    r = await _call(client, sim, "gemini")
    assert r.status_code == 429 and "retry-after" not in r.headers


@pytest.mark.parametrize(
    ("kind", "route", "status", "check"),
    [
        ("500", "openai", 500, lambda b: b["error"]["type"] == "server_error"),
        ("503", "openai", 503, lambda b: b["error"]["type"] == "server_error"),
        (
            "529",
            "anthropic",
            529,
            lambda b: b["error"] == {"type": "overloaded_error", "message": "Overloaded"},
        ),
        ("529", "openai", 503, lambda b: "overloaded" in b["error"]["message"]),
        ("500", "anthropic", 500, lambda b: b["error"]["type"] == "api_error"),
        ("503", "gemini", 503, lambda b: b["error"]["status"] == "UNAVAILABLE"),
        ("500", "gemini", 500, lambda b: b["error"]["status"] == "INTERNAL"),
        ("500", "ollama", 500, lambda b: "error" in b),
        ("503", "cohere", 503, lambda b: "message" in b),
    ],
)
async def test_injected_server_errors(
    start: Start, client: httpx.AsyncClient, kind: str, route: str, status: int, check: Callable[[Any], bool]
) -> None:
    sim = await start({"routes": {route: {"errors": {kind: 1.0}}}})
    r = await _call(client, sim, route)
    assert r.status_code == status
    assert check(r.json())
    assert sim.stats()["routes"][route]["by_status"] == {str(status): 1}


async def test_malformed_body(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"routes": {"openai": {"errors": {"malformed": 1.0}}}})
    r = await _call(client, sim, "openai")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.text.startswith('{"id":"chatcmpl-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


async def test_timeout_holds_until_the_client_gives_up(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start(
        {"routes": {"openai": {"errors": {"timeout": 1.0}}, "cohere": {"errors": {"timeout": 1.0}}}}
    )
    with pytest.raises(httpx.ReadTimeout):
        await _call(client, sim, "openai", timeout=0.3)
    # the client's disconnect frees the slot; nginx's 499 records it
    await eventually(lambda: sim.stats()["routes"]["openai"]["in_flight"] == 0)
    assert sim.stats()["routes"]["openai"]["by_status"] == {"499": 1}
    # a short hold answers 504
    sim.configure({"routes": {"openai": {"timeout_hold_s": 0.05}}})
    assert (await _call(client, sim, "openai")).status_code == 504
    # stopping the server drops held requests at once instead of waiting an hour
    held = asyncio.create_task(_call(client, sim, "cohere", timeout=60))
    await eventually(lambda: sim.stats()["routes"]["cohere"]["in_flight"] == 1)
    await sim.stop()
    with pytest.raises(httpx.TransportError):
        await held


async def test_seeded_error_mix_is_repeatable(start: Start, client: httpx.AsyncClient) -> None:
    cfg = {"seed": 7, "defaults": {"errors": {"429": 0.2, "500": 0.2, "503": 0.1}, "retry_after_s": 0}}
    runs = []
    for _ in range(2):
        sim = await start(cfg)
        runs.append([await chat_status(client, sim) for _ in range(60)])
        stats = sim.stats()["routes"]["openai"]
        assert sum(stats["injected"].values()) == sum(s != 200 for s in runs[-1])
        assert stats["by_status"] == {str(k): runs[-1].count(k) for k in sorted(set(runs[-1]))}
    assert runs[0] == runs[1]
    assert {200, 429, 500, 503} == set(runs[0])


async def test_error_rates_over_one_are_rejected() -> None:
    with pytest.raises(SimConfigError, match="sum to"):
        SimulatorServer(validate_config({"defaults": {"errors": {"429": 0.7, "500": 0.6}}}))


# ---- capacity, outages -----------------------------------------------------------------------


async def test_hidden_capacity_rejects_exactly_the_excess(start: Start, client: httpx.AsyncClient) -> None:
    k, extra = 4, 3
    # Admitted requests are held (timeout kind), so which ones are in flight does not depend on timing.
    sim = await start({"routes": {"openai": {"capacity": k, "errors": {"timeout": 1.0}, "retry_after_s": 2}}})
    tasks = [asyncio.create_task(_call(client, sim, "openai", timeout=30)) for _ in range(k + extra)]
    await eventually(lambda: sum(t.done() for t in tasks) == extra)
    rejected = [t.result() for t in tasks if t.done()]
    assert [r.status_code for r in rejected] == [429] * extra
    assert all(
        r.headers["retry-after"] == "2" and r.headers["x-ratelimit-limit-requests"] == "4" for r in rejected
    )
    stats = sim.stats()["routes"]["openai"]
    assert stats["in_flight"] == k and stats["max_in_flight"] == k
    assert stats["capacity_rejections"] == extra and stats["by_status"] == {"429": extra}
    assert stats["injected"] == {"timeout": k}  # rejected requests never reached the error draw's work
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await eventually(lambda: sim.stats()["routes"]["openai"]["in_flight"] == 0)
    # capacity frees up: a new request is admitted
    sim.configure({"routes": {"openai": {"errors": {"timeout": 0}}}})
    assert await chat_status(client, sim) == 200
    assert sim.stats()["routes"]["openai"]["max_in_flight"] == k


async def test_capacity_under_concurrent_load(start: Start, client: httpx.AsyncClient) -> None:
    k = 5
    sim = await start({"routes": {"ollama": {"capacity": k, "latency": {"ms": 20}}}})
    results = await asyncio.gather(*(_call(client, sim, "ollama") for _ in range(40)))
    codes = [r.status_code for r in results]
    stats = sim.stats()["routes"]["ollama"]
    assert set(codes) <= {200, 429} and codes.count(200) >= k
    assert stats["max_in_flight"] == k
    assert stats["capacity_rejections"] == codes.count(429)
    assert stats["by_status"].get("200") == codes.count(200)


async def test_outage_windows(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"routes": {"openai": {"outages": [[0, 3600]]}, "cohere": {"outages": [[3600, 7200]]}}})
    r = await _call(client, sim, "openai")
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert (await _call(client, sim, "cohere")).status_code == 200  # window not yet open
    assert (await _call(client, sim, "anthropic")).status_code == 200  # other routes unaffected
    stats = sim.stats()["routes"]
    assert stats["openai"]["outage_rejections"] == 1 and stats["openai"]["down"] is True
    assert stats["openai"]["in_flight"] == 0 and stats["openai"]["max_in_flight"] == 0
    assert stats["cohere"]["down"] is False


async def test_runtime_outage_via_admin_endpoint(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    admin = sim.base_url + "/_sim/config"
    r = await client.post(admin, json={"routes": {"gemini": {"down": True}}})
    assert r.status_code == 200 and r.json()["config"]["routes"]["gemini"]["down"] is True
    r = await _call(client, sim, "gemini")
    assert r.status_code == 503 and r.json()["error"]["message"] == "The service is currently unavailable."
    # model listings (health checks) see the outage too
    assert (await client.get(sim.base_url + "/v1beta/models")).status_code == 503
    await client.post(admin, json={"routes": {"gemini": {"down": False}}})
    assert (await _call(client, sim, "gemini")).status_code == 200
    # an outage for the next second, then service resumes by itself
    await client.post(admin, json={"routes": {"anthropic": {"down_for_s": 1.0}}})
    assert (await _call(client, sim, "anthropic")).status_code == 503
    deadline = time.monotonic() + 10
    while (await _call(client, sim, "anthropic")).status_code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_calls_in_flight_when_an_outage_begins_fail_with_it(
    start: Start, client: httpx.AsyncClient
) -> None:
    # The breaker chaos test counts failures in a row: a success landing after the outage began would
    # restart that count, which no real host that went down does.
    sim = await start({"routes": {"openai": {"latency": {"ms": 300}}}})
    calls = [asyncio.create_task(_call(client, sim, "openai")) for _ in range(3)]
    await eventually(lambda: sim.stats()["routes"]["openai"]["in_flight"] == 3)
    sim.configure({"routes": {"openai": {"down": True}}})
    codes = [r.status_code for r in await asyncio.gather(*calls)]
    stats = sim.stats()["routes"]["openai"]
    assert codes == [503, 503, 503] and stats["outage_rejections"] == 3 and stats["by_status"] == {"503": 3}
    sim.configure({"routes": {"openai": {"down": False}}})
    assert (await _call(client, sim, "openai")).status_code == 200


async def test_disconnect_outage_drops_the_connection(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"routes": {"ollama": {"down": True, "outage_mode": "disconnect"}}})
    with pytest.raises(httpx.RemoteProtocolError):
        await _call(client, sim, "ollama")
    assert sim.stats()["routes"]["ollama"]["outage_rejections"] == 1
    assert (await _call(client, sim, "openai")).status_code == 200


async def test_runtime_patch_changes_capacity_and_latency(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    r = await client.post(
        sim.base_url + "/_sim/config",
        json={
            "routes": {"openai": {"capacity": 2, "latency": {"kind": "uniform", "min_ms": 1, "max_ms": 3}}}
        },
    )
    assert r.status_code == 200
    route = sim.routes["openai"]
    assert (
        route.capacity == 2 and route.sample_latency is not None and 0.001 <= route.sample_latency() <= 0.003
    )
    bad = await client.post(sim.base_url + "/_sim/config", json={"routes": {"openai": {"capacity": "lots"}}})
    assert bad.status_code == 400 and "capacity" in bad.json()["error"]
    bad = await client.post(sim.base_url + "/_sim/config", json={"routes": {"x": {"latency": {"ms": 1}}}})
    assert bad.status_code == 400 and "needs a 'format'" in bad.json()["error"]
    assert sim.routes["openai"].capacity == 2  # a rejected patch changes nothing
    # replace: back to a clean config
    r = await client.post(sim.base_url + "/_sim/config", json={"replace": True})
    assert r.json()["config"] == {} and sim.routes["openai"].capacity is None


async def test_stats_and_reset(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"routes": {"cohere": {"errors": {"500": 1.0}}}})
    for _ in range(3):
        await _call(client, sim, "openai")
    await _call(client, sim, "cohere")
    stats = (await client.get(sim.base_url + "/_sim/stats")).json()
    assert stats["routes"]["openai"]["requests"] == 3 and stats["routes"]["openai"]["by_status"] == {"200": 3}
    assert stats["routes"]["openai"]["max_in_flight"] == 1
    assert stats["routes"]["cohere"]["by_status"] == {"500": 1}
    assert stats["routes"]["cohere"]["injected"] == {"server_error": 1}
    assert set(stats["routes"]) == {"openai", "anthropic", "gemini", "ollama", "cohere"}
    reset = (await client.post(sim.base_url + "/_sim/reset")).json()
    for route in reset["routes"].values():
        assert route["requests"] == 0 and route["by_status"] == {} and route["max_in_flight"] == 0
    await _call(client, sim, "openai")
    assert sim.stats()["routes"]["openai"]["requests"] == 1


# ---- routes, auth, context -------------------------------------------------------------------


async def test_extra_routes_and_per_model_overrides(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start(
        {
            "routes": {
                "groq": {"format": "openai", "models": ["llama-3.1-8b-instant"]},
                "openai": {"per_model": {"gpt-4o-mini": {"errors": {"500": 1.0}, "capacity": 1}}},
            }
        }
    )
    assert sim.url_for("groq") == sim.base_url + "/groq/v1"
    r = await client.post(sim.url_for("groq") + "/chat/completions", json=openai_chat("llama-3.1-8b-instant"))
    assert r.status_code == 200 and r.json()["model"] == "llama-3.1-8b-instant"
    assert (
        await client.post(sim.url_for("openai") + "/chat/completions", json=openai_chat("gpt-4o"))
    ).status_code == 200
    assert (
        await client.post(sim.url_for("openai") + "/chat/completions", json=openai_chat())
    ).status_code == 500
    routes = sim.stats()["routes"]
    assert routes["openai"]["by_status"] == {"200": 1}
    assert (
        routes["openai/gpt-4o-mini"]["by_status"] == {"500": 1}
        and routes["openai/gpt-4o-mini"]["capacity"] == 1
    )
    assert routes["groq"]["requests"] == 1
    # a route's prefix only serves its own format
    r = await client.post(sim.base_url + "/groq/v1/messages", json={}, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 404


async def test_api_key_checks(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"defaults": {"api_key": "sk-sim"}})
    url = sim.url_for("openai") + "/chat/completions"
    r = await client.post(url, json=openai_chat())
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "sk-sim" not in r.text
    assert (
        await client.post(url, json=openai_chat(), headers={"Authorization": "Bearer sk-sim"})
    ).status_code == 200
    gem = sim.url_for("gemini") + "/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    r = await client.post(gem, json=body)
    assert r.status_code == 400 and r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert (await client.post(gem + "?key=sk-sim", json=body)).status_code == 200
    headers = {**ANTHROPIC_HEADERS, "x-api-key": "sk-sim"}
    r = await client.post(sim.base_url + "/v1/messages", json=_route_req("anthropic")[1], headers=headers)
    assert r.status_code == 200
    shown = (await client.get(sim.base_url + "/_sim/config")).json()
    assert shown["config"]["defaults"]["api_key"] == "**********"


async def test_context_window(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start({"defaults": {"context_window": 50}})
    long = [{"role": "user", "content": "many words " * 100}]
    r = await client.post(
        sim.url_for("openai") + "/chat/completions", json={"model": "gpt-4o", "messages": long}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 50 tokens" in r.json()["error"]["message"]
    body = {"model": "claude-x", "max_tokens": 10, "messages": long}
    r = await client.post(sim.url_for("anthropic") + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("prompt is too long: ")
    assert (await _call(client, sim, "openai")).status_code == 200  # short prompts still fit


# ---- config, latency, runners, CLI -----------------------------------------------------------


def test_lognormal_latency_matches_mean_and_p99() -> None:
    sample = latency_sampler(LatencyConfig(kind="lognormal", mean_ms=100, p99_ms=600), random.Random(1))
    assert sample is not None
    xs = sorted(sample() for _ in range(20000))
    assert 0.09 < sum(xs) / len(xs) < 0.11
    assert 0.5 < xs[int(len(xs) * 0.99)] < 0.7
    with pytest.raises(SimConfigError):
        latency_sampler(LatencyConfig(kind="lognormal", mean_ms=100, p99_ms=50), random.Random())
    with pytest.raises(SimConfigError):
        latency_sampler(LatencyConfig(kind="lognormal", mean_ms=10, p99_ms=1000), random.Random())
    assert latency_sampler(LatencyConfig(), random.Random()) is None


def test_toml_config_and_cli_flags(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        """
seed = 3
[defaults]
latency = { kind = "uniform", min_ms = 5, max_ms = 10 }
[routes.openai]
capacity = 8
errors = { "429" = 0.1, timeout = 0.05 }
[routes.openai.per_model."gpt-4o"]
capacity = 2
[routes.mistral]
format = "openai"
"""
    )
    cfg = load_config(path)
    assert cfg.routes["openai"].errors.rate_limit == 0.1 and cfg.routes["mistral"].format == "openai"
    sim = SimulatorServer(cfg)
    assert sim.routes["openai"].per_model["gpt-4o"].capacity == 2
    assert sim.routes["openai"].per_model["gpt-4o"].error_total == pytest.approx(0.15)
    assert sim.routes["mistral"].format.name == "openai"

    from producer import simulate_cmd

    parser = argparse.ArgumentParser()
    simulate_cmd.register(parser.add_subparsers(dest="command"))
    flags = [
        "--latency-ms",
        "40",
        "--latency-p99-ms",
        "200",
        "--error-rate",
        "0.3",
        "--error-kinds",
        "429,529",
    ]
    flags += ["--capacity", "3", "--outage", "cohere=5:9"]
    args = parser.parse_args(["simulate", "--port", "0", "--config", str(path), *flags])
    assert args.fn is simulate_cmd._cmd_simulate and args.port == 0
    cfg = config_from_args(args)
    assert cfg.defaults.latency.kind == "lognormal" and cfg.defaults.latency.p99_ms == 200
    assert (cfg.defaults.errors.rate_limit, cfg.defaults.errors.overloaded) == (0.15, 0.15)
    sim = SimulatorServer(cfg)
    # flags set [defaults]; a route that sets its own value in the file keeps it
    assert sim.routes["anthropic"].capacity == 3 and sim.routes["openai"].capacity == 8
    assert sim.routes["cohere"].windows == ((5.0, 9.0),) and sim.routes["openai"].windows == ()
    with pytest.raises(SimConfigError, match="unknown error kind"):
        config_from_args(parser.parse_args(["simulate", "--error-rate", "0.1", "--error-kinds", "418"]))


def test_thread_runner_from_sync_code() -> None:
    cfg = SimConfig.model_validate({"routes": {"openai": {"capacity": 3}}})
    with SimulatorThread(SimulatorServer(cfg)).start() as sim:
        r = httpx.post(sim.url_for("openai") + "/chat/completions", json=openai_chat())
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert sim.stats()["routes"]["openai"]["by_status"] == {"200": 1}
        sim.configure({"routes": {"openai": {"down": True}}})
        assert httpx.post(sim.url_for("openai") + "/chat/completions", json=openai_chat()).status_code == 503
        sim.reset()
        assert sim.stats()["routes"]["openai"]["requests"] == 0
        port = sim.port
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/_sim/stats")


def test_subprocess_runner() -> None:
    cfg = SimConfig.model_validate({"seed": 1, "defaults": {"api_key": "sk-child"}})
    with SimulatorProcess(cfg) as sim:
        assert sim.proc is not None and sim.port > 0
        headers = {"Authorization": "Bearer sk-child"}
        r = httpx.post(sim.url_for("openai") + "/chat/completions", json=openai_chat(), headers=headers)
        assert r.status_code == 200
        assert sim.stats()["routes"]["openai"]["by_status"] == {"200": 1}
        sim.configure({"routes": {"deepseek": {"format": "openai"}}})
        r = httpx.post(
            sim.url_for("deepseek") + "/chat/completions", json=openai_chat("deepseek-chat"), headers=headers
        )
        assert r.status_code == 200 and r.json()["model"] == "deepseek-chat"
        proc = sim.proc
    assert proc.poll() is not None
