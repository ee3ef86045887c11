"""Anthropic Messages API (``POST /v1/messages``) and its models list."""

from __future__ import annotations

import contextvars
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
    request_digest,
)
from shared.tokens import estimate_text

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}
# The request's anthropic-version: check_headers sets it, parse_chat reads it (same request task).
_VERSION: contextvars.ContextVar[str] = contextvars.ContextVar("anthropic_version", default="2023-06-01")
# From this version on the Messages API rejects every sampler ("Extra inputs are not permitted").
_NO_SAMPLERS = "2026-10-21"
_SAMPLERS = frozenset({"temperature", "top_p", "top_k"})
# Top-level request fields the Messages API accepts (GA and beta); anything else is a 400.
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
        "cache_control",
        "inference_geo",
        "speed",
        "diagnostics",
        *_SAMPLERS,
    }
)


def _request_rules(b: dict[str, Any], version: str) -> dict[str, Any] | None:
    """Reject what the Messages API rejects; the structured-output schema asked for, if any."""
    allowed = _FIELDS - _SAMPLERS if version >= _NO_SAMPLERS else _FIELDS
    for key in b:
        if key not in allowed:
            raise WireError(f"{key}: Extra inputs are not permitted")
    for name in ("temperature", "top_p"):
        v = b.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise WireError(f"{name}: Input should be a valid number")
        if v > 1:
            raise WireError(f"{name}: Input should be less than or equal to 1")
        if v < 0:
            raise WireError(f"{name}: Input should be greater than or equal to 0")
    if b.get("temperature") is not None and b.get("top_p") is not None:
        raise WireError(
            "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
        )
    meta = b.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise WireError("metadata: Input should be a valid dictionary")
        for key in meta:
            if key != "user_id":
                raise WireError(f"metadata.{key}: Extra inputs are not permitted")
    tier = b.get("service_tier")
    if tier is not None and tier not in ("auto", "standard_only"):
        raise WireError("service_tier: Input should be 'auto' or 'standard_only'")
    fmt = (b.get("output_config") or {}).get("format") if isinstance(b.get("output_config"), dict) else None
    fmt = fmt if fmt is not None else b.get("output_format")
    if fmt is None:
        return None
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(schema, dict):
        raise WireError("output_config.format: Input tag does not match the expected tag 'json_schema'")
    return schema


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _tools(b: dict[str, Any]) -> tuple[list[Tool], str | None]:
    tools = []
    for i, t in enumerate(b.get("tools") or ()):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise WireError(f"tools.{i}.name: Field required")
        tools.append(Tool(t["name"], t.get("input_schema") or {}))
    choice = b.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") in (None, "auto", "none"):
        return tools, None
    if not tools:
        raise WireError("tool_choice may only be specified while providing tools.")
    if choice["type"] == "any":
        return tools, ""
    if choice["type"] == "tool":
        name = choice.get("name")
        if all(t.name != name for t in tools):
            raise WireError(f"Tool '{name}' not found in provided tools")
        return tools, name
    raise WireError(
        f"tool_choice.type: Input tag '{choice['type']}' is not one of 'auto', 'any', 'tool', 'none'"
    )


class AnthropicFormat(WireFormat):
    name = "anthropic"
    request_id_header = "request-id"
    default_models = ("claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-20241022")

    def api_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        # x-api-key wins when both are sent; SDKs from API version 2026-10-21 on send a Bearer token.
        key = headers.get("x-api-key")
        if key is None and headers.get("Authorization", "").startswith("Bearer "):
            key = headers["Authorization"][7:]
        return key

    def check_headers(self, headers: Mapping[str, str]) -> None:
        if "anthropic-version" not in headers:
            raise WireError("anthropic-version: header is required")
        _VERSION.set(headers["anthropic-version"])

    def parse_chat(self, body: Any, path_model: str | None) -> ChatCall:
        b = require_dict(body)
        for field in ("model", "max_tokens", "messages"):
            if field not in b:
                raise WireError(f"{field}: Field required")
        model = b["model"]
        if not isinstance(model, str) or not model:
            raise WireError("model: Input should be a valid string")
        limit = opt_int(b["max_tokens"], "max_tokens")
        msgs = b["messages"]
        if not isinstance(msgs, list):
            raise WireError("messages: Input should be a valid list")
        if not msgs:
            raise WireError("messages: at least one message is required")
        schema = _request_rules(b, _VERSION.get())
        texts = []
        system = b.get("system")
        if system is not None:
            texts.append(content_text(system))
        for i, m in enumerate(msgs):
            role = m.get("role") if isinstance(m, dict) else None
            if role == "system":
                raise WireError(
                    'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                    'parameter, not "system" as an input message role.'
                )
            if role not in ("user", "assistant"):
                raise WireError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if "content" not in m:
                raise WireError(f"messages.{i}.content: Field required")
            text = content_text(m["content"])
            if isinstance(m["content"], list):  # tool_use inputs count too
                text += " ".join(str(c.get("input", "")) for c in m["content"] if isinstance(c, dict))
            texts.append(text)
        tools, forced = _tools(b)
        extra = estimate_text(encode(b["tools"]).decode()) if tools else 0
        return ChatCall(
            model=model,
            digest=request_digest(b),
            prompt_tokens=count_prompt(texts, extra),
            max_tokens=limit,
            tools=tools,
            forced_tool=forced,
            json_schema=schema,
            stream=bool(b.get("stream")),
        )

    def render_chat(self, call: ChatCall, replies: list[Reply], duration_s: float) -> tuple[bytes, str]:
        r = replies[0]
        if r.tool_call is not None:
            tc = r.tool_call
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": "toolu_01" + tc.id_hex, "name": tc.name, "input": tc.arguments}
            ]
        else:
            content = [{"type": "text", "text": r.text or ""}]
        if call.stream:
            return _sse(call, r, content), "text/event-stream; charset=utf-8"
        body = {
            "id": "msg_01" + r.id_hex,
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": _STOP[r.finish],
            "stop_sequence": None,
            "usage": {
                "input_tokens": r.prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": r.completion_tokens,
                "service_tier": "standard",
            },
        }
        return encode(body), JSON

    def parse_embed(self, body: Any, path_model: str | None, batch: bool) -> EmbedCall:
        raise WireError("Anthropic has no embeddings endpoint")  # pragma: no cover - not routed

    def render_embed(self, call: EmbedCall, vectors: list[list[float]]) -> bytes:
        raise NotImplementedError  # pragma: no cover - not routed

    def render_error(self, err: SimError) -> Rendered:
        status, type_, msg, headers = self._error(err)
        body = {
            "type": "error",
            "error": {"type": type_, "message": msg},
            "request_id": err.request_id or None,
        }
        return status, headers, encode(body)

    @staticmethod
    def _error(err: SimError) -> tuple[int, str, str, dict[str, str]]:
        k = err.kind
        if k == "bad_request":
            return 400, "invalid_request_error", err.message, {}
        if k == "invalid_json":
            return 400, "invalid_request_error", "There was an issue with the format of the request body.", {}
        if k == "unauthorized":
            return 401, "authentication_error", "invalid x-api-key", {}
        if k == "model_not_found":
            return 404, "not_found_error", f"model: {err.model}", {}
        if k == "context_length":
            return (
                400,
                "invalid_request_error",
                f"prompt is too long: {err.tokens} tokens > {err.limit} maximum",
                {},
            )
        if k == "rate_limit":
            limit = str(err.capacity or 50)
            reset = _rfc3339(time.time() + err.retry_after_s)
            headers = {}
            for kind, lim in (("requests", limit), ("tokens", "40000"), ("input-tokens", "30000")):
                headers[f"anthropic-ratelimit-{kind}-limit"] = lim
                headers[f"anthropic-ratelimit-{kind}-remaining"] = "0"
                headers[f"anthropic-ratelimit-{kind}-reset"] = reset
            headers["anthropic-ratelimit-output-tokens-limit"] = "8000"
            headers["anthropic-ratelimit-output-tokens-remaining"] = "8000"
            headers["anthropic-ratelimit-output-tokens-reset"] = reset
            msg = (
                f"This request would exceed the rate limit for your organization of {limit} requests per "
                "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
                "response headers for current usage. Please reduce the prompt length or the maximum tokens "
                "requested, or try again later."
            )
            return 429, "rate_limit_error", msg, headers
        if k == "server_error":
            return 500, "api_error", "Internal server error", {}
        if k == "overloaded":
            return 529, "overloaded_error", "Overloaded", {}
        if k in ("unavailable", "outage"):
            return 503, "api_error", "Service unavailable", {}
        if k == "timeout":
            return 504, "api_error", "Gateway timeout", {}
        return 404, "not_found_error", err.message or "Not found", {}

    def render_models(self, models: list[str]) -> bytes:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-05-14T00:00:00Z"}
            for m in models
        ]
        return encode(
            {
                "data": data,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )


def _sse(call: ChatCall, r: Reply, content: list[dict[str, Any]]) -> bytes:
    """The Messages API's named SSE events for one reply (text deltas word by word, tool input as JSON)."""
    out = bytearray()

    def event(name: str, data: dict[str, Any]) -> None:
        out.extend(b"event: " + name.encode() + b"\ndata: " + encode({"type": name, **data}) + b"\n\n")

    message = {
        "id": "msg_01" + r.id_hex,
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": r.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
            "service_tier": "standard",
        },
    }
    event("message_start", {"message": message})
    event("ping", {})
    for i, block in enumerate(content):
        if block["type"] == "tool_use":
            event("content_block_start", {"index": i, "content_block": {**block, "input": {}}})
            delta = {"type": "input_json_delta", "partial_json": encode(block["input"]).decode()}
            event("content_block_delta", {"index": i, "delta": delta})
        else:
            event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
            for j, word in enumerate(block["text"].split(" ")):
                piece = word if j == 0 else " " + word
                event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": piece}})
        event("content_block_stop", {"index": i})
    event(
        "message_delta",
        {
            "delta": {"stop_reason": _STOP[r.finish], "stop_sequence": None},
            "usage": {"output_tokens": r.completion_tokens},
        },
    )
    event("message_stop", {})
    return bytes(out)
