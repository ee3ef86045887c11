"""OpenAI chat completions, embeddings and models (and every OpenAI-compatible API)."""

from __future__ import annotations

import base64
import re
import struct
import time
from collections.abc import Mapping
from typing import Any

from shared.simulator.formats.base import JSON, Rendered, WireFormat, encode, opt_int, require_dict
from shared.simulator.wire import (
    ChatCall,
    EmbedCall,
    Reply,
    SimError,
    Tool,
    WireError,
    content_text,
    count_prompt,
    duration_text,
    request_digest,
    token_count_texts,
)
from shared.tokens import estimate_text

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls"}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


# Reasoning models, read from OpenAI's model docs independently of the adapter's own rule:
# o1/o3/o4-mini..., the gpt-5 family except its -chat models.
_REASONING = re.compile(r"^(?:o[134](?:-|$)|gpt-5(?!(?:\.\d+)?-chat))")
# Parameters reasoning models reject unless at their default value.
_SAMPLER_DEFAULTS = {"temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}
_UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias")
# /embeddings takes at most 2,048 inputs (strings or token arrays) per call.
MAX_EMBED_INPUTS = 2048


def _reasoning_rules(b: dict[str, Any], model: str) -> None:
    """Reject what OpenAI's reasoning models reject, with OpenAI's own messages and codes."""
    if not _REASONING.match(model.rsplit("/", 1)[-1]):
        return
    if b.get("max_tokens") is not None:
        raise WireError(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    if b.get("reasoning_effort") == "none" and model.startswith("gpt-5."):
        return  # gpt-5.1+ with reasoning off take samplers
    for name, default in _SAMPLER_DEFAULTS.items():
        value = b.get(name)
        if value is not None and value != default:
            raise WireError(
                f"Unsupported value: '{name}' does not support {value} with this model. "
                f"Only the default ({default}) value is supported.",
                param=name,
                code="unsupported_value",
            )
    for name in _UNSUPPORTED:
        if b.get(name) not in (None, False):
            raise WireError(
                f"Unsupported parameter: '{name}' is not supported with this model.",
                param=name,
                code="unsupported_parameter",
            )


def _err(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _missing(name: str) -> WireError:
    return WireError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def azure_version_error(deployment: str, api_version: str | None) -> str | None:
    """Azure's deployments surface: reasoning deployments need a recent dated api-version."""
    if not api_version:
        return "Missing required query parameter: api-version"
    minimum = "2025-04-01-preview" if deployment.startswith(("o3", "o4", "gpt-5")) else "2024-12-01-preview"
    if _REASONING.match(deployment) and api_version < minimum:
        return f"Model {deployment} is enabled only for api versions {minimum} and later"
    return None


def _model(b: dict[str, Any], path_model: str | None = None) -> str:
    if path_model is not None:  # Azure: the deployment in the URL is the model
        return path_model
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("you must provide a model parameter")
    return model


def _tools(b: dict[str, Any]) -> tuple[list[Tool], str | None]:
    raw_tools = b.get("tools")
    choice = b.get("tool_choice")
    tools: list[Tool] = []
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise WireError(
                "Invalid type for 'tools': expected an array.", param="tools", code="invalid_type"
            )
        for i, t in enumerate(raw_tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _missing(f"tools[{i}].function")
            tools.append(Tool(fn["name"], fn.get("parameters") or {}))
    if choice is None or choice in ("auto", "none"):
        return tools, None
    if not tools:
        raise WireError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if choice == "required":
        return tools, ""
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str) or all(t.name != name for t in tools):
        raise WireError(
            f"Invalid value for 'tool_choice': {choice!r} names no tool in 'tools'.", param="tool_choice"
        )
    return tools, name


class OpenAIFormat(WireFormat):
    name = "openai"
    request_id_header = "x-request-id"
    default_models = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small")

    def api_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:]
        return headers.get("api-key")  # Azure OpenAI

    def parse_chat(self, body: Any, path_model: str | None) -> ChatCall:
        b = require_dict(body)
        model = _model(b, path_model)
        msgs = b.get("messages")
        if msgs is None:
            raise _missing("messages")
        if not isinstance(msgs, list):
            raise WireError(
                "Invalid type for 'messages': expected an array.", param="messages", code="invalid_type"
            )
        if not msgs:
            raise WireError(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        texts = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m:
                raise _missing(f"messages[{i}].role")
            if m["role"] not in _ROLES:
                raise WireError(
                    f"Invalid value: '{m['role']}'. Supported values are: 'system', 'assistant', 'user', "
                    "'function', 'tool', and 'developer'.",
                    param=f"messages[{i}].role",
                    code="invalid_value",
                )
            text = content_text(m.get("content"))
            for tc in m.get("tool_calls") or ():
                if isinstance(tc, dict):
                    text += " " + str(tc.get("function", {}).get("arguments", ""))
            texts.append(text)
        _reasoning_rules(b, model)
        tools, forced = _tools(b)
        extra = estimate_text(encode(b["tools"]).decode()) if tools else 0
        limit = opt_int(b.get("max_completion_tokens"), "max_completion_tokens")
        if limit is None:
            limit = opt_int(b.get("max_tokens"), "max_tokens")
        n = opt_int(b.get("n"), "n") or 1
        if not 1 <= n <= 128:
            raise WireError("Invalid 'n': must be between 1 and 128.", param="n", code="invalid_value")
        schema: dict[str, Any] | None = None
        rf = b.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_object":
            schema = {}
        elif isinstance(rf, dict) and rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {}
        so = b.get("stream_options")
        return ChatCall(
            model=model,
            digest=request_digest(b),
            prompt_tokens=count_prompt(texts, extra),
            max_tokens=limit,
            tools=tools,
            forced_tool=forced,
            json_schema=schema,
            n=n,
            stream=bool(b.get("stream")),
            options={"include_usage": bool(isinstance(so, dict) and so.get("include_usage"))},
        )

    def render_chat(self, call: ChatCall, replies: list[Reply], duration_s: float) -> tuple[bytes, str]:
        first = replies[0]
        created = int(time.time())
        completion = sum(r.completion_tokens for r in replies)
        usage = {
            "prompt_tokens": first.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": first.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if call.stream:
            return self._sse(call, replies, created, usage), "text/event-stream; charset=utf-8"
        choices = []
        for i, r in enumerate(replies):
            msg: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None, "annotations": []}
            if r.tool_call is not None:
                msg["tool_calls"] = [self._tool_call(r)]
            choices.append({"index": i, "message": msg, "logprobs": None, "finish_reason": _FINISH[r.finish]})
        body = {
            "id": "chatcmpl-" + first.id_hex,
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": choices,
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_simulator",
        }
        return encode(body), JSON

    @staticmethod
    def _tool_call(r: Reply) -> dict[str, Any]:
        tc = r.tool_call
        assert tc is not None
        return {
            "id": "call_" + tc.id_hex,
            "type": "function",
            "function": {"name": tc.name, "arguments": encode(tc.arguments).decode()},
        }

    def _sse(self, call: ChatCall, replies: list[Reply], created: int, usage: dict[str, Any]) -> bytes:
        base = {"id": "chatcmpl-" + replies[0].id_hex, "object": "chat.completion.chunk", "created": created}
        base |= {"model": call.model, "system_fingerprint": "fp_simulator"}
        include_usage = call.options.get("include_usage")
        out = bytearray()

        def chunk(choices: list[dict[str, Any]], **more: Any) -> None:
            out.extend(b"data: " + encode({**base, "choices": choices, **more}) + b"\n\n")

        for i, r in enumerate(replies):
            chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            if r.tool_call is not None:
                tc = {"index": 0, **self._tool_call(r)}
                chunk([{"index": i, "delta": {"tool_calls": [tc]}, "finish_reason": None}])
            else:
                words = (r.text or "").split(" ")
                for j, w in enumerate(words):
                    piece = w if j == 0 else " " + w
                    chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
            chunk([{"index": i, "delta": {}, "finish_reason": _FINISH[r.finish]}])
        if include_usage:
            chunk([], usage=usage)
        out.extend(b"data: [DONE]\n\n")
        return bytes(out)

    def parse_embed(self, body: Any, path_model: str | None, batch: bool) -> EmbedCall:
        b = require_dict(body)
        model = _model(b, path_model)
        if "input" not in b:
            raise _missing("input")
        inp = b["input"]
        invalid = WireError(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            param="input",
        )
        texts: list[str]
        if isinstance(inp, str):
            if not inp:
                raise invalid
            texts, tokens = [inp], estimate_text(inp)
        elif isinstance(inp, list) and inp and all(isinstance(x, str) and x for x in inp):
            texts, tokens = inp, token_count_texts(inp)
        elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            texts, tokens = [" ".join(map(str, inp))], len(inp)
        elif isinstance(inp, list) and inp and all(isinstance(x, list) and x for x in inp):
            texts, tokens = [" ".join(map(str, x)) for x in inp], sum(len(x) for x in inp)
        else:
            raise invalid
        if len(texts) > MAX_EMBED_INPUTS:
            # The real API answers this generic message, with neither param nor code.
            raise WireError(invalid.error.message)
        fmt = b.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise WireError(
                f"Invalid value for 'encoding_format': '{fmt}'. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        dims = opt_int(b.get("dimensions"), "dimensions")
        return EmbedCall(
            model=model, texts=texts, dims=dims, tokens=tokens, options={"base64": fmt == "base64"}
        )

    def render_embed(self, call: EmbedCall, vectors: list[list[float]]) -> bytes:
        if call.options.get("base64"):
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode(),
                }
                for i, v in enumerate(vectors)
            ]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return encode(
            {
                "object": "list",
                "data": data,
                "model": call.model,
                "usage": {"prompt_tokens": call.tokens, "total_tokens": call.tokens},
            }
        )

    def render_error(self, err: SimError) -> Rendered:
        k = err.kind
        if k == "bad_request":
            return 400, {}, _err(err.message, "invalid_request_error", err.param, err.code)
        if k == "invalid_json":
            return 400, {}, _err(_BAD_JSON, "invalid_request_error")
        if k == "unauthorized":
            msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
            return 401, {}, _err(msg, "invalid_request_error", None, "invalid_api_key")
        if k == "model_not_found":
            msg = f"The model `{err.model}` does not exist or you do not have access to it."
            return 404, {}, _err(msg, "invalid_request_error", None, "model_not_found")
        if k == "context_length":
            msg = (
                f"This model's maximum context length is {err.limit} tokens. However, your messages resulted "
                f"in {err.tokens} tokens. Please reduce the length of the messages."
            )
            return 400, {}, _err(msg, "invalid_request_error", "messages", "context_length_exceeded")
        if k == "rate_limit":
            limit = str(err.capacity or 500)
            reset = duration_text(err.retry_after_s)
            headers = {
                "x-ratelimit-limit-requests": limit,
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": reset,
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": reset,
            }
            msg = (
                f"Rate limit reached for {err.model or 'requests'} in organization org-simulator on "
                f"requests per min (RPM): Limit {limit}, Used {limit}, Requested 1. "
                f"Please try again in {reset}. "
                "Visit https://platform.openai.com/account/rate-limits to learn more."
            )
            return 429, headers, _err(msg, "requests", None, "rate_limit_exceeded")
        if k == "server_error":
            msg = "The server had an error while processing your request. Sorry about that!"
            return 500, {}, _err(msg, "server_error")
        if k == "overloaded":
            return (
                503,
                {},
                _err("The engine is currently overloaded, please try again later.", "server_error"),
            )
        if k in ("unavailable", "outage"):
            return 503, {}, _err("The server is overloaded or not ready yet.", "server_error")
        if k == "timeout":
            return 504, {}, _err("Gateway timeout.", "server_error")
        return 404, {}, _err(err.message or "Invalid URL", "invalid_request_error")

    def render_models(self, models: list[str]) -> bytes:
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in models]
        return encode({"object": "list", "data": data})
