"""Cohere v2 ``/v2/chat`` and ``/v2/embed``, and the ``/v1/models`` list.

Strict where the real API is: ``p`` only in 0.01-0.99, at most 96 texts per embed call, a tool
message must name the ``tool_call_id`` it answers.
"""

from __future__ import annotations

import uuid
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
    digest,
    request_digest,
    token_count_texts,
)
from shared.tokens import estimate_text

_FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool": "TOOL_CALL"}
_EMBED_TYPES = ("float", "int8", "uint8")
MAX_EMBED_TEXTS = 96
P_MIN, P_MAX = 0.01, 0.99


def _model(b: dict[str, Any]) -> str:
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("invalid request: model must be specified")
    return model


def _uuid(hex_: str) -> str:
    return str(uuid.UUID(hex=(hex_ * 2)[:32]))


class CohereFormat(WireFormat):
    name = "cohere"
    request_id_header = None
    default_models = ("command-a-03-2025", "command-r-plus-08-2024", "command-r-08-2024", "embed-v4.0")

    def api_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def parse_chat(self, body: Any, path_model: str | None) -> ChatCall:
        b = require_dict(body)
        model = _model(b)
        msgs = b.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise WireError("invalid request: messages must not be empty")
        if b.get("stream"):
            raise WireError('invalid request: the simulator does not stream; send "stream": false')
        texts = []
        for i, m in enumerate(msgs):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ("system", "user", "assistant", "tool"):
                raise WireError(f"invalid request: invalid role {role!r} at messages[{i}]")
            if role == "tool" and not isinstance(m.get("tool_call_id"), str):
                raise WireError(f"invalid request: messages[{i}]: tool messages must have a tool_call_id")
            text = content_text(m.get("content"))
            for tc in m.get("tool_calls") or ():
                if isinstance(tc, dict):
                    text += " " + str(tc.get("function", {}).get("arguments", ""))
            texts.append(text)
        p = b.get("p")
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not P_MIN <= p <= P_MAX
        ):
            raise WireError(f"invalid request: p must be between {P_MIN} and {P_MAX}, inclusive")
        tools = []
        for t in b.get("tools") or ():
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise WireError("invalid request: each tool must have a function with a name")
            tools.append(Tool(fn["name"], fn.get("parameters") or {}))
        forced = "" if b.get("tool_choice") == "REQUIRED" and tools else None
        if b.get("tool_choice") not in (None, "REQUIRED", "NONE"):
            raise WireError("invalid request: tool_choice must be one of REQUIRED, NONE")
        schema = None
        rf = b.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_object":
            schema = rf.get("json_schema") or {}
        extra = estimate_text(encode(b["tools"]).decode()) if tools else 0
        billed = sum(estimate_text(t) for t in texts)
        return ChatCall(
            model=model,
            digest=request_digest(b),
            prompt_tokens=count_prompt(texts, extra),
            max_tokens=opt_int(b.get("max_tokens"), "max_tokens"),
            tools=tools,
            forced_tool=forced,
            json_schema=schema,
            options={"billed_input": billed},
        )

    def render_chat(self, call: ChatCall, replies: list[Reply], duration_s: float) -> tuple[bytes, str]:
        r = replies[0]
        if r.tool_call is not None:
            tc = r.tool_call
            message: dict[str, Any] = {
                "role": "assistant",
                "tool_plan": f"I will call {tc.name}.",
                "tool_calls": [
                    {
                        "id": f"{tc.name}_{tc.id_hex[:8]}",
                        "type": "function",
                        "function": {"name": tc.name, "arguments": encode(tc.arguments).decode()},
                    }
                ],
            }
        else:
            message = {"role": "assistant", "content": [{"type": "text", "text": r.text or ""}]}
        body = {
            "id": _uuid(r.id_hex),
            "finish_reason": _FINISH[r.finish],
            "message": message,
            "usage": {
                "billed_units": {
                    "input_tokens": call.options["billed_input"],
                    "output_tokens": r.completion_tokens,
                },
                "tokens": {"input_tokens": r.prompt_tokens, "output_tokens": r.completion_tokens},
            },
        }
        return encode(body), JSON

    def parse_embed(self, body: Any, path_model: str | None, batch: bool) -> EmbedCall:
        b = require_dict(body)
        model = _model(b)
        texts = b.get("texts")
        if texts is None and isinstance(b.get("inputs"), list):
            texts = [content_text(i.get("content")) if isinstance(i, dict) else "" for i in b["inputs"]]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise WireError("invalid request: texts must be a non-empty list of strings")
        if len(texts) > MAX_EMBED_TEXTS:
            raise WireError(
                f"invalid request: total number of texts must be at most {MAX_EMBED_TEXTS} - received "
                f"{len(texts)}"
            )
        if not b.get("input_type") and "v2.0" not in model:
            raise WireError("invalid request: valid input_type must be provided with the provided model")
        types = b.get("embedding_types") or ["float"]
        for t in types:
            if t not in _EMBED_TYPES:
                raise WireError(f"invalid request: embedding type {t!r} is not supported by the simulator")
        dims = opt_int(b.get("output_dimension"), "output_dimension")
        return EmbedCall(
            model=model, texts=texts, dims=dims, tokens=token_count_texts(texts), options={"types": types}
        )

    def render_embed(self, call: EmbedCall, vectors: list[list[float]]) -> bytes:
        embeddings: dict[str, Any] = {}
        for t in call.options["types"]:
            if t == "float":
                embeddings[t] = vectors
            elif t == "int8":
                embeddings[t] = [[max(-128, min(127, round(x * 127))) for x in v] for v in vectors]
            else:
                embeddings[t] = [[max(0, min(255, round(x * 127) + 128)) for x in v] for v in vectors]
        return encode(
            {
                "id": _uuid(digest(call.model, *call.texts)[:16].hex()),
                "embeddings": embeddings,
                "texts": call.texts,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": call.tokens}},
                "response_type": "embeddings_by_type",
            }
        )

    def render_error(self, err: SimError) -> Rendered:
        k = err.kind
        if k == "context_length":
            msg = (
                f"too many tokens: total number of tokens in the prompt cannot exceed {err.limit} - received "
                f"{err.tokens}. Try using a shorter prompt, or enabling prompt truncating. See "
                "https://docs.cohere.com/reference/chat for more details."
            )
            return 400, {}, encode({"message": msg})
        status, msg = {
            "bad_request": (400, err.message),
            "invalid_json": (400, "invalid request: unable to parse the request body as JSON"),
            "unauthorized": (401, "invalid api token"),
            "model_not_found": (
                404,
                f"model '{err.model}' not found, make sure the correct model ID was used and that you have "
                "access to the model.",
            ),
            "rate_limit": (
                429,
                "You are past the per minute request limit, please wait and try again later.",
            ),
            "server_error": (500, "internal server error, this has been reported to our developers"),
            "overloaded": (503, "the service is overloaded, please try again later"),
            "unavailable": (503, "the service is unavailable, please try again later"),
            "outage": (503, "the service is unavailable, please try again later"),
            "timeout": (504, "the request timed out"),
        }.get(k, (404, err.message or "not found"))
        return status, {}, encode({"message": msg})

    def render_models(self, models: list[str]) -> bytes:
        out = []
        for m in models:
            ep = ["embed"] if m.startswith("embed") else ["chat"]
            out.append(
                {
                    "name": m,
                    "endpoints": ep,
                    "finetuned": False,
                    "context_length": 512 if ep == ["embed"] else 128000,
                    "tokenizer_url": None,
                    "default_endpoints": [],
                }
            )
        return encode({"models": out, "next_page_token": None})
