"""Anthropic Messages wire format <-> Fusebox's internal (OpenAI-shaped) chat request and result.

Lets an Anthropic SDK client be answered by any provider: its ``/v1/messages`` request becomes an
OpenAI chat request (which every adapter speaks), and the normalized chat completion comes back as
an Anthropic ``Message``. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import time
from typing import Any

from shared import budget
from shared.schema import JobResult, RequestError

# HTTP status -> Anthropic error type (https://docs.anthropic.com/en/api/errors)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Error types the SDK's batch ``errored`` result accepts (ErrorResponse's discriminated union).
_BATCH_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    etype = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def _bad(message: str) -> RequestError:
    return RequestError("invalid_request_error", message)


# -- request: Anthropic -> OpenAI ------------------------------------------------


def to_openai_request(params: Any) -> dict[str, Any]:
    """An Anthropic ``MessageCreateParams`` body as an OpenAI chat.completions body.

    Raises RequestError (the message says what to change) for shapes no OpenAI-style request can carry.
    """
    if not isinstance(params, dict):
        raise _bad("request body must be a JSON object")
    if params.get("stream"):
        raise _bad("streaming is not supported: Fusebox runs requests as jobs; send stream=false")
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: field required")
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _bad("max_tokens: a positive integer is required")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: a non-empty list is required")
    out: list[dict[str, Any]] = []
    system = params.get("system")
    if system:
        out.append({"role": "system", "content": _system_text(system)})
    for i, m in enumerate(messages):
        out += _message(i, m)
    body: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p")):
        if params.get(src) is not None:
            body[dst] = params[src]
    stops = params.get("stop_sequences")
    if stops:
        body["stop"] = list(stops)
    meta = params.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        body["user"] = meta["user_id"]
    tools = params.get("tools")
    if tools:
        body["tools"] = [_tool(t) for t in tools]
    choice = params.get("tool_choice")
    if choice:
        body.update(_tool_choice(choice))
    return body


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return "\n\n".join(b.get("text", "") for b in system)
    raise _bad("system: a string or a list of text blocks is required")


def _message(i: int, m: Any) -> list[dict[str, Any]]:
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise _bad(f"messages.{i}.role: 'user' or 'assistant' is required")
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"messages.{i}.content: a string or a list of content blocks is required")
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        btype = b.get("type") if isinstance(b, dict) else None
        where = f"messages.{i}.content.{j}"
        if btype == "text":
            parts.append({"type": "text", "text": b.get("text", "")})
        elif btype == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(where, b.get("source"))}})
        elif btype == "tool_use" and role == "assistant":
            args = json.dumps(b.get("input") or {}, separators=(",", ":"))
            tool_calls.append(
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {"name": b.get("name"), "arguments": args},
                }
            )
        elif btype == "tool_result" and role == "user":
            text = _tool_result_text(where, b.get("content"))
            if b.get("is_error"):
                text = f"[tool error] {text}"
            tool_results.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": text})
        elif btype in ("thinking", "redacted_thinking"):
            continue  # the model's own reasoning from an earlier turn: no OpenAI equivalent to send back
        else:
            raise _bad(f"{where}.type: {btype!r} blocks are not supported through Fusebox")
    out: list[dict[str, Any]] = list(tool_results)
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": _join_text(parts)}
        if tool_calls:
            msg["tool_calls"] = tool_calls
        if msg["content"] is not None or tool_calls:
            out.append(msg)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _join_text(parts: list[dict[str, Any]]) -> str | None:
    texts = [p["text"] for p in parts if p["type"] == "text"]
    return "".join(texts) if texts else None


def _image_url(where: str, source: Any) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url":
        return str(source.get("url"))
    raise _bad(f"{where}.source: a base64 or url image source is required")


def _tool_result_text(where: str, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for b in content:
            if not isinstance(b, dict) or b.get("type") != "text":
                raise _bad(f"{where}.content: only text tool results are supported through Fusebox")
            texts.append(b.get("text", ""))
        return "\n".join(texts)
    raise _bad(f"{where}.content: a string or text blocks are required")


def _tool(t: Any) -> dict[str, Any]:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise _bad("tools: each tool needs a name")
    if t.get("type") not in (None, "custom"):
        raise _bad(f"tools: server tool {t.get('type')!r} is not supported through Fusebox")
    fn: dict[str, Any] = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object"}}
    if t.get("description"):
        fn["description"] = t["description"]
    return {"type": "function", "function": fn}


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool":
        out = {"tool_choice": {"type": "function", "function": {"name": choice.get("name")}}}
    else:
        raise _bad("tool_choice.type: one of auto, any, tool, none is required")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- response: OpenAI -> Anthropic -----------------------------------------------


def to_message(body: dict[str, Any], model: str, message_id: str) -> dict[str, Any]:
    """A normalized chat completion (OpenAI shape) as an Anthropic ``Message``."""
    choice = (body.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {"_raw_arguments": fn.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args})
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": max(0, int(usage.get("prompt_tokens") or 0) - cached),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }


def message_id(job_id: str) -> str:
    return "msg_" + job_id.replace(":", "_")


ENDED_CODES = {"batch_cancelled": "canceled", "batch_expired": "expired"}


def result_line(custom_id: str, result: JobResult | None, ended_as: str = "canceled") -> dict[str, Any]:
    """One line of a message batch's results file (``MessageBatchIndividualResponse``).

    ``result`` None: the line never ran and has no answer; ``ended_as`` says why.
    """
    code = result.error.code if result is not None and result.error is not None else None
    if result is None or code in ENDED_CODES:
        return {"custom_id": custom_id, "result": {"type": ENDED_CODES.get(code or "", ended_as)}}
    if result.ok and result.body is not None:
        msg = to_message(result.body, result.model or "", message_id(result.id))
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": msg}}
    err = result.error
    status = (err.status if err else None) or result.status_code or 500
    body = error_body(status, err.message if err else "request failed")
    if body["error"]["type"] not in _BATCH_ERROR_TYPES:
        body["error"]["type"] = "invalid_request_error" if status < 500 else "api_error"
    return {"custom_id": custom_id, "result": {"type": "errored", "error": body}}


def _iso(ts: float | str | None) -> str | None:
    if ts in (None, ""):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))  # type: ignore[arg-type]


def batch_object(batch_id: str, info: dict[str, str], results_url: str) -> dict[str, Any]:
    """A Fusebox batch record (``Store.batch_info``) as an Anthropic ``MessageBatch``.

    Lines answered by a cancellation or expiry count as failed in Fusebox's totals; the batch
    hash also counts them apart (``cancelled_lines``, ``expired_lines``), as Anthropic reports them."""
    status = info.get("status", "validating")
    total = int(info.get("total") or 0)
    completed = int(info.get("completed") or 0)
    failed = int(info.get("failed") or 0)
    cancelled = int(info.get("cancelled_lines") or 0)
    expired = int(info.get("expired_lines") or 0)
    ended = status in ("completed", "failed", "cancelled", "expired")
    processing = "ended" if ended else ("canceling" if status == "cancelling" else "in_progress")
    created = float(info.get("created_at") or time.time())
    errored = max(0, failed - cancelled - expired)
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": processing,
        "request_counts": {
            "processing": 0 if ended else max(0, total - completed - failed),
            "succeeded": completed,
            "errored": errored,
            "canceled": cancelled,
            "expired": expired,
        },
        "created_at": _iso(created),
        "expires_at": _iso(info.get("expires_at") or created + 24 * 3600),
        "ended_at": _iso(info.get("completed_at") or info.get(f"{status}_at")) if ended else None,
        "cancel_initiated_at": _iso(info.get("cancelling_at")),
        "archived_at": None,
        "results_url": results_url if ended else None,
        # processing_status keeps Anthropic's values (a batch at its spend cap is in_progress); why
        # its lines wait shows here, as in the OpenAI and native batch objects.
        "fusebox": budget.batch_fields(info),
    }
