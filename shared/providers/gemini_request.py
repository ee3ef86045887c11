"""OpenAI chat requests in Gemini's ``generateContent`` shape (see shared.providers.gemini)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shared.providers.base import sampling_fields
from shared.providers.http import data_url, decode_json, json_arguments, text_of
from shared.schema import ChatRequest

# OpenAI-style extras that have a generationConfig equivalent.
GENERATION_EXTRAS = {
    "top_k": "topK",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
# Google's documented placeholder for a function call that has no signature of its own.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_VERSION = re.compile(r"gemini-(\d+)")


def needs_signatures(model: str) -> bool:
    """Gemini 3 and later reject a function call sent back without its thought signature."""
    m = _VERSION.search(model)
    return bool(m) and int(m.group(1)) >= 3


def convert_messages(
    provider: str, messages: list[dict[str, Any]], *, signatures: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages -> (systemInstruction parts, contents); same-role turns are merged.

    ``signatures``: put Google's placeholder on the first function call of a turn that carries
    no thought signature (the target model requires one)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, for functionResponse parts
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system += _parts(content)
        elif role in ("tool", "function"):
            name = m.get("name") or names.get(m.get("tool_call_id") or "", "")
            part = {"functionResponse": {"name": name, "response": _tool_response(content)}}
            _append(contents, "user", [part])
        elif role == "assistant":
            parts = _parts(content)
            calls: list[dict[str, Any]] = []
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                names[tc.get("id") or ""] = fn.get("name") or ""
                part: dict[str, Any] = {
                    "functionCall": {
                        "name": fn.get("name"),
                        "args": json_arguments(provider, fn.get("arguments")),
                    }
                }
                signature = thought_signature(tc)
                if signature:
                    part["thoughtSignature"] = signature
                calls.append(part)
            if signatures and calls and not any("thoughtSignature" in c for c in calls):
                calls[0]["thoughtSignature"] = SKIP_SIGNATURE
            _append(contents, "model", parts + calls)
        else:
            _append(contents, "user", _parts(content))
    return system, contents


def thought_signature(tool_call: dict[str, Any]) -> str | None:
    """The signature an earlier Gemini answer put on this OpenAI-shaped tool call, if any."""
    extra = tool_call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        return [{"text": text_of(content)}]
    parts: list[dict[str, Any]] = []
    for p in content:
        if not isinstance(p, dict):
            continue
        kind = p.get("type")
        if kind == "text":
            parts.append({"text": p.get("text", "")})
        elif kind == "image_url":
            image = p.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            inline = data_url(url)
            if inline:
                parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
            else:
                parts.append({"fileData": {"fileUri": url}})
        elif kind is None:  # already a Gemini part
            parts.append(p)
    return parts


def _tool_response(content: Any) -> dict[str, Any]:
    """functionResponse.response must be an object: a JSON object result as is, anything else wrapped."""
    text = text_of(content)
    try:
        value = decode_json(text)
    except msgspec.DecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def generation_config(req: ChatRequest) -> dict[str, Any]:
    gc = sampling_fields(
        req,
        temperature="temperature",
        top_p="topP",
        max_tokens="maxOutputTokens",
        stop="stopSequences",
        seed="seed",
    )
    if req.n and req.n > 1:
        gc["candidateCount"] = req.n
    rf = req.response_format or {}
    if rf.get("type") == "json_object":
        gc["responseMimeType"] = "application/json"
    elif rf.get("type") == "json_schema":
        gc["responseMimeType"] = "application/json"
        schema = (rf.get("json_schema") or {}).get("schema")
        if schema:
            gc["responseJsonSchema"] = schema
    for key, target in GENERATION_EXTRAS.items():
        if key in req.extra:
            gc[target] = req.extra[key]
    own = req.extra.get("generationConfig") or req.extra.get("generation_config")
    if isinstance(own, dict):
        gc.update(own)
    return gc


def convert_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for t in tools:
        fn = t.get("function") if t.get("type") == "function" else None
        if not isinstance(fn, dict):
            native.append(t)  # a Gemini tool as is (googleSearch, codeExecution, ...)
            continue
        decl: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            decl["description"] = fn["description"]
        if fn.get("parameters"):
            # The JSON Schema field: the older ``parameters`` rejects e.g. additionalProperties.
            decl["parametersJsonSchema"] = fn["parameters"]
        declarations.append(decl)
    return ([{"functionDeclarations": declarations}] if declarations else []) + native


def convert_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "required":
        return {"mode": "ANY"}
    if choice == "none":
        return {"mode": "NONE"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [(choice.get("function") or {}).get("name")]}
    return None
