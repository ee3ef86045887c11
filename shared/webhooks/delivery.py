"""Webhook delivery: one signed attempt per ``deliver_webhook`` job, behind the SSRF guard, recorded in the
delivery log (shared/webhooks/records.py); a failed attempt enqueues the next by the retry schedule."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
from arq.connections import ArqRedis
from httpx_aiohttp import AiohttpTransport

from shared import metrics
from shared.config import WebhookConfig
from shared.keys import Keys
from shared.providers.classify import transport_cause
from shared.redact import redact, register_secret
from shared.ssrf import AllowList, GuardedResolver, Resolve, UnsafeURLError, blocked_cause, check_url
from shared.webhooks.records import (
    DEAD_CAP,
    FUNCTION,
    RETENTION_S,
    Delivery,
    DeliveryAttempt,
    State,
    decode_delivery,
    encode_attempt,
    encode_delivery,
    redact_url,
)
from shared.webhooks.signing import WebhookSecretError, secret_bytes, signed_headers

log = logging.getLogger("fusebox.webhooks")

USER_AGENT = "fusebox-webhooks/0.1"
MAX_RETRY_AFTER_S = 24 * 3600.0
SNIPPET_BYTES = 300


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
            pipe.rpush(log_key, encode_attempt(entry))
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
