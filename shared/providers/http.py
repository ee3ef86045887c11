"""HTTP plumbing every adapter shares: keys, one pooled caller per provider, the call path, health.

Production traffic goes straight through aiohttp; tests hand in an ``httpx.MockTransport``
instead (see shared/providers/transport.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import httpx
import msgspec

from shared.config import ConfigError, ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers import answer_fields, classify, embedding
from shared.providers.base import Health, Provider, ProviderResponse
from shared.providers.transport import Caller, Reply, make_caller
from shared.redact import MAX_SCAN, SECRET_NAME, redact, register_secret
from shared.schema import EmbeddingRequest

encode_json = msgspec.json.Encoder().encode
decode_json = msgspec.json.Decoder().decode

HEALTH_TIMEOUT_S = 10.0
_TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


# -- keys -----------------------------------------------------------------


def mask_key(key: str | None) -> str:
    """'sk-proj-abc…' -> 'sk-…WXYZ'; short keys show nothing of themselves."""
    if not key:
        return ""
    if len(key) < 12:
        return "****"
    return f"{key[:3]}…{key[-4:]}"


class Secret:
    """An API key: ``reveal()`` gives the value, str/repr only ever the masked form."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # "OPENAI_API_KEY" or "file /run/secrets/openai"

    def reveal(self) -> str:
        return self._value

    @property
    def masked(self) -> str:
        return mask_key(self._value)

    def __repr__(self) -> str:
        return f"Secret({self.source}: {self.masked})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled into job payloads or arq results
        raise TypeError("Secret cannot be pickled")


def load_secret(
    cfg: ProviderConfig, env: Mapping[str, str] | None = None, default_envs: tuple[str, ...] = ()
) -> Secret | None:
    """The key from ``api_key_file`` (read once, here) or ``api_key_env`` / the type's usual variables."""
    env = os.environ if env is None else env
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError:
            return None
        if not value:
            return None
        register_secret(value)  # from now on redacted from every message this process builds
        return Secret(value, f"file {path}")
    for name in (cfg.api_key_env,) if cfg.api_key_env else default_envs:
        value = (env.get(name) or "").strip()
        if value:
            register_secret(value)
            return Secret(value, name)
    return None


# -- shared adapter base --------------------------------------------------


class HTTPProvider(Provider):
    """A provider reached over HTTP. Subclasses build payloads and normalize answers; this does the rest."""

    DEFAULT_BASE_URL: ClassVar[str | None] = None
    KEY_ENVS: ClassVar[tuple[str, ...]] = ()  # where the key usually is, when no api_key_env is set
    KEY_REQUIRED: ClassVar[bool] = True
    STRIP_SUFFIXES: ClassVar[tuple[str, ...]] = ()

    # Whether the embedding API takes token-id inputs (lists of integers); if not, they fail up front.
    embed_token_ids: ClassVar[bool] = False

    dialect = "openai"  # which error conventions classify.py applies
    health_path = "models"
    health_params: Mapping[str, str] | None = None

    def __init__(
        self,
        name: str,
        cfg: ProviderConfig,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        default_base_url: str | None = None,
        key_envs: tuple[str, ...] | None = None,
        key_required: bool | None = None,
    ) -> None:
        """Keyword overrides win over the class's DEFAULT_BASE_URL / KEY_ENVS / KEY_REQUIRED
        (OpenAI-compatible presets differ per instance)."""
        default_base_url = default_base_url or self.DEFAULT_BASE_URL
        key_envs = self.KEY_ENVS if key_envs is None else key_envs
        key_required = self.KEY_REQUIRED if key_required is None else key_required
        self.name = name
        self.type = cfg.type
        self.config = cfg
        base_url = (cfg.base_url or default_base_url or "").rstrip("/")
        for suffix in self.STRIP_SUFFIXES:  # users paste URLs with or without the version path
            base_url = base_url.removesuffix(suffix)
        self.base_url = base_url
        if not self.base_url:
            raise ConfigError(f"[providers.{name}] (type {cfg.type!r}) needs base_url")
        self.key = load_secret(cfg, env, key_envs)
        self.key_required = key_required
        env_hint = cfg.api_key_env or (key_envs[0] if key_envs else "api_key_env")
        self._key_hint = f"api_key_file {cfg.api_key_file}" if cfg.api_key_file else env_hint
        self._transport = transport
        self._client: Caller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models = frozenset(cfg.models)
        self._secret = self.key.reveal() if self.key else None
        for header, value in (cfg.options.get("headers") or {}).items():
            if SECRET_NAME.search(str(header)):  # e.g. a gateway's own key in a custom header
                register_secret(str(value))
        self.configure(cfg.options)

    def configure(self, options: Mapping[str, Any]) -> None:
        """Subclass hook: read type-specific ``options`` from the provider's config."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} type={self.type} base_url={self.base_url}>"

    def serves(self, model: str) -> bool:
        return model in self._models

    # -- subclass hooks
    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def static_headers(self) -> dict[str, str]:
        return {}

    # -- key / client
    def key_info(self) -> dict[str, Any]:
        """For ``fusebox providers``: never the key itself."""
        return {
            "required": self.key_required,
            "set": self.key is not None,
            "source": self.key.source if self.key else self._key_hint,
            "masked": self.key.masked if self.key else None,
        }

    def _require_key(self) -> None:
        if self.key is None and self.key_required:
            raise ProviderError(
                ErrorClass.FINAL, f"{self.name}: no API key (set {self._key_hint})", code="missing_api_key"
            )

    @property
    def http(self) -> Caller:
        """The shared caller, made on first use in the running loop (an aiohttp session is loop-bound)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            headers = {"content-type": "application/json", "accept": "application/json"}
            headers.update(self.static_headers())
            headers.update(
                {str(k).lower(): str(v) for k, v in self.config.options.get("headers", {}).items()}
            )
            if self._secret:
                headers.update(self.auth_headers(self._secret))
            self._client = make_caller(
                self.config, base_url=self.base_url, headers=headers, transport=self._transport
            )
            self._loop = loop
        return self._client

    def warm(self) -> None:
        # the session and its TLS context (certifi's bundle: ~30 ms of CPU), which a worker's first call
        # would otherwise wait for with every job it just claimed
        assert self.http is not None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- the call path
    async def send(
        self,
        method: str,
        url: str,
        *,
        payload: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One request; transport failures come back as classified ProviderErrors, never raw."""
        content = encode_json(payload) if payload is not None else None
        try:
            return await self.http.request(method, url, content=content, params=params, timeout=timeout)
        except _TRANSPORT_ERRORS as e:
            raise classify.classify_exception(self.name, e, secret=self._secret) from None

    async def post_json(
        self, url: str, payload: Any, *, params: Mapping[str, str] | None = None
    ) -> tuple[dict[str, Any], Reply]:
        """POST, then the decoded JSON object of a 2xx answer; anything else raises a ProviderError."""
        self._require_key()
        resp = await self.send("POST", url, payload=payload, params=params)
        return self.decode(resp), resp

    def decode(self, resp: Reply) -> dict[str, Any]:
        if not 200 <= resp.status_code < 300:
            raise self.error(resp.status_code, resp.content, resp.headers)
        if resp.headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream":
            raise self.unexpected_stream("no adapter reads it here", resp)
        try:
            data = decode_json(resp.content)
        except msgspec.DecodeError:
            # The whole body is redacted before any of it is cut for the message (a cut can split a key).
            preview = redact(resp.content[:MAX_SCAN].decode("utf-8", "replace"), self._secret)
            raise classify.malformed(
                self.name,
                f"HTTP {resp.status_code} body is not JSON: {preview[:120]!r}",
                request_id=answer_fields.request_id(resp.headers),
            ) from None
        if not isinstance(data, dict):
            raise classify.malformed(self.name, f"expected a JSON object, got {type(data).__name__}")
        return data

    def error(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> ProviderError:
        return classify.classify_response(
            self.name, status, body, headers, dialect=self.dialect, secret=self._secret
        )

    def unexpected_stream(self, detail: str, resp: Reply) -> ProviderError:
        """A streamed (SSE) answer to a job: final, never retried (every retry is a billed generation)."""
        return ProviderError(
            ErrorClass.FINAL,
            f"{self.name}: answered with a stream (text/event-stream) that cannot be read ({detail}); "
            "not retried: each attempt would be billed",
            code="unexpected_stream",
            request_id=answer_fields.request_id(resp.headers),
        )

    def malformed(self, detail: str, resp: Reply | None = None) -> ProviderError:
        rid = answer_fields.request_id(resp.headers) if resp is not None else None
        return classify.malformed(self.name, detail, request_id=rid)

    async def embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        """Checked, then sent in chunks of at most ``max_embed_inputs`` (see providers.embedding)."""
        return await embedding.run(
            self.name,
            req,
            lambda part: self._embed(part, model),
            max_inputs=self.max_embed_inputs,
            parallel=embedding.parallelism(self.config.options, self.config.max_concurrency),
            token_ids=self.embed_token_ids,
        )

    async def _embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        """One embedding API call, for at most ``max_embed_inputs`` inputs."""
        raise unsupported(self.name, f"{self.type} has no embeddings API")

    async def health(self) -> Health:
        """A cheap authenticated GET (the model list); reports, never raises."""
        if self.key is None and self.key_required:
            return Health(ok=False, detail=f"no API key (set {self._key_hint})")
        t0 = time.perf_counter()
        try:
            resp = await self.send(
                "GET",
                self.health_path,
                params=self.health_params,
                timeout=min(self.config.timeout, HEALTH_TIMEOUT_S),
            )
            latency = round((time.perf_counter() - t0) * 1000, 1)
            if resp.status_code != 200:
                return Health(
                    ok=False, latency_ms=latency, detail=self.error(resp.status_code, resp.content).message
                )
            return Health(ok=True, latency_ms=latency, detail=self.health_detail(resp))
        except ProviderError as e:
            return Health(ok=False, latency_ms=round((time.perf_counter() - t0) * 1000, 1), detail=e.message)
        except Exception as e:  # health reports, never raises
            return Health(ok=False, detail=redact(f"{type(e).__name__}: {e}", self._secret))

    def health_detail(self, resp: Reply) -> str:
        try:
            data = decode_json(resp.content)
        except msgspec.DecodeError:
            return "HTTP 200"
        for key in ("data", "models"):
            if isinstance(data, dict) and isinstance(data.get(key), list):
                return f"HTTP 200, {len(data[key])} models listed"
        return "HTTP 200"


# -- helpers for message conversion ---------------------------------------


def text_of(content: Any) -> str:
    """The text of an OpenAI message content (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    return str(content)


def data_url(url: str) -> tuple[str, str] | None:
    """'data:image/png;base64,AAAA' -> ('image/png', 'AAAA'); None for ordinary URLs."""
    if not url.startswith("data:"):
        return None
    head, _, data = url[5:].partition(",")
    return head.split(";")[0] or "application/octet-stream", data


def json_arguments(provider: str, arguments: Any) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` (a JSON string) as the object other APIs want."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = decode_json(arguments)
    except (msgspec.DecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise ProviderError(
            ErrorClass.FINAL,
            f"{provider}: a tool call's function.arguments is not a JSON object: {str(arguments)[:80]!r}",
            code="bad_request",
        )
    return value


def dumps(value: Any) -> str:
    """Compact JSON text (tool-call arguments in normalized responses)."""
    return encode_json(value).decode()


def unsupported(provider: str, what: str) -> ProviderError:
    """A call this API cannot serve at all (e.g. Anthropic embeddings): final, never retried."""
    return ProviderError(ErrorClass.FINAL, f"{provider}: {what}", code="unsupported")
