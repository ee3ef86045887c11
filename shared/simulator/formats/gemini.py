"""Google Gemini ``generateContent``, ``embedContent``, ``batchEmbedContents`` and models.

The Gemini API accepts both camelCase and snake_case field names (protobuf JSON), so both are read.

Strict where the real API is: ``batchEmbedContents`` takes at most 100 requests, and Gemini 3
models reject a turn whose function calls come back without the ``thoughtSignature`` the model
gave them (the first call of each model step must carry its own signature, or Google's documented
placeholder). Replies from thinking models (2.5, 3) carry a signature on their function calls.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

import msgspec

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
    digest,
    proto_duration,
    request_digest,
)
from shared.tokens import estimate_text

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_paid_tier_requests"
MAX_BATCH_EMBED = 100
SKIP_SIGNATURE = "skip_thought_signature_validator"
_VERSION = re.compile(r"gemini-(\d+)(?:\.(\d+))?")
_SIGNATURE_DOCS = "https://ai.google.dev/gemini-api/docs/thought-signatures"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    v = d.get(camel)
    return d.get(snake) if v is None else v


def _model(path_model: str | None) -> str:
    m = path_model or ""
    return m[7:] if m.startswith("models/") else m


def _parts_text(content: Any) -> str:
    if not isinstance(content, dict):
        return ""
    parts = content.get("parts")
    return content_text(parts) if isinstance(parts, list) else ""


def _tools(b: dict[str, Any]) -> tuple[list[Tool], str | None]:
    tools = []
    for t in b.get("tools") or ():
        decls = _get(t, "functionDeclarations", "function_declarations") if isinstance(t, dict) else None
        for d in decls or ():
            params = _get(d, "parameters", "parameters_json_schema") or d.get("parametersJsonSchema") or {}
            tools.append(Tool(d.get("name", ""), params))
    cfg = _get(b, "toolConfig", "tool_config") or {}
    fcc = _get(cfg, "functionCallingConfig", "function_calling_config") or {}
    if str(fcc.get("mode", "")).upper() != "ANY" or not tools:
        return tools, None
    allowed = _get(fcc, "allowedFunctionNames", "allowed_function_names") or []
    return tools, (allowed[0] if allowed else "")


def _version(model: str) -> tuple[int, int]:
    m = _VERSION.search(model)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def signature_for(name: str, args: Any) -> str:
    """The signature this simulator gives a function call (stands in for Google's opaque one)."""
    canonical = msgspec.json.encode(args or {}, order="sorted")
    return base64.b64encode(digest("thought", name, canonical)[:24]).decode()


def _check_signatures(contents: list[Any]) -> None:
    """Gemini 3: in the current turn (since the last user message with content of its own), the
    first function call of every model step must carry its signature."""
    start = 0
    for i, c in enumerate(contents):
        parts = c.get("parts") or []
        if c.get("role", "user") == "user" and any(
            isinstance(p, dict) and not _get(p, "functionResponse", "function_response") for p in parts
        ):
            start = i
    for i in range(start, len(contents)):
        c = contents[i]
        if c.get("role") != "model":
            continue
        calls = [
            p
            for p in c.get("parts") or ()
            if isinstance(p, dict) and _get(p, "functionCall", "function_call")
        ]
        if not calls:
            continue
        first = calls[0]
        fc = _get(first, "functionCall", "function_call")
        sig = _get(first, "thoughtSignature", "thought_signature")
        if sig != SKIP_SIGNATURE and sig != signature_for(fc.get("name", ""), fc.get("args")):
            raise WireError(
                "Function call is missing a thought_signature in functionCall parts. This is required for "
                "tools to work correctly, and missing thought_signature may lead to degraded model "
                f"performance. Additional data, function call `default_api:{fc.get('name', '')}` , position "
                f"{i + 1}. Please refer to {_SIGNATURE_DOCS} for more details."
            )


class GeminiFormat(WireFormat):
    name = "gemini"
    request_id_header = None
    default_models = (
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.0-flash",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "text-embedding-004",
        "gemini-embedding-001",
    )

    def api_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        return headers.get("x-goog-api-key") or query.get("key")

    def parse_chat(self, body: Any, path_model: str | None) -> ChatCall:
        b = require_dict(body)
        contents = b.get("contents")
        if not contents:
            raise WireError("* GenerateContentRequest.contents: contents is not specified\n")
        if not isinstance(contents, list):
            raise WireError("Invalid value at 'contents', expected a list")
        texts = []
        system = _get(b, "systemInstruction", "system_instruction")
        if system is not None:
            texts.append(_parts_text(system))
        for c in contents:
            if not isinstance(c, dict):
                raise WireError("Invalid value at 'contents', expected a Content object")
            if c.get("role", "user") not in ("user", "model", "function"):
                raise WireError("Please use a valid role: user, model.")
            parts = c.get("parts")
            if not parts:
                raise WireError(
                    "* GenerateContentRequest.contents.parts: contents.parts must not be empty.\n"
                )
            text = content_text(parts)
            for p in parts:
                if isinstance(p, dict):
                    call = _get(p, "functionCall", "function_call") or _get(
                        p, "functionResponse", "function_response"
                    )
                    if call:
                        text += " " + encode(call).decode()
            texts.append(text)
        model = _model(path_model)
        if _version(model) >= (3, 0):
            _check_signatures(contents)
        gen = _get(b, "generationConfig", "generation_config") or {}
        limit = opt_int(_get(gen, "maxOutputTokens", "max_output_tokens"), "maxOutputTokens")
        schema = None
        if _get(gen, "responseMimeType", "response_mime_type") == "application/json":
            schema = _get(gen, "responseSchema", "response_schema") or gen.get("responseJsonSchema") or {}
        tools, forced = _tools(b)
        extra = estimate_text(encode(b["tools"]).decode()) if tools else 0
        return ChatCall(
            model=model,
            digest=request_digest(b, model),
            prompt_tokens=count_prompt(texts, extra),
            max_tokens=limit,
            tools=tools,
            forced_tool=forced,
            json_schema=schema,
        )

    def render_chat(self, call: ChatCall, replies: list[Reply], duration_s: float) -> tuple[bytes, str]:
        r = replies[0]
        if r.tool_call is not None:
            tc = r.tool_call
            part: dict[str, Any] = {"functionCall": {"name": tc.name, "args": tc.arguments}}
            if _version(call.model) >= (2, 5):  # thinking models sign their function calls
                part["thoughtSignature"] = signature_for(tc.name, tc.arguments)
            parts: list[dict[str, Any]] = [part]
        else:
            parts = [{"text": r.text or ""}]
        body = {
            "candidates": [
                {"content": {"parts": parts, "role": "model"}, "finishReason": _FINISH[r.finish], "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": r.prompt_tokens,
                "candidatesTokenCount": r.completion_tokens,
                "totalTokenCount": r.prompt_tokens + r.completion_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": r.prompt_tokens}],
            },
            "modelVersion": call.model,
            "responseId": r.id_hex,
        }
        return encode(body), JSON

    def parse_embed(self, body: Any, path_model: str | None, batch: bool) -> EmbedCall:
        b = require_dict(body)
        model = _model(path_model)
        if batch:
            reqs = b.get("requests")
            if not reqs or not isinstance(reqs, list):
                raise WireError("* BatchEmbedContentsRequest.requests: requests is not specified\n")
            if len(reqs) > MAX_BATCH_EMBED:
                raise WireError(
                    f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH_EMBED} requests can be in "
                    f"one batch, got {len(reqs)}\n"
                )
            items = reqs
        else:
            items = [b]
        texts = []
        dims = None
        for i, it in enumerate(items):
            content = it.get("content") if isinstance(it, dict) else None
            if not isinstance(content, dict) or not content.get("parts"):
                where = (
                    f"BatchEmbedContentsRequest.requests[{i}].content"
                    if batch
                    else "EmbedContentRequest.content"
                )
                raise WireError(f"* {where}: content is not specified\n")
            if batch and _model(it.get("model")) != model:
                raise WireError(
                    f"* BatchEmbedContentsRequest.requests[{i}].model: the model in the request must match "
                    f"models/{model}\n"
                )
            texts.append(_parts_text(content))
            dims = dims or opt_int(
                _get(it, "outputDimensionality", "output_dimensionality"), "outputDimensionality"
            )
        tokens = sum(estimate_text(t) for t in texts)
        return EmbedCall(model=model, texts=texts, dims=dims, tokens=tokens, options={"batch": batch})

    def render_embed(self, call: EmbedCall, vectors: list[list[float]]) -> bytes:
        if call.options["batch"]:
            return encode({"embeddings": [{"values": v} for v in vectors]})
        return encode({"embedding": {"values": vectors[0]}})

    def render_error(self, err: SimError) -> Rendered:
        status, msg, details = self._error(err)
        error: dict[str, Any] = {"code": status, "message": msg, "status": _STATUS[status]}
        if details:
            error["details"] = details
        return status, {}, encode({"error": error})

    @staticmethod
    def _error(err: SimError) -> tuple[int, str, list[dict[str, Any]]]:
        k = err.kind
        if k == "bad_request":
            return 400, err.message, []
        if k == "invalid_json":
            return 400, "Invalid JSON payload received. Unexpected token.", []
        if k == "unauthorized":
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
            return 400, "API key not valid. Please pass a valid API key.", [info]
        if k == "model_not_found":
            msg = (
                f"models/{err.model} is not found for API version v1beta, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and their supported "
                "methods."
            )
            return 404, msg, []
        if k == "context_length":
            msg = f"The input token count ({err.tokens}) exceeds the maximum number of tokens allowed"
            return 400, f"{msg} ({err.limit}).", []
        if k == "rate_limit":
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _QUOTA_METRIC,
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                            "quotaDimensions": {"location": "global", "model": err.model},
                            "quotaValue": str(err.capacity or 1000),
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": proto_duration(err.retry_after_s),
                },
            ]
            msg = (
                "You exceeded your current quota, please check your plan and billing details. For more "
                "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
            )
            return 429, msg, details
        if k == "server_error":
            msg = (
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting"
            )
            return 500, msg, []
        if k in ("overloaded", "unavailable"):
            return 503, "The model is overloaded. Please try again later.", []
        if k == "outage":
            return 503, "The service is currently unavailable.", []
        if k == "timeout":
            return 504, "Deadline expired before operation could complete.", []
        return 404, err.message or "Not found", []

    def render_models(self, models: list[str]) -> bytes:
        out = []
        for m in models:
            embed = "embed" in m
            out.append(
                {
                    "name": "models/" + m,
                    "version": "001",
                    "displayName": m,
                    "description": "Simulated model",
                    "inputTokenLimit": 2048 if embed else 1048576,
                    "outputTokenLimit": 1 if embed else 65536,
                    "supportedGenerationMethods": (
                        ["embedContent", "batchEmbedContents"]
                        if embed
                        else ["generateContent", "countTokens"]
                    ),
                }
            )
        return encode({"models": out})
