"""What every simulated wire format provides to the server."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from shared.simulator.config import Format
from shared.simulator.wire import ChatCall, EmbedCall, Reply, SimError, WireError

encode = msgspec.json.encode
JSON = "application/json"

# A rendered error: status, extra headers, body.
Rendered = tuple[int, dict[str, str], bytes]


class WireFormat(ABC):
    """One provider API's request parsing and response/error rendering."""

    name: ClassVar[Format]
    # Header carrying a per-response request id (None: the real API sends none).
    request_id_header: ClassVar[str | None] = None
    # Models listed by the format's models endpoint when a route does not name its own.
    default_models: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def api_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        """The API key the request carries, where this format puts it."""

    def check_headers(self, headers: Mapping[str, str]) -> None:  # noqa: B027 - optional hook
        """Raise :class:`WireError` for headers the real API requires (e.g. anthropic-version)."""

    @abstractmethod
    def parse_chat(self, body: Any, path_model: str | None) -> ChatCall: ...

    @abstractmethod
    def parse_embed(self, body: Any, path_model: str | None, batch: bool) -> EmbedCall: ...

    @abstractmethod
    def render_chat(self, call: ChatCall, replies: list[Reply], duration_s: float) -> tuple[bytes, str]:
        """(body, content type); ``replies`` has one element unless OpenAI's ``n`` asked for more."""

    @abstractmethod
    def render_embed(self, call: EmbedCall, vectors: list[list[float]]) -> bytes: ...

    @abstractmethod
    def render_error(self, err: SimError) -> Rendered: ...

    @abstractmethod
    def render_models(self, models: list[str]) -> bytes: ...


def require_dict(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise WireError(f"{what} must be a JSON object")
    return body


def opt_int(v: Any, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise WireError(f"Invalid type for '{name}': expected an integer.", param=name, code="invalid_type")
    return v
