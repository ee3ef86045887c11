"""Anthropic Messages API (``POST /v1/messages``), translated from and to OpenAI's chat shape.

System messages become the top-level ``system``; ``max_tokens`` is required, so
a configured default (options.default_max_tokens) fills it; tool calls become
``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks. Anthropic has
no embeddings API.

Only what the Messages API accepts is sent (it answers 400 to anything else):
- samplers: on API version 2023-06-01 (the default) one of ``temperature`` / ``top_p``
  (temperature wins: current models reject both) and ``temperature`` clamped to
  Anthropic's 0-1 (OpenAI's range is 0-2); none with thinking on, or on API version
  2026-10-21 and later;
- ``metadata``: only ``user_id`` (OpenAI's ``user``, or a ``metadata.user_id``);
- ``service_tier``: ``auto`` / ``standard_only`` (OpenAI's ``default``/``flex`` ->
  ``standard_only``, ``priority``/``scale`` -> ``auto``; anything else dropped);
- ``response_format`` ``json_schema`` -> structured outputs (``output_config.format``);
  ``json_object`` (JSON without a schema) has no equivalent and fails the job clearly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from shared.errors import ErrorClass, ProviderError
from shared.providers import answer_fields
from shared.providers.base import ProviderResponse
from shared.providers.http import HTTPProvider, data_url, dumps, json_arguments, text_of, unsupported
from shared.providers.openai import usage_dict
from shared.schema import ChatRequest, EmbeddingRequest, Usage

ANTHROPIC_VERSION = "2023-06-01"
# From this API version on, temperature/top_p/top_k are rejected (400 "Extra inputs are not permitted").
NO_SAMPLERS_VERSION = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096
# Request fields that are Anthropic's own; other unknown (OpenAI-only) fields would be a 400 there.
PASSTHROUGH = frozenset(
    {
        "thinking",
        "container",
        "mcp_servers",
        "context_management",
        "cache_control",
        "inference_geo",
        "speed",
    }
)
# OpenAI service_tier -> Anthropic's (which has only auto and standard_only).
SERVICE_TIERS = {
    "auto": "auto",
    "standard_only": "standard_only",
    "default": "standard_only",
    "flex": "standard_only",
    "priority": "auto",
    "scale": "auto",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}


class AnthropicProvider(HTTPProvider):
    dialect = "anthropic"
    health_path = "v1/models"
    health_params = {"limit": "1"}

    DEFAULT_BASE_URL = "https://api.anthropic.com"
    KEY_ENVS = ("ANTHROPIC_API_KEY",)
    STRIP_SUFFIXES = ("/v1",)

    def configure(self, opts: Mapping[str, Any]) -> None:
        self.default_max_tokens = int(opts.get("default_max_tokens", DEFAULT_MAX_TOKENS))
        self.version = str(opts.get("anthropic_version", ANTHROPIC_VERSION))
        self.samplers = self.version < NO_SAMPLERS_VERSION  # dated versions compare as strings
        beta = opts.get("beta")
        self.beta = ",".join(beta) if isinstance(beta, list) else (str(beta) if beta else None)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def static_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.version}
        if self.beta:
            headers["anthropic-beta"] = self.beta
        return headers

    def payload(self, req: ChatRequest, model: str) -> dict[str, Any]:
        system, messages = convert_messages(self.name, req.messages)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": req.output_limit() or self.default_max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = system
        thinking = req.extra.get("thinking")
        # Extended/adaptive thinking takes no sampler changes either.
        thinks = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
        if self.samplers and not thinks:
            if req.temperature is not None:  # one sampler only: current models reject both
                body["temperature"] = min(max(float(req.temperature), 0.0), 1.0)
            elif req.top_p is not None:
                body["top_p"] = req.top_p
            if "top_k" in req.extra:
                body["top_k"] = req.extra["top_k"]
        if req.stop:
            body["stop_sequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if req.tools:
            body["tools"] = [convert_tool(t) for t in req.tools]
        choice = convert_tool_choice(req.tool_choice, req.extra.get("parallel_tool_calls"))
        if choice and req.tools:
            body["tool_choice"] = choice
        meta = req.extra.get("metadata")
        user_id = meta.get("user_id") if isinstance(meta, dict) else None
        if isinstance(user_id, str) or req.user:
            body["metadata"] = {"user_id": user_id if isinstance(user_id, str) else req.user}
        tier = SERVICE_TIERS.get(str(req.extra.get("service_tier")))
        if tier:
            body["service_tier"] = tier
        for key in PASSTHROUGH.intersection(req.extra):
            body[key] = req.extra[key]
        output_config = self.output_config(req)
        if output_config:
            body["output_config"] = output_config
        return body

    def output_config(self, req: ChatRequest) -> dict[str, Any] | None:
        """Anthropic's ``output_config`` (as sent, if Anthropic-native) plus OpenAI's ``response_format``."""
        native = req.extra.get("output_config")
        out: dict[str, Any] = dict(native) if isinstance(native, dict) else {}
        rf = req.response_format or {}
        kind = rf.get("type")
        if kind == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise self._bad_request("response_format json_schema has no 'json_schema.schema' object")
            out["format"] = {"type": "json_schema", "schema": schema}
        elif kind == "json_object":
            raise self._bad_request(
                "response_format json_object (JSON without a schema) has no Anthropic equivalent; "
                "send response_format json_schema with a schema"
            )
        elif kind not in (None, "text"):
            raise self._bad_request(f"response_format type {kind!r} is not supported")
        return out or None

    def _bad_request(self, what: str) -> ProviderError:
        return ProviderError(ErrorClass.FINAL, f"{self.name}: {what}", code="unsupported_parameter")

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        data, resp = await self.post_json("v1/messages", self.payload(req, model))
        if not isinstance(data.get("content"), list):
            raise self.malformed("message has no 'content' list", resp)
        body, usage = normalize(data, model)
        return ProviderResponse(
            body=body, usage=usage, request_id=answer_fields.request_id(resp.headers) or body["id"]
        )

    async def embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        raise unsupported(self.name, "anthropic has no embeddings API")


# -- request conversion ---------------------------------------------------


def convert_messages(
    provider: str, messages: list[dict[str, Any]]
) -> tuple[str | list[dict[str, Any]], list]:
    """OpenAI messages -> (system, Anthropic messages); consecutive same-role turns are merged."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system += _blocks(content)
        elif role in ("tool", "function"):
            block = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id") or m.get("name"),
                "content": content if isinstance(content, str) else _blocks(content),
            }
            _append(out, "user", [block])
        elif role == "assistant":
            blocks = _blocks(content)
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tc.get("id"),
                        "name": fn.get("name"),
                        "input": json_arguments(provider, fn.get("arguments")),
                    }
                )
            _append(out, "assistant", blocks)
        else:
            _append(out, "user", _blocks(content))
    # A plain string unless a block carries something a string cannot (cache_control).
    if all(set(b) == {"type", "text"} for b in system):
        return "\n\n".join(b["text"] for b in system), out
    return system, out


def _append(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": blocks})


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return [{"type": "text", "text": text_of(content)}]
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            block = {"type": "text", "text": part.get("text", "")}
            if "cache_control" in part:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            inline = data_url(url)
            source = (
                {"type": "base64", "media_type": inline[0], "data": inline[1]}
                if inline
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
        else:  # already an Anthropic block (image, document, ...): pass through
            blocks.append(part)
    return blocks


def convert_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function" or "function" not in tool:
        return tool  # an Anthropic-native tool (web search, computer use, ...)
    fn = tool["function"]
    out: dict[str, Any] = {
        "name": fn.get("name"),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def convert_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    elif isinstance(choice, dict):
        out = dict(choice)  # already Anthropic's shape
    else:
        out = None
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# -- response normalization -----------------------------------------------


def normalize(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage]:
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in data["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": dumps(block.get("input") or {})},
                }
            )
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    u = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    fresh = int(u.get("input_tokens") or 0)
    read = int(u.get("cache_read_input_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    output = int(u.get("output_tokens") or 0)
    # OpenAI's prompt_tokens include cached ones; Anthropic's input_tokens exclude both cache kinds.
    prompt = fresh + read + written
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output, cached_tokens=read
    )
    body = {
        "id": data.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(data.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": usage_dict(usage, cache_creation_tokens=written) if written else usage_dict(usage),
    }
    return body, usage
