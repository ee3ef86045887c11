"""Ollama (/api/chat, /api/embed) and Cohere v2 (/v2/chat, /v2/embed) against exact fixtures."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.cohere import CohereProvider
from shared.providers.ollama import OllamaProvider
from shared.schema import ChatRequest, EmbeddingRequest, Usage
from tests.unit.wire import Wire

COHERE_KEY = "co-AbCdEfGhIjKlMnOpQrStUvWxYz0123WXYZ"


def ollama(wire: Wire, env: dict[str, str] | None = None, base_url: str | None = None) -> OllamaProvider:
    cfg = ProviderConfig(type="ollama", base_url=base_url)
    return OllamaProvider("ollama", cfg, env=env or {}, transport=wire.transport)


def cohere(wire: Wire, **options: Any) -> CohereProvider:
    cfg = ProviderConfig(type="cohere", options=options)
    return CohereProvider("cohere", cfg, env={"COHERE_API_KEY": COHERE_KEY}, transport=wire.transport)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "format"],
        },
    },
}

# ---- Ollama -------------------------------------------------------------

OLLAMA_CHAT = {
    "model": "llama3.2",
    "created_at": "2023-12-12T14:13:43.416799Z",
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5191566416,
    "load_duration": 2154458,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000,
    "eval_count": 298,
    "eval_duration": 4799921000,
}
OLLAMA_TOOL_CHAT = {
    "model": "llama3.2",
    "created_at": "2024-07-22T20:33:28.123648Z",
    "message": {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"format": "celsius", "location": "Paris, FR"},
                }
            }
        ],
    },
    "done_reason": "stop",
    "done": True,
    "total_duration": 885095291,
    "load_duration": 3753500,
    "prompt_eval_count": 122,
    "prompt_eval_duration": 328493000,
    "eval_count": 33,
    "eval_duration": 552222000,
}


async def test_ollama_chat_exact_request() -> None:
    wire = Wire((200, OLLAMA_CHAT, {}))
    req = ChatRequest.from_body(
        {
            "model": "ollama/llama3.2",
            "messages": [
                {"role": "system", "content": "You are friendly."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Hi! "},
                        {"type": "text", "text": "What's here?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                },
            ],
            "temperature": 0.7,
            "top_p": 0.9,
            "max_tokens": 100,
            "stop": "###",
            "seed": 42,
            "top_k": 30,
            "keep_alive": "5m",
            "response_format": {"type": "json_object"},
            "tools": [WEATHER_TOOL],
        }
    )
    resp = await ollama(wire).chat(req, "llama3.2")
    r = wire.requests[0]
    assert str(r.url) == "http://localhost:11434/api/chat"
    assert "authorization" not in r.headers
    assert wire.body() == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "You are friendly."},
            {"role": "user", "content": "Hi! What's here?", "images": ["iVBORw0KGgo="]},
        ],
        "stream": False,
        "options": {
            "temperature": 0.7,
            "top_p": 0.9,
            "num_predict": 100,
            "stop": ["###"],
            "seed": 42,
            "top_k": 30,
        },
        "format": "json",
        "tools": [WEATHER_TOOL],
        "keep_alive": "5m",
    }
    assert resp.body["object"] == "chat.completion"
    assert resp.body["model"] == "llama3.2"
    assert resp.body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How are you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert resp.usage == Usage(prompt_tokens=26, completion_tokens=298, total_tokens=324)
    assert resp.body["usage"] == {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324}


async def test_ollama_tool_calls_both_ways() -> None:
    wire = Wire((200, OLLAMA_TOOL_CHAT, {}))
    p = ollama(wire)
    resp = await p.chat(
        ChatRequest.from_body(
            {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "Paris weather?"}],
                "tools": [WEATHER_TOOL],
            }
        ),
        "llama3.2",
    )
    choice = resp.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["function"] == {
        "name": "get_current_weather",
        "arguments": '{"format":"celsius","location":"Paris, FR"}',
    }
    assert call["id"].startswith("call_")

    await p.chat(
        ChatRequest.from_body(
            {
                "model": "llama3.2",
                "messages": [
                    {"role": "user", "content": "Paris weather?"},
                    choice["message"],
                    {"role": "tool", "tool_call_id": call["id"], "content": "22 degrees"},
                ],
            }
        ),
        "llama3.2",
    )
    assert wire.body()["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {
                        "name": "get_current_weather",
                        "arguments": {"format": "celsius", "location": "Paris, FR"},
                    },
                    "id": call["id"],
                }
            ],
        },
        # tool_name (documented) and tool_call_id (read by current servers) both identify the call
        {
            "role": "tool",
            "content": "22 degrees",
            "tool_name": "get_current_weather",
            "tool_call_id": call["id"],
        },
    ]


async def test_ollama_length_and_json_schema_format() -> None:
    wire = Wire((200, {**OLLAMA_CHAT, "done_reason": "length"}, {}))
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    resp = await ollama(wire).chat(
        ChatRequest.from_body(
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
            }
        ),
        "m",
    )
    assert wire.body()["format"] == schema
    assert resp.body["choices"][0]["finish_reason"] == "length"


async def test_ollama_embed_and_configured_base_url_and_key() -> None:
    answer = {
        "model": "all-minilm",
        "embeddings": [[0.010071029, -0.0017594862, 0.05007221], [-0.0098027075, 0.06042469, 0.025257962]],
        "total_duration": 14143917,
        "load_duration": 1019500,
        "prompt_eval_count": 8,
    }
    wire = Wire((200, answer, {}))
    p = ollama(wire, env={"OLLAMA_API_KEY": "ollama-key-0123456789"}, base_url="http://gpu-box:11434/api")
    resp = await p.embed(
        EmbeddingRequest.from_body(
            {"model": "all-minilm", "input": ["Why is the sky blue?", "Why is the grass green?"]}
        ),
        "all-minilm",
    )
    assert str(wire.requests[0].url) == "http://gpu-box:11434/api/embed"
    assert wire.requests[0].headers["authorization"] == "Bearer ollama-key-0123456789"
    assert wire.body() == {
        "model": "all-minilm",
        "input": ["Why is the sky blue?", "Why is the grass green?"],
    }
    assert [d["embedding"] for d in resp.body["data"]] == answer["embeddings"]
    assert resp.usage == Usage(prompt_tokens=8, total_tokens=8)


async def test_ollama_model_not_found_is_final() -> None:
    wire = Wire((404, {"error": 'model "llama9" not found, try pulling it first'}, {}))
    with pytest.raises(ProviderError) as ei:
        await ollama(wire).chat(
            ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "x"}]}), "llama9"
        )
    assert (ei.value.error_class, ei.value.code) == (ErrorClass.FINAL, "model_not_found")
    assert ei.value.message == 'ollama: HTTP 404: model "llama9" not found, try pulling it first'


async def test_ollama_health_lists_tags() -> None:
    wire = Wire(
        (200, {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 2019393189}]}, {})
    )
    h = await ollama(wire).health()
    assert h.ok and h.detail == "HTTP 200, 1 models listed"
    assert (wire.requests[0].method, str(wire.requests[0].url)) == ("GET", "http://localhost:11434/api/tags")


async def test_ollama_down_is_reported_by_health() -> None:
    h = await ollama(Wire(httpx.ConnectError("[Errno 111] Connection refused"))).health()
    assert not h.ok and "connection failed" in h.detail


# ---- Cohere -------------------------------------------------------------

COHERE_CHAT = {
    "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
    "finish_reason": "COMPLETE",
    "message": {
        "role": "assistant",
        "content": [
            {
                "type": "text",
                "text": "LLMs stand for Large Language Models, which are a type of neural network model.",
            }
        ],
    },
    "usage": {
        "billed_units": {"input_tokens": 17, "output_tokens": 12},
        "tokens": {"input_tokens": 215, "output_tokens": 12},
    },
}
COHERE_TOOL_CHAT = {
    "id": "7c5e4ba4-5a3b-4d49-9f58-a05c3cd0b1f4",
    "finish_reason": "TOOL_CALL",
    "message": {
        "role": "assistant",
        "tool_plan": "I will use the get_current_weather tool to find the weather in Toronto.",
        "tool_calls": [
            {
                "id": "get_current_weather_1byjy32y4hvq",
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "arguments": '{"location":"Toronto","format":"celsius"}',
                },
            }
        ],
    },
    "usage": {
        "billed_units": {"input_tokens": 37, "output_tokens": 28},
        "tokens": {"input_tokens": 913, "output_tokens": 83},
    },
}


async def test_cohere_chat_exact_request() -> None:
    wire = Wire((200, COHERE_CHAT, {"x-request-id": "co-req-1"}))
    req = ChatRequest.from_body(
        {
            "model": "cohere/command-a-03-2025",
            "messages": [
                {"role": "developer", "content": "Answer briefly."},
                {"role": "user", "content": "What is an LLM?", "name": "alice"},
            ],
            "temperature": 0.3,
            "top_p": 0.75,
            "max_completion_tokens": 200,
            "stop": ["\n\n"],
            "seed": 5,
            "response_format": {"type": "json_object"},
            "safety_mode": "CONTEXTUAL",
            "logit_bias": {"1": 1},  # not a Cohere field: dropped
        }
    )
    resp = await cohere(wire).chat(req, "command-a-03-2025")
    r = wire.requests[0]
    assert str(r.url) == "https://api.cohere.com/v2/chat"
    assert r.headers["authorization"] == f"Bearer {COHERE_KEY}"
    assert wire.body() == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is an LLM?"},
        ],
        "temperature": 0.3,
        "p": 0.75,
        "max_tokens": 200,
        "stop_sequences": ["\n\n"],
        "seed": 5,
        "response_format": {"type": "json_object"},
        "safety_mode": "CONTEXTUAL",
    }
    assert resp.body["id"] == "c14c80c3-18eb-4519-9460-6c92edd8cfb4"
    assert resp.body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "LLMs stand for Large Language Models, which are a type of neural network model.",
    }
    assert resp.body["choices"][0]["finish_reason"] == "stop"
    assert resp.usage == Usage(prompt_tokens=17, completion_tokens=12, total_tokens=29)  # what Cohere bills
    assert resp.request_id == "co-req-1"


async def test_cohere_tool_calls_and_tool_messages() -> None:
    wire = Wire((200, COHERE_TOOL_CHAT, {}))
    p = cohere(wire)
    resp = await p.chat(
        ChatRequest.from_body(
            {
                "model": "c",
                "messages": [{"role": "user", "content": "Toronto?"}],
                "tools": [WEATHER_TOOL],
                "tool_choice": "required",
            }
        ),
        "command-r-plus-08-2024",
    )
    assert wire.body()["tools"] == [WEATHER_TOOL]
    assert wire.body()["tool_choice"] == "REQUIRED"
    choice = resp.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == COHERE_TOOL_CHAT["message"]["tool_calls"]

    await p.chat(
        ChatRequest.from_body(
            {
                "model": "c",
                "messages": [
                    {"role": "user", "content": "Toronto?"},
                    {**choice["message"], "tool_plan": "I will use the tool."},
                    {
                        "role": "tool",
                        "tool_call_id": "get_current_weather_1byjy32y4hvq",
                        "content": '{"temp": 21}',
                    },
                ],
            }
        ),
        "command-r-plus-08-2024",
    )
    assert wire.body()["messages"][1:] == [
        {
            "role": "assistant",
            "tool_calls": COHERE_TOOL_CHAT["message"]["tool_calls"],
            "tool_plan": "I will use the tool.",
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "get_current_weather_1byjy32y4hvq"},
    ]


@pytest.mark.parametrize(
    ("reason", "finish"), [("MAX_TOKENS", "length"), ("STOP_SEQUENCE", "stop"), ("COMPLETE", "stop")]
)
async def test_cohere_finish_reasons(reason: str, finish: str) -> None:
    resp = await cohere(Wire((200, {**COHERE_CHAT, "finish_reason": reason}, {}))).chat(
        ChatRequest.from_body({"model": "c", "messages": [{"role": "user", "content": "x"}]}), "c"
    )
    assert resp.body["choices"][0]["finish_reason"] == finish


async def test_cohere_error_finish_without_content_is_transient() -> None:
    answer = {
        "id": "e1",
        "finish_reason": "ERROR",
        "message": {"role": "assistant", "content": []},
        "usage": {},
    }
    with pytest.raises(ProviderError) as ei:
        await cohere(Wire((200, answer, {}))).chat(
            ChatRequest.from_body({"model": "c", "messages": [{"role": "user", "content": "x"}]}), "c"
        )
    assert ei.value.error_class is ErrorClass.TRANSIENT


async def test_cohere_embed_exact_request() -> None:
    answer = {
        "id": "da6e531f-54c6-4a73-bf92-f60566d8d753",
        "embeddings": {
            "float": [[0.016296387, 0.008354187, 0.04699707], [-0.0011329651, 0.0027770996, 0.04620361]]
        },
        "texts": ["hello", "goodbye"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}},
        "response_type": "embeddings_by_type",
    }
    wire = Wire((200, answer, {}))
    resp = await cohere(wire).embed(
        EmbeddingRequest.from_body({"model": "embed-v4.0", "input": ["hello", "goodbye"], "dimensions": 256}),
        "embed-v4.0",
    )
    assert str(wire.requests[0].url) == "https://api.cohere.com/v2/embed"
    assert wire.body() == {
        "model": "embed-v4.0",
        "texts": ["hello", "goodbye"],
        "input_type": "search_document",
        "embedding_types": ["float"],
        "output_dimension": 256,
    }
    assert [d["embedding"] for d in resp.body["data"]] == answer["embeddings"]["float"]
    assert resp.usage == Usage(prompt_tokens=2, total_tokens=2)
    assert resp.request_id == "da6e531f-54c6-4a73-bf92-f60566d8d753"


async def test_cohere_embed_input_type_from_request_or_options() -> None:
    answer = {
        "id": "x",
        "embeddings": {"float": [[0.1]]},
        "texts": ["q"],
        "meta": {"billed_units": {"input_tokens": 1}},
    }
    wire = Wire((200, answer, {}))
    await cohere(wire).embed(
        EmbeddingRequest.from_body({"model": "e", "input": "q", "input_type": "search_query"}), "e"
    )
    assert wire.body()["input_type"] == "search_query"
    await cohere(wire, input_type="clustering").embed(
        EmbeddingRequest.from_body({"model": "e", "input": "q"}), "e"
    )
    assert wire.body()["input_type"] == "clustering"


async def test_cohere_rate_limit_and_health() -> None:
    body = {"id": "r1", "message": "You are using a Trial key, which is limited to 10 API calls / minute."}
    with pytest.raises(ProviderError) as ei:
        await cohere(Wire((429, body, {}))).chat(
            ChatRequest.from_body({"model": "c", "messages": [{"role": "user", "content": "x"}]}), "c"
        )
    assert ei.value.error_class is ErrorClass.RATE_LIMITED
    wire = Wire(
        (200, {"models": [{"name": "command-a-03-2025", "endpoints": ["chat"]}], "next_page_token": "x"}, {})
    )
    h = await cohere(wire).health()
    assert h.ok
    assert str(wire.requests[0].url) == "https://api.cohere.com/v1/models?page_size=1"
    assert wire.requests[0].headers["authorization"] == f"Bearer {COHERE_KEY}"
