"""Where the simulator serves each wire format: the (method, path) table and a route's ``base_url``."""

from __future__ import annotations

from shared.simulator.config import Format

# (method, path) -> {format: operation}; gemini's model-in-path routes are handled separately.
PATHS: dict[tuple[str, str], dict[Format, str]] = {
    ("POST", "/v1/chat/completions"): {"openai": "chat"},
    ("POST", "/v1/embeddings"): {"openai": "embed"},
    ("GET", "/v1/models"): {"openai": "models", "anthropic": "models", "cohere": "models"},
    ("POST", "/v1/messages"): {"anthropic": "chat"},
    ("GET", "/v1beta/models"): {"gemini": "models"},
    ("POST", "/api/chat"): {"ollama": "chat"},
    ("POST", "/api/embed"): {"ollama": "embed"},
    ("GET", "/api/tags"): {"ollama": "models"},
    ("POST", "/v2/chat"): {"cohere": "chat"},
    ("POST", "/v2/embed"): {"cohere": "embed"},
}
_VERSION_SUFFIX: dict[str, str] = {"openai": "/v1", "gemini": "/v1beta"}
GEMINI_OPS = {"generateContent": "chat", "embedContent": "embed", "batchEmbedContents": "batch_embed"}


def route_base_url(base: str, route: str, fmt: Format) -> str:
    """The ``base_url`` a provider of this format should use to reach ``route``.

    As Fusebox's adapters (and the vendors' docs) write them: OpenAI's and Gemini's include the
    API version (``.../v1``, ``.../v1beta``); Anthropic, Ollama and Cohere clients append theirs
    (``/v1/messages``, ``/api/chat``, ``/v2/chat``).
    """
    return f"{base}/{route}{_VERSION_SUFFIX.get(fmt, '')}"
