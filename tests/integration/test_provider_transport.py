"""The production aiohttp caller against the strict simulator over HTTP, beside the path it replaced.

Every adapter does the same work twice against one simulator process-local server: once through
httpx over the httpx-aiohttp transport (production until the direct caller), once through the
production ``AiohttpCaller``. The simulator records each raw request (method, path and query,
headers, body); both runs must send byte-identical requests and get identical results and errors
(429 with Retry-After, a timeout, a malformed body, a dropped connection, a refused connection),
and the key never shows in an error.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from shared.config import ProviderConfig
from shared.errors import ProviderError
from shared.providers.anthropic import AnthropicProvider
from shared.providers.cohere import CohereProvider
from shared.providers.gemini import GeminiProvider
from shared.providers.http import HTTPProvider
from shared.providers.ollama import OllamaProvider
from shared.providers.openai import AzureOpenAIProvider, OpenAIProvider
from shared.providers.transport import AiohttpCaller, HttpxCaller
from shared.schema import ChatRequest, EmbeddingRequest
from shared.simulator import SimulatorServer
from shared.simulator.config import validate_config

CANARY = "sk-canary-Zq8Wv3Tr6Yp1Lm4Nk7Jh0Gf"
Recorded = tuple[str, str, tuple[tuple[str, str], ...], bytes]


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimulatorServer, list[Recorded]]]:
    seen: list[Recorded] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Any:
        if not request.path.startswith("/_sim"):
            headers = tuple(sorted((k.lower(), v) for k, v in request.headers.items()))
            seen.append((request.method, request.path_qs, headers, await request.read()))
        return await handler(request)

    server = SimulatorServer(validate_config({}))
    server.app.middlewares.append(record)
    await server.start()
    try:
        yield server, seen
    finally:
        await server.stop()


def build(kind: str, sim: SimulatorServer, *, old: bool, timeout: float = 10.0) -> HTTPProvider:
    """``old``: httpx over the httpx-aiohttp transport; else the production caller."""
    transport = AiohttpTransport() if old else None
    if kind == "azure":
        cfg = ProviderConfig(
            type="azure",
            base_url=sim.base_url,
            timeout=timeout,
            api_key_env="K",
            options={"api_version": "2024-10-21"},  # the dated surface: a query parameter on every call
        )
        return AzureOpenAIProvider(kind, cfg, env={"K": CANARY}, transport=transport)
    route = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "cohere": "cohere"}
    cls = {
        "openai": OpenAIProvider,
        "anthropic": AnthropicProvider,
        "gemini": GeminiProvider,
        "cohere": CohereProvider,
        "ollama": OllamaProvider,
    }[kind]
    cfg = ProviderConfig(
        type=kind, base_url=sim.url_for(route.get(kind, kind)), timeout=timeout, api_key_env="K"
    )
    return cls(kind, cfg, env={"K": CANARY}, transport=transport)


MODELS = {
    "openai": ("gpt-4o-mini", "text-embedding-3-small"),
    "azure": ("gpt-4o-mini", "text-embedding-3-small"),
    "anthropic": ("claude-sonnet-4-5", None),
    "gemini": ("gemini-2.5-flash", "text-embedding-004"),
    "cohere": ("command-a-03-2025", "embed-v4.0"),
    "ollama": ("llama3.2", "nomic-embed-text"),
}
CHAT = {
    "model": "m",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ü €"}],
    "temperature": 0.3,
    "max_tokens": 20,
}


async def work(p: HTTPProvider) -> list[Any]:
    """Chat, embed (where the API has it) and health: what each returned."""
    chat_model, embed_model = MODELS[p.type]
    out: list[Any] = []
    try:
        r = await p.chat(ChatRequest.from_body(CHAT), chat_model)
        out.append((r.usage, r.body["choices"][0]["message"]["content"]))
        if embed_model:
            e = await p.embed(EmbeddingRequest.from_body({"model": "m", "input": ["a", "b"]}), embed_model)
            out.append((e.usage, [d["embedding"] for d in e.body["data"]]))
        h = await p.health()
        out.append((h.ok, h.detail))
    finally:
        await p.aclose()
    return out


@pytest.mark.parametrize("kind", list(MODELS))
async def test_same_requests_and_results_on_both_paths(
    kind: str, sim: tuple[SimulatorServer, list[Recorded]]
) -> None:
    server, seen = sim
    p = build(kind, server, old=False)
    assert isinstance(p.http, AiohttpCaller)  # the production path is what runs here
    new = await work(p)
    new_wire, seen[:] = list(seen), []
    p = build(kind, server, old=True)
    assert isinstance(p.http, HttpxCaller)
    old = await work(p)
    assert new_wire == seen  # byte for byte: method, path and query, every header, body
    assert len(seen) == (2 if kind == "anthropic" else 3) and seen[0][3]  # chat, embed, health
    assert all(dict(h).get("user-agent", "").startswith("python-httpx/") for _, _, h, _ in seen)
    if kind == "azure":
        assert all(path.endswith("?api-version=2024-10-21") for _, path, _, _ in seen)
    assert new == old
    assert all(
        s.startswith("2")
        for s in server.stats()["routes"][kind if kind != "azure" else "openai"]["by_status"]
    )


async def failure(p: HTTPProvider) -> ProviderError:
    try:
        with pytest.raises(ProviderError) as ei:
            await p.chat(ChatRequest.from_body(CHAT), MODELS[p.type][0])
    finally:
        await p.aclose()
    return ei.value


def shape(e: ProviderError) -> tuple[Any, ...]:
    # A malformed body is quoted in the message; its "created" second differs between two calls that
    # straddle a second boundary (a busy machine), so it is left out of the comparison.
    message = re.sub(r'"created":\s*\d+', '"created":_', e.message)
    return (e.error_class, e.code, e.status, e.retry_after, message, e.request_id is None)


@pytest.mark.parametrize(
    ("patch", "timeout"),
    [
        ({"errors": {"rate_limit": 1.0}, "retry_after_s": 7}, 10.0),
        ({"errors": {"server_error": 1.0}}, 10.0),
        ({"errors": {"malformed": 1.0}}, 10.0),
        ({"errors": {"timeout": 1.0}, "timeout_hold_s": 30}, 0.3),
        ({"down": True, "outage_mode": "disconnect"}, 10.0),
    ],
    ids=["429", "500", "malformed", "timeout", "disconnect"],
)
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_same_errors_on_both_paths(
    kind: str, patch: dict[str, Any], timeout: float, sim: tuple[SimulatorServer, list[Recorded]]
) -> None:
    server, _ = sim
    server.configure({"defaults": patch})
    new = await failure(build(kind, server, old=False, timeout=timeout))
    old = await failure(build(kind, server, old=True, timeout=timeout))
    assert shape(new) == shape(old)
    assert CANARY not in str(new) and CANARY not in repr(new)


async def test_refused_connection_on_both_paths() -> None:
    server = SimulatorServer(validate_config({}))
    await server.start()
    await server.stop()  # nothing listens on that port any more
    new = await failure(build("openai", server, old=False))
    old = await failure(build("openai", server, old=True))
    assert shape(new) == shape(old) and new.code == "connection_error"
    assert "connection refused" in new.message and CANARY not in new.message


async def test_a_bad_base_url_is_final_on_both_paths() -> None:
    for old, url in itertools.product((False, True), ("ftp://example.invalid/v1", "example.invalid/v1")):
        cfg = ProviderConfig(type="openai", base_url=url, api_key_env="K")
        transport = AiohttpTransport() if old else None
        p = OpenAIProvider("openai", cfg, env={"K": CANARY}, transport=transport)
        e = await failure(p)
        assert (e.code, e.status) == ("invalid_base_url", None), (old, url)
