"""Webhook delivery through real Redis, a real arq worker and a real loopback HTTP receiver."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import msgspec
import pytest
from aiohttp import web
from arq import Worker
from standardwebhooks import Webhook

from producer.webhooks_cmd import register
from shared import codec
from shared.config import FileConfig, Settings, WebhookConfig
from shared.keys import ARQ_JOB
from shared.ssrf import UnsafeURLError, check_url
from shared.webhooks import (
    RequestCounts,
    WebhookData,
    WebhookEvent,
    WebhookSecretError,
    batch_event,
    generate_secret,
    secret_bytes,
)
from shared.webhooks.delivery import WebhookDeliverer, resolve_secret, retry_after_s
from shared.webhooks.records import (
    Delivery,
    WebhookInfo,
    dead_letters,
    delivery_log,
    disabled_endpoints,
    enable_endpoint,
    enqueue_webhook,
    redeliver,
)
from tests.integration.helpers import arq_worker, serve_app
from worker.webhook_jobs import SETTINGS_KEY, WEBHOOK_FUNCTIONS, close_webhooks

FAST = [0.0, 0.2, 0.2]
TERMINAL = {"delivered", "dead", "disabled", "skipped", "refused"}


class Receiver:
    """Answers from a script of (status, headers), then with ``default``; records every request."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.default: tuple[int, dict[str, str]] = (200, {})
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status, headers = self.script.pop(0) if self.script else self.default
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "receiver down")

    def ids(self) -> list[str]:
        return [h["webhook-id"] for h, _ in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with serve_app(app, access_log=None) as url:
        rec.url = f"{url}/hook"
        yield rec


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    s = generate_secret()
    monkeypatch.setenv("FUSEBOX_WEBHOOK_SECRET", s)
    return s


def with_webhooks(settings: Settings, **kw: object) -> Settings:
    return settings.with_file(FileConfig(webhooks=WebhookConfig(**kw)))  # type: ignore[arg-type]


StartWorker = Callable[[Settings], Awaitable[None]]


@pytest.fixture
async def start_worker(redis) -> AsyncIterator[StartWorker]:
    tasks: list[asyncio.Task[None]] = []

    async def start(s: Settings) -> None:
        worker = arq_worker(
            s,
            redis,
            WEBHOOK_FUNCTIONS,
            burst=False,
            poll_delay=0.01,
            max_jobs=10,
            ctx={SETTINGS_KEY: s},
            cls=Worker,
        )
        tasks.append(asyncio.create_task(worker.async_run()))

    yield start
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await close_webhooks({"redis": redis})


async def wait_state(
    redis, s: Settings, wid: str, states: set[str] = TERMINAL, timeout: float = 15
) -> WebhookInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = await delivery_log(redis, s.keys, wid)
        if info is not None and info.state in states:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"webhook {wid} never reached {states}: {info}")
        await asyncio.sleep(0.02)


def event(batch_id: str = "b1") -> WebhookEvent:
    return batch_event(batch_id, "completed", RequestCounts(total=2, completed=2, failed=0), cost_usd=0.25)


async def cli(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return int(await asyncio.to_thread(args.fn, args, settings))


async def test_receiver_down_then_up_is_delivered_with_the_same_id(
    settings, redis, receiver, secret, start_worker
):
    s = with_webhooks(settings, allow_hosts=["127.0.0.1"], schedule=FAST)
    receiver.script = [(503, {}), (503, {})]
    await start_worker(s)
    ev = event()
    wid = await enqueue_webhook(redis, s.keys, receiver.url, ev, None)
    info = await wait_state(redis, s, wid)

    assert wid == ev.id
    assert info.state == "delivered" and info.attempts == 3
    assert [a.outcome for a in info.log] == ["retrying", "retrying", "delivered"]
    assert [a.status for a in info.log] == [503, 503, 200]
    assert [a.attempt for a in info.log] == [1, 2, 3]
    assert info.log[0].next_in is not None and info.log[2].next_in is None
    assert "HTTP 503: receiver down" in (info.log[0].error or "")
    assert receiver.ids() == [wid, wid, wid]
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # the same bytes every time; only the timestamp and signature change
    for headers, body in receiver.requests:
        payload = Webhook(secret).verify(body, headers)
        assert payload["id"] == wid and payload["type"] == "batch.completed"
        assert payload["data"]["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        assert headers["Content-Type"] == "application/json"
    assert secret.encode() not in next(iter(bodies))
    assert await dead_letters(redis, s.keys) == []


async def test_enqueue_is_idempotent_and_the_job_holds_no_secret(settings, redis, secret):
    ev = event("b-once")
    first = await enqueue_webhook(redis, settings.keys, "https://hooks.example.com/x?token=abc", ev, None)
    again = await enqueue_webhook(redis, settings.keys, "https://hooks.example.com/x?token=abc", ev, None)
    assert first == again == ev.id
    assert await redis.zcard(settings.keys.queue) == 1
    assert await redis.llen(settings.keys.wake) == 1  # an idle worker sends it now, not half a second on
    job = await redis.get(ARQ_JOB + settings.keys.webhook_job(ev.id, 0, 1))
    assert job is not None
    assert secret.encode() not in job and secret_bytes(secret) not in job
    info = await delivery_log(redis, settings.keys, ev.id)
    assert info is not None and info.state == "pending" and info.type == "batch.completed"
    assert info.url == "https://hooks.example.com/x"  # shown without the query string


async def test_410_disables_the_endpoint(settings, redis, receiver, secret, start_worker, capsys):
    s = with_webhooks(settings, allow_hosts=["127.0.0.1"], schedule=FAST)
    receiver.default = (410, {})
    await start_worker(s)
    gone = await enqueue_webhook(redis, s.keys, receiver.url, event("b-gone"), None)
    info = await wait_state(redis, s, gone)
    assert info.state == "disabled" and [a.status for a in info.log] == [410]
    assert "127.0.0.1" in next(iter(await disabled_endpoints(redis, s.keys)))

    later = await enqueue_webhook(redis, s.keys, receiver.url, event("b-later"), None)
    info = await wait_state(redis, s, later)
    assert info.state == "skipped" and "endpoint disabled" in (info.last_error or "")
    assert len(receiver.requests) == 1  # the skipped one never left the worker
    assert {d.id for d in await dead_letters(redis, s.keys)} == {gone, later}

    capsys.readouterr()
    assert await cli(s, "webhooks", "enable") == 0
    assert "HTTP 410 Gone" in capsys.readouterr().out
    assert await cli(s, "webhooks", "enable", receiver.url) == 0
    assert await enable_endpoint(redis, s.keys, receiver.url) == 0  # already enabled
    receiver.default = (200, {})
    await redeliver(redis, s.keys, later)
    info = await wait_state(redis, s, later, {"delivered"})
    assert receiver.ids()[-1] == later
    assert {d.id for d in await dead_letters(redis, s.keys)} == {gone}


async def test_exhausted_schedule_dead_letter_then_redeliver(
    settings, redis, receiver, secret, start_worker, capsys
):
    s = with_webhooks(settings, allow_hosts=["127.0.0.1"], schedule=FAST)
    receiver.default = (500, {})
    await start_worker(s)
    wid = await enqueue_webhook(redis, s.keys, receiver.url, event("b-dead"), None)
    info = await wait_state(redis, s, wid)
    assert info.state == "dead"
    assert [a.outcome for a in info.log] == ["retrying", "retrying", "dead"]
    assert info.log[-1].next_in is None
    dead = await dead_letters(redis, s.keys)
    assert [d.id for d in dead] == [wid] and dead[0].last_status == 500

    capsys.readouterr()
    assert await cli(s, "webhooks", "dead", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in listed] == [wid] and listed[0]["state"] == "dead"

    receiver.default = (200, {})
    assert await cli(s, "webhooks", "redeliver", wid) == 0
    assert f"re-enqueued webhook {wid}" in capsys.readouterr().out
    info = await wait_state(redis, s, wid, {"delivered"})
    assert receiver.ids() == [wid] * 4
    Webhook(secret).verify(receiver.requests[-1][1], receiver.requests[-1][0])
    assert (info.redeliveries, info.log[-1].redelivery, info.log[-1].attempt) == (1, 1, 1)
    assert await dead_letters(redis, s.keys) == []

    assert await cli(s, "webhooks", "log", wid, "--json") == 0
    logged = json.loads(capsys.readouterr().out)
    assert [a["outcome"] for a in logged["log"]] == ["retrying", "retrying", "dead", "delivered"]
    assert await cli(s, "webhooks", "log", wid) == 0
    assert "delivered" in capsys.readouterr().out
    assert await cli(s, "webhooks", "redeliver", "msg_nope") == 1
    assert "no webhook 'msg_nope'" in capsys.readouterr().err


async def test_retry_after_longer_than_the_schedule_is_honoured(
    settings, redis, receiver, secret, start_worker
):
    s = with_webhooks(settings, allow_hosts=["127.0.0.1"], schedule=[0, 0.05, 0.05], jitter=0)
    receiver.script = [(429, {"Retry-After": "1"})]
    await start_worker(s)
    wid = await enqueue_webhook(redis, s.keys, receiver.url, event("b-ra"), None)
    info = await wait_state(redis, s, wid)
    assert info.state == "delivered"
    assert info.log[0].status == 429 and info.log[0].next_in == 1.0


async def test_private_address_refused_at_submission_and_at_delivery(
    settings, redis, receiver, secret, start_worker
):
    with pytest.raises(UnsafeURLError, match="loopback address"):
        await check_url(receiver.url, settings.file.webhooks.allow_hosts)
    with pytest.raises(UnsafeURLError, match="cloud metadata"):
        await check_url("http://169.254.169.254/latest/meta-data/")

    s = with_webhooks(settings, schedule=FAST)  # no allow-list on the worker
    await start_worker(s)
    local = await enqueue_webhook(redis, s.keys, receiver.url, event("b-local"), None)
    meta = await enqueue_webhook(
        redis, s.keys, "http://169.254.169.254/latest/meta-data/", event("b-m"), None
    )
    info = await wait_state(redis, s, local)
    assert info.state == "refused" and "loopback address" in (info.last_error or "")
    info = await wait_state(redis, s, meta)
    assert info.state == "refused" and "cloud metadata" in (info.last_error or "")
    assert receiver.requests == []
    assert {d.id for d in await dead_letters(redis, s.keys)} == {local, meta}


async def test_dns_rebinding_is_refused_at_delivery(settings, redis, secret):
    answers = {"rebind.example": ["93.184.216.34"]}

    async def dns(host: str, port: int) -> list[str]:
        return answers[host]

    url = "http://rebind.example/hook"
    assert await check_url(url, resolve=dns)  # fine when submitted
    answers["rebind.example"] = ["127.0.0.1"]  # then the name is rebound to loopback
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))
    d = WebhookDeliverer(redis, settings.keys, WebhookConfig(), transport=transport, resolve=dns)
    entry = await d.deliver(Delivery(id="msg_rebind", url=url, payload=b"{}"))
    await d.aclose()
    assert entry is not None and entry.outcome == "refused"
    assert "'rebind.example' resolves to 127.0.0.1, a loopback address" in (entry.error or "")
    assert sent == []


async def test_the_connection_itself_is_guarded(settings, redis, receiver, secret):
    # The pre-send check is fooled (its DNS says public); the lookup aiohttp connects with says loopback.
    async def lying_dns(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    port = receiver.url.split(":")[2].split("/")[0]
    d = WebhookDeliverer(redis, settings.keys, WebhookConfig(), resolve=lying_dns)
    entry = await d.deliver(Delivery(id="msg_guard", url=f"http://localhost:{port}/hook", payload=b"{}"))
    await d.aclose()
    assert entry is not None and entry.outcome == "refused"
    assert "'localhost' resolves to" in (entry.error or "") and "loopback address" in (entry.error or "")
    assert receiver.requests == []


async def test_unreachable_receiver_schedules_a_deferred_attempt(settings, redis, secret):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    cfg = WebhookConfig(allow_hosts=["hooks.test"], schedule=[0, 60], jitter=0)
    d = WebhookDeliverer(redis, settings.keys, cfg, transport=httpx.MockTransport(refuse))
    before_ms = time.time() * 1000
    entry = await d.deliver(Delivery(id="msg_conn", url="https://hooks.test/h?sig=TOPSECRET", payload=b"{}"))
    await d.aclose()
    assert entry is not None and entry.outcome == "retrying" and entry.next_in == 60
    assert entry.error == "ConnectError: connection refused"
    job_id = settings.keys.webhook_job("msg_conn", 0, 2)
    score = await redis.zscore(settings.keys.queue, job_id)
    assert score is not None and score >= before_ms + 60_000  # deferred through arq, not slept
    job = await redis.get(ARQ_JOB + job_id)
    args = codec.arq_deserializer(job)["a"]
    assert msgspec.msgpack.decode(args[0], type=Delivery).attempt == 2


async def test_named_secret_signs_and_a_missing_secret_is_retried(
    settings, redis, receiver, start_worker, monkeypatch
):
    tenant = generate_secret()
    monkeypatch.setenv("TENANT_A_WEBHOOK_SECRET", tenant)
    monkeypatch.delenv("FUSEBOX_WEBHOOK_SECRET", raising=False)
    s = with_webhooks(
        settings,
        allow_hosts=["127.0.0.1"],
        schedule=[0, 0.05],
        secrets={"tenant-a": "TENANT_A_WEBHOOK_SECRET"},
    )
    await start_worker(s)
    ok = await enqueue_webhook(redis, s.keys, receiver.url, event("b-tenant"), "tenant-a")
    assert (await wait_state(redis, s, ok)).state == "delivered"
    Webhook(tenant).verify(receiver.requests[0][1], receiver.requests[0][0])

    unsigned = await enqueue_webhook(redis, s.keys, receiver.url, event("b-nosecret"), None)
    info = await wait_state(redis, s, unsigned)
    assert info.state == "dead" and len(info.log) == 2
    assert info.last_error == "webhook secret $FUSEBOX_WEBHOOK_SECRET is not set"
    assert len(receiver.requests) == 1  # never sent unsigned


def test_resolve_secret_sources(tmp_path, monkeypatch):
    secret = generate_secret()
    path = tmp_path / "whsec"
    path.write_text(secret + "\n")
    assert resolve_secret(WebhookConfig(secret_file=str(path)), None) == secret_bytes(secret)
    monkeypatch.setenv("WH_BAD", "whsec_***")
    with pytest.raises(WebhookSecretError) as e:
        resolve_secret(WebhookConfig(secret_env="WH_BAD"), None)
    assert "$WH_BAD" in str(e.value) and "***" not in str(e.value)
    with pytest.raises(WebhookSecretError, match="'other' is not defined"):
        resolve_secret(WebhookConfig(), "other")
    with pytest.raises(WebhookSecretError, match="cannot read webhook secret file"):
        resolve_secret(WebhookConfig(secret_file=str(tmp_path / "missing")), None)


def test_retry_after_parsing():
    assert retry_after_s("120") == 120.0
    assert retry_after_s("-5") == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    now = 1_700_000_000.0
    assert retry_after_s("Tue, 14 Nov 2023 22:15:00 GMT", now=now) == 100.0


def test_payload_struct_has_no_secret_fields():
    names = set(WebhookEvent.__struct_fields__) | set(WebhookData.__struct_fields__)
    assert not {n for n in names if "secret" in n or "key" in n}
