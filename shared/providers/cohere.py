"""Cohere API v2: ``/v2/chat`` and ``/v2/embed``.

v2 chat messages and tools are close to OpenAI's (roles system/user/assistant/
tool, function tools); the answer's content is a list of text blocks and the
finish reasons are upper-case words. Usage is what Cohere bills
(``billed_units``), falling back to the raw ``tokens`` counts.

Cohere accepts ``p`` only in 0.01-0.99 (400 otherwise); OpenAI's ``top_p`` is 0-1 with 1 meaning
"no nucleus cut", so it is clamped into that range rather than failing the job: 1.0 becomes 0.99
(the widest nucleus Cohere allows) and 0 becomes 0.01.
"""

from __future__ import annotations

import time
from typing import Any

from shared.errors import ErrorClass, ProviderError
from shared.providers import answer_fields
from shared.providers.base import ProviderResponse, sampling_fields
from shared.providers.http import HTTPProvider, text_of
from shared.providers.openai import usage_dict
from shared.schema import ChatRequest, EmbeddingRequest, Usage

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
PASSTHROUGH = (
    "documents",
    "citation_options",
    "safety_mode",
    "k",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "strict_tools",
    "thinking",
    "priority",
)
_MESSAGE_FIELDS = ("content", "tool_calls", "tool_call_id", "tool_plan")
P_MIN, P_MAX = 0.01, 0.99
MAX_EMBED_TEXTS = 96  # /v2/embed: at most 96 texts per call


class CohereProvider(HTTPProvider):
    dialect = "cohere"
    health_path = "v1/models"
    health_params = {"page_size": "1"}

    DEFAULT_BASE_URL = "https://api.cohere.com"
    KEY_ENVS = ("COHERE_API_KEY", "CO_API_KEY")
    STRIP_SUFFIXES = ("/v2", "/v1")
    max_embed_inputs = MAX_EMBED_TEXTS

    def payload(self, req: ChatRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": convert_messages(req.messages)}
        body |= sampling_fields(
            req,
            temperature="temperature",
            top_p="p",
            max_tokens="max_tokens",
            stop="stop_sequences",
            seed="seed",
        )
        if "p" in body:
            body["p"] = min(P_MAX, max(P_MIN, body["p"]))
        if req.tools:
            body["tools"] = req.tools  # v2 takes OpenAI's function-tool shape
            if req.tool_choice in ("required", "none"):
                body["tool_choice"] = str(req.tool_choice).upper()
        rf = req.response_format or {}
        if rf.get("type") == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif rf.get("type") == "json_schema":
            body["response_format"] = {
                "type": "json_object",
                "json_schema": (rf.get("json_schema") or {}).get("schema"),
            }
        for key in PASSTHROUGH:
            if key in req.extra:
                body[key] = req.extra[key]
        return body

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        data, resp = await self.post_json("v2/chat", self.payload(req, model))
        msg = data.get("message")
        if not isinstance(msg, dict):
            raise self.malformed("chat answer has no 'message'", resp)
        content = msg.get("content")
        text = content if isinstance(content, str) else text_of(content)
        tool_calls = msg.get("tool_calls") or []
        reason = data.get("finish_reason") or "COMPLETE"
        if reason in ("ERROR", "TIMEOUT") and not text and not tool_calls:
            raise ProviderError(
                ErrorClass.TRANSIENT,
                f"{self.name}: generation ended with finish_reason {reason}",
                code="timeout" if reason == "TIMEOUT" else "server_error",
                request_id=data.get("id"),
            )
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        finish = "tool_calls" if tool_calls else FINISH_REASONS.get(reason, "stop")
        if reason == "ERROR_TOXIC":
            finish = "content_filter"
        usage = cohere_usage(data.get("usage"))
        body = {
            "id": data.get("id"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage_dict(usage),
        }
        return ProviderResponse(
            body=body, usage=usage, request_id=answer_fields.request_id(resp.headers) or data.get("id")
        )

    async def _embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        texts = req.texts()
        input_type = req.extra.get("input_type") or self.config.options.get("input_type") or "search_document"
        payload: dict[str, Any] = {
            "model": model,
            "texts": texts,
            "input_type": input_type,
            "embedding_types": ["float"],
        }
        if req.dimensions:
            payload["output_dimension"] = req.dimensions
        if "truncate" in req.extra:
            payload["truncate"] = req.extra["truncate"]
        data, resp = await self.post_json("v2/embed", payload)
        embs = data.get("embeddings")
        vectors = embs.get("float") if isinstance(embs, dict) else embs
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise self.malformed(f"expected {len(texts)} float embeddings", resp)
        meta = data.get("meta") or {}
        prompt = int((meta.get("billed_units") or {}).get("input_tokens") or 0)
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        usage = Usage(prompt_tokens=prompt, total_tokens=prompt)
        return ProviderResponse(
            body=body, usage=usage, request_id=answer_fields.request_id(resp.headers) or data.get("id")
        )


def convert_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages in v2's shape: the same roles (developer -> system), only the fields v2 knows."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        for key in _MESSAGE_FIELDS:
            if m.get(key) is not None:
                msg[key] = m[key]
        if isinstance(msg.get("tool_calls"), list):
            # only what v2 knows: a call made by another provider may carry extras (Gemini's
            # extra_content with its thought signature)
            msg["tool_calls"] = [
                {k: tc[k] for k in ("id", "type", "function") if k in tc} if isinstance(tc, dict) else tc
                for tc in msg["tool_calls"]
            ]
        if role == "tool" and not isinstance(msg.get("content"), str | list):
            msg["content"] = text_of(msg.get("content"))
        out.append(msg)
    return out


def cohere_usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    counts = u.get("billed_units") or u.get("tokens") or {}
    prompt = int(counts.get("input_tokens") or 0)
    completion = int(counts.get("output_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=int(u.get("cached_tokens") or 0),
    )
