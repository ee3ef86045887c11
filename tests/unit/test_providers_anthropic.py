"""Anthropic Messages adapter against exact request/response fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.anthropic import AnthropicProvider
from shared.schema import ChatRequest, EmbeddingRequest, Usage
from tests.unit.wire import Wire

KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-WXYZ"


def provider(wire: Wire, **options: Any) -> AnthropicProvider:
    cfg = ProviderConfig(type="anthropic", options=options)
    return AnthropicProvider("anthropic", cfg, env={"ANTHROPIC_API_KEY": KEY}, transport=wire.transport)


# From the Messages API reference: text plus a tool_use block, with prompt caching usage.
TOOL_USE_RESPONSE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {"type": "text", "text": "I'll check the weather in San Francisco."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "celsius"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 472,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2048,
        "output_tokens": 89,
        "service_tier": "standard",
    },
}
TEXT_RESPONSE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "The city and state"}},
            "required": ["location"],
        },
    },
}


async def test_conversation_with_tools_exact_request() -> None:
    wire = Wire((200, TEXT_RESPONSE, {"request-id": "req_018EeWyXxfu5pfWkrYcMdjWG"}))
    p = provider(wire)
    req = ChatRequest.from_body(
        {
            "model": "claude-sonnet-4-20250514",
            "messages": [
                {"role": "system", "content": "You are a weather bot."},
                {"role": "developer", "content": [{"type": "text", "text": "Use celsius."}]},
                {"role": "user", "content": "Weather in SF and NYC?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location": "SF"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location": "NYC"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "15 degrees"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "22 degrees"},
                {"role": "user", "content": "Thanks, summarize."},
            ],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "END",
            "user": "user-42",
            "top_k": 40,
            "frequency_penalty": 0.5,  # OpenAI-only: Anthropic would reject it, so it is dropped
        }
    )
    resp = await p.chat(req, "claude-sonnet-4-20250514")

    r = wire.requests[0]
    assert str(r.url) == "https://api.anthropic.com/v1/messages"
    assert r.headers["x-api-key"] == KEY
    assert r.headers["anthropic-version"] == "2023-06-01"
    assert r.headers["content-type"] == "application/json"
    assert "authorization" not in r.headers
    assert wire.body() == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 4096,
        "system": "You are a weather bot.\n\nUse celsius.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in SF and NYC?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "SF"}},
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"location": "NYC"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "22 degrees"},
                    {"type": "text", "text": "Thanks, summarize."},
                ],
            },
        ],
        "temperature": 0.5,  # top_p dropped: current models reject both samplers
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "get_weather",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
                "description": "Get the current weather in a given location",
            }
        ],
        "tool_choice": {"type": "any"},
        "metadata": {"user_id": "user-42"},
        "top_k": 40,
    }
    assert resp.request_id == "req_018EeWyXxfu5pfWkrYcMdjWG"
    assert resp.body["choices"][0]["message"] == {"role": "assistant", "content": "Hi! My name is Claude."}
    assert resp.body["choices"][0]["finish_reason"] == "stop"
    assert resp.usage == Usage(prompt_tokens=2095, completion_tokens=503, total_tokens=2598)


async def test_tool_use_answer_is_normalized_to_openai_tool_calls_with_cache_usage() -> None:
    p = provider(Wire((200, TOOL_USE_RESPONSE, {})))
    req = ChatRequest.from_body(
        {"model": "claude-sonnet-4-20250514", "messages": [{"role": "user", "content": "SF?"}]}
    )
    resp = await p.chat(req, "claude-sonnet-4-20250514")
    body = resp.body
    assert body["id"] == "msg_01Aq9w938a90dw8q"
    assert body["object"] == "chat.completion"
    assert body["model"] == "claude-sonnet-4-20250514"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather in San Francisco."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
            },
        }
    ]
    # prompt_tokens counts cached and cache-writing tokens too, as OpenAI's does
    assert resp.usage == Usage(
        prompt_tokens=2620, completion_tokens=89, total_tokens=2709, cached_tokens=2048
    )
    assert body["usage"] == {
        "prompt_tokens": 2620,
        "completion_tokens": 89,
        "total_tokens": 2709,
        "prompt_tokens_details": {"cached_tokens": 2048, "cache_creation_tokens": 100},
    }
    assert resp.request_id == "msg_01Aq9w938a90dw8q"  # no request-id header: the message id


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reason_mapping(stop_reason: str, finish: str) -> None:
    answer = {**TEXT_RESPONSE, "stop_reason": stop_reason}
    resp = await provider(Wire((200, answer, {}))).chat(
        ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "hi"}]}), "m"
    )
    assert resp.body["choices"][0]["finish_reason"] == finish


async def test_max_tokens_from_request_else_configured_default() -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    p = provider(
        wire, default_max_tokens=1024, anthropic_version="2023-06-01", beta=["prompt-caching-2024-07-31"]
    )
    msgs = [{"role": "user", "content": "hi"}]
    await p.chat(ChatRequest.from_body({"model": "m", "messages": msgs}), "m")
    assert wire.body()["max_tokens"] == 1024
    assert wire.requests[-1].headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    await p.chat(ChatRequest.from_body({"model": "m", "messages": msgs, "max_completion_tokens": 77}), "m")
    assert wire.body()["max_tokens"] == 77


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
async def test_tool_choice_mapping(choice: Any, parallel: Any, expected: Any) -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [WEATHER_TOOL],
    }
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    await provider(wire).chat(ChatRequest.from_body(body), "m")
    assert wire.body().get("tool_choice") == expected
    assert "parallel_tool_calls" not in wire.body()


async def test_images_and_cached_system_blocks() -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    req = ChatRequest.from_body(
        {
            "model": "m",
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ],
                },
            ],
        }
    )
    await provider(wire).chat(req, "m")
    body = wire.body()
    assert body["system"] == [{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_bad_tool_arguments_are_a_final_error() -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    req = ChatRequest.from_body(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "t", "content": "r"},
            ],
        }
    )
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(req, "m")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.FINAL, "bad_request")
    assert wire.requests == []


async def test_embeddings_are_unsupported_and_final() -> None:
    wire = Wire((200, {}, {}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).embed(EmbeddingRequest.from_body({"model": "m", "input": "x"}), "m")
    assert ei.value.error_class is ErrorClass.FINAL
    assert "anthropic has no embeddings API" in ei.value.message
    assert wire.requests == []


async def test_overloaded_529_is_transient_and_names_the_request() -> None:
    body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_011CSHoEeqs5",
    }
    wire = Wire((529, body, {"request-id": "req_011CSHoEeqs5"}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(
            ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "x"}]}), "m"
        )
    err = ei.value
    assert (err.error_class, err.code, err.status, err.request_id) == (
        ErrorClass.TRANSIENT,
        "overloaded",
        529,
        "req_011CSHoEeqs5",
    )
    assert KEY not in str(err)


async def test_health_uses_models_endpoint() -> None:
    models = {
        "data": [
            {
                "type": "model",
                "id": "claude-sonnet-4-20250514",
                "display_name": "Claude Sonnet 4",
                "created_at": "2025-05-22T00:00:00Z",
            }
        ],
        "has_more": True,
        "first_id": "claude-sonnet-4-20250514",
        "last_id": "claude-sonnet-4-20250514",
    }
    wire = Wire((200, models, {}))
    p = AnthropicProvider(
        "claude",
        ProviderConfig(type="anthropic", base_url="https://api.anthropic.com/v1"),
        env={"ANTHROPIC_API_KEY": KEY},
        transport=wire.transport,
    )
    h = await p.health()
    assert h.ok
    assert str(wire.requests[0].url) == "https://api.anthropic.com/v1/models?limit=1"
    assert wire.requests[0].headers["x-api-key"] == KEY


# ---- only what the Messages API accepts (issue 9, defect 2) -------------


def _req(**extra: Any) -> ChatRequest:
    return ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


async def _sent(extra: dict[str, Any], **options: Any) -> dict[str, Any]:
    wire = Wire((200, TEXT_RESPONSE, {}))
    await provider(wire, **options).chat(_req(**extra), "m")
    return wire.body()


@pytest.mark.parametrize(
    ("samplers", "expected"),
    [
        ({"temperature": 0.3, "top_p": 0.8}, {"temperature": 0.3}),  # temperature wins
        ({"top_p": 0.8}, {"top_p": 0.8}),
        ({"temperature": 1.7}, {"temperature": 1.0}),  # OpenAI's 0-2 clamped to Anthropic's 0-1
        ({"temperature": 2, "top_k": 5}, {"temperature": 1.0, "top_k": 5}),
        ({}, {}),
    ],
)
async def test_one_sampler_in_anthropic_range(samplers: dict[str, Any], expected: dict[str, Any]) -> None:
    body = await _sent(samplers)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body} == expected


async def test_thinking_takes_no_sampler() -> None:
    body = await _sent({"temperature": 0.3, "top_k": 4, "thinking": {"type": "adaptive"}})
    assert not {"temperature", "top_p", "top_k"} & set(body) and body["thinking"] == {"type": "adaptive"}


async def test_api_version_2026_10_21_sends_no_sampler() -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    p = provider(wire, anthropic_version="2026-10-21")
    await p.chat(_req(temperature=0.2, top_p=0.5, top_k=3), "m")
    assert not {"temperature", "top_p", "top_k"} & set(wire.body())
    assert wire.requests[0].headers["anthropic-version"] == "2026-10-21"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"metadata": {"project": "x", "run": "7"}}, None),  # OpenAI's free-form metadata: not Anthropic's
        ({"metadata": {"project": "x"}, "user": "u-1"}, {"user_id": "u-1"}),
        ({"metadata": {"user_id": "u-2", "team": "t"}, "user": "u-1"}, {"user_id": "u-2"}),
    ],
)
async def test_metadata_is_only_user_id(extra: dict[str, Any], expected: Any) -> None:
    assert (await _sent(extra)).get("metadata") == expected


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("auto", "auto"),
        ("standard_only", "standard_only"),
        ("default", "standard_only"),
        ("flex", "standard_only"),
        ("priority", "auto"),
        ("scale", "auto"),
        ("turbo", None),
    ],
)
async def test_service_tier_mapped_to_anthropic_values(tier: str, expected: str | None) -> None:
    assert (await _sent({"service_tier": tier})).get("service_tier") == expected


async def test_json_schema_becomes_structured_output() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    body = await _sent(
        {
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
            "output_config": {"effort": "low"},
        }
    )
    assert body["output_config"] == {"effort": "low", "format": {"type": "json_schema", "schema": schema}}
    assert "response_format" not in body


async def test_json_object_fails_clearly_without_a_call() -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(_req(response_format={"type": "json_object"}), "m")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.FINAL, "unsupported_parameter")
    assert "json_schema" in ei.value.message
    assert wire.requests == []


async def test_stream_is_never_sent_and_a_stream_reply_is_final() -> None:
    body = await _sent({"stream": True, "stream_options": {"include_usage": True}})
    assert "stream" not in body and "stream_options" not in body
    sse = b'event: message_start\ndata: {"type":"message_start"}\n\n'
    wire = Wire((200, sse, {"content-type": "text/event-stream"}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).chat(_req(), "m")
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.FINAL, "unexpected_stream")
