"""Fields read off a provider's answer: the error body's parts, the request id, durations.

Every format writes its error body a little differently (OpenAI/Anthropic ``error.type``, Gemini
``error.status`` and ``details``, Ollama a bare string, Cohere a top-level ``message``);
:func:`parse_error_body` reads them all into one :class:`ParsedError` for the error table.
The request id is read off successful answers too (adapters store it with results).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from shared.redact import MAX_SCAN
from shared.redact import redact as _redact

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "apim-request-id", "x-amzn-requestid", "cf-ray")

_decode = msgspec.json.Decoder().decode


class ParsedError(NamedTuple):
    """The parts of a provider's error body the table looks at."""

    message: str
    type: str  # error.type (OpenAI/Anthropic) or error.status (Gemini)
    code: str  # error.code as text
    extra: str  # detail reasons/codes (Anthropic error.details, Gemini details[].reason)
    retry_delay: float | None  # Gemini RetryInfo.retryDelay
    request_id: str | None


def parse_error_body(body: bytes | str | Mapping[str, Any] | list[Any] | None) -> ParsedError:
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = _decode(body) if body else None
        except msgspec.DecodeError:
            # Not cut here: redaction must see the whole text (a cut can split a key); redact() cuts.
            text = body[:MAX_SCAN].decode("utf-8", "replace") if isinstance(body, bytes) else body
            return ParsedError(" ".join(text.split()), "", "", "", None, None)
    if isinstance(data, list) and data and isinstance(data[0], dict):  # Vertex wraps errors in a list
        data = data[0]
    if not isinstance(data, Mapping):
        return ParsedError("", "", "", "", None, None)
    request_id = _str(data.get("request_id")) or None
    err = data.get("error")
    if isinstance(err, str):  # Ollama: {"error": "model 'x' not found"}
        return ParsedError(err, "", "", "", None, request_id)
    if not isinstance(err, Mapping):  # Cohere / Mistral: {"message": ...}; FastAPI-style {"detail": ...}
        err = data
    message = err.get("message", err.get("detail", ""))
    etype = _str(err.get("type")) or _str(err.get("status"))
    extra: list[str] = []
    retry_delay = None
    details = err.get("details")
    for d in details if isinstance(details, list) else [details]:
        if not isinstance(d, Mapping):
            continue
        extra += [_str(d.get(k)) for k in ("error_code", "reason", "code") if d.get(k)]
        if _str(d.get("@type")).endswith("google.rpc.RetryInfo"):
            retry_delay = parse_duration(_str(d.get("retryDelay")))
    return ParsedError(_str(message), etype, _str(err.get("code")), " ".join(extra), retry_delay, request_id)


def parse_duration(text: str) -> float | None:
    """Go-style durations as OpenAI/Groq/Gemini send them: '1s', '6m0s', '20ms', '1.5s', '3.4s'."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def request_id(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id, for support tickets. Stored with results, so redacted like any
    provider text (an echoing proxy can put anything in a header)."""
    h = lower_headers(headers)
    for name in _REQUEST_ID_HEADERS:
        v = h.get(name)
        if v:
            return _redact(v, limit=200)
    return None


def lower_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """Headers to look up by lower-case name (case-insensitive mappings are used as they are)."""
    if headers is None:
        return {}
    if isinstance(headers, httpx.Headers | CIMultiDictProxy | CIMultiDict):  # already case-insensitive
        return headers
    return {k.lower(): v for k, v in headers.items()}


def _str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return msgspec.json.encode(v).decode() if isinstance(v, dict | list) else str(v)
