"""Wire and storage types: the single definition of every message Fusebox moves.

msgspec Structs are used on the hot path (job args, results in Redis) and for
user input (batch lines). Request types keep unknown fields in ``extra`` so a
request in OpenAI's shape reaches the provider with every field it carried.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import msgspec
from msgspec import Struct, field

Kind = Literal["chat", "embed"]

CHAT_URL = "/v1/chat/completions"
EMBED_URL = "/v1/embeddings"
URL_KINDS: dict[str, Kind] = {CHAT_URL: "chat", EMBED_URL: "embed"}


class RequestError(ValueError):
    """A request the user sent is invalid; ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _split_known(cls: type[Struct], body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    known = set(cls.__struct_fields__) - {"extra"}
    kept = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    return kept, extra


def _build(cls: type[Struct], body: Any) -> Any:
    if not isinstance(body, dict):
        raise RequestError("invalid_body", "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise RequestError("missing_model", "request body has no 'model' (a non-empty string)")
    kept, extra = _split_known(cls, body)
    try:
        return msgspec.convert({**kept, "extra": extra}, cls)
    except msgspec.ValidationError as e:
        raise RequestError("invalid_body", f"invalid request body: {e}") from None


class ChatRequest(Struct, kw_only=True, omit_defaults=True):
    """An OpenAI chat.completions request; fields Fusebox does not know live in ``extra``."""

    kind: ClassVar[Kind] = "chat"
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any) -> ChatRequest:
        req: ChatRequest = _build(cls, body)
        # A job is one answer: a streamed reply would be billed, then unreadable (issue 9).
        req.extra.pop("stream", None)
        req.extra.pop("stream_options", None)
        if not req.messages:
            raise RequestError("invalid_body", "'messages' must be a non-empty list")
        for i, m in enumerate(req.messages):
            if not isinstance(m.get("role"), str):
                raise RequestError("invalid_body", f"messages[{i}] has no 'role'")
        return req

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-shaped body, unknown fields included."""
        d = msgspec.to_builtins(self)
        extra = d.pop("extra", {})
        return {**extra, **d}

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(Struct, kw_only=True, omit_defaults=True):
    """An OpenAI embeddings request; unknown fields live in ``extra``."""

    kind: ClassVar[Kind] = "embed"
    model: str
    # str, list[str], list[int] (token ids) or list[list[int]]; checked in from_body
    input: str | list[Any]
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any) -> EmbeddingRequest:
        if isinstance(body, dict) and "input" not in body and isinstance(body.get("model"), str):
            raise RequestError("invalid_body", "embedding request has no 'input'")
        req: EmbeddingRequest = _build(cls, body)
        inp = req.input
        if isinstance(inp, list):
            ok = bool(inp) and (
                all(isinstance(x, str) for x in inp)
                or all(isinstance(x, int) for x in inp)
                or all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in inp)
            )
            if not ok:
                raise RequestError(
                    "invalid_body", "'input' must be a string, a non-empty list of strings, or token id lists"
                )
        elif not inp:
            raise RequestError("invalid_body", "'input' must not be empty")
        return req

    def to_body(self) -> dict[str, Any]:
        d = msgspec.to_builtins(self)
        extra = d.pop("extra", {})
        return {**extra, **d}

    def texts(self) -> list[str]:
        """Inputs as strings (token-id inputs are rendered as their ids)."""
        inp = self.input
        if isinstance(inp, str):
            return [inp]
        if inp and isinstance(inp[0], int):
            return [" ".join(map(str, inp))]
        return [x if isinstance(x, str) else " ".join(map(str, x)) for x in inp]


AnyRequest = ChatRequest | EmbeddingRequest


class BatchInputLine(Struct, kw_only=True):
    """One line of an OpenAI Batch input file."""

    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


class Usage(Struct, kw_only=True, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class ErrorInfo(Struct, kw_only=True, omit_defaults=True):
    """Why a job failed. ``error_class`` is Fusebox's classification (see shared.errors)."""

    code: str
    message: str
    error_class: str = "final"
    status: int | None = None


class Attempt(Struct, kw_only=True, omit_defaults=True, array_like=True):
    provider: str
    model: str
    latency_ms: float
    status: int = 200
    error_class: str | None = None


class JobSpec(Struct, kw_only=True, omit_defaults=True):
    """What a worker needs to run one request: the arq job's only argument."""

    id: str
    request: ChatRequest | None = None
    embed: EmbeddingRequest | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    line: int = 0
    submitted_at: float = 0.0
    tenant: str | None = None
    webhook: str | None = None  # single jobs: POSTed a signed summary when done
    # Attempts of earlier runs of a job deferred after failures (arq re-runs it from this payload).
    prior_attempts: list[Attempt] = field(default_factory=list)

    @property
    def kind(self) -> Kind:
        return "chat" if self.request is not None else "embed"

    def req(self) -> AnyRequest:
        r = self.request if self.request is not None else self.embed
        assert r is not None
        return r


class JobResult(Struct, kw_only=True, omit_defaults=True):
    """The outcome of one job, as stored in Redis and rendered to output files."""

    id: str
    status_code: int
    body: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    custom_id: str | None = None
    batch_id: str | None = None
    line: int = 0
    provider: str | None = None
    model: str | None = None
    request_id: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    latency_ms: float = 0.0
    usage: Usage | None = None
    cost_usd: float = 0.0
    completed_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class OutputResponse(Struct, kw_only=True):
    status_code: int
    request_id: str | None
    body: dict[str, Any] | None


class OutputError(Struct, kw_only=True):
    code: str
    message: str


class OutputMeta(Struct, kw_only=True, omit_defaults=True):
    provider: str | None = None
    model: str | None = None
    attempts: int = 0
    latency_ms: float = 0.0
    usage: Usage | None = None
    cost_usd: float = 0.0

    @classmethod
    def of(cls, r: JobResult) -> OutputMeta:
        return cls(
            provider=r.provider,
            model=r.model,
            attempts=len(r.attempts),
            latency_ms=round(r.latency_ms, 2),
            usage=r.usage,
            cost_usd=r.cost_usd,
        )


class OutputLine(Struct, kw_only=True):
    """One line of an OpenAI Batch output/error file, plus Fusebox's own metadata."""

    id: str
    custom_id: str | None
    response: OutputResponse | None
    error: OutputError | None
    fusebox: OutputMeta | None = None

    @classmethod
    def from_result(cls, r: JobResult) -> OutputLine:
        meta = OutputMeta.of(r)
        response = None
        error = None
        if r.error is None:
            response = OutputResponse(status_code=r.status_code, request_id=r.request_id, body=r.body)
        else:
            error = OutputError(code=r.error.code, message=r.error.message)
            if r.error.status:
                # The provider answered: show its status like OpenAI does, body in OpenAI's error shape.
                body = {
                    "error": {"message": r.error.message, "type": r.error.error_class, "code": r.error.code}
                }
                response = OutputResponse(status_code=r.error.status, request_id=r.request_id, body=body)
        rid = "batch_req_" + hashlib.sha256(r.id.encode()).hexdigest()[:24]
        return cls(id=rid, custom_id=r.custom_id, response=response, error=error, fusebox=meta)


class ProviderEntry(Struct, kw_only=True, omit_defaults=True):
    """A tenant's provider entry of its own (its Azure deployment, its vLLM): not secret."""

    type: str
    base_url: str | None = None
    models: list[str] = field(default_factory=list)


class ProviderKeyRecord(Struct, kw_only=True, omit_defaults=True):
    """A tenant's provider key as stored in Redis: AES-GCM ciphertext, never the key.

    ``mk`` names the master key that wrapped it (so rotation can tell old records from new);
    the associated data binds tenant, provider and ``entry``, so neither the ciphertext nor a
    changed base URL can be moved onto another tenant or server."""

    mk: str
    nonce: str  # base64, 12 random bytes per record
    ct: str  # base64 ciphertext + tag
    masked: str  # e.g. "sk-…abcd": enough to tell keys apart, too little to use
    updated_at: float
    actor: str = ""
    entry: ProviderEntry | None = None
    v: int = 1
