"""Format-neutral pieces of the simulator's wire handling.

Each format module (``shared.simulator.formats.*``) parses its own request shape into
a :class:`ChatCall` or :class:`EmbedCall`, and renders a :class:`Reply`, vectors or a
:class:`SimError` back in its own shape. What is said is decided here, once: the reply
is a pure function of the request (a hash of its body), token counts come from the
input, embeddings are a pure function of (model, text).
"""

from __future__ import annotations

import array
import hashlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from shared.tokens import estimate_text

Op = Literal["chat", "embed", "models"]

_WORDS = (
    "the a fuse box routes every prompt through careful limits and breakers so that many workers act as one "
    "client batch result token provider model latency queue redis job done fast steady calm bright signal "
    "answer question river stone cloud garden window lantern harbor meadow orbit pixel vector"
).split()


class WireError(Exception):
    """A request the real API would reject with 400; formats render ``error`` in their own shape."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.error = SimError("bad_request", message, param=param, code=code)


@dataclass(slots=True)
class SimError:
    """A failure to render in a format's own error shape.

    kinds: bad_request, unauthorized, model_not_found, context_length, rate_limit, server_error,
    unavailable, overloaded, outage, timeout, not_found.
    """

    kind: str
    message: str = ""
    param: str | None = None
    code: str | None = None
    model: str = ""
    retry_after_s: float = 0.0
    tokens: int = 0
    limit: int = 0
    capacity: int | None = None
    request_id: str = ""


@dataclass(slots=True)
class Tool:
    name: str
    parameters: dict[str, Any]


@dataclass(slots=True)
class ChatCall:
    model: str
    digest: bytes  # what the reply is a function of
    prompt_tokens: int
    max_tokens: int | None = None
    tools: list[Tool] = field(default_factory=list)
    forced_tool: str | None = None  # tool name the request forces, "" = any tool
    json_schema: dict[str, Any] | None = None  # structured output requested
    n: int = 1
    stream: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # format-specific extras


@dataclass(slots=True)
class EmbedCall:
    model: str
    texts: list[str]
    dims: int | None = None
    tokens: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ToolCall:
    id_hex: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class Reply:
    text: str | None
    tool_call: ToolCall | None
    finish: Literal["stop", "length", "tool"]
    prompt_tokens: int
    completion_tokens: int
    id_hex: str


def digest(*parts: bytes | str) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.digest()


# Request fields that do not change what a model says: left out of the reply's hash, so a
# streamed and a plain request (or two users) get the same text.
_TRANSPORT_FIELDS = frozenset({"stream", "stream_options", "keep_alive", "user", "metadata", "store"})


def request_digest(body: dict[str, Any], *extra: str) -> bytes:
    """What a reply is a function of: the request body minus transport fields (plus ``extra``)."""
    kept = {k: v for k, v in body.items() if k not in _TRANSPORT_FIELDS}
    return digest(*extra, msgspec.json.encode(kept))


def content_text(content: Any) -> str:
    """The text in a message ``content`` of any format (string, or list of parts/blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, dict):
                t = p.get("text")
                if isinstance(t, str):
                    out.append(t)
                elif "content" in p:  # tool results nest their content
                    out.append(content_text(p["content"]))
        return " ".join(out)
    return ""


def count_prompt(texts: list[str], extra: int = 0) -> int:
    """Prompt tokens: ~4 framing tokens per message plus ~4 characters per token, like OpenAI."""
    return sum(4 + estimate_text(t) for t in texts) + 2 + extra


def _words(d: bytes) -> str:
    n = 8 + d[0] % 24
    w = len(_WORDS)
    text = " ".join(_WORDS[(d[(i % 31) + 1] + 7 * i) % w] for i in range(n))
    return text[0].upper() + text[1:] + "."


def fake_value(schema: Any, d: bytes, i: int = 0, depth: int = 0) -> Any:
    """A deterministic value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 4:
        return None
    b = d[i % len(d)]
    if schema.get("enum"):
        return schema["enum"][b % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    t = t.lower() if isinstance(t, str) else t  # Gemini writes STRING, OBJECT, ...
    if t == "object" or (t is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: fake_value(v, d, i + j + 1, depth + 1) for j, (k, v) in enumerate(props.items())}
    if t == "array":
        return [fake_value(schema.get("items", {"type": "string"}), d, i + 1, depth + 1)]
    if t == "integer":
        return b % 100
    if t == "number":
        return (b * 37 % 1000) / 10
    if t == "boolean":
        return b % 2 == 0
    if t == "null":
        return None
    return _WORDS[b % len(_WORDS)]


def chat_reply(call: ChatCall, index: int = 0) -> Reply:
    """The deterministic reply to ``call`` (``index`` > 0 for OpenAI's extra choices)."""
    d = call.digest if index == 0 else digest(call.digest, str(index))
    id_hex = d[:12].hex()
    if call.forced_tool is not None and call.tools:
        tool = next((t for t in call.tools if t.name == call.forced_tool), call.tools[0])
        args = fake_value(tool.parameters or {"type": "object"}, d)
        if not isinstance(args, dict):
            args = {}
        completion = estimate_text(tool.name) + estimate_text(str(args)) + 4
        return Reply(
            None, ToolCall(d[12:24].hex(), tool.name, args), "tool", call.prompt_tokens, completion, id_hex
        )
    if call.json_schema is not None:
        value = fake_value(call.json_schema, d) if call.json_schema else {"answer": _words(d)}
        text = msgspec.json.encode(value).decode()
    else:
        text = _words(d)
    completion = estimate_text(text)
    finish: Literal["stop", "length", "tool"] = "stop"
    limit = call.max_tokens
    if limit is not None and completion > limit:
        cut = text[: max(limit, 0) * 4]
        if " " in cut:  # end on a whole word
            cut = cut.rsplit(" ", 1)[0]
        text, completion, finish = cut, limit, "length"
    return Reply(text, None, finish, call.prompt_tokens, completion, id_hex)


# Native sizes of well-known embedding models; others use the route's default (256).
EMBEDDING_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "text-embedding-004": 768,
    "gemini-embedding-001": 3072,
    "embed-english-v3.0": 1024,
    "embed-multilingual-v3.0": 1024,
    "embed-english-light-v3.0": 384,
    "embed-multilingual-light-v3.0": 384,
    "embed-v4.0": 1536,
    "nomic-embed-text": 768,
    "mxbai-embed-large": 1024,
    "all-minilm": 384,
}


def embedding_dims(model: str, requested: int | None, default: int | None) -> int:
    if requested:
        return requested
    if default:
        return default
    base = model.split("/")[-1].split(":")[0]
    return EMBEDDING_DIMS.get(base, 256)


_BIG_ENDIAN = sys.byteorder == "big"


def vector(model: str, text: str, dims: int) -> list[float]:
    """A unit vector that depends only on (model, text, dims); cheap: one hash, one pass."""
    raw = hashlib.shake_128(f"{model}\0{text}".encode()).digest(dims * 2)
    ints = array.array("h")
    ints.frombytes(raw)
    if _BIG_ENDIAN:  # same vectors on every platform
        ints.byteswap()
    scale = 1e6 / (math.hypot(*ints) or 1.0)
    # int(..)/1e6 keeps 6 decimals (short JSON) at a quarter of round(x, 6)'s cost
    return [int(x * scale) / 1e6 for x in ints]


def token_count_texts(texts: list[str]) -> int:
    return sum(estimate_text(t) for t in texts)


def duration_text(seconds: float) -> str:
    """A wait as OpenAI's x-ratelimit-reset-* headers write it: "250ms", "1s", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m" + (f"{s:.3f}".rstrip("0").rstrip(".") or "0") + "s"


def proto_duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON form, as Gemini's RetryInfo.retryDelay: "21s", "1.5s"."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
