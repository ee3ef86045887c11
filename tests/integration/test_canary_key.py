"""Canary keys: no 8-character piece of a provider's key reaches Redis, logs, outputs or Sentry.

Each provider gets a random, prefix-free key (nothing about its shape gives it away) and points at a
loopback mock that echoes the request's headers back in every way a real upstream or proxy does:
a non-JSON 200, long 5xx HTML pages, JSON errors quoting the headers, an error object inside a 200,
the key in response headers, a timeout, a dropped connection and a refused port. Jobs and a batch run
through a real in-process worker on a Redis of the test's own with AOF on; then every Redis key (scan +
DUMP), the AOF and data files, the captured log records, ``fusebox results`` / ``status`` / ``batches``
output and files, and the Sentry events are searched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import string
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from aiohttp import web
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from producer.client import FuseboxClient
from shared import redact as redact_mod
from shared.config import BreakerConfig, FileConfig, ProviderConfig, RetryConfig, Settings
from shared.embedded import EmbeddedValkey, free_port
from shared.observability import init_sentry
from shared.redis_conn import connect
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import serve_app
from worker.settings import build_worker

FRAGMENT = 8
ALPHABET = string.ascii_letters + string.digits


def canary() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(40))


def pieces(key: str) -> set[str]:
    return {key[i : i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1)}


def leaks(keys: dict[str, str], blob: str | bytes) -> list[str]:
    text = blob.decode("latin-1") if isinstance(blob, bytes) else blob
    return [f"{name}:{p}" for name, key in keys.items() for p in pieces(key) if p in text]


# -- the echoing mock upstream ------------------------------------------------


CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def _echo(request: web.Request) -> str:
    """The request's headers, its credential first (so cuts at fixed offsets land inside the key)."""
    first = [f"{k}: {v}" for k, v in request.headers.items() if k.lower() in CREDENTIAL_HEADERS]
    rest = [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in CREDENTIAL_HEADERS]
    return "\n".join([*first, f"{request.method} {request.path_qs}", *rest])


async def _handle(request: web.Request) -> web.StreamResponse:
    mode = request.match_info["mode"]
    await request.read()
    echo = _echo(request)
    auth = next((v for k, v in request.headers.items() if k.lower() in CREDENTIAL_HEADERS), "")
    # Upstreams that echo put the key in response headers too (request ids, debug headers).
    hdrs = {"x-request-id": auth, "x-debug-echo": auth.replace(" ", "_")}
    if mode == "nonjson":  # 200 with a debug dump instead of JSON: the key within the first 80 bytes
        return web.Response(status=200, text=echo + "\n", content_type="text/plain", headers=hdrs)
    if mode == "long5xx":  # a proxy's error page: the key straddles the old 200-character cut
        page = "<html><body>" + "x" * 146 + echo + "y" * 4000 + "</body></html>"
        return web.Response(status=502, text=page, content_type="text/html", headers=hdrs)
    if mode == "jsonerr":  # a JSON error quoting the request
        body = {"error": {"message": "q" * 470 + echo, "type": "invalid_request_error", "code": echo[:60]}}
        return web.json_response(body, status=400, headers=hdrs)
    if mode == "json503":
        body = {"error": {"code": 503, "message": "upstream failed for " + echo, "status": "UNAVAILABLE"}}
        return web.json_response(body, status=503, headers=hdrs)
    if mode == "okerr":  # an error object inside a 200 (gateways)
        return web.json_response({"error": {"message": echo, "code": 502}}, status=200, headers=hdrs)
    if mode == "badshape":  # valid JSON, wrong shape, with the echo inside
        return web.json_response({"unexpected": echo, "choices": "x"}, status=200, headers=hdrs)
    if mode == "okecho":  # a real answer, the credential echoed in its request-id header
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        if request.path.endswith("embeddings"):
            answer = {
                "object": "list",
                "model": "gpt-4o",
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(2)],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        return web.json_response(answer, status=200, headers=hdrs)
    if mode == "timeout":
        await asyncio.sleep(10)
        return web.Response(status=200, text=echo)
    if mode == "drop":  # the connection dies mid-answer
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=500)
    return web.Response(status=404, text=echo)


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{mode}/{tail:.*}", _handle)
    async with serve_app(app, handle_signals=False) as url:
        yield url


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# (provider name, adapter type, mode, model)
PROVIDERS = [
    ("oai-nonjson", "openai", "nonjson", "gpt-4o"),
    ("ant-nonjson", "anthropic", "nonjson", "claude-x"),
    ("ant-long5xx", "anthropic", "long5xx", "claude-x"),
    ("gem-long5xx", "gemini", "long5xx", "gemini-x"),
    ("gem-jsonerr", "gemini", "jsonerr", "gemini-x"),
    ("oai-jsonerr", "openai", "jsonerr", "gpt-4o"),
    ("coh-json503", "cohere", "json503", "command-x"),
    ("oai-okerr", "openai", "okerr", "gpt-4o"),
    ("oai-badshape", "openai", "badshape", "gpt-4o"),
    ("oai-timeout", "openai", "timeout", "gpt-4o"),
    ("oai-okecho", "openai", "okecho", "gpt-4o"),
    ("ant-drop", "anthropic", "drop", "claude-x"),
    ("oai-refused", "openai", "refused", "gpt-4o"),
]


class MemoryTransport(Transport):
    """Sentry events kept in memory instead of sent."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope.serialize())


async def _dump_all(redis: Any) -> tuple[int, bytes]:
    """Every key of the server (this test's own): name, DUMP and decoded content, concatenated."""
    names: set[bytes] = set()
    async for k in redis.scan_iter(count=1000):
        names.add(k)
    blob = b""
    for name in sorted(names):
        blob += name + b"\0" + (await redis.dump(name) or b"") + b"\0"
        kind = (await redis.type(name)).decode()
        # DUMP is compressed (LZF) for long values: read the decoded content too.
        if kind == "string":
            blob += await redis.get(name) or b""
        elif kind == "hash":
            for f, v in (await redis.hgetall(name)).items():
                blob += f + b"=" + v + b"\0"
        elif kind == "list":
            blob += b"\0".join(await redis.lrange(name, 0, -1))
        elif kind == "set":
            blob += b"\0".join(await redis.smembers(name))
        elif kind == "zset":
            blob += b"\0".join(m for m, _ in await redis.zrange(name, 0, -1, withscores=True))
        elif kind == "stream":
            for _, fields in await redis.xrange(name):
                blob += b"\0".join(k + b"=" + v for k, v in fields.items())
    return len(names), blob


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A server of this test's own, with AOF on: every write it ever took is in its files."""
    server = EmbeddedValkey(tmp_path / "valkey", tcp_port=free_port(), persist=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
async def test_no_piece_of_any_key_reaches_redis_logs_outputs_or_sentry(
    settings: Settings,
    own_redis: EmbeddedValkey,
    upstream: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redact_mod.forget_secrets()  # only what this worker's own configuration registers counts
    keys = {name: canary() for name, *_ in PROVIDERS}
    providers: dict[str, ProviderConfig] = {}
    for i, (name, type_, mode, model) in enumerate(PROVIDERS):
        env = f"FUSEBOX_CANARY_KEY_{i}"
        monkeypatch.setenv(env, keys[name])
        base = f"http://127.0.0.1:{_closed_port()}" if mode == "refused" else f"{upstream}/{mode}"
        # only the hanging upstream needs a short timeout: the echoing ones must answer even on a busy
        # machine, or a health check times out before it meets the echo it is meant to redact
        timeout = 0.5 if mode == "timeout" else 15.0
        providers[name] = ProviderConfig(
            type=type_, base_url=base, api_key_env=env, models=[model], timeout=timeout, max_concurrency=4
        )
    cfg = FileConfig(
        providers=providers,
        # batch lines fail after one round (transient errors would otherwise wait out the window)
        retry=RetryConfig(max_attempts=2, backoff_base=0.01, backoff_max=0.02, line_max_attempts=2),
        # Breakers are not under test: a trip only delays these lines.
        breaker=BreakerConfig(
            minimum_calls=1_000_000,
            consecutive_failures=1_000_000,
            wait_open_seconds=0.1,
            wait_open_max_seconds=0.2,
        ),
    )
    s = Settings(redis_url=own_redis.url, namespace=settings.namespace, data_dir=tmp_path / "data").with_file(
        cfg
    )
    redis = connect(own_redis.url, s.keys)
    sentry = MemoryTransport()
    assert init_sentry("http://public@127.0.0.1:9/1", "worker", transport=sentry)
    caplog.set_level(logging.DEBUG)
    client = FuseboxClient(redis, s)
    worker = build_worker(s, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        job_ids: list[str] = []
        for name, _, _, model in PROVIDERS:
            for kind, body in (
                ("chat", {"model": f"{name}/{model}", "messages": [{"role": "user", "content": "hi"}]}),
                ("embed", {"model": f"{name}/{model}", "input": ["a", "b"]}),
            ):
                if kind == "embed" and name.startswith("ant-"):
                    continue  # Anthropic has no embeddings (refused before any call)
                job_ids.append(await client.submit(body, kind=kind))
        lines = [
            json.dumps({"custom_id": f"c-{name}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": f"{name}/{model}", "messages": [{"role": "user", "content": "x"}]}})
            for name, _, _, model in PROVIDERS
        ]  # fmt: skip
        sub = await client.submit_batch(lines, completion_window_s=60)
        results = [await client.wait(j, timeout=90) for j in job_ids]
        counts = await client.wait_batch(sub.batch_id, timeout=90)
        batch_results = [r async for r in client.results(sub.batch_id)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()

    # The mock really echoed the keys, on every path, and every job failed with the provider's error.
    ok = [r for r in results if r.error is None]
    assert {r.provider for r in ok} == {"oai-okecho"} and all(r.request_id for r in ok), ok
    assert counts.done == counts.total == len(PROVIDERS) and counts.failed == len(PROVIDERS) - 1
    codes = {r.custom_id: r.error.code for r in batch_results if r is not None and r.error is not None}
    assert codes["c-oai-nonjson"] == "malformed_response" and codes["c-oai-timeout"] == "timeout"
    assert codes["c-oai-refused"] == "connection_error", codes
    messages = [r.error.message for r in results if r.error] + [
        r.error.message for r in batch_results if r is not None and r.error
    ]
    assert any("[redacted]" in m for m in messages)  # the echoes were there and were cut out

    # Sentry: an exception and a breadcrumb that carry the raw key go through the configured scrubbing.
    name = "oai-nonjson"
    sentry_sdk.add_breadcrumb(
        category="httpx", data={"url": f"{upstream}/x?key={keys[name]}", "note": f"echo {keys[name]}"}
    )
    try:
        raise RuntimeError(f"upstream said: Authorization: Bearer {keys[name]} / {keys['gem-jsonerr']}")
    except RuntimeError as e:
        sentry_sdk.capture_exception(e)
    logging.getLogger("fusebox.test").error("provider answer: %s", messages[0])
    sentry_sdk.flush()
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # back to no client for the rest of the session

    # Outputs: the read commands a user runs (``providers`` health-checks every echoing upstream).
    toml = tmp_path / "fusebox.toml"
    toml.write_text(
        "".join(
            f'[providers.{name}]\ntype = "{p.type}"\nbase_url = "{p.base_url}"\n'
            f'api_key_env = "{p.api_key_env}"\nmodels = ["{p.models[0]}"]\ntimeout = {p.timeout}\n\n'
            for name, p in providers.items()
        )
    )
    env = subprocess_env(s, FUSEBOX_CONFIG=str(toml))
    out, errs = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    outputs: list[str] = []
    for argv in (
        ["results", sub.batch_id, "-o", str(out), "--errors", str(errs)],
        ["results", sub.batch_id],
        ["status", sub.batch_id, "--json"],
        ["batches", "--json"],
        ["providers", "--json"],
    ):
        # Async: the mock upstream answers the health checks from this very event loop.
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "producer.cli", *argv, env=env, stdout=PIPE, stderr=PIPE
        )  # fmt: skip
        raw_out, raw_err = await asyncio.wait_for(proc.communicate(), 60)
        stdout, stderr = raw_out.decode(), raw_err.decode()
        assert proc.returncode == (1 if argv[0] == "providers" else 0), stderr  # providers: unhealthy
        if argv[0] == "providers":  # the health checks met the echoes, and cut them out
            assert "[redacted]" in stdout, stdout
        outputs += [stdout, stderr]
    outputs += [out.read_text(), errs.read_text()]
    assert len(errs.read_text().splitlines()) == len(PROVIDERS) - 1

    n_keys, dump = await _dump_all(redis)
    assert n_keys > 0
    await redis.aclose()
    own_redis.stop()  # flushes the AOF: every command the server ever took, deleted keys' values too
    files = [f for f in own_redis.data_dir.rglob("*") if f.is_file() and not f.name.endswith(".sock")]
    assert any(".aof" in f.name for f in files)
    on_disk = b"\0".join(f.read_bytes() for f in files)
    log_text = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}"
        + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
    )
    assert caplog.records

    assert leaks(keys, dump) == [], "a key piece is stored in Redis"
    assert leaks(keys, on_disk) == [], "a key piece is in Redis's AOF / data files"
    assert leaks(keys, log_text) == [], "a key piece is in the logs"
    assert leaks(keys, "\n".join(outputs)) == [], "a key piece is in the command outputs"
    assert sentry.envelopes, "Sentry captured nothing: the check would be vacuous"
    assert leaks(keys, b"\n".join(sentry.envelopes)) == [], "a key piece is in a Sentry event"
    redact_mod.forget_secrets()
