"""Ollama's native API: ``/api/chat`` (non-streaming) and ``/api/embed``.

Sampling fields move into ``options`` (max tokens is ``num_predict``); tool
call arguments are objects, not JSON strings; usage comes from
``prompt_eval_count`` / ``eval_count``. No key is needed for a local server; a
key (OLLAMA_API_KEY) is sent as a bearer token when set (hosted Ollama).

Tool results: the documented field is ``tool_name`` (the function's name); current servers also
read ``tool_call_id`` and give tool calls an ``id``, so both are sent (Go's JSON decoding ignores
fields an older server does not know). ``/api/embed`` takes text only: token-id inputs are rejected.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from shared.providers.base import ProviderResponse, sampling_fields
from shared.providers.http import HTTPProvider, data_url, dumps, json_arguments, text_of
from shared.providers.openai import usage_dict
from shared.schema import ChatRequest, EmbeddingRequest, Usage

# OpenAI-style extras that are Ollama sampling options.
OPTION_EXTRAS = ("top_k", "presence_penalty", "frequency_penalty", "repeat_penalty", "num_ctx", "min_p")
PASSTHROUGH = ("keep_alive", "think", "format")


class OllamaProvider(HTTPProvider):
    dialect = "ollama"
    health_path = "api/tags"

    DEFAULT_BASE_URL = "http://localhost:11434"
    KEY_ENVS = ("OLLAMA_API_KEY",)
    KEY_REQUIRED = False
    STRIP_SUFFIXES = ("/api", "/v1")

    def payload(self, req: ChatRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": convert_messages(self.name, req.messages),
            "stream": False,
        }
        options = sampling_fields(
            req, temperature="temperature", top_p="top_p", max_tokens="num_predict", stop="stop", seed="seed"
        )
        for key in OPTION_EXTRAS:
            if key in req.extra:
                options[key] = req.extra[key]
        if isinstance(req.extra.get("options"), dict):
            options.update(req.extra["options"])
        if options:
            body["options"] = options
        rf = req.response_format or {}
        if rf.get("type") == "json_object":
            body["format"] = "json"
        elif rf.get("type") == "json_schema":
            body["format"] = (rf.get("json_schema") or {}).get("schema") or "json"
        if req.tools:
            body["tools"] = req.tools  # Ollama takes OpenAI's tool shape
        for key in PASSTHROUGH:
            if key in req.extra:
                body[key] = req.extra[key]
        return body

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        data, resp = await self.post_json("api/chat", self.payload(req, model))
        msg = data.get("message")
        if not isinstance(msg, dict):
            raise self.malformed("chat answer has no 'message'", resp)
        tool_calls = [
            {
                "id": tc.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": (tc.get("function") or {}).get("name"),
                    "arguments": dumps((tc.get("function") or {}).get("arguments") or {}),
                },
            }
            for tc in msg.get("tool_calls") or ()
        ]
        content = msg.get("content") or ""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content if content or not tool_calls else None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        if msg.get("thinking"):
            message["reasoning_content"] = msg["thinking"]
        done = data.get("done_reason") or "stop"
        finish = "tool_calls" if tool_calls else ("length" if done == "length" else "stop")
        prompt = int(data.get("prompt_eval_count") or 0)
        completion = int(data.get("eval_count") or 0)
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("model") or model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage_dict(usage),
        }
        return ProviderResponse(body=body, usage=usage)

    async def _embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        texts = req.texts()
        payload: dict[str, Any] = {"model": model, "input": texts}
        if req.dimensions:
            payload["dimensions"] = req.dimensions
        for key in ("truncate", "keep_alive", "options"):
            if key in req.extra:
                payload[key] = req.extra[key]
        data, resp = await self.post_json("api/embed", payload)
        vectors = data.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise self.malformed(f"expected {len(texts)} embeddings", resp)
        prompt = int(data.get("prompt_eval_count") or 0)
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": data.get("model") or model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return ProviderResponse(body=body, usage=Usage(prompt_tokens=prompt, total_tokens=prompt))


def convert_messages(provider: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, for tool results
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text_of(content)}
        if isinstance(content, list):
            images = []
            for p in content:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    image = p.get("image_url")
                    inline = data_url(image.get("url", "") if isinstance(image, dict) else str(image or ""))
                    if inline:
                        images.append(inline[1])
            if images:
                msg["images"] = images
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                fn = tc.get("function") or {}
                names[tc.get("id") or ""] = fn.get("name") or ""
                call: dict[str, Any] = {
                    "function": {
                        "name": fn.get("name"),
                        "arguments": json_arguments(provider, fn.get("arguments")),
                    }
                }
                if tc.get("id"):
                    call["id"] = tc["id"]
                calls.append(call)
            msg["tool_calls"] = calls
        elif role == "tool":
            name = m.get("name") or names.get(m.get("tool_call_id") or "")
            if name:
                msg["tool_name"] = name
            if m.get("tool_call_id"):
                msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out
