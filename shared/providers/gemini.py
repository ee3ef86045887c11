"""Google Gemini API: ``generateContent``, ``embedContent`` and ``batchEmbedContents``.

OpenAI messages become ``contents``/``parts`` (roles user/model) with system
messages in ``systemInstruction``; sampling fields go to ``generationConfig``;
tools become ``functionDeclarations``. A prompt or answer blocked by safety
filters is a final error that says so, not an empty completion.

Thought signatures: a ``functionCall`` part may carry an opaque ``thoughtSignature`` that must be
sent back on that part in the next turn (Gemini 3 rejects the turn with 400 without it). It
travels on the OpenAI-shaped tool call as ``extra_content.google.thought_signature``, the shape
Google's own OpenAI-compatible endpoint uses. A history with no signature for a Gemini 3 model (a
conversation begun on another model, or tool calls made up by the client) gets the placeholder
Google documents for exactly that case on the first call of each model turn.

Finish reasons the model ends on without a usable answer (a malformed or unexpected tool call,
too many tool calls, OTHER, ...) are final errors, never an empty successful ``stop``: the request
was valid and the provider healthy, so retrying is another billed generation that most likely ends
the same way, and counting it against the provider's breaker would punish the provider for what the
prompt or tool schema caused.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from shared.errors import ErrorClass, ProviderError
from shared.providers.base import ProviderResponse
from shared.providers.gemini_request import (
    convert_messages,
    convert_tool_choice,
    convert_tools,
    generation_config,
    needs_signatures,
)
from shared.providers.http import HTTPProvider, dumps
from shared.providers.openai import usage_dict
from shared.schema import ChatRequest, EmbeddingRequest, Usage
from shared.tokens import estimate_text

BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
# google.genai.types.FinishReason, all of it: every value is mapped, failed, or blocked.
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "CONTINUATION": "length"}
BLOCKED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "LANGUAGE",
        "ESCALATION",
        "MODEL_ARMOR",
    }
)
# The model stopped without a usable answer: a final error (see the module docstring).
FAILED = frozenset(
    {
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
        "MISSING_THOUGHT_SIGNATURE",
        "MALFORMED_RESPONSE",
        "OTHER",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "PUP_LIMITED_DISABLED",
        "FINISH_REASON_UNSPECIFIED",
    }
)
MAX_EMBED_REQUESTS = 100  # batchEmbedContents: at most 100 requests per call
# Gemini's own top-level request fields, accepted in either spelling.
PASSTHROUGH = {
    "safetySettings": "safetySettings",
    "safety_settings": "safetySettings",
    "cachedContent": "cachedContent",
    "cached_content": "cachedContent",
    "labels": "labels",
}


class GeminiProvider(HTTPProvider):
    dialect = "gemini"
    health_path = "models"
    health_params = {"pageSize": "1"}

    DEFAULT_BASE_URL = BASE_URL
    KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    max_embed_inputs = MAX_EMBED_REQUESTS

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    # -- chat
    def payload(self, req: ChatRequest, model: str = "") -> dict[str, Any]:
        system, contents = convert_messages(self.name, req.messages, signatures=needs_signatures(model))
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        config = generation_config(req)
        if config:
            body["generationConfig"] = config
        if req.tools:
            body["tools"] = convert_tools(req.tools)
            choice = convert_tool_choice(req.tool_choice)
            if choice:
                body["toolConfig"] = {"functionCallingConfig": choice}
        for key, target in PASSTHROUGH.items():
            if key in req.extra:
                body[target] = req.extra[key]
        return body

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        model = model.removeprefix("models/")
        data, resp = await self.post_json(f"models/{model}:generateContent", self.payload(req, model))
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = data.get("promptFeedback") or {}
            if feedback.get("blockReason"):
                raise self._blocked(f"prompt blocked (blockReason {feedback['blockReason']})", feedback)
            raise self.malformed("generateContent answer has no candidates", resp)
        choices = [self._choice(i, c) for i, c in enumerate(candidates)]
        if all(c is None for c in choices):
            c0 = candidates[0]
            raise self._blocked(f"response blocked (finishReason {c0.get('finishReason')})", c0)
        usage = gemini_usage(data.get("usageMetadata"))
        body = {
            "id": data.get("responseId") or f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("modelVersion") or model,
            "choices": [
                c
                or {
                    "index": i,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "content_filter",
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage_dict(usage),
        }
        return ProviderResponse(body=body, usage=usage, request_id=data.get("responseId"))

    def _choice(self, index: int, cand: dict[str, Any]) -> dict[str, Any] | None:
        """One OpenAI choice, or None when safety filters left nothing."""
        texts: list[str] = []
        thoughts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                fc = part["functionCall"]
                call: dict[str, Any] = {
                    "id": fc.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": fc.get("name"), "arguments": dumps(fc.get("args") or {})},
                }
                signature = part.get("thoughtSignature") or part.get("thought_signature")
                if signature:
                    call["extra_content"] = {"google": {"thought_signature": signature}}
                tool_calls.append(call)
            elif part.get("thought"):
                thoughts.append(part.get("text", ""))
            elif "text" in part:
                texts.append(part["text"])
        reason = cand.get("finishReason") or "STOP"
        if reason in BLOCKED and not texts and not tool_calls:
            return None
        unknown = reason not in FINISH_REASONS and reason not in BLOCKED
        if reason in FAILED or (unknown and not texts and not tool_calls):
            raise self._failed(reason, cand)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not tool_calls else None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        if tool_calls:
            finish = "tool_calls"
        else:
            finish = "content_filter" if reason in BLOCKED else FINISH_REASONS.get(reason, "stop")
        return {
            "index": cand.get("index", index),
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
        }

    def _failed(self, reason: str, cand: dict[str, Any]) -> ProviderError:
        detail = str(cand.get("finishMessage") or "")[:200]
        return ProviderError(
            ErrorClass.FINAL,
            f"{self.name}: Gemini ended without an answer (finishReason {reason})"
            + (f": {detail}" if detail else ""),
            code=reason.lower(),
        )

    def _blocked(self, what: str, info: dict[str, Any]) -> ProviderError:
        flagged = [
            f"{r.get('category')}: {r.get('probability')}"
            for r in info.get("safetyRatings") or ()
            if r.get("blocked") or r.get("probability") in ("MEDIUM", "HIGH")
        ]
        detail = f" ({', '.join(flagged)})" if flagged else ""
        return ProviderError(
            ErrorClass.FINAL,
            f"{self.name}: Gemini safety filters: {what}{detail}",
            status=400,
            code="content_filter",
        )

    # -- embeddings
    async def _embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        """One call: ``embedContent`` for one input, ``batchEmbedContents`` for up to 100."""
        model = model.removeprefix("models/")
        texts = req.texts()
        task = req.extra.get("task_type") or req.extra.get("taskType") or self.config.options.get("task_type")

        def one(text: str) -> dict[str, Any]:
            r: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
            if task:
                r["taskType"] = task
            if req.dimensions:
                r["outputDimensionality"] = req.dimensions
            return r

        if len(texts) == 1:
            data, resp = await self.post_json(f"models/{model}:embedContent", one(texts[0]))
            emb = data.get("embedding")
            vectors = [emb.get("values") if isinstance(emb, dict) else None]
        else:
            payload = {"requests": [one(t) for t in texts]}
            data, resp = await self.post_json(f"models/{model}:batchEmbedContents", payload)
            embs = data.get("embeddings")
            vectors = [e.get("values") if isinstance(e, dict) else None for e in embs or ()]
        if len(vectors) != len(texts) or not all(isinstance(v, list) for v in vectors):
            raise self.malformed(f"expected {len(texts)} embeddings with 'values'", resp)
        meta = data.get("usageMetadata")
        prompt = int(meta.get("promptTokenCount") or 0) if isinstance(meta, dict) else 0
        prompt = prompt or sum(estimate_text(t) for t in texts)  # the API reports no counts: estimate
        usage = Usage(prompt_tokens=prompt, total_tokens=prompt)
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return ProviderResponse(body=body, usage=usage)


def gemini_usage(meta: Any) -> Usage:
    if not isinstance(meta, dict):
        return Usage()
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    # Thinking tokens are billed as output.
    completion = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(meta.get("totalTokenCount") or prompt + completion),
        cached_tokens=int(meta.get("cachedContentTokenCount") or 0),
    )
