"""Webhook records: what a delivery job carries, the delivery log, dead letters and disabled endpoints,
and the producer side (enqueue, redeliver, read the log). The sending is in shared/webhooks/delivery.py.

Each attempt is its own arq job (``deliver_webhook``, see worker/webhook_jobs.py)
with its own job id; a failed attempt enqueues the next one deferred by the
retry schedule, so a receiver that is down for hours never holds a worker slot.
The job carries the URL, the exact payload bytes and the *name* of the secret;
the secret is read from the worker's environment or secret file at send time.

Redis state (names in shared/keys.py): a hash per webhook (delivery, state,
counters), a capped per-webhook attempt log, a dead-letter sorted set and a hash
of endpoints disabled by HTTP 410.
"""

from __future__ import annotations

import time
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from arq.connections import ArqRedis
from msgspec import Struct, field

from shared.keys import Keys, wake_workers
from shared.webhooks.signing import WebhookEvent, encode_event

FUNCTION = "deliver_webhook"
RETENTION_S = 7 * 24 * 3600  # records and logs outlive the longest schedule (~33 h) with room to redeliver
DEAD_CAP = 10_000

State = Literal["pending", "retrying", "delivered", "dead", "disabled", "skipped", "refused"]


class UnknownWebhookError(LookupError):
    """No record of this webhook id (never enqueued, or older than the retention)."""


class Delivery(Struct, kw_only=True, omit_defaults=True):
    """The argument of one ``deliver_webhook`` job (msgpack). Holds no secret, only its name."""

    id: str
    payload: bytes
    # After the payload: arq logs the first 80 characters of job args, and URLs can carry tokens.
    url: str
    attempt: int = 1
    secret: str | None = None  # a name in [webhooks] secrets; None is the default secret
    redelivery: int = 0


class DeliveryAttempt(Struct, kw_only=True, omit_defaults=True):
    """One line of a webhook's delivery log."""

    at: float
    attempt: int
    outcome: State
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0
    next_in: float | None = None  # seconds until the next attempt
    redelivery: int = 0


class WebhookInfo(Struct, kw_only=True, omit_defaults=True):
    """What ``fusebox webhooks log`` / ``dead`` show. The URL is redacted (no query, no credentials)."""

    id: str
    state: str
    url: str = ""
    type: str = ""
    attempts: int = 0
    redeliveries: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    last_status: int | None = None
    last_error: str | None = None
    log: list[DeliveryAttempt] = field(default_factory=list)


_enc = msgspec.msgpack.Encoder()
_delivery_dec = msgspec.msgpack.Decoder(Delivery)
_attempt_dec = msgspec.msgpack.Decoder(DeliveryAttempt)


def encode_delivery(d: Delivery) -> bytes:
    return _enc.encode(d)


def decode_delivery(raw: bytes) -> Delivery:
    return _delivery_dec.decode(raw)


def encode_attempt(a: DeliveryAttempt) -> bytes:
    return _enc.encode(a)


def redact_url(url: str) -> str:
    """scheme://host[:port]/path: query strings and credentials often carry tokens."""
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{p.port}" if p.port else host
    except ValueError:
        return "(invalid URL)"
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


# -- producer side -------------------------------------------------------------
async def enqueue_webhook(
    redis: ArqRedis, keys: Keys, url: str, event: WebhookEvent, secret_name: str | None = None
) -> str:
    """Queue ``event`` for delivery to ``url``; returns the webhook id (= ``event.id``).

    Each id is sent once: calling again with the same event id (e.g. a batch
    finalization that ran twice) enqueues nothing. The URL is checked against the
    SSRF guard at delivery; check it at submission with ``shared.ssrf.check_url``.
    """
    d = Delivery(id=event.id, url=url, payload=encode_event(event), secret=secret_name)
    key = keys.webhook(d.id)
    if not await redis.hsetnx(key, "delivery", encode_delivery(d)) and await redis.hget(key, "enqueued"):
        return d.id
    now = repr(time.time())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            key,
            mapping={
                "url": url,
                "type": event.type,
                "state": "pending",
                "created_at": now,
                "updated_at": now,
            },
        )
        pipe.expire(key, RETENTION_S)
        await pipe.execute()
    await redis.enqueue_job(
        FUNCTION, encode_delivery(d), _job_id=keys.webhook_job(d.id, 0, 1), _queue_name=keys.queue
    )
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, "enqueued", "1")
        wake_workers(pipe, keys)  # an idle worker sends it now, not at its next poll
        await pipe.execute()
    return d.id


async def redeliver(redis: ArqRedis, keys: Keys, webhook_id: str) -> int:
    """Send a logged webhook again (dead letter or not), same webhook-id; returns the redelivery number."""
    key = keys.webhook(webhook_id)
    blob = await redis.hget(key, "delivery")
    if blob is None:
        raise UnknownWebhookError(
            f"no webhook {webhook_id!r} (never enqueued, or older than {RETENTION_S // 86400} days)"
        )
    n = int(await redis.hincrby(key, "redeliveries", 1))
    d = msgspec.structs.replace(decode_delivery(blob), attempt=1, redelivery=n)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"state": "pending", "updated_at": repr(time.time())})
        pipe.expire(key, RETENTION_S)
        pipe.zrem(keys.webhooks_dead, webhook_id)
        await pipe.execute()
    await redis.enqueue_job(
        FUNCTION, encode_delivery(d), _job_id=keys.webhook_job(webhook_id, n, 1), _queue_name=keys.queue
    )
    async with redis.pipeline(transaction=False) as pipe:
        wake_workers(pipe, keys)
        await pipe.execute()
    return n


def _info(webhook_id: str, h: dict[bytes, bytes]) -> WebhookInfo:
    def s(name: str) -> str:
        return h.get(name.encode(), b"").decode()

    status = s("last_status")
    return WebhookInfo(
        id=webhook_id,
        state=s("state") or "expired",
        url=redact_url(s("url")) if s("url") else "",
        type=s("type"),
        attempts=int(s("attempts") or 0),
        redeliveries=int(s("redeliveries") or 0),
        created_at=float(s("created_at") or 0),
        updated_at=float(s("updated_at") or 0),
        last_status=int(status) if status else None,
        last_error=s("last_error") or None,
    )


async def delivery_log(redis: ArqRedis, keys: Keys, webhook_id: str) -> WebhookInfo | None:
    """The webhook's state and its attempt log (oldest first), or None if unknown."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.webhook(webhook_id))
        pipe.lrange(keys.webhook_log(webhook_id), 0, -1)
        h, entries = await pipe.execute()
    if not h and not entries:
        return None
    info = _info(webhook_id, h)
    info.log = [_attempt_dec.decode(e) for e in entries]
    return info


async def dead_letters(redis: ArqRedis, keys: Keys, limit: int = 100) -> list[WebhookInfo]:
    """Dead-lettered webhooks, newest first."""
    ids = await redis.zrevrange(keys.webhooks_dead, 0, max(0, limit - 1))
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for wid in ids:
            pipe.hgetall(keys.webhook(wid.decode()))
        hashes = await pipe.execute()
    return [_info(wid.decode(), h) for wid, h in zip(ids, hashes, strict=True)]


async def disabled_endpoints(redis: ArqRedis, keys: Keys) -> dict[str, str]:
    """Endpoint URL (redacted) -> why it is disabled."""
    raw = await redis.hgetall(keys.webhooks_disabled)
    return {redact_url(k.decode()): v.decode() for k, v in raw.items()}


async def enable_endpoint(redis: ArqRedis, keys: Keys, url: str) -> int:
    """Re-enable endpoints disabled by a 410: ``url`` exactly, or every URL whose redacted form it is."""
    if await redis.hdel(keys.webhooks_disabled, url):
        return 1
    matches = [k for k in await redis.hkeys(keys.webhooks_disabled) if redact_url(k.decode()) == url]
    return int(await redis.hdel(keys.webhooks_disabled, *matches)) if matches else 0
