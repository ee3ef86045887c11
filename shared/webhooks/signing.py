"""Signed webhooks (Standard Webhooks, https://www.standardwebhooks.com): signing, verifying, payloads.

Every delivery carries three headers: ``webhook-id`` (the same across retries of
one event, so a receiver can drop duplicates), ``webhook-timestamp`` (unix
seconds of this attempt) and ``webhook-signature``: ``v1,`` + base64 of
HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the secret's bytes. A
secret is ``whsec_`` + base64 of random bytes.

Receivers verify with ``verify`` (or any Standard Webhooks library)::

    from shared.webhooks import verify, WebhookVerificationError
    event = verify(os.environ["FUSEBOX_WEBHOOK_SECRET"], request.headers, await request.body())
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from msgspec import Struct, field

from shared.schema import ErrorInfo, JobResult, Usage

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300

EventType = Literal[
    "batch.completed",
    "batch.failed",
    "batch.cancelled",
    "batch.expired",
    "job.completed",
    "job.failed",
]


class WebhookVerificationError(ValueError):
    """A webhook failed verification; the message says why (never the secret)."""


class WebhookSecretError(ValueError):
    """A webhook secret is missing or not ``whsec_`` + base64."""


# -- secrets and signatures ----------------------------------------------------
def generate_secret(nbytes: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def secret_bytes(secret: str | bytes) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (raw bytes pass through)."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret.strip().removeprefix(SECRET_PREFIX)
        try:
            # Like the reference libraries, accept unpadded base64.
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSecretError("webhook secret is not 'whsec_' followed by base64") from None
    if not key:
        raise WebhookSecretError("webhook secret is empty")
    return key


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))."""
    to_sign = f"{msg_id}.{int(timestamp)}.".encode() + _as_bytes(body)
    digest = hmac.new(secret_bytes(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> Any:
    """Check a received webhook and return its JSON payload; raise WebhookVerificationError if not genuine.

    ``headers`` may be any mapping (header names are matched case-insensitively);
    ``body`` must be the raw request body, before any JSON parsing. The timestamp
    must be within ``tolerance`` seconds of now, which bounds replays. Several
    space-separated signatures (secret rotation) are accepted if any one matches.
    """
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, sig_header = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    missing = [
        n
        for n, v in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", ts_text),
            ("webhook-signature", sig_header),
        )
        if not v
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    assert msg_id and ts_text and sig_header
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer (unix seconds)") from None
    skew = (time.time() if now is None else now) - ts
    if skew > tolerance:
        raise WebhookVerificationError(
            f"message timestamp too old ({skew:.0f} s, tolerance {tolerance:.0f} s)"
        )
    if skew < -tolerance:
        raise WebhookVerificationError(f"message timestamp too new ({-skew:.0f} s in the future)")
    raw = _as_bytes(body)
    try:
        expected = base64.b64decode(sign(secret, msg_id, ts, raw).split(",", 1)[1])
    except WebhookSecretError as e:
        raise WebhookVerificationError(str(e)) from None
    for candidate in sig_header.split():
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            got = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, got):
            return msgspec.json.decode(raw)
    raise WebhookVerificationError("no matching v1 signature (wrong secret, or the body was altered)")


# -- payloads ------------------------------------------------------------------
def new_event_id() -> str:
    return "msg_" + uuid.uuid4().hex


class RequestCounts(Struct, kw_only=True):
    total: int
    completed: int
    failed: int


class WebhookData(Struct, kw_only=True, omit_defaults=True):
    """A compact summary of what finished: ids, status, counts, usage, cost and where the results are.

    Never response bodies (fetch them from ``results``), never keys or secrets.
    """

    status: str
    batch_id: str | None = None
    job_id: str | None = None
    custom_id: str | None = None
    request_counts: RequestCounts | None = None
    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    cost_usd: float = 0.0
    error: ErrorInfo | None = None
    # Where to fetch results: an API path or URL, or the CLI command.
    results: str | None = None
    metadata: dict[str, Any] | None = None


class WebhookEvent(Struct, kw_only=True):
    """The JSON body of a webhook. ``id`` is also the ``webhook-id`` header."""

    type: EventType
    id: str = field(default_factory=new_event_id)
    created_at: int = field(default_factory=lambda: int(time.time()))
    data: WebhookData


def event_id(kind: str, subject: str) -> str:
    """A deterministic id for one event about one subject (e.g. ``("batch.completed", batch_id)``).

    ``enqueue_webhook`` sends each id once, so a finalization that runs twice
    (arq is at-least-once) does not send two webhooks.
    """
    return "msg_" + hashlib.sha256(f"{kind}\0{subject}".encode()).hexdigest()[:32]


def encode_event(event: WebhookEvent) -> bytes:
    """Compact JSON, exactly the bytes that are signed and sent."""
    return msgspec.json.encode(event)


def decode_event(body: bytes | str) -> WebhookEvent:
    return msgspec.json.decode(body, type=WebhookEvent)


def job_event(result: JobResult, results: str | None = None, *, dedupe: bool = True) -> WebhookEvent:
    """``job.completed`` / ``job.failed`` for a finished job."""
    kind: EventType = "job.completed" if result.ok else "job.failed"
    err = None
    if result.error is not None:
        err = ErrorInfo(
            code=result.error.code, message=result.error.message, error_class=result.error.error_class
        )
    data = WebhookData(
        status="completed" if result.ok else "failed",
        job_id=result.id,
        batch_id=result.batch_id,
        custom_id=result.custom_id,
        provider=result.provider,
        model=result.model,
        usage=result.usage,
        cost_usd=result.cost_usd,
        error=err,
        results=results if results is not None else f"fusebox results {result.id}",
    )
    if dedupe:
        return WebhookEvent(type=kind, id=event_id(kind, result.id), data=data)
    return WebhookEvent(type=kind, data=data)


def batch_event(
    batch_id: str,
    status: str,
    counts: RequestCounts,
    *,
    usage: Usage | None = None,
    cost_usd: float = 0.0,
    results: str | None = None,
    metadata: dict[str, Any] | None = None,
    retries: int = 0,
) -> WebhookEvent:
    """``batch.<status>`` (completed, failed, cancelled, expired) with a deterministic id; each
    ``fusebox retry`` of the batch ends with a webhook of its own (``retries`` is in the id)."""
    kind = f"batch.{status}"
    if kind not in EventType.__args__:  # type: ignore[attr-defined]
        raise ValueError(f"no webhook event for batch status {status!r}")
    data = WebhookData(
        status=status,
        batch_id=batch_id,
        request_counts=counts,
        usage=usage,
        cost_usd=cost_usd,
        results=results if results is not None else f"fusebox results {batch_id}",
        metadata=metadata or None,
    )
    subject = batch_id if not retries else f"{batch_id}\0retry-{retries}"
    return WebhookEvent(type=kind, id=event_id(kind, subject), data=data)  # type: ignore[arg-type]
