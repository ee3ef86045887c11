"""The error table: a failed provider call -> ProviderError with an ErrorClass and a stable code.

One function per failure shape (an HTTP error answer, a transport exception, an
unreadable 200 body), shared by every adapter. ``dialect`` is the wire format
("openai", "anthropic", "gemini", "ollama", "cohere"); it only matters where
providers disagree about what the same status means. Messages carry the
provider's own explanation, truncated and scrubbed of anything key-shaped.
The fields it reads are :mod:`shared.providers.answer_fields`'s, the waits
:mod:`shared.providers.retry_after`'s.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx

from shared.errors import ErrorClass, ProviderError
from shared.providers.answer_fields import ParsedError, lower_headers, parse_error_body, request_id
from shared.providers.retry_after import retry_after_seconds
from shared.redact import MAX_MESSAGE
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
    hdrs = lower_headers(headers)
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


def redact(text: str, secret: str | None = None) -> str:
    """Remove credentials (``secret``, every registered key, anything shaped like one), then truncate."""
    return _redact(text, secret, limit=MAX_MESSAGE)
