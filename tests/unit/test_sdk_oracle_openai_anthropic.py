"""The vendors' own type definitions as the oracle for what the adapters send and the simulator answers.

Request bodies are checked against the official SDKs' ``*CreateParams`` TypedDicts by the strict
walker in tests/typed_oracle.py (unknown keys, missing required keys and wrong value types fail);
responses are parsed with the SDKs' pydantic models, and any field the model does not declare
fails too.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from anthropic.types import Message
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types import CreateEmbeddingResponse, EmbeddingCreateParams
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

from shared.config import ProviderConfig
from shared.providers.anthropic import AnthropicProvider
from shared.providers.openai import AzureOpenAIProvider, OpenAIProvider
from shared.schema import ChatRequest, EmbeddingRequest
from shared.simulator.formats.anthropic import AnthropicFormat
from shared.simulator.formats.openai import OpenAIFormat
from shared.simulator.wire import chat_reply, vector
from tests.typed_oracle import Mismatch, check, parse_strict
from tests.unit.wire import Wire


class MessageCreateParams20230601(MessageCreateParamsNonStreaming, total=False):
    """API version 2023-06-01 (Fusebox's default) still takes the samplers the 2.x SDK dropped
    with version 2026-10-21; their types as in anthropic<1.0's MessageCreateParams."""

    temperature: float
    top_p: float
    top_k: int


def test_the_walker_catches_unknown_fields_and_wrong_types() -> None:
    ok = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    check(ok, CompletionCreateParamsNonStreaming)
    for bad in (
        {**ok, "max_token": 5},  # misspelled
        {**ok, "temperature": "hot"},
        {**ok, "messages": [{"role": "robot", "content": "hi"}]},
        {**ok, "tool_choice": "sometimes"},
        {**ok, "stream": True},  # not the non-streaming params
        {"messages": ok["messages"]},
    ):
        with pytest.raises(Mismatch):
            check(bad, CompletionCreateParamsNonStreaming)
    with pytest.raises(Mismatch):
        check({"model": "m", "max_tokens": 5, "messages": [], "top_p": 0.5}, MessageCreateParamsNonStreaming)


# ---- the corpus ---------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA6"
USER = [{"role": "user", "content": "Hello"}]
TOOL_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22C"}]},
]

CHAT_CORPUS: dict[str, dict[str, Any]] = {
    "plain": {"model": "gpt-4o-mini", "messages": USER},
    "system_and_developer": {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "S"}, {"role": "developer", "content": "D"}, *USER],
    },
    "tools_and_results": {
        "model": "gpt-4o",
        "messages": TOOL_TURNS,
        "tools": [WEATHER],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    },
    "forced_tool": {
        "model": "gpt-4o",
        "messages": USER,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "required_tool": {"model": "gpt-4o", "messages": USER, "tools": [WEATHER], "tool_choice": "required"},
    "images": {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    },
    "json_mode": {"model": "gpt-4o", "messages": USER, "response_format": {"type": "json_object"}},
    "json_schema": {
        "model": "gpt-4o",
        "messages": USER,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
        },
    },
    "samplers_stop_n": {
        "model": "gpt-4o",
        "messages": USER,
        "temperature": 1.4,
        "top_p": 0.9,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.1,
        "stop": ["END", "STOP"],
        "n": 2,
        "seed": 7,
        "max_tokens": 64,
        "logprobs": True,
        "top_logprobs": 2,
        "user": "user-1",
        "metadata": {"project": "alpha"},
        "service_tier": "default",
        "store": False,
    },
    "stop_string_and_stream": {
        "model": "gpt-4o",
        "messages": USER,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "reasoning_o3": {
        "model": "o3",
        "messages": [{"role": "developer", "content": "Think."}, *USER],
        "max_tokens": 500,
        "temperature": 0.2,
        "top_p": 0.5,
        "reasoning_effort": "high",
        "stream": True,
    },
    "reasoning_gpt5": {"model": "gpt-5-mini", "messages": USER, "max_tokens": 50, "temperature": 0.7},
}

EMBED_CORPUS: dict[str, dict[str, Any]] = {
    "str": {"model": "text-embedding-3-small", "input": "hello"},
    "list_str": {"model": "text-embedding-3-small", "input": ["a", "b", "c"]},
    "tokens": {"model": "text-embedding-3-small", "input": [15339, 1917]},
    "token_lists": {"model": "text-embedding-3-small", "input": [[15339, 1917], [3, 4, 5]]},
    "dimensions_float": {
        "model": "text-embedding-3-large",
        "input": ["x"],
        "dimensions": 8,
        "encoding_format": "float",
        "user": "u",
    },
    "base64": {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64"},
}


OPENAI_OK = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
}
ANTHROPIC_OK = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


async def _openai_body(job: dict[str, Any], type_: str = "openai", **options: Any) -> dict[str, Any]:
    wire = Wire((200, OPENAI_OK, {}))
    cls = AzureOpenAIProvider if type_ == "azure" else OpenAIProvider
    cfg = ProviderConfig(type=type_, base_url="https://r.openai.azure.com", options=options)
    p = cls(
        type_,
        cfg,
        env={"OPENAI_API_KEY": "sk-x", "AZURE_OPENAI_API_KEY": "k"},
        transport=wire.transport,
    )
    await p.chat(ChatRequest.from_body(job), job["model"])
    return wire.body(0)


@pytest.mark.parametrize("name", sorted(CHAT_CORPUS))
async def test_openai_chat_bodies_validate_against_the_sdk(name: str) -> None:
    check(await _openai_body(CHAT_CORPUS[name]), CompletionCreateParamsNonStreaming)


@pytest.mark.parametrize("name", sorted(CHAT_CORPUS))
async def test_azure_v1_chat_bodies_validate_against_the_sdk(name: str) -> None:
    check(await _openai_body(CHAT_CORPUS[name], "azure"), CompletionCreateParamsNonStreaming)


@pytest.mark.parametrize("name", sorted(EMBED_CORPUS))
async def test_openai_embedding_bodies_validate_against_the_sdk(name: str) -> None:
    empty = {"object": "list", "data": [], "model": "m", "usage": {"prompt_tokens": 0, "total_tokens": 0}}
    wire = Wire((200, empty, {}))
    p = OpenAIProvider(
        "openai",
        ProviderConfig(type="openai"),
        env={"OPENAI_API_KEY": "sk-x"},
        transport=wire.transport,
    )
    job = EMBED_CORPUS[name]
    await p.embed(EmbeddingRequest.from_body(job), job["model"])
    check(wire.body(0), EmbeddingCreateParams)
    assert wire.body(0)["input"] == job["input"]


ANTHROPIC_CORPUS = {k: v for k, v in CHAT_CORPUS.items() if k != "json_mode"}  # json_object: refused


@pytest.mark.parametrize("name", sorted(ANTHROPIC_CORPUS))
@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21"])
async def test_anthropic_bodies_validate_against_the_sdk(name: str, version: str) -> None:
    wire = Wire((200, ANTHROPIC_OK, {}))
    p = AnthropicProvider(
        "claude",
        ProviderConfig(type="anthropic", options={"anthropic_version": version}),
        env={"ANTHROPIC_API_KEY": "sk-ant-x"},
        transport=wire.transport,
    )
    job = {**ANTHROPIC_CORPUS[name], "model": "claude-sonnet-4-5"}
    resp = await p.chat(ChatRequest.from_body(job), "claude-sonnet-4-5")
    body = wire.body(0)
    if version == "2026-10-21":
        check(body, MessageCreateParamsNonStreaming)  # the 2.x SDK describes exactly this version
    else:
        check(body, MessageCreateParams20230601)
        assert not ("temperature" in body and "top_p" in body)
        assert 0 <= body.get("temperature", 0) <= 1
    # what Fusebox hands back is a chat.completion the OpenAI SDK reads
    parse_strict(ChatCompletion, resp.body)


# ---- simulator responses parse with the SDKs' response models ----------------------------


def _sim_chat(fmt: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    if headers is not None:
        fmt.check_headers(headers)
    call = fmt.parse_chat(body, None)
    replies = [chat_reply(call, i) for i in range(call.n)]
    raw, ctype = fmt.render_chat(call, replies, 0.01)
    assert ctype.startswith("application/json")
    return json.loads(raw)


@pytest.mark.parametrize("name", sorted(CHAT_CORPUS))
async def test_simulator_openai_answers_parse_as_chat_completions(name: str) -> None:
    body = await _openai_body(CHAT_CORPUS[name])
    answer = _sim_chat(OpenAIFormat(), body)
    parse_strict(ChatCompletion, answer)
    if "response_format" in body and body["response_format"]["type"] == "json_schema":
        assert set(json.loads(answer["choices"][0]["message"]["content"])) == {"name", "age"}


@pytest.mark.parametrize("name", sorted(EMBED_CORPUS))
def test_simulator_openai_embeddings_parse(name: str) -> None:
    fmt = OpenAIFormat()
    call = fmt.parse_embed(EMBED_CORPUS[name], None, False)
    vectors = [vector(call.model, t, call.dims or 4) for t in call.texts]
    data = json.loads(fmt.render_embed(call, vectors))
    if EMBED_CORPUS[name].get("encoding_format") == "base64":
        for d in data["data"]:  # little-endian float32, as the SDK decodes it before parsing
            raw = base64.b64decode(d["embedding"])
            d["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    parsed = parse_strict(CreateEmbeddingResponse, data)
    assert len(parsed.data) == len(call.texts)
    for d, v in zip(parsed.data, vectors, strict=True):  # type: ignore[attr-defined]
        assert d.embedding == pytest.approx(v, abs=1e-6)


@pytest.mark.parametrize("name", sorted(ANTHROPIC_CORPUS))
async def test_simulator_anthropic_answers_parse_as_messages(name: str) -> None:
    wire = Wire((200, ANTHROPIC_OK, {}))
    p = AnthropicProvider(
        "c",
        ProviderConfig(type="anthropic"),
        env={"ANTHROPIC_API_KEY": "k"},
        transport=wire.transport,
    )
    await p.chat(
        ChatRequest.from_body({**ANTHROPIC_CORPUS[name], "model": "claude-sonnet-4-5"}), "claude-sonnet-4-5"
    )
    answer = _sim_chat(AnthropicFormat(), wire.body(0), {"anthropic-version": "2023-06-01"})
    msg = parse_strict(Message, answer)
    assert msg.content  # type: ignore[attr-defined]
