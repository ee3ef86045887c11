"""How a provider's requests reach the network: one pooled caller per provider, two implementations.

Production calls go straight through one ``aiohttp.ClientSession`` per provider (``AiohttpCaller``):
measured under bench/peers.py, httpx on top of aiohttp cost about as much CPU again as aiohttp
itself (URL parsing and merging, Request/Response models, cookie extraction per call). Tests and
anything else that hands in an ``httpx`` transport (``httpx.MockTransport``) get ``HttpxCaller``.

Both send the same bytes: the same URL (built once per path by httpx's own base-URL rules, then
cached), the same headers (httpx's defaults, then the provider's) and the same body, with the same
timeouts (connect, read and pool wait each ``timeout``; no total) and no redirects followed. The
wire-parity test in tests/unit/test_providers_transport.py holds them to that.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from functools import lru_cache
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

from shared.config import ProviderConfig

# What httpx puts on every request before a client's own headers; sent on the aiohttp path too so
# a provider sees the same request whichever caller made it (aiohttp decodes the same encodings).
HTTPX_DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": f"python-httpx/{httpx.__version__}",
}
KEEPALIVE_EXPIRY_S = 5.0  # httpx.Limits' default, which the httpx-aiohttp transport passed on
_MAX_CACHED_URLS = 512  # paths are per model (Gemini, Azure): bounded by the configured models


class Reply:
    """A provider's HTTP answer, read in full: what the adapters look at and nothing else."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers  # case-insensitive (CIMultiDictProxy or httpx.Headers)

    def __repr__(self) -> str:
        return f"<Reply {self.status_code}, {len(self.content)} bytes>"


class Caller(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply: ...

    async def aclose(self) -> None: ...


def make_caller(
    cfg: ProviderConfig,
    *,
    base_url: str,
    headers: Mapping[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> Caller:
    """The production aiohttp caller, or an httpx one over ``transport`` when one is given."""
    if transport is None:
        return AiohttpCaller(cfg, base_url=base_url, headers=headers)
    return HttpxCaller(make_client(cfg, base_url=base_url, headers=headers, transport=transport))


# -- production: aiohttp directly -------------------------------------------------------------------


@lru_cache(maxsize=1)
def ssl_context() -> ssl.SSLContext:
    """The context httpx (and so the httpx-aiohttp transport) verified with: certifi, SSL_CERT_* env."""
    return httpx.create_ssl_context(verify=True, trust_env=True)


def timeouts(seconds: float) -> aiohttp.ClientTimeout:
    """httpx.Timeout(seconds) as the httpx-aiohttp transport mapped it: no total, each phase bounded."""
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=seconds)


class AiohttpCaller:
    """One session per provider: its pool holds ``max_concurrency`` connections, headers are fixed
    at creation and each distinct (path, params) is turned into a URL once."""

    def __init__(self, cfg: ProviderConfig, *, base_url: str, headers: Mapping[str, str]) -> None:
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        self.limit = cfg.max_concurrency
        self.timeout = timeouts(cfg.timeout)
        all_headers = dict(HTTPX_DEFAULT_HEADERS)
        all_headers.update({k.lower(): v for k, v in headers.items()})
        self.headers = all_headers
        self._urls: dict[tuple[str, tuple[tuple[str, str], ...] | None], URL] = {}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=cfg.max_concurrency, keepalive_timeout=KEEPALIVE_EXPIRY_S, ssl=ssl_context()
            ),
            headers=all_headers,
            timeout=self.timeout,
        )

    def url(self, path: str, params: Mapping[str, str] | None = None) -> URL:
        """``path`` joined to the base URL exactly as httpx.AsyncClient(base_url=...) joins it."""
        key = (path, tuple(params.items()) if params else None)
        found = self._urls.get(key)
        if found is not None:
            return found
        merged = httpx.URL(path)
        if merged.is_relative_url:
            merged = self.base_url.copy_with(raw_path=self.base_url.raw_path + merged.raw_path.lstrip(b"/"))
        if params:
            merged = merged.copy_merge_params(params)
        found = URL(str(merged), encoded=True)
        if len(self._urls) >= _MAX_CACHED_URLS:
            self._urls.clear()
        self._urls[key] = found
        return found

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        async with self.session.request(
            method,
            self.url(url, params),
            data=content,
            allow_redirects=False,
            timeout=self.timeout if timeout is None else timeouts(timeout),
        ) as resp:
            body = await resp.read()
            return Reply(resp.status, body, resp.headers)

    async def aclose(self) -> None:
        await self.session.close()


# -- tests and injected transports: httpx -----------------------------------------------------------


def make_client(
    cfg: ProviderConfig,
    *,
    base_url: str,
    headers: Mapping[str, str],
    transport: httpx.AsyncBaseTransport,
) -> httpx.AsyncClient:
    """An httpx client over ``transport`` with the provider's pool size, timeout and headers."""
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=dict(headers),
        timeout=httpx.Timeout(cfg.timeout),
        limits=limits,
        transport=transport,
        follow_redirects=False,
    )


class HttpxCaller:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        if timeout is None:
            resp = await self.client.request(method, url, content=content, params=params)
        else:
            resp = await self.client.request(method, url, content=content, params=params, timeout=timeout)
        return Reply(resp.status_code, resp.content, resp.headers)

    async def aclose(self) -> None:
        await self.client.aclose()
