"""Ollama ``/api/chat``, ``/api/embed`` and ``/api/tags``.

Like the real server, ``/api/chat`` streams (NDJSON) unless the request says ``"stream": false``.

Strict where the Go server's JSON decoding is: a message's ``content`` is a string, tool call
``arguments`` an object, ``tool_name``/``tool_call_id`` strings; ``/api/embed`` takes a string or
a list of strings (token ids: "invalid input type").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from shared.simulator.formats.base import JSON, Rendered, WireFormat, encode, opt_int, require_dict
from shared.simulator.wire import (
    ChatCall,
    EmbedCall,
    Reply,
    SimError,
    WireError,
    content_text,
    count_prompt,
    request_digest,
    token_count_texts,
)

_DONE = {"stop": "stop", "length": "length", "tool": "stop"}
_BUSY = "server busy, please try again.  maximum pending requests exceeded"


def _created_at() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _model(b: dict[str, Any]) -> str:
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model is required")
    return model


def _unmarshal(value: Any, field: str, want: str) -> WireError:
    kind = {str: "string", list: "array", dict: "object", bool: "bool", int: "number", float: "number"}
    got = kind.get(type(value), "value")
    return WireError(f"json: cannot unmarshal {got} into Go struct field {field} of type {want}")


def _check_message(m: dict[str, Any]) -> None:
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        raise _unmarshal(content, "ChatRequest.messages.content", "string")
    for key in ("tool_name", "tool_call_id", "thinking"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise _unmarshal(m[key], f"ChatRequest.messages.{key}", "string")
    for tc in m.get("tool_calls") or ():
        args = (tc.get("function") or {}).get("arguments") if isinstance(tc, dict) else None
        if args is not None and not isinstance(args, dict):
            raise _unmarshal(
                args, "ChatRequest.messages.tool_calls.function.arguments", "api.ToolCallFunctionArguments"
            )


class OllamaFormat(WireFormat):
    name = "ollama"
    request_id_header = None
    default_models = ("llama3.2:latest", "qwen2.5:7b", "nomic-embed-text:latest")

    def api_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def parse_chat(self, body: Any, path_model: str | None) -> ChatCall:
        b = require_dict(body)
        model = _model(b)
        msgs = b.get("messages") or []
        if not isinstance(msgs, list):
            raise WireError("json: cannot unmarshal messages into Go struct field ChatRequest.messages")
        texts = []
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise WireError(f"invalid role: {m.get('role') if isinstance(m, dict) else m!r}")
            _check_message(m)
            texts.append(content_text(m.get("content")))
        options = b.get("options") or {}
        limit = opt_int(options.get("num_predict"), "num_predict") if isinstance(options, dict) else None
        if limit is not None and limit < 0:  # -1: generate until done
            limit = None
        fmt = b.get("format")
        schema = {} if fmt == "json" else (fmt if isinstance(fmt, dict) else None)
        return ChatCall(
            model=model,
            digest=request_digest(b),
            prompt_tokens=count_prompt(texts) if texts else 0,
            max_tokens=limit,
            json_schema=schema,
            stream=b.get("stream", True) is not False,
            options={"load": not msgs},
        )

    def render_chat(self, call: ChatCall, replies: list[Reply], duration_s: float) -> tuple[bytes, str]:
        r = replies[0]
        created = _created_at()
        total = int(duration_s * 1e9)
        final: dict[str, Any] = {"model": call.model, "created_at": created}
        if call.options.get("load"):
            final |= {"message": {"role": "assistant", "content": ""}, "done_reason": "load", "done": True}
            return encode(final) + (b"\n" if call.stream else b""), JSON
        text = r.text or ""
        final |= {
            "message": {"role": "assistant", "content": "" if call.stream else text},
            "done_reason": _DONE[r.finish],
            "done": True,
            "total_duration": total,
            "load_duration": 1_000_000,
            "prompt_eval_count": r.prompt_tokens,
            "prompt_eval_duration": total // 4,
            "eval_count": r.completion_tokens,
            "eval_duration": total - total // 4,
        }
        if not call.stream:
            return encode(final), JSON
        out = bytearray()
        for i, w in enumerate(text.split(" ")):
            piece = w if i == 0 else " " + w
            chunk = {
                "model": call.model,
                "created_at": created,
                "message": {"role": "assistant", "content": piece},
            }
            out += encode({**chunk, "done": False}) + b"\n"
        out += encode(final) + b"\n"
        return bytes(out), "application/x-ndjson"

    def parse_embed(self, body: Any, path_model: str | None, batch: bool) -> EmbedCall:
        b = require_dict(body)
        model = _model(b)
        inp = b.get("input")
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and all(isinstance(x, str) for x in inp):
            texts = inp
        else:
            raise WireError("invalid input type")
        dims = opt_int(b.get("dimensions"), "dimensions")
        return EmbedCall(model=model, texts=texts, dims=dims, tokens=token_count_texts(texts))

    def render_embed(self, call: EmbedCall, vectors: list[list[float]]) -> bytes:
        return encode(
            {
                "model": call.model,
                "embeddings": vectors,
                "total_duration": 14_143_917,
                "load_duration": 1_019_500,
                "prompt_eval_count": call.tokens,
            }
        )

    def render_error(self, err: SimError) -> Rendered:
        k = err.kind
        status, msg = {
            "bad_request": (400, err.message),
            "invalid_json": (400, "invalid character in JSON body"),
            "unauthorized": (401, "unauthorized"),
            "model_not_found": (404, f'model "{err.model}" not found, try pulling it first'),
            "context_length": (400, "the input length exceeds the context length"),
            "rate_limit": (429, "too many requests, please retry later"),
            "server_error": (500, "llama runner process has terminated: exit status 2"),
            "overloaded": (503, _BUSY),
            "unavailable": (503, _BUSY),
            "outage": (503, _BUSY),
            "timeout": (504, "timed out waiting for llama runner to respond"),
        }.get(k, (404, err.message or "404 page not found"))
        return status, {}, encode({"error": msg})

    def render_models(self, models: list[str]) -> bytes:
        out = []
        for m in models:
            name = m if ":" in m else m + ":latest"
            family = name.split(":")[0].rstrip("0123456789.")
            out.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-01-01T00:00:00.000000Z",
                    "size": 2019393189,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": family,
                        "families": [family],
                        "parameter_size": "3.2B",
                        "quantization_level": "Q4_K_M",
                    },
                }
            )
        return encode({"models": out})
