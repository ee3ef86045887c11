"""OpenAI chat completions and embeddings, and every OpenAI-compatible API as a preset of it.

A preset is a default base URL and key variable (plus, for APIs that reject
OpenAI-only field names, a few renames). Azure OpenAI differs in URLs and auth
and gets a small subclass. Requests go out in OpenAI's shape with unknown
fields kept (but never ``stream``: a job is one answer), adjusted for reasoning
models (see openai_rules); answers are already ``chat.completion`` / embedding lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import httpx

from shared.config import ConfigError, ProviderConfig
from shared.errors import ProviderError
from shared.providers import answer_fields, classify, openai_rules
from shared.providers.base import ProviderResponse
from shared.providers.http import HTTPProvider
from shared.providers.transport import Reply
from shared.schema import ChatRequest, EmbeddingRequest, Usage

# Azure's GA surfaces: "v1" (GA since August 2025; no api-version, the deployment goes in "model")
# is the default. The newest dated GA version (2024-10-21) predates reasoning models: a dated
# api_version in options selects the deployments surface (``/openai/deployments/D/...?api-version=``).
AZURE_API_VERSION = "v1"
_NO_RENAMES: Mapping[str, str] = MappingProxyType({})
_MAX_TOKENS = MappingProxyType({"max_completion_tokens": "max_tokens"})


class Preset(NamedTuple):
    base_url: str | None
    key_envs: tuple[str, ...]
    key_required: bool = True
    # OpenAI field -> the name this API accepts (applied only when the target field is absent)
    renames: Mapping[str, str] = _NO_RENAMES


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", ("OPENAI_API_KEY",)),
    "azure": Preset(None, ("AZURE_OPENAI_API_KEY",)),
    "groq": Preset("https://api.groq.com/openai/v1", ("GROQ_API_KEY",)),
    "openrouter": Preset("https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",)),
    "xai": Preset("https://api.x.ai/v1", ("XAI_API_KEY",)),
    "together": Preset("https://api.together.xyz/v1", ("TOGETHER_API_KEY",), renames=_MAX_TOKENS),
    # Mistral rejects unknown fields (422) and calls the seed ``random_seed``.
    "mistral": Preset(
        "https://api.mistral.ai/v1",
        ("MISTRAL_API_KEY",),
        renames=MappingProxyType({"max_completion_tokens": "max_tokens", "seed": "random_seed"}),
    ),
    "deepseek": Preset("https://api.deepseek.com", ("DEEPSEEK_API_KEY",), renames=_MAX_TOKENS),
    "lmstudio": Preset("http://localhost:1234/v1", ("LMSTUDIO_API_KEY",), key_required=False),
    "vllm": Preset("http://localhost:8000/v1", ("VLLM_API_KEY",), key_required=False),
    "huggingface": Preset("https://router.huggingface.co/v1", ("HF_TOKEN", "HUGGINGFACE_API_KEY")),
}


class OpenAIProvider(HTTPProvider):
    dialect = "openai"

    def __init__(
        self,
        name: str,
        cfg: ProviderConfig,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        preset = PRESETS.get(cfg.type, PRESETS["openai"])
        super().__init__(
            name,
            cfg,
            env=env,
            transport=transport,
            default_base_url=preset.base_url,
            key_envs=preset.key_envs,
            key_required=preset.key_required,
        )
        self._renames = preset.renames
        # model -> fields a 400 told us to rename or drop; applied up front on later calls
        self._learned: dict[str, set[str]] = {}
        # Model-name rules only where the names are OpenAI's own; other presets rely on the 400 fallback.
        self._name_rules = cfg.type in ("openai", "azure")

    # -- URLs and payloads (Azure overrides these)
    def chat_url(self, model: str) -> tuple[str, Mapping[str, str] | None]:
        return "chat/completions", None

    def embed_url(self, model: str) -> tuple[str, Mapping[str, str] | None]:
        return "embeddings", None

    def is_reasoning(self, model: str) -> bool:
        return self._name_rules and openai_rules.is_reasoning_model(model, self.cost_model(model))

    def payload(self, req: ChatRequest | EmbeddingRequest, model: str) -> dict[str, Any]:
        body = req.to_body()
        body["model"] = model
        if isinstance(req, ChatRequest):
            for key in openai_rules.STREAM_FIELDS:  # jobs queued before schema stripped them
                body.pop(key, None)
            if self.is_reasoning(model):
                openai_rules.apply_reasoning_rules(body)
            for key in self._learned.get(model, ()):
                if key == "max_tokens" and "max_tokens" in body:
                    body.setdefault("max_completion_tokens", body.pop("max_tokens"))
                else:
                    body.pop(key, None)
        for src, dst in self._renames.items():
            if src in body:
                value = body.pop(src)
                body.setdefault(dst, value)
        return body

    async def _post_chat(
        self, url: str, body: dict[str, Any], params: Mapping[str, str] | None, model: str
    ) -> tuple[dict[str, Any], Reply]:
        """POST a chat body; a 400 naming a field we can fix is fixed and sent again (not billed)."""
        self._require_key()
        for _ in range(len(openai_rules.DROPPABLE) + 1):
            resp = await self.send("POST", url, payload=body, params=params)
            if resp.status_code != 400:
                break
            fixed = openai_rules.adapt_to_error(body, resp.content)
            if fixed is None:
                break
            self._learned.setdefault(model, set()).add(fixed)
        if 200 <= resp.status_code < 300 and openai_rules.is_event_stream(resp.headers.get("content-type")):
            return self._assemble(resp), resp
        return self.decode(resp), resp

    def _assemble(self, resp: Reply) -> dict[str, Any]:
        # Never retried: the generation behind a stream is billed whether or not we can read it.
        try:
            return openai_rules.assemble_chat_stream(resp.content)
        except openai_rules.StreamError as e:
            detail = str(e)
            if e.error is not None:
                detail += ": " + answer_fields.parse_error_body(e.error).message
            raise self.unexpected_stream(classify.redact(detail, self._secret)[:300], resp) from None

    # -- calls
    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        url, params = self.chat_url(model)
        data, resp = await self._post_chat(url, self.payload(req, model), params, model)
        if not isinstance(data.get("choices"), list) or not data["choices"]:
            raise self._no_result(data, resp, "chat response has no 'choices'")
        data.setdefault("object", "chat.completion")
        usage = openai_usage(data.get("usage"))
        if not isinstance(data.get("usage"), dict):
            data["usage"] = usage_dict(usage)
        return ProviderResponse(
            body=data, usage=usage, request_id=answer_fields.request_id(resp.headers) or data.get("id")
        )

    max_embed_inputs = 2048  # /embeddings: at most 2,048 inputs per call; larger inputs are chunked
    embed_token_ids = True

    async def _embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        url, params = self.embed_url(model)
        data, resp = await self.post_json(url, self.payload(req, model), params=params)
        if not isinstance(data.get("data"), list):
            raise self._no_result(data, resp, "embedding response has no 'data' list")
        data.setdefault("object", "list")
        usage = openai_usage(data.get("usage"))
        if not isinstance(data.get("usage"), dict):
            data["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
        return ProviderResponse(body=data, usage=usage, request_id=answer_fields.request_id(resp.headers))

    def _no_result(self, data: dict[str, Any], resp: Reply, detail: str) -> ProviderError:
        # Some gateways (OpenRouter) answer 200 with an error object when the upstream model failed.
        err = data.get("error")
        if err:
            code = err.get("code") if isinstance(err, dict) else None
            status = code if isinstance(code, int) and 400 <= code < 600 else 502
            return self.error(status, data, resp.headers)
        return self.malformed(detail, resp)


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI, ``api-key`` header, on either GA surface (``options.api_version`` decides):

    - ``"v1"`` (the default, or a base_url ending in ``/openai/v1``):
      ``{endpoint}/openai/v1/chat/completions``, the deployment name as ``model``, no api-version;
    - a dated version (e.g. ``"2024-10-21"``, ``"2025-04-01-preview"``):
      ``{endpoint}/openai/deployments/{deployment}/...?api-version=``.

    options: ``api_version``; ``deployments`` {model: deployment} (default: the model name is the
    deployment); ``base_model`` (a name, or {model: name}) to price calls by (and to recognise
    reasoning models), since Azure deployments are named by the user.
    """

    STRIP_SUFFIXES = ("/openai/v1", "/openai")

    def configure(self, opts: Mapping[str, Any]) -> None:
        raw_url = (self.config.base_url or "").rstrip("/")
        url_v1 = raw_url.endswith("/openai/v1")
        version = str(opts.get("api_version") or "").strip()
        if url_v1 and version and version != "v1":
            raise ConfigError(
                f"[providers.{self.name}] base_url ends in /openai/v1 (the v1 API, no api-version) "
                f"but options.api_version is {version!r}: drop one of them"
            )
        self.api_version = version or AZURE_API_VERSION
        self.v1 = self.api_version == "v1"
        self.deployments: dict[str, str] = {
            str(k): str(v) for k, v in (opts.get("deployments") or {}).items()
        }
        self.base_model: str | dict[str, str] | None = opts.get("base_model")
        self._params: dict[str, str] | None = None if self.v1 else {"api-version": self.api_version}
        self.health_path = "openai/v1/models" if self.v1 else "openai/models"
        self.health_params = self._params

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}

    def deployment(self, model: str) -> str:
        return self.deployments.get(model, model)

    def chat_url(self, model: str) -> tuple[str, Mapping[str, str] | None]:
        if self.v1:
            return "openai/v1/chat/completions", None
        return f"openai/deployments/{self.deployment(model)}/chat/completions", self._params

    def embed_url(self, model: str) -> tuple[str, Mapping[str, str] | None]:
        if self.v1:
            return "openai/v1/embeddings", None
        return f"openai/deployments/{self.deployment(model)}/embeddings", self._params

    def is_reasoning(self, model: str) -> bool:
        return openai_rules.is_reasoning_model(model, self.deployment(model), self.cost_model(model))

    def payload(self, req: ChatRequest | EmbeddingRequest, model: str) -> dict[str, Any]:
        body = super().payload(req, model)
        if self.v1:
            body["model"] = self.deployment(model)  # v1 names the deployment in the body
        else:
            body.pop("model", None)  # the deployment in the URL decides the model
        return body

    def cost_model(self, model: str) -> str:
        bm = self.base_model
        if isinstance(bm, dict):
            return str(bm.get(model, model))
        return str(bm) if bm else model


def openai_usage(u: Any) -> Usage:
    """OpenAI's usage object (cached tokens in prompt_tokens_details; DeepSeek's prompt_cache_hit_tokens)."""
    if not isinstance(u, dict):
        return Usage()
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(u.get("total_tokens") or prompt + completion),
        cached_tokens=int(cached or u.get("prompt_cache_hit_tokens") or 0),
    )


def usage_dict(usage: Usage, **extra: Any) -> dict[str, Any]:
    """A Usage in OpenAI's response shape."""
    d: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens or extra:
        d["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens, **extra}
    return d
