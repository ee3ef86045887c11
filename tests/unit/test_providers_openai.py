"""OpenAI and OpenAI-compatible presets (incl. Azure) against exact request/response fixtures."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.openai import PRESETS, AzureOpenAIProvider, OpenAIProvider
from shared.providers.transport import AiohttpCaller, make_caller
from shared.schema import ChatRequest, EmbeddingRequest, Usage
from tests.unit.wire import Wire

KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345WXYZ"


def provider(wire: Wire, type_: str = "openai", key: str | None = KEY, **cfg: Any) -> OpenAIProvider:
    env = {PRESETS[type_].key_envs[0]: key} if key else {}
    pcfg = ProviderConfig(type=type_, **cfg)
    cls = AzureOpenAIProvider if type_ == "azure" else OpenAIProvider
    return cls(type_, pcfg, env=env, transport=wire.transport)


# From the API reference: a tool call answer with cached prompt tokens.
CHAT_RESPONSE = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": '{\n"location": "Boston, MA"\n}',
                        },
                    }
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}
EMBED_RESPONSE = {
    "object": "list",
    "data": [
        {"object": "embedding", "embedding": [0.0023064255, -0.009327292, -0.0028842222], "index": 0},
        {"object": "embedding", "embedding": [0.0113, 0.0202, -0.0144], "index": 1},
    ],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["location"],
            },
        },
    }
]


def chat_request(**extra: Any) -> ChatRequest:
    return ChatRequest.from_body(
        {
            "model": "openai/gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What's the weather like in Boston today?"},
            ],
            "tools": TOOLS,
            "tool_choice": "auto",
            "temperature": 0.2,
            **extra,
        }
    )


async def test_chat_exact_request_and_normalized_answer() -> None:
    wire = Wire((200, CHAT_RESPONSE, {"x-request-id": "req_6a1b2c"}))
    p = provider(wire)
    resp = await p.chat(chat_request(parallel_tool_calls=False, logprobs=True, store=False), "gpt-4o")

    req = wire.requests[0]
    assert req.method == "POST"
    assert str(req.url) == "https://api.openai.com/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert "api-key" not in req.headers
    assert wire.body() == {
        "model": "gpt-4o",  # the provider's own name, prefix stripped
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What's the weather like in Boston today?"},
        ],
        "temperature": 0.2,
        "tools": TOOLS,
        "tool_choice": "auto",
        # unknown fields pass through untouched
        "parallel_tool_calls": False,
        "logprobs": True,
        "store": False,
    }
    assert resp.body == CHAT_RESPONSE  # already OpenAI's shape: passed through as is
    assert resp.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_current_weather"
    assert resp.usage == Usage(
        prompt_tokens=1117, completion_tokens=46, total_tokens=1163, cached_tokens=1024
    )
    assert resp.request_id == "req_6a1b2c"
    await p.aclose()


async def test_embeddings_exact_request() -> None:
    wire = Wire((200, EMBED_RESPONSE, {"x-request-id": "req_e1"}))
    p = provider(wire)
    req = EmbeddingRequest.from_body(
        {
            "model": "text-embedding-3-small",
            "input": ["hello", "world"],
            "dimensions": 3,
            "encoding_format": "float",
        }
    )
    resp = await p.embed(req, "text-embedding-3-small")
    assert str(wire.requests[0].url) == "https://api.openai.com/v1/embeddings"
    assert wire.body() == {
        "model": "text-embedding-3-small",
        "input": ["hello", "world"],
        "dimensions": 3,
        "encoding_format": "float",
    }
    assert [d["embedding"] for d in resp.body["data"]] == [d["embedding"] for d in EMBED_RESPONSE["data"]]
    assert resp.usage == Usage(prompt_tokens=8, total_tokens=8)
    assert resp.request_id == "req_e1"


@pytest.mark.parametrize(
    ("type_", "url", "key_env"),
    [
        ("openai", "https://api.openai.com/v1/chat/completions", "OPENAI_API_KEY"),
        ("groq", "https://api.groq.com/openai/v1/chat/completions", "GROQ_API_KEY"),
        ("openrouter", "https://openrouter.ai/api/v1/chat/completions", "OPENROUTER_API_KEY"),
        ("xai", "https://api.x.ai/v1/chat/completions", "XAI_API_KEY"),
        ("together", "https://api.together.xyz/v1/chat/completions", "TOGETHER_API_KEY"),
        ("mistral", "https://api.mistral.ai/v1/chat/completions", "MISTRAL_API_KEY"),
        ("deepseek", "https://api.deepseek.com/chat/completions", "DEEPSEEK_API_KEY"),
        ("lmstudio", "http://localhost:1234/v1/chat/completions", "LMSTUDIO_API_KEY"),
        ("vllm", "http://localhost:8000/v1/chat/completions", "VLLM_API_KEY"),
        ("huggingface", "https://router.huggingface.co/v1/chat/completions", "HF_TOKEN"),
    ],
)
async def test_presets_url_and_bearer_key(type_: str, url: str, key_env: str) -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = OpenAIProvider(
        type_, ProviderConfig(type=type_), env={key_env: "tok-1234567890abcd"}, transport=wire.transport
    )
    await p.chat(chat_request(), "some-model")
    assert str(wire.requests[0].url) == url
    assert wire.requests[0].headers["authorization"] == "Bearer tok-1234567890abcd"
    assert wire.body()["model"] == "some-model"


@pytest.mark.parametrize("type_", ["lmstudio", "vllm"])
async def test_local_servers_need_no_key(type_: str) -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = OpenAIProvider(
        type_,
        ProviderConfig(type=type_, base_url="http://10.0.0.5:9000/v1/"),
        env={},
        transport=wire.transport,
    )
    await p.chat(chat_request(), "qwen2.5-7b-instruct")
    assert str(wire.requests[0].url) == "http://10.0.0.5:9000/v1/chat/completions"
    assert "authorization" not in wire.requests[0].headers


async def test_mistral_renames_openai_only_fields() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = provider(wire, "mistral")
    await p.chat(chat_request(seed=7, max_completion_tokens=64), "mistral-large-latest")
    body = wire.body()
    assert body["random_seed"] == 7 and "seed" not in body
    assert body["max_tokens"] == 64 and "max_completion_tokens" not in body


async def test_rename_never_overrides_an_explicit_target_field() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = provider(wire, "deepseek")
    await p.chat(chat_request(max_tokens=10, max_completion_tokens=64), "deepseek-chat")
    body = wire.body()
    assert body["max_tokens"] == 10 and "max_completion_tokens" not in body


async def test_options_headers_are_sent() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = provider(
        wire, "openrouter", options={"headers": {"HTTP-Referer": "https://example.org", "X-Title": "Fusebox"}}
    )
    await p.chat(chat_request(), "anthropic/claude-sonnet-4")
    assert wire.requests[0].headers["http-referer"] == "https://example.org"
    assert wire.requests[0].headers["x-title"] == "Fusebox"
    assert wire.body()["model"] == "anthropic/claude-sonnet-4"


async def test_deepseek_cache_hit_tokens_become_cached_tokens() -> None:
    answer = {
        **CHAT_RESPONSE,
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 10,
            "total_tokens": 130,
            "prompt_cache_hit_tokens": 64,
            "prompt_cache_miss_tokens": 56,
        },
    }
    p = provider(Wire((200, answer, {})), "deepseek")
    resp = await p.chat(chat_request(), "deepseek-chat")
    assert resp.usage == Usage(prompt_tokens=120, completion_tokens=10, total_tokens=130, cached_tokens=64)


async def test_missing_usage_is_filled_with_zeros() -> None:
    answer = {k: v for k, v in CHAT_RESPONSE.items() if k != "usage"}
    p = provider(Wire((200, answer, {})), "vllm", key=None)
    resp = await p.chat(chat_request(), "m")
    assert resp.usage == Usage()
    assert resp.body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# ---- Azure --------------------------------------------------------------


async def test_azure_deployment_url_api_key_header_and_no_model_field() -> None:
    wire = Wire((200, CHAT_RESPONSE, {"apim-request-id": "a1b2c3d4-0000-1111-2222-333344445555"}))
    p = provider(
        wire,
        "azure",
        base_url="https://my-resource.openai.azure.com/",
        options={
            "api_version": "2024-10-21",
            "deployments": {"gpt-4o": "prod-gpt4o"},
            "base_model": "gpt-4o",
        },
    )
    resp = await p.chat(chat_request(), "gpt-4o")
    req = wire.requests[0]
    assert str(req.url) == (
        "https://my-resource.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    )
    assert req.headers["api-key"] == KEY
    assert "authorization" not in req.headers
    assert "model" not in wire.body()
    assert resp.request_id == "a1b2c3d4-0000-1111-2222-333344445555"


async def test_azure_dated_version_embeddings_and_default_deployment() -> None:
    wire = Wire((200, EMBED_RESPONSE, {}))
    p = provider(
        wire, "azure", base_url="https://res.openai.azure.com/openai", options={"api_version": "2024-10-21"}
    )
    await p.embed(
        EmbeddingRequest.from_body({"model": "text-embedding-3-small", "input": "hi"}),
        "text-embedding-3-small",
    )
    assert str(wire.requests[0].url) == (
        "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
    )
    assert wire.body() == {"input": "hi"}


@pytest.mark.parametrize(
    ("base_url", "options"),
    [
        ("https://res.openai.azure.com", {}),  # the default surface is the GA v1 API
        ("https://res.openai.azure.com/openai/v1/", {}),  # as Microsoft's docs write the v1 base URL
        ("https://res.openai.azure.com/openai", {"api_version": "v1"}),
    ],
)
async def test_azure_v1_surface_no_api_version_deployment_in_body(base_url: str, options: dict) -> None:
    wire = Wire((200, CHAT_RESPONSE, {}), (200, EMBED_RESPONSE, {}), (200, {"data": []}, {}))
    p = provider(wire, "azure", base_url=base_url, options={**options, "deployments": {"o3": "prod-o3"}})
    await p.chat(chat_request(max_tokens=50), "o3")
    assert str(wire.requests[0].url) == "https://res.openai.azure.com/openai/v1/chat/completions"
    body = wire.body(0)
    assert body["model"] == "prod-o3"
    # o3 is a reasoning model: max_completion_tokens, no sampler
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body and "temperature" not in body
    assert wire.requests[0].headers["api-key"] == KEY
    await p.embed(EmbeddingRequest.from_body({"model": "e", "input": "hi"}), "e")
    assert str(wire.requests[1].url) == "https://res.openai.azure.com/openai/v1/embeddings"
    assert wire.body(1) == {"model": "e", "input": "hi"}
    await p.health()
    assert str(wire.requests[2].url) == "https://res.openai.azure.com/openai/v1/models"


def test_azure_v1_url_with_a_dated_version_is_a_config_error() -> None:
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="openai/v1"):
        provider(
            Wire((200, {}, {})),
            "azure",
            base_url="https://r.openai.azure.com/openai/v1",
            options={"api_version": "2024-10-21"},
        )


async def test_azure_reasoning_deployment_recognised_by_base_model() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = provider(
        wire,
        "azure",
        base_url="https://r.openai.azure.com",
        options={"deployments": {"smart": "team-reasoner"}, "base_model": {"smart": "gpt-5-mini"}},
    )
    await p.chat(chat_request(max_tokens=10, top_p=0.5), "smart")
    body = wire.body()
    assert body["model"] == "team-reasoner"
    assert body["max_completion_tokens"] == 10
    assert not {"max_tokens", "temperature", "top_p"} & set(body)


def test_azure_cost_model() -> None:
    wire = Wire((200, {}, {}))
    single = provider(wire, "azure", base_url="https://r.openai.azure.com", options={"base_model": "gpt-4o"})
    assert single.cost_model("prod-deployment") == "gpt-4o"
    per_model = provider(
        wire, "azure", base_url="https://r.openai.azure.com", options={"base_model": {"fast": "gpt-4o-mini"}}
    )
    assert per_model.cost_model("fast") == "gpt-4o-mini"
    assert per_model.cost_model("other") == "other"
    assert provider(wire).cost_model("gpt-4o") == "gpt-4o"


def test_azure_needs_an_endpoint() -> None:
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="needs base_url"):
        provider(Wire((200, {}, {})), "azure")


# ---- failures -----------------------------------------------------------


async def test_rate_limit_answer_raises_classified_error_without_the_key() -> None:
    body = {
        "error": {
            "message": (
                "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500."
            ),
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    wire = Wire((429, body, {"retry-after-ms": "1500", "x-request-id": "req_rl"}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(chat_request(), "gpt-4o")
    err = ei.value
    assert (err.error_class, err.code, err.status, err.retry_after) == (
        ErrorClass.RATE_LIMITED,
        "rate_limited",
        429,
        1.5,
    )
    assert err.request_id == "req_rl"
    assert KEY not in str(err) and KEY not in repr(err) and KEY not in err.message


async def test_non_json_200_is_transient_malformed() -> None:
    wire = Wire((200, b"<html>upstream hiccup</html>", {}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(chat_request(), "gpt-4o")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.TRANSIENT, "malformed_response")


async def test_200_without_choices_is_malformed() -> None:
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((200, {"id": "x", "object": "chat.completion"}, {}))).chat(
            chat_request(), "gpt-4o"
        )
    assert ei.value.code == "malformed_response"


async def test_openrouter_error_object_in_a_200_is_classified() -> None:
    body = {
        "error": {
            "code": 502,
            "message": "Provider returned error",
            "metadata": {"provider_name": "Fireworks"},
        }
    }
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((200, body, {})), "openrouter").chat(
            chat_request(), "meta-llama/llama-3.3-70b-instruct"
        )
    assert (ei.value.error_class, ei.value.status) == (ErrorClass.TRANSIENT, 502)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection_error"),
        (httpx.ReadTimeout("timed out"), "timeout"),
    ],
)
async def test_transport_errors_become_transient(exc: Exception, code: str) -> None:
    with pytest.raises(ProviderError) as ei:
        await provider(Wire(exc)).chat(chat_request(), "gpt-4o")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.TRANSIENT, code)


async def test_missing_key_fails_final_without_sending() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire, key=None).chat(chat_request(), "gpt-4o")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.FINAL, "missing_api_key")
    assert "OPENAI_API_KEY" in ei.value.message
    assert wire.requests == []


# ---- health and the client ----------------------------------------------


async def test_health_lists_models() -> None:
    models = {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}],
    }
    wire = Wire((200, models, {}))
    h = await provider(wire).health()
    assert h.ok and h.detail == "HTTP 200, 1 models listed" and h.latency_ms >= 0
    assert wire.requests[0].method == "GET"
    assert str(wire.requests[0].url) == "https://api.openai.com/v1/models"


async def test_azure_health_url() -> None:
    wire = Wire((200, {"data": []}, {}))
    await provider(
        wire, "azure", base_url="https://r.openai.azure.com", options={"api_version": "2025-04-01-preview"}
    ).health()
    assert str(wire.requests[0].url) == (
        "https://r.openai.azure.com/openai/models?api-version=2025-04-01-preview"
    )


async def test_health_reports_failures_without_raising() -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-proj-****WXYZ.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    h = await provider(Wire((401, body, {}))).health()
    assert not h.ok and "HTTP 401" in h.detail and KEY not in h.detail
    h = await provider(Wire(httpx.ConnectError("refused"))).health()
    assert not h.ok and "connection failed" in h.detail
    h = await provider(Wire(RuntimeError("boom"))).health()
    assert not h.ok and "RuntimeError" in h.detail
    h = await provider(Wire((200, {}, {})), key=None).health()
    assert not h.ok and h.detail == "no API key (set OPENAI_API_KEY)"


async def test_one_client_per_provider_reused_across_calls() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = provider(wire)
    await p.chat(chat_request(), "gpt-4o")
    first = p.http
    await p.chat(chat_request(), "gpt-4o")
    assert p.http is first
    assert len(wire.requests) == 2
    await p.aclose()
    assert p._client is None


async def test_production_caller_pool_timeout_and_headers() -> None:
    cfg = ProviderConfig(type="openai", max_concurrency=37, timeout=12.5)
    caller = make_caller(cfg, base_url="https://api.openai.com/v1", headers={"X-A": "1"})
    try:
        assert isinstance(caller, AiohttpCaller)
        assert caller.session.connector is not None and caller.session.connector.limit == 37
        assert (caller.timeout.total, caller.timeout.connect) == (None, 12.5)
        assert (caller.timeout.sock_connect, caller.timeout.sock_read) == (12.5, 12.5)
        assert caller.session.headers["x-a"] == "1"
        assert str(caller.url("chat/completions")) == "https://api.openai.com/v1/chat/completions"
        assert (
            str(caller.url("models", {"api-version": "x y"}))
            == "https://api.openai.com/v1/models?api-version=x+y"
        )
    finally:
        await caller.aclose()


def test_serves_only_configured_models() -> None:
    p = provider(Wire((200, {}, {})), models=["gpt-4o", "gpt-4o-mini"])
    assert p.serves("gpt-4o") and p.serves("gpt-4o-mini")
    assert not p.serves("gpt-4.1") and not p.serves("claude-sonnet-4")


# ---- the production transport, against a loopback server ----------------


async def test_production_transport_over_loopback() -> None:
    from aiohttp import web

    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("authorization", ""), await request.json()))
        if len(seen) == 2:
            return web.json_response(
                {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
                status=429,
                headers={"retry-after": "3"},
            )
        return web.json_response(CHAT_RESPONSE, headers={"x-request-id": "req_loop"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        cfg = ProviderConfig(type="openai", base_url=f"http://127.0.0.1:{port}/v1", max_concurrency=2)
        p = OpenAIProvider(
            "openai", cfg, env={"OPENAI_API_KEY": KEY}
        )  # no transport: the production aiohttp caller
        resp = await p.chat(chat_request(), "gpt-4o")
        assert resp.request_id == "req_loop" and resp.usage.cached_tokens == 1024
        assert seen[0][0] == "/v1/chat/completions" and seen[0][1] == f"Bearer {KEY}"
        assert seen[0][2]["model"] == "gpt-4o"
        with pytest.raises(ProviderError) as ei:
            await p.chat(chat_request(), "gpt-4o")
        assert (ei.value.error_class, ei.value.retry_after) == (ErrorClass.RATE_LIMITED, 3.0)
        await p.aclose()
    finally:
        await runner.cleanup()

    # nothing listens there any more: a transient connection error, not a raw aiohttp exception
    p = OpenAIProvider("openai", cfg, env={"OPENAI_API_KEY": KEY})
    with pytest.raises(ProviderError) as ei:
        await p.chat(chat_request(), "gpt-4o")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.TRANSIENT, "connection_error")
    assert KEY not in str(ei.value)
    await p.aclose()


# ---- stream: a job never streams (issue 9, defect 1) --------------------

SSE = (
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"content":" world"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
    b'"function":{"name":"get_current_weather","arguments":"{\\"loc"}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ation\\":1}"}}]},'
    b'"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"},{"index":1,"delta":{},'
    b'"finish_reason":"tool_calls"}]}\n\n'
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}\n\n'
    b"data: [DONE]\n\n"
)


async def test_stream_fields_are_never_sent() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    p = provider(wire)
    await p.chat(chat_request(stream=True, stream_options={"include_usage": True}), "gpt-4o")
    assert "stream" not in wire.body() and "stream_options" not in wire.body()


async def test_a_streamed_answer_is_assembled_not_retried() -> None:
    wire = Wire((200, SSE, {"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req_s"}))
    resp = await provider(wire).chat(chat_request(), "gpt-4o")
    assert len(wire.requests) == 1
    c0, c1 = resp.body["choices"]
    assert c0["message"]["content"] == "Hello world" and c0["finish_reason"] == "stop"
    assert c1["message"]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_current_weather", "arguments": '{"location":1}'},
        }
    ]
    assert c1["finish_reason"] == "tool_calls"
    assert resp.body["object"] == "chat.completion" and resp.body["id"] == "chatcmpl-s1"
    assert resp.usage == Usage(prompt_tokens=9, completion_tokens=4, total_tokens=13)
    assert resp.request_id == "req_s"


@pytest.mark.parametrize(
    "body",
    [
        b"data: {not json\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"cut"}}]}\n\n',
        b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n',
    ],
)
async def test_an_unreadable_stream_is_final_never_transient(body: bytes) -> None:
    wire = Wire((200, body, {"content-type": "text/event-stream"}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(chat_request(), "gpt-4o")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.FINAL, "unexpected_stream")
    assert len(wire.requests) == 1


# ---- reasoning models (issue 9, defect 3) -------------------------------


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-nano", "gpt-5.1"])
async def test_reasoning_models_get_max_completion_tokens_and_no_samplers(model: str) -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    await provider(wire).chat(
        chat_request(max_tokens=64, top_p=0.9, presence_penalty=0.1, logprobs=True, seed=3), model
    )
    body = wire.body()
    assert body["max_completion_tokens"] == 64
    assert not {"max_tokens", "temperature", "top_p", "presence_penalty", "logprobs"} & set(body)
    assert body["seed"] == 3 and body["tools"] == TOOLS  # everything else is kept


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini", "gpt-5-chat-latest", "gpt-5.1-chat-latest"])
async def test_other_models_keep_max_tokens_and_samplers(model: str) -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    await provider(wire).chat(chat_request(max_tokens=64), model)
    assert wire.body()["max_tokens"] == 64 and wire.body()["temperature"] == 0.2


async def test_name_rules_only_for_openai_itself() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    await provider(wire, "groq").chat(chat_request(max_tokens=64), "openai/gpt-5-mini")
    assert wire.body()["max_tokens"] == 64 and wire.body()["temperature"] == 0.2


async def test_reasoning_effort_none_keeps_samplers() -> None:
    wire = Wire((200, CHAT_RESPONSE, {}))
    await provider(wire).chat(chat_request(reasoning_effort="none", max_tokens=5), "gpt-5.1")
    assert wire.body()["temperature"] == 0.2 and wire.body()["max_completion_tokens"] == 5


def _unsupported(param: str, code: str = "unsupported_parameter") -> tuple[int, dict, dict]:
    msg = f"Unsupported parameter: '{param}' is not supported with this model."
    return 400, {"error": {"message": msg, "type": "invalid_request_error", "param": param, "code": code}}, {}


async def test_a_400_naming_a_fixable_field_is_fixed_and_learned() -> None:
    """A reasoning model the name rules do not know (an OpenRouter alias, a proxy's name)."""
    wire = Wire(
        _unsupported("max_tokens"),
        _unsupported("temperature", "unsupported_value"),
        (200, CHAT_RESPONSE, {}),
    )
    p = provider(wire)
    resp = await p.chat(chat_request(max_tokens=64), "house-reasoner")
    assert resp.body == CHAT_RESPONSE
    assert [("max_tokens" in b, "temperature" in b) for b in map(wire.body, range(3))] == [
        (True, True),
        (False, True),
        (False, False),
    ]
    assert wire.body(2)["max_completion_tokens"] == 64
    await p.chat(chat_request(max_tokens=64), "house-reasoner")  # learned: right the first time
    assert len(wire.requests) == 4
    assert "max_tokens" not in wire.body() and "temperature" not in wire.body()


async def test_a_400_naming_another_field_stays_final() -> None:
    wire = Wire(_unsupported("tools"))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(chat_request(), "gpt-4o")
    assert (ei.value.error_class, ei.value.status) == (ErrorClass.FINAL, 400)
    assert len(wire.requests) == 1
