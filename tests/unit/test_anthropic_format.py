"""Anthropic Messages <-> internal chat translation, checked against both vendors' SDK types.

The Anthropic SDK's params types say what an Anthropic client may send us; the OpenAI SDK's params
types say what we may hand to any adapter; the Anthropic SDK's response models parse what we answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, MessageParam, message_create_params
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types.chat import completion_create_params

from producer.api import anthropic_format as af
from shared.schema import ChatRequest, ErrorInfo, JobResult, RequestError, Usage
from tests.typed_oracle import check

IMG = "iVBORw0KGgo="
CORPUS: list[dict[str, Any]] = [
    {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]},
    {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                ],
            },
            {"role": "assistant", "content": "A cat and a dog."},
            {"role": "user", "content": "Thanks"},
        ],
    },
    {
        "model": "gemini-2.5-flash",
        "max_tokens": 200,
        "system": "You call tools.",
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
            {"name": "no_args", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "down"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Summarize."},
                ],
            },
        ],
    },
    {
        "model": "m",
        "max_tokens": 5,
        "tool_choice": {"type": "tool", "name": "f"},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "go"}]}],
    },
    {
        "model": "m",
        "max_tokens": 5,
        "tool_choice": {"type": "none"},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "no tools now"}],
    },
]


@pytest.mark.parametrize("params", CORPUS, ids=range(len(CORPUS)))
def test_translated_request_is_a_valid_openai_request(params: dict[str, Any]) -> None:
    # the corpus itself is what the Anthropic SDK lets a client send
    check(params, message_create_params.MessageCreateParamsNonStreaming)
    body = af.to_openai_request(params)
    check(body, completion_create_params.CompletionCreateParamsNonStreaming)
    req = ChatRequest.from_body(body)  # and Fusebox's own request type takes it
    assert req.model == params["model"] and req.max_tokens == params["max_tokens"]
    assert set(req.extra) <= {"parallel_tool_calls"}  # an OpenAI field Fusebox passes through


def test_tool_turns_map_to_openai_tool_calls_and_tool_messages() -> None:
    body = af.to_openai_request(CORPUS[2])
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "user"]
    calls = body["messages"][2]["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_1", "toolu_2"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome"}
    assert body["messages"][2]["content"] == "Checking."
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
    assert body["messages"][4]["content"] == "[tool error] down"
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["tools"][0]["function"]["parameters"]["required"] == ["city"]


def test_system_images_stops_and_metadata_map_across() -> None:
    body = af.to_openai_request(CORPUS[1])
    assert body["messages"][0] == {"role": "system", "content": "Be brief.\n\nUse French."}
    parts = body["messages"][1]["content"]
    assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{IMG}"
    assert parts[2]["image_url"]["url"] == "https://example.com/a.jpg"
    assert body["stop"] == ["END"] and body["user"] == "u-42"
    assert af.to_openai_request(CORPUS[3])["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert af.to_openai_request(CORPUS[4])["tool_choice"] == "none"


def test_samplers_from_older_clients_are_kept() -> None:
    p = {**CORPUS[0], "temperature": 0.3, "top_p": 0.9}
    body = af.to_openai_request(p)
    assert (body["temperature"], body["top_p"]) == (0.3, 0.9)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({**CORPUS[0], "stream": True}, "streaming"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                            }
                        ],
                    }
                ],
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                "messages": [{"role": "user", "content": "x"}],
            },
            "server tool",
        ),
        ([1, 2], "JSON object"),
    ],
)
def test_unsupported_requests_get_a_clear_error(params: Any, needle: str) -> None:
    with pytest.raises(RequestError) as e:
        af.to_openai_request(params)
    assert needle in e.value.message
    assert e.value.code == "invalid_request_error"


def _completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    }


def test_completion_becomes_an_anthropic_message_the_sdk_parses() -> None:
    body = _completion(content="Bonjour")
    msg = Message.model_validate(af.to_message(body, "gpt-4o-mini", "msg_1"))
    assert msg.content[0].type == "text" and msg.content[0].text == "Bonjour"
    assert msg.stop_reason == "end_turn" and msg.model == "gpt-4o-mini-2024"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (20, 7, 10)

    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    tool = _completion(content=None, tool_calls=calls)
    tool["choices"][0]["finish_reason"] = "tool_calls"
    msg = Message.model_validate(af.to_message(tool, "m", "msg_2"))
    assert msg.stop_reason == "tool_use"
    assert (
        msg.content[0].type == "tool_use"
        and msg.content[0].input == {"a": 1}
        and msg.content[0].id == "call_1"
    )
    # the reply can be sent straight back as the next turn's assistant message
    back = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]}
    check(back, MessageParam)

    long = _completion(content="cut")
    long["choices"][0]["finish_reason"] = "length"
    assert af.to_message(long, "m", "x")["stop_reason"] == "max_tokens"


def _result(**kw: Any) -> JobResult:
    base: dict[str, Any] = {"id": "b1:c1", "status_code": 200, "custom_id": "c1", "batch_id": "b1", "line": 0}
    base.update(kw)
    return JobResult(**base)


def test_batch_result_lines_parse_with_the_sdk() -> None:
    ok = _result(body=_completion(content="hi"), model="m", usage=Usage(prompt_tokens=1, completion_tokens=1))
    line = MessageBatchIndividualResponse.model_validate(af.result_line("c1", ok))
    assert line.result.type == "succeeded" and line.result.message.content[0].text == "hi"

    bad = _result(status_code=400, error=ErrorInfo(code="invalid_body", message="nope", status=400))
    line = MessageBatchIndividualResponse.model_validate(af.result_line("c1", bad))
    assert line.result.type == "errored"
    assert (
        line.result.error.error.type == "invalid_request_error" and line.result.error.error.message == "nope"
    )

    down = _result(status_code=503, error=ErrorInfo(code="providers_unavailable", message="x", status=503))
    line = MessageBatchIndividualResponse.model_validate(af.result_line("c1", down))
    assert line.result.error.error.type == "api_error"

    cancelled = _result(status_code=0, error=ErrorInfo(code="batch_cancelled", message="x"))
    assert (
        MessageBatchIndividualResponse.model_validate(af.result_line("c1", cancelled)).result.type
        == "canceled"
    )
    expired = _result(status_code=0, error=ErrorInfo(code="batch_expired", message="x"))
    assert (
        MessageBatchIndividualResponse.model_validate(af.result_line("c1", expired)).result.type == "expired"
    )
    assert af.result_line("c9", None, "expired")["result"] == {"type": "expired"}


def test_batch_object_parses_with_the_sdk_through_its_lifecycle() -> None:
    running = {
        "status": "in_progress",
        "total": "10",
        "completed": "4",
        "failed": "1",
        "created_at": "1700000000",
    }
    b = MessageBatch.model_validate(af.batch_object("b1", running, "http://h/v1/messages/batches/b1/results"))
    assert b.processing_status == "in_progress" and b.results_url is None and b.ended_at is None
    assert (b.request_counts.processing, b.request_counts.succeeded, b.request_counts.errored) == (5, 4, 1)

    ended = {
        **running,
        "status": "cancelled",
        "completed": "4",
        "failed": "6",
        "cancelled_lines": "5",
        "cancelling_at": "1700000100",
        "cancelled_at": "1700000200",
    }
    b = MessageBatch.model_validate(af.batch_object("b1", ended, "http://h/r"))
    assert b.processing_status == "ended" and b.results_url == "http://h/r"
    assert (b.request_counts.canceled, b.request_counts.errored, b.request_counts.processing) == (5, 1, 0)
    assert b.cancel_initiated_at is not None and b.ended_at is not None
    assert (
        MessageBatch.model_validate(
            af.batch_object("b1", {**running, "status": "cancelling"}, "u")
        ).processing_status
        == "canceling"
    )


def test_error_body_shape() -> None:
    assert af.error_body(401, "bad key") == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "bad key"},
    }
    assert af.error_body(418, "x")["error"]["type"] == "invalid_request_error"
    assert af.error_body(503, "x")["error"]["type"] == "api_error"
