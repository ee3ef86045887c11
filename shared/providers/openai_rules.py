"""What OpenAI's chat API accepts from which model, and a streamed answer put back together.

Reasoning models (o1/o3/o4..., the gpt-5 family except its ``-chat`` models) take
``max_completion_tokens`` only and reject every sampler but the default; a 400
``unsupported_parameter`` / ``unsupported_value`` naming a field Fusebox can fix is
fixed and sent again once (400s are not billed). A job never streams, but a gateway
that streams anyway has already billed the generation: its SSE answer is assembled
into one ``chat.completion`` rather than retried.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_decode = msgspec.json.decode

# o1, o3-mini, o4-mini-2025-04-16, gpt-5, gpt-5-mini, gpt-5.1 ... but not gpt-5-chat-latest / gpt-5.1-chat.
_REASONING = re.compile(r"^(?:o\d+(?:-|$)|gpt-5(?!(?:\.\d+)?-chat))")
# Samplers reasoning models accept only at their default (they answer 400 otherwise).
REASONING_SAMPLERS = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)
# Fields a 400 may name that can be dropped without changing what was asked for in substance;
# "stop" too: o3/o4-mini reject it, and a job that gets an answer beats one that fails.
DROPPABLE = frozenset({*REASONING_SAMPLERS, "stop"})
ADAPTABLE_CODES = frozenset({"unsupported_parameter", "unsupported_value"})
STREAM_FIELDS = ("stream", "stream_options")


def is_reasoning_model(*names: str | None) -> bool:
    """Whether any of ``names`` (a model, an Azure deployment's base model) is an OpenAI reasoning model."""
    for name in names:
        if name and _REASONING.match(name.rsplit("/", 1)[-1].lower()):
            return True
    return False


def apply_reasoning_rules(body: dict[str, Any]) -> None:
    """``max_tokens`` -> ``max_completion_tokens``; non-default samplers dropped (unless reasoning is off)."""
    if "max_tokens" in body:
        value = body.pop("max_tokens")
        body.setdefault("max_completion_tokens", value)
    if body.get("reasoning_effort") == "none":  # gpt-5.1+: samplers are accepted with reasoning off
        return
    for key in REASONING_SAMPLERS:
        body.pop(key, None)


def adapt_to_error(body: dict[str, Any], error_body: bytes) -> str | None:
    """Fix ``body`` in place for a 400 that names one field we can rename or drop; the field, or None."""
    try:
        data = _decode(error_body)
    except msgspec.DecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or err.get("code") not in ADAPTABLE_CODES:
        return None
    param = err.get("param")
    if not isinstance(param, str) or param not in body:
        return None
    if param == "max_tokens" and "max_completion_tokens" not in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
        return param
    if param in DROPPABLE:
        del body[param]
        return param
    return None


def is_event_stream(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "text/event-stream"


class StreamError(ValueError):
    """An SSE answer that cannot be assembled; ``error`` is an error object the stream carried."""

    def __init__(self, detail: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.error = error


def assemble_chat_stream(raw: bytes) -> dict[str, Any]:
    """OpenAI ``chat.completion.chunk`` events -> one ``chat.completion`` (content, tool calls, usage)."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    usage: Any = None
    done = False
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue  # comments, event names, blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        try:
            chunk = _decode(payload)
        except msgspec.DecodeError:
            raise StreamError(f"undecodable event {payload[:60]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamError("an event is not a JSON object")
        if isinstance(chunk.get("error"), dict):
            raise StreamError("the stream carried an error", chunk)
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                head.setdefault(key, chunk[key])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            _merge_choice(choices, calls, c)
    if not done and not any(c["finish_reason"] for c in choices.values()):
        raise StreamError("the stream ended before any choice finished")
    out_choices = []
    for i in sorted(choices):
        c = choices[i]
        if calls.get(i):
            c["message"]["tool_calls"] = [calls[i][k] for k in sorted(calls[i])]
        out_choices.append(c)
    if not out_choices:
        raise StreamError("the stream had no choices")
    body: dict[str, Any] = {"object": "chat.completion", **head, "choices": out_choices}
    if usage is not None:
        body["usage"] = usage
    return body


def _merge_choice(
    choices: dict[int, dict[str, Any]], calls: dict[int, dict[int, dict[str, Any]]], c: Any
) -> None:
    if not isinstance(c, dict):
        return
    i = int(c.get("index") or 0)
    acc = choices.setdefault(
        i,
        {
            "index": i,
            "message": {"role": "assistant", "content": None},
            "logprobs": None,
            "finish_reason": None,
        },
    )
    delta = c.get("delta") or {}
    msg = acc["message"]
    for key in ("content", "refusal", "reasoning_content"):
        piece = delta.get(key)
        if isinstance(piece, str):
            msg[key] = (msg.get(key) or "") + piece
    for tc in delta.get("tool_calls") or ():
        empty = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        slot = calls.setdefault(i, {}).setdefault(int(tc.get("index") or 0), empty)
        if tc.get("id"):
            slot["id"] = tc["id"]
        fn = tc.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            slot["function"]["arguments"] += fn["arguments"]
    if c.get("finish_reason"):
        acc["finish_reason"] = c["finish_reason"]
