"""Google Gemini ``generateContent``, ``embedContent``, ``batchEmbedContents`` and models.

The Gemini API accepts both camelCase and snake_case field names (protobuf JSON), so both are read.
"""

from __future__ import annotations

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
    proto_duration,
    request_digest,
)
from shared.tokens import estimate_text

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_paid_tier_requests"
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


class GeminiFormat(WireFormat):
    name = "gemini"
    request_id_header = None
    default_models = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "text-embedding-004")

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
        gen = _get(b, "generationConfig", "generation_config") or {}
        limit = opt_int(_get(gen, "maxOutputTokens", "max_output_tokens"), "maxOutputTokens")
        schema = None
        if _get(gen, "responseMimeType", "response_mime_type") == "application/json":
            schema = _get(gen, "responseSchema", "response_schema") or gen.get("responseJsonSchema") or {}
        tools, forced = _tools(b)
        extra = estimate_text(encode(b["tools"]).decode()) if tools else 0
        model = _model(path_model)
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
            parts: list[dict[str, Any]] = [
                {"functionCall": {"name": r.tool_call.name, "args": r.tool_call.arguments}}
            ]
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
