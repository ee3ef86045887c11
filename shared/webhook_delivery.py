"""Webhook delivery: enqueue, send with retries, delivery log, dead letters, redelivery.

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

import asyncio
import email.utils
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
import msgspec
from arq.connections import ArqRedis
from httpx_aiohttp import AiohttpTransport
from msgspec import Struct, field

from shared import metrics
from shared.config import WebhookConfig
from shared.keys import Keys, wake_workers
from shared.providers.classify import transport_cause
from shared.redact import redact, register_secret
from shared.ssrf import AllowList, GuardedResolver, Resolve, UnsafeURLError, blocked_cause, check_url
from shared.webhooks import WebhookEvent, WebhookSecretError, encode_event, secret_bytes, signed_headers

log = logging.getLogger("fusebox.webhooks")

FUNCTION = "deliver_webhook"
USER_AGENT = "fusebox-webhooks/0.1"
RETENTION_S = 7 * 24 * 3600  # records and logs outlive the longest schedule (~33 h) with room to redeliver
DEAD_CAP = 10_000
MAX_RETRY_AFTER_S = 24 * 3600.0
SNIPPET_BYTES = 300

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


def resolve_secret(cfg: WebhookConfig, name: str | None) -> bytes:
    """The signing key for ``name`` (None: the default secret). Errors name the source, never the value."""
    if name is not None:
        env = cfg.secrets.get(name)
        if env is None:
            raise WebhookSecretError(f"webhook secret {name!r} is not defined in [webhooks] secrets")
        source, value = f"${env}", os.environ.get(env)
    elif cfg.secret_file:
        source = cfg.secret_file
        try:
            value = Path(cfg.secret_file).read_text()
        except OSError as e:
            raise WebhookSecretError(f"cannot read webhook secret file {source}: {e.strerror}") from None
    elif cfg.secret_env:
        source, value = f"${cfg.secret_env}", os.environ.get(cfg.secret_env)
    else:
        raise WebhookSecretError("no webhook secret configured ([webhooks] secret_env or secret_file)")
    if not value or not value.strip():
        raise WebhookSecretError(f"webhook secret {source} is not set")
    register_secret(value.strip())  # redacted from every message (a receiver may echo anything)
    try:
        return secret_bytes(value.strip())
    except WebhookSecretError as e:
        raise WebhookSecretError(f"webhook secret {source}: {e}") from None


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def next_delay(cfg: WebhookConfig, attempt: int, retry_after: float | None) -> float | None:
    """Seconds before attempt ``attempt + 1``, or None when the schedule is exhausted."""
    if attempt >= len(cfg.schedule):
        return None
    delay = cfg.schedule[attempt] * random.uniform(1 - cfg.jitter, 1 + cfg.jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


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


# -- worker side ---------------------------------------------------------------
class WebhookDeliverer:
    """Sends one attempt per call; one instance (and one HTTP client) per worker."""

    def __init__(
        self,
        redis: ArqRedis,
        keys: Keys,
        cfg: WebhookConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg
        self.allow = AllowList.parse(cfg.allow_hosts)
        self._resolve = resolve
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = self._transport
            if transport is None:
                allow = self.allow

                def session() -> aiohttp.ClientSession:
                    # The guarded resolver re-checks the address aiohttp actually connects to.
                    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow), limit=100)
                    return aiohttp.ClientSession(connector=connector)

                transport = AiohttpTransport(client=session)
            self._client = httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(self.cfg.timeout),
                follow_redirects=False,  # a redirect could point anywhere, past the guard
                trust_env=False,
                headers={"user-agent": USER_AGENT, "content-type": "application/json"},
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver(self, raw: bytes | Delivery) -> DeliveryAttempt | None:
        """Make one attempt and record it; enqueue the next attempt on failure. None if skipped as stale."""
        d = raw if isinstance(raw, Delivery) else decode_delivery(raw)
        key = self.keys.webhook(d.id)
        state, redeliveries, disabled = await self._lookup(key, d.url)
        if state == "delivered" and d.redelivery <= redeliveries:
            return None  # a re-run of a job whose delivery already succeeded (arq is at-least-once)
        started = time.time()
        if disabled is not None:
            entry = DeliveryAttempt(
                at=started,
                attempt=d.attempt,
                outcome="skipped",
                error=f"endpoint disabled: {disabled}",
                redelivery=d.redelivery,
            )
            return await self._record(d, entry, dead=True)
        try:
            await check_url(d.url, self.allow, resolve=self._resolve)
            status, error, retry_after, latency_ms = await self._send(d)
        except UnsafeURLError as e:
            entry = DeliveryAttempt(
                at=started, attempt=d.attempt, outcome="refused", error=str(e), redelivery=d.redelivery
            )
            return await self._record(d, entry, dead=True)
        if status is not None and 200 <= status < 300:
            entry = DeliveryAttempt(at=started, attempt=d.attempt, outcome="delivered", status=status)
        elif status == 410:
            await self.redis.hset(
                self.keys.webhooks_disabled, d.url, f"HTTP 410 Gone at {_iso(started)} (webhook {d.id})"
            )
            entry = DeliveryAttempt(at=started, attempt=d.attempt, outcome="disabled", status=status)
            entry.error = "HTTP 410 Gone: endpoint disabled, later webhooks to it are skipped"
        else:
            delay = next_delay(self.cfg, d.attempt, retry_after)
            outcome: State = "dead" if delay is None else "retrying"
            entry = DeliveryAttempt(
                at=started, attempt=d.attempt, outcome=outcome, status=status, error=error, next_in=delay
            )
        entry.latency_ms = latency_ms
        entry.redelivery = d.redelivery
        await self._record(d, entry, dead=entry.outcome in ("dead", "disabled"))
        if entry.outcome == "retrying":
            assert entry.next_in is not None
            nxt = msgspec.structs.replace(d, attempt=d.attempt + 1)
            await self.redis.enqueue_job(
                FUNCTION,
                encode_delivery(nxt),
                _job_id=self.keys.webhook_job(d.id, d.redelivery, nxt.attempt),
                _queue_name=self.keys.queue,
                _defer_by=entry.next_in,
            )
        return entry

    async def _lookup(self, key: str, url: str) -> tuple[str, int, str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(key, ["state", "redeliveries"])
            pipe.hget(self.keys.webhooks_disabled, url)
            (state, redeliveries), disabled = await pipe.execute()
        return (
            (state or b"").decode(),
            int(redeliveries or 0),
            disabled.decode() if disabled is not None else None,
        )

    async def _send(self, d: Delivery) -> tuple[int | None, str | None, float | None, float]:
        """POST once: (status, error, retry_after, latency_ms); UnsafeURLError if the guard blocked it."""
        t0 = time.perf_counter()
        try:
            key = resolve_secret(self.cfg, d.secret)
        except WebhookSecretError as e:
            return None, str(e), None, 0.0
        # A fresh timestamp per attempt: receivers reject signatures older than their tolerance.
        headers = signed_headers(key, d.id, int(time.time()), d.payload)
        try:
            async with asyncio.timeout(self.cfg.timeout):
                resp = await self.client.send(
                    self.client.build_request("POST", d.url, content=d.payload, headers=headers), stream=True
                )
                try:
                    snippet = b""
                    if not 200 <= resp.status_code < 300:
                        async for chunk in resp.aiter_bytes():
                            snippet += chunk
                            if len(snippet) >= SNIPPET_BYTES:
                                break
                finally:
                    await resp.aclose()
        except TimeoutError:
            return None, f"timed out after {self.cfg.timeout:g} s", None, _ms(t0)
        except Exception as e:  # any failure to reach the receiver is a failed attempt
            blocked = blocked_cause(e)
            if blocked is not None:  # the address changed since check_url (DNS rebinding)
                raise UnsafeURLError(blocked.message) from None
            # Name the real cause: httpx-aiohttp reports a refused connection as ConnectTimeout.
            root = transport_cause(e)
            msg = str(root).replace(d.url, redact_url(d.url)) or "(no detail)"
            return None, redact(f"{type(root).__name__}: {msg}"), None, _ms(t0)
        latency = _ms(t0)
        error = None
        if not 200 <= resp.status_code < 300:
            # Redacted whole, then cut: a receiver may echo the request (URL tokens, secrets).
            text = redact(snippet.decode(errors="replace").strip(), limit=SNIPPET_BYTES)
            error = f"HTTP {resp.status_code}" + (f": {text}" if text else "")
        return resp.status_code, error, retry_after_s(resp.headers.get("retry-after")), latency

    async def _record(self, d: Delivery, entry: DeliveryAttempt, *, dead: bool) -> DeliveryAttempt:
        metrics.WEBHOOKS.labels(entry.outcome).inc()
        key, log_key, now = self.keys.webhook(d.id), self.keys.webhook_log(d.id), time.time()
        fields: dict[str, Any] = {
            "state": entry.outcome,
            "updated_at": repr(now),
            "last_error": entry.error or "",
            "last_status": "" if entry.status is None else str(entry.status),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(log_key, _enc.encode(entry))
            pipe.ltrim(log_key, -self.cfg.max_log, -1)
            pipe.expire(log_key, RETENTION_S)
            # A job enqueued without enqueue_webhook still leaves a record redeliver can use.
            pipe.hsetnx(key, "delivery", encode_delivery(msgspec.structs.replace(d, attempt=1, redelivery=0)))
            pipe.hsetnx(key, "url", d.url)
            pipe.hset(key, mapping=fields)
            pipe.hincrby(key, "attempts", 1)
            pipe.expire(key, RETENTION_S)
            if dead:
                pipe.zadd(self.keys.webhooks_dead, {d.id: now})
                pipe.zremrangebyrank(self.keys.webhooks_dead, 0, -DEAD_CAP - 1)
            elif entry.outcome == "delivered":
                pipe.zrem(self.keys.webhooks_dead, d.id)
            await pipe.execute()
        log.log(
            logging.INFO if entry.outcome in ("delivered", "retrying") else logging.WARNING,
            "webhook %s attempt %d to %s: %s%s",
            d.id,
            d.attempt,
            redact_url(d.url),
            entry.outcome,
            f" ({entry.error})" if entry.error else "",
        )
        return entry


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
