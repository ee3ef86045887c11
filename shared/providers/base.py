"""The provider interface every adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from msgspec import Struct

from shared.config import ProviderConfig
from shared.schema import ChatRequest, EmbeddingRequest, Usage


class ProviderResponse(Struct, kw_only=True):
    """A successful call, already normalized to OpenAI's response shape."""

    body: dict[str, Any]
    usage: Usage
    request_id: str | None = None


class Health(Struct, kw_only=True):
    ok: bool
    latency_ms: float = 0.0
    detail: str = ""


def sampling_fields(
    req: ChatRequest, *, temperature: str, top_p: str, max_tokens: str, stop: str, seed: str
) -> dict[str, Any]:
    """The request's sampling settings that are set, under the provider's names for them (``stop``
    always as a list)."""
    out: dict[str, Any] = {}
    if req.temperature is not None:
        out[temperature] = req.temperature
    if req.top_p is not None:
        out[top_p] = req.top_p
    limit = req.output_limit()
    if limit is not None:
        out[max_tokens] = limit
    if req.stop:
        out[stop] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.seed is not None:
        out[seed] = req.seed
    return out


class Provider(ABC):
    """One configured provider (an account at one API), e.g. ``openai`` or ``simulated``.

    ``model`` arguments are the provider's own model names (the router strips
    any ``provider/`` prefix before calling).
    """

    name: str
    type: str
    config: ProviderConfig
    # Most inputs one embedding call of this API takes (None: no documented limit). Larger inputs
    # are split into chunks by shared.providers.embedding.run.
    max_embed_inputs: ClassVar[int | None] = None

    def serves(self, model: str) -> bool:
        """Whether this provider claims ``model`` when no prefix or route names it."""
        return model in self.config.models

    def cost_model(self, model: str) -> str:
        """The model name prices are looked up under (Azure deployments name their base model)."""
        base = self.config.options.get("base_model")
        return base if isinstance(base, str) and base else model

    @abstractmethod
    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse: ...

    @abstractmethod
    async def embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse: ...

    @abstractmethod
    async def health(self) -> Health: ...

    def warm(self) -> None:  # noqa: B027 - optional hook
        """Build now, in the running loop, what the first call would otherwise stop to build."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
