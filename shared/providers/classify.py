"""The error table: a failed provider call -> ProviderError with an ErrorClass and a stable code.

One function per failure shape (an HTTP error answer, a transport exception, an
unreadable 200 body), shared by every adapter. ``dialect`` is the wire format
("openai", "anthropic", "gemini", "ollama", "cohere"); it only matters where
providers disagree about what the same status means. Messages carry the
provider's own explanation, truncated and scrubbed of anything key-shaped.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import ssl
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import aiohttp
import httpx
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from shared.errors import ErrorClass, ProviderError
from shared.redact import MAX_MESSAGE, MAX_SCAN
from shared.redact import redact as _redact

# Spend caps and exhausted credit: waiting minutes does not help, so these are never retried.
_QUOTA = re.compile(
    r"insufficient[_ ](?:quota|credits?|balance|funds)|exceeded your current quota|credit balance is too low"
    r"|spend(?:ing)?[_ ]limit|billing[_ ]hard[_ ]limit|billing_not_active|used all available credits"
    r"|reached your specified api usage limits|out of credits|payment required",
    re.IGNORECASE,
)
# OpenAI's error codes for spend caps and exhausted credit, sent with a 429 and any ``type``.
_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_usage_limit_exceeded",
        "billing_hard_limit_reached",
    }
)
# A 429 for one request larger than the tokens-per-minute limit itself (OpenAI, Groq): no wait makes it fit.
_OVER_TPM = re.compile(r"request too large\b.{0,300}?(?:tokens per min|\bTPM\b)", re.IGNORECASE | re.DOTALL)
_LIMIT_REQUESTED = re.compile(r"\bLimit:? (\d+)\b.{0,80}?\bRequested:? (\d+)\b", re.IGNORECASE | re.DOTALL)
# Prompt longer than the model's window: a larger-context candidate may still serve it.
_CONTEXT = re.compile(
    r"context[_ ]length|context (?:window|limit)|prompt is too long|too many tokens|input token count"
    r"|reduce the length of the messages|tokens?\b.{0,60}must be <=",
    re.IGNORECASE,
)
_RETRY_IN = re.compile(
    r"(?:try again|retry) (?:in|after) ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+|\d+(?:\.\d+)? ?sec(?:ond)?s?)\b",
    re.IGNORECASE,
)
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


def classify_response(
    provider: str,
    status: int,
    body: bytes | str | Mapping[str, Any] | list[Any] | None,
    headers: Mapping[str, str] | None = None,
    *,
    dialect: str = "openai",
    secret: str | None = None,
    now: float | None = None,
) -> ProviderError:
    """Classify a non-2xx answer (or a 2xx whose body is an error object)."""
    hdrs = _lower(headers)
    p = parse_error_body(body)
    error_class, code = _decide(status, p, dialect)
    retry_after = None
    if error_class in (ErrorClass.RATE_LIMITED, ErrorClass.TRANSIENT):
        retry_after = retry_after_seconds(hdrs, p, now=now)
    label = " ".join(x for x in (p.type, f"({p.code})" if p.code and p.code != p.type else "") if x)
    message = (
        f"{provider}: HTTP {status}"
        + (f" {label}" if label else "")
        + (f": {p.message}" if p.message else "")
    )
    return ProviderError(
        error_class,
        redact(message, secret),
        status=status,
        code=code,
        retry_after=retry_after,
        request_id=request_id(hdrs) or p.request_id,
    )


def _decide(status: int, p: ParsedError, dialect: str) -> tuple[ErrorClass, str]:
    text = f"{p.message} {p.type} {p.code} {p.extra}"
    if status == 429:
        if p.code in _QUOTA_CODES or p.type in _QUOTA_CODES:
            return ErrorClass.FINAL, "insufficient_quota"
        if _exceeds_tpm(p.message):
            # Final for this candidate only: CONTEXT sends the job to the next one without a retry here.
            return ErrorClass.CONTEXT, "request_exceeds_tpm"
        if dialect == "gemini":
            # Gemini's per-minute 429 also says "exceeded your current quota"; only a zero limit is final.
            if re.search(r"limit: 0\b", text):
                return ErrorClass.FINAL, "insufficient_quota"
            return ErrorClass.RATE_LIMITED, "rate_limited"
        if _QUOTA.search(text):
            return ErrorClass.FINAL, "insufficient_quota"
        return ErrorClass.RATE_LIMITED, "rate_limited"
    if status == 402 or (status in (400, 403) and _QUOTA.search(text)):
        return ErrorClass.FINAL, "insufficient_quota"
    if (status in (400, 422) or status >= 500) and _CONTEXT.search(text):
        return ErrorClass.CONTEXT, "context_length_exceeded"
    if status == 400:
        if "API_KEY_INVALID" in text or "API key not valid" in p.message:
            return ErrorClass.FINAL, "authentication_error"
        if p.code == "content_filter":
            return ErrorClass.FINAL, "content_filter"
        return ErrorClass.FINAL, "bad_request"
    if status == 401:
        return ErrorClass.FINAL, "authentication_error"
    if status == 403:
        return ErrorClass.FINAL, "permission_denied"
    if status == 404:
        return ErrorClass.FINAL, "model_not_found" if "model" in text.lower() else "not_found"
    if status == 408:
        return ErrorClass.TRANSIENT, "timeout"
    if status in (409, 425, 499):  # lock conflict, too early, request cancelled: worth another try
        return ErrorClass.TRANSIENT, "server_error"
    if status == 413:
        return ErrorClass.FINAL, "request_too_large"
    if status == 498:  # Cohere: invalid token; Groq: flex-tier capacity exceeded
        if dialect == "cohere":
            return ErrorClass.FINAL, "authentication_error"
        return ErrorClass.RATE_LIMITED, "rate_limited"
    if status == 529 or "overloaded" in text.lower():
        return ErrorClass.TRANSIENT, "overloaded"
    if status == 504:
        return ErrorClass.TRANSIENT, "timeout"
    if status >= 500 or status < 100:
        return ErrorClass.TRANSIENT, "server_error"
    if 300 <= status < 400:  # redirects are not followed: a wrong base_url, not a passing fault
        return ErrorClass.FINAL, "unexpected_redirect"
    if 200 <= status < 300:
        return ErrorClass.TRANSIENT, "malformed_response"
    return ErrorClass.FINAL, "bad_request"


def _exceeds_tpm(message: str) -> bool:
    if _OVER_TPM.search(message):
        return True
    if "tokens per min" not in message.lower() and "tpm" not in message.lower():
        return False
    m = _LIMIT_REQUESTED.search(message)  # "Limit 30000, Used 0, Requested 45000"
    return m is not None and int(m.group(2)) > int(m.group(1))


def classify_exception(provider: str, exc: BaseException, *, secret: str | None = None) -> ProviderError:
    """A transport failure (no HTTP answer): timeouts and connection errors are transient."""
    root = transport_cause(exc)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL) or isinstance(
        root,
        httpx.UnsupportedProtocol | httpx.InvalidURL | aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError,
    ):
        error_class, code, what = ErrorClass.FINAL, "invalid_base_url", "invalid URL (check base_url)"
    elif _is_timeout(root):
        error_class, code, what = ErrorClass.TRANSIENT, "timeout", "request timed out"
    else:
        error_class, code, what = ErrorClass.TRANSIENT, "connection_error", describe_cause(root)
    return ProviderError(error_class, redact(f"{provider}: {what} ({_detail(root)})", secret), code=code)


def transport_cause(exc: BaseException) -> BaseException:
    """The exception that says what really happened. httpx-aiohttp re-raises aiohttp's errors as httpx
    ones (a refused connection as ConnectTimeout); the deepest OS-level cause names the real fault."""
    best, cur, seen = exc, exc, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError | aiohttp.ClientError | asyncio.TimeoutError):
            best = cur
        cur = cur.__cause__ or getattr(cur, "os_error", None)
    return best


def describe_cause(root: BaseException) -> str:
    """A short name for a transport failure: what an operator should look at."""
    if _is_timeout(root):
        return "timed out"
    if isinstance(root, ConnectionRefusedError):
        return "connection refused"
    if isinstance(root, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(root, socket.gaierror | aiohttp.ClientConnectorDNSError):
        return "host name lookup failed"
    if isinstance(root, aiohttp.ServerDisconnectedError | httpx.RemoteProtocolError):
        return "server closed the connection"
    if isinstance(root, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS error"
    return "connection failed"


def _is_timeout(e: BaseException) -> bool:
    return isinstance(e, httpx.TimeoutException | asyncio.TimeoutError | TimeoutError) and not isinstance(
        e, aiohttp.ClientConnectorError
    )


def _detail(root: BaseException) -> str:
    return f"{type(root).__name__}: {root}" if str(root) else type(root).__name__


def malformed(provider: str, detail: str, *, request_id: str | None = None) -> ProviderError:
    """A 2xx answer Fusebox cannot read (not JSON, missing fields): the provider's fault, so transient."""
    return ProviderError(
        ErrorClass.TRANSIENT,
        redact(f"{provider}: malformed response: {detail}"),
        code="malformed_response",
        request_id=request_id,
    )


# -- waits ----------------------------------------------------------------


def retry_after_seconds(
    headers: Mapping[str, str] | None, parsed: ParsedError | None = None, *, now: float | None = None
) -> float | None:
    """The provider's requested wait, from the most precise source it sent."""
    h = _lower(headers)
    now = time.time() if now is None else now
    for parse in (_retry_after_ms, _retry_after, _openai_reset, _anthropic_reset):
        wait = parse(h, now)
        if wait is not None:
            return round(max(0.0, wait), 3)
    if parsed is not None:
        if parsed.retry_delay is not None:
            return round(max(0.0, parsed.retry_delay), 3)
        m = _RETRY_IN.search(parsed.message)
        if m:  # "Please try again in 1.2s" (OpenAI, Groq), "Please retry after 6 seconds" (Azure)
            raw = m.group(1)
            wait = float(raw.split("sec")[0]) if "sec" in raw else parse_duration(raw)
            if wait is not None:
                return round(wait, 3)
    return None


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


def _retry_after_ms(h: Mapping[str, str], now: float) -> float | None:
    v = h.get("retry-after-ms")
    try:
        return float(v) / 1000 if v else None
    except ValueError:
        return None


def _retry_after(h: Mapping[str, str], now: float) -> float | None:
    v = h.get("retry-after")
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(v).timestamp() - now
    except (TypeError, ValueError, IndexError):
        return None


def _openai_reset(h: Mapping[str, str], now: float) -> float | None:
    return _pick_reset(
        h, "x-ratelimit-reset-", "x-ratelimit-remaining-", ("requests", "tokens"), parse_duration
    )


def _anthropic_reset(h: Mapping[str, str], now: float) -> float | None:
    def until(v: str) -> float | None:
        try:
            return datetime.fromisoformat(v).timestamp() - now
        except ValueError:
            return None

    kinds = ("requests", "tokens", "input-tokens", "output-tokens")
    return _pick_reset(h, "anthropic-ratelimit-", "anthropic-ratelimit-", kinds, until, suffix=True)


def _pick_reset(
    h: Mapping[str, str],
    reset_prefix: str,
    remaining_prefix: str,
    kinds: tuple[str, ...],
    parse: Any,
    *,
    suffix: bool = False,
) -> float | None:
    """The reset time of the exhausted limit; all of them (the longest wait) if none says it is exhausted."""
    resets: dict[str, float] = {}
    exhausted: list[str] = []
    for kind in kinds:
        reset_key = f"{reset_prefix}{kind}-reset" if suffix else f"{reset_prefix}{kind}"
        remaining_key = f"{remaining_prefix}{kind}-remaining" if suffix else f"{remaining_prefix}{kind}"
        raw = h.get(reset_key)
        value = parse(raw) if raw else None
        if value is None:
            continue
        resets[kind] = value
        if h.get(remaining_key, "").strip() == "0":
            exhausted.append(kind)
    if not resets:
        return None
    return max(resets[k] for k in exhausted) if exhausted else max(resets.values())


# -- helpers --------------------------------------------------------------


def request_id(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id, for support tickets. Stored with results, so redacted like any
    provider text (an echoing proxy can put anything in a header)."""
    h = _lower(headers)
    for name in _REQUEST_ID_HEADERS:
        v = h.get(name)
        if v:
            return _redact(v, limit=200)
    return None


def redact(text: str, secret: str | None = None) -> str:
    """Remove credentials (``secret``, every registered key, anything shaped like one), then truncate."""
    return _redact(text, secret, limit=MAX_MESSAGE)


def _lower(headers: Mapping[str, str] | None) -> Mapping[str, str]:
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
