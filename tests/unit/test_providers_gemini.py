"""Gemini adapter (generateContent, embedContent, batchEmbedContents) against exact fixtures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.gemini import GeminiProvider
from shared.schema import ChatRequest, EmbeddingRequest, Usage
from tests.unit.wire import Wire

KEY = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5WXYZ"
BASE = "https://generativelanguage.googleapis.com/v1beta"


def provider(wire: Wire, env: dict[str, str] | None = None, **options: Any) -> GeminiProvider:
    cfg = ProviderConfig(type="gemini", options=options)
    return GeminiProvider(
        "gemini", cfg, env={"GEMINI_API_KEY": KEY} if env is None else env, transport=wire.transport
    )


TEXT_RESPONSE = {
    "candidates": [
        {
            "content": {
                "parts": [{"text": "AI learns patterns from data to make predictions."}],
                "role": "model",
            },
            "finishReason": "STOP",
            "avgLogprobs": -0.2307,
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 12,
        "totalTokenCount": 70,
        "cachedContentTokenCount": 4,
        "thoughtsTokenCount": 50,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mG3oZ7n5K5qz1PIP8Z6g4AI",
}
FUNCTION_CALL_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Boston, MA"}}}],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 35, "candidatesTokenCount": 7, "totalTokenCount": 42},
    "modelVersion": "gemini-2.0-flash",
    "responseId": "xyz123",
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}


async def test_generate_content_exact_request() -> None:
    wire = Wire((200, TEXT_RESPONSE, {}))
    req = ChatRequest.from_body(
        {
            "model": "gemini/gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Explain AI"},
                {"role": "assistant", "content": "Sure."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "In one line"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    ],
                },
            ],
            "temperature": 0.3,
            "top_p": 0.8,
            "max_tokens": 256,
            "stop": ["\n\n"],
            "seed": 11,
            "n": 2,
            "top_k": 20,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object"}},
            },
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
            "logit_bias": {"1": 2},  # OpenAI-only: dropped
        }
    )
    resp = await provider(wire).chat(req, "gemini-2.5-flash")

    r = wire.requests[0]
    assert str(r.url) == f"{BASE}/models/gemini-2.5-flash:generateContent"  # the key is never in the URL
    assert r.headers["x-goog-api-key"] == KEY
    assert "authorization" not in r.headers
    assert wire.body() == {
        "contents": [
            {"role": "user", "parts": [{"text": "Explain AI"}]},
            {"role": "model", "parts": [{"text": "Sure."}]},
            {
                "role": "user",
                "parts": [
                    {"text": "In one line"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.3,
            "topP": 0.8,
            "maxOutputTokens": 256,
            "stopSequences": ["\n\n"],
            "candidateCount": 2,
            "seed": 11,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
            "topK": 20,
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Get the weather",
                        "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
    }
    body = resp.body
    assert body["id"] == "mG3oZ7n5K5qz1PIP8Z6g4AI"
    assert body["object"] == "chat.completion"
    assert body["model"] == "gemini-2.5-flash"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "AI learns patterns from data to make predictions."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # thinking tokens are billed as output
    assert resp.usage == Usage(prompt_tokens=8, completion_tokens=62, total_tokens=70, cached_tokens=4)
    assert resp.request_id == "mG3oZ7n5K5qz1PIP8Z6g4AI"


async def test_function_call_round_trip() -> None:
    wire = Wire((200, FUNCTION_CALL_RESPONSE, {}))
    p = provider(wire)
    first = await p.chat(
        ChatRequest.from_body(
            {
                "model": "g",
                "messages": [{"role": "user", "content": "Weather in Boston?"}],
                "tools": [WEATHER_TOOL],
            }
        ),
        "gemini-2.0-flash",
    )
    choice = first.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"location":"Boston, MA"}'}
    assert first.usage == Usage(prompt_tokens=35, completion_tokens=7, total_tokens=42)

    # the caller sends the tool result back: functionCall / functionResponse parts, name recovered from the id
    await p.chat(
        ChatRequest.from_body(
            {
                "model": "g",
                "messages": [
                    {"role": "user", "content": "Weather in Boston?"},
                    choice["message"],
                    {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'},
                    {"role": "tool", "tool_call_id": call["id"], "content": "plain text"},
                ],
                "tools": [WEATHER_TOOL],
                "tool_choice": "auto",
            }
        ),
        "gemini-2.0-flash",
    )
    body = wire.body()
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Boston?"}]},
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Boston, MA"}}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "plain text"}}},
            ],
        },
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("CONTINUATION", "length"), (None, "stop")],
)
async def test_finish_reasons(reason: str | None, finish: str) -> None:
    answer = json.loads(json.dumps(TEXT_RESPONSE))
    if reason is None:
        del answer["candidates"][0]["finishReason"]
    else:
        answer["candidates"][0]["finishReason"] = reason
    resp = await provider(Wire((200, answer, {}))).chat(
        ChatRequest.from_body({"model": "g", "messages": [{"role": "user", "content": "x"}]}), "g"
    )
    assert resp.body["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    "reason",
    [
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "OTHER",
        "MISSING_THOUGHT_SIGNATURE",
        "MALFORMED_RESPONSE",
        "FINISH_REASON_UNSPECIFIED",
        "SOMETHING_NEW",  # a value this adapter has never seen, with no answer: not a silent stop
    ],
)
async def test_failed_finish_reasons_are_final_errors(reason: str) -> None:
    # What Gemini sends: no content (or an empty one) and the reason, sometimes a finishMessage.
    answer = {
        "candidates": [{"finishReason": reason, "index": 0, "finishMessage": "Malformed function call: x"}],
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
    }
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((200, answer, {}))).chat(
            ChatRequest.from_body({"model": "g", "messages": [{"role": "user", "content": "x"}]}), "g"
        )
    assert ei.value.error_class == ErrorClass.FINAL
    assert ei.value.code == reason.lower()
    assert reason in ei.value.message


def test_every_sdk_finish_reason_is_mapped() -> None:
    """The full google-genai FinishReason enum: each value is a finish reason, a block or a failure."""
    types = pytest.importorskip("google.genai.types")
    from shared.providers.gemini import BLOCKED, FAILED, FINISH_REASONS

    known = set(FINISH_REASONS) | BLOCKED | FAILED
    assert {r.value for r in types.FinishReason} <= known


async def test_blocked_prompt_is_a_clear_final_error() -> None:
    answer = {
        "promptFeedback": {
            "blockReason": "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True},
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
            ],
        },
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.0-flash",
    }
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((200, answer, {}))).chat(
            ChatRequest.from_body({"model": "g", "messages": [{"role": "user", "content": "x"}]}), "g"
        )
    err = ei.value
    assert (err.error_class, err.code, err.status) == (ErrorClass.FINAL, "content_filter", 400)
    assert err.message == (
        "gemini: Gemini safety filters: prompt blocked (blockReason SAFETY) (HARM_CATEGORY_HARASSMENT: HIGH)"
    )


async def test_safety_finish_reason_without_content_is_a_final_error() -> None:
    answer = {
        "candidates": [
            {
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "MEDIUM", "blocked": True},
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
                ],
            }
        ],
        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
        "modelVersion": "gemini-2.0-flash",
    }
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((200, answer, {}))).chat(
            ChatRequest.from_body({"model": "g", "messages": [{"role": "user", "content": "x"}]}), "g"
        )
    assert ei.value.code == "content_filter"
    assert (
        "finishReason SAFETY" in ei.value.message
        and "HARM_CATEGORY_DANGEROUS_CONTENT: MEDIUM" in ei.value.message
    )


async def test_answer_without_candidates_or_block_is_malformed() -> None:
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((200, {"usageMetadata": {}}, {}))).chat(
            ChatRequest.from_body({"model": "g", "messages": [{"role": "user", "content": "x"}]}), "g"
        )
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.TRANSIENT, "malformed_response")


async def test_embed_content_single() -> None:
    wire = Wire((200, {"embedding": {"values": [0.013168523, -0.008711934, -0.046782676]}}, {}))
    req = EmbeddingRequest.from_body(
        {"model": "gemini-embedding-001", "input": "What is the meaning of life?", "dimensions": 3}
    )
    resp = await provider(wire, task_type="RETRIEVAL_DOCUMENT").embed(req, "models/gemini-embedding-001")
    assert str(wire.requests[0].url) == f"{BASE}/models/gemini-embedding-001:embedContent"
    assert wire.requests[0].headers["x-goog-api-key"] == KEY
    assert wire.body() == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "What is the meaning of life?"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
        "outputDimensionality": 3,
    }
    assert resp.body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.013168523, -0.008711934, -0.046782676]}],
        "model": "gemini-embedding-001",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},  # estimated: the API reports no counts
    }


async def test_batch_embed_contents() -> None:
    answer = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}, {"values": [0.5, 0.6]}]}
    wire = Wire((200, answer, {}))
    req = EmbeddingRequest.from_body(
        {"model": "text-embedding-004", "input": ["a", "b", "c"], "task_type": "SEMANTIC_SIMILARITY"}
    )
    resp = await provider(wire).embed(req, "text-embedding-004")
    assert str(wire.requests[0].url) == f"{BASE}/models/text-embedding-004:batchEmbedContents"
    assert wire.body() == {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": t}]},
                "taskType": "SEMANTIC_SIMILARITY",
            }
            for t in ("a", "b", "c")
        ]
    }
    assert [d["embedding"] for d in resp.body["data"]] == [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    assert [d["index"] for d in resp.body["data"]] == [0, 1, 2]


async def test_batch_embed_count_mismatch_is_malformed() -> None:
    wire = Wire((200, {"embeddings": [{"values": [0.1]}]}, {}))
    with pytest.raises(ProviderError) as ei:
        await provider(wire).embed(EmbeddingRequest.from_body({"model": "e", "input": ["a", "b"]}), "e")
    assert ei.value.code == "malformed_response"


async def test_rate_limit_uses_retry_info() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": (
                                "generativelanguage.googleapis.com/generate_content_free_tier_requests"
                            ),
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaValue": "10",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"},
            ],
        }
    }
    with pytest.raises(ProviderError) as ei:
        await provider(Wire((429, body, {}))).chat(
            ChatRequest.from_body({"model": "g", "messages": [{"role": "user", "content": "x"}]}), "g"
        )
    assert (ei.value.error_class, ei.value.retry_after) == (ErrorClass.RATE_LIMITED, 3.0)


async def test_google_api_key_fallback_and_health() -> None:
    wire = Wire((200, {"models": [{"name": "models/gemini-2.0-flash"}], "nextPageToken": "abc"}, {}))
    p = provider(wire, env={"GOOGLE_API_KEY": "AIzaGoogleKeyFallback1234567890"})
    assert p.key is not None and p.key.source == "GOOGLE_API_KEY"
    h = await p.health()
    assert h.ok and h.detail == "HTTP 200, 1 models listed"
    assert str(wire.requests[0].url) == f"{BASE}/models?pageSize=1"
    assert wire.requests[0].headers["x-goog-api-key"] == "AIzaGoogleKeyFallback1234567890"
