"""What every embedding adapter shares: input checks, per-call input limits, base64 output.

Each adapter declares how many inputs one API call takes (Gemini ``batchEmbedContents`` 100
requests, Cohere ``/v2/embed`` 96 texts, OpenAI 2,048 inputs) and hands its one-call function to
:func:`run`, which splits a larger input into chunks, sends them in parallel, and joins the
answers in input order with usage summed.

Chunks and the gate: the gate admits a job once and grants it one concurrency lease, but a
chunked job makes one provider request per chunk. So that a 10,000-input job cannot turn one
lease into dozens of simultaneous requests, at most ``embed_parallelism`` chunks of one job are
in flight (provider option, default :data:`DEFAULT_PARALLELISM`, never more than the provider's
``max_concurrency``); ``embed_parallelism = 1`` keeps a job strictly within its single lease at
the price of latency. The provider's pooled client is sized to ``max_concurrency`` connections,
so a process never opens more than that whatever the chunking. The rpm limit counts the job as
one request; size ``rpm`` with that in mind for very large embedding jobs.

A failed chunk fails the call (the remaining chunks are cancelled); a retry re-sends every chunk.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from shared.errors import ErrorClass, ProviderError
from shared.providers.base import ProviderResponse
from shared.schema import EmbeddingRequest, Usage

DEFAULT_PARALLELISM = 4
ENCODINGS = ("float", "base64")

OneCall = Callable[[EmbeddingRequest], Awaitable[ProviderResponse]]


def inputs(req: EmbeddingRequest) -> list[Any]:
    """The request's separate inputs: a string, a token-id list, or (for lists of those) each item."""
    inp = req.input
    if isinstance(inp, str) or (inp and isinstance(inp[0], int)):
        return [inp]
    return list(inp)


def has_token_ids(req: EmbeddingRequest) -> bool:
    inp = req.input
    return isinstance(inp, list) and bool(inp) and not isinstance(inp[0], str)


def check(provider: str, req: EmbeddingRequest, *, token_ids: bool) -> None:
    """Reject, before any call, what this API cannot serve: never embed the text "15339 1917"."""
    if req.encoding_format is not None and req.encoding_format not in ENCODINGS:
        raise ProviderError(
            ErrorClass.FINAL,
            f"{provider}: encoding_format must be 'float' or 'base64', not {req.encoding_format!r}",
            status=400,
            code="invalid_encoding_format",
        )
    if not token_ids and has_token_ids(req):
        raise ProviderError(
            ErrorClass.FINAL,
            f"{provider}: this API embeds text only; token-id input (lists of integers) cannot be "
            "sent to it. Send the text, or route the request to an OpenAI-compatible provider.",
            status=400,
            code="unsupported_input",
        )


def parallelism(options: Any, max_concurrency: int) -> int:
    try:
        wanted = int(options.get("embed_parallelism") or DEFAULT_PARALLELISM)
    except (TypeError, ValueError):
        wanted = DEFAULT_PARALLELISM
    return max(1, min(wanted, max_concurrency))


async def run(
    provider: str,
    req: EmbeddingRequest,
    call: OneCall,
    *,
    max_inputs: int | None,
    parallel: int,
    token_ids: bool,
) -> ProviderResponse:
    """Check ``req``, send it in chunks of at most ``max_inputs``, join the answers, encode as asked."""
    check(provider, req, token_ids=token_ids)
    items = inputs(req)
    if max_inputs is None or len(items) <= max_inputs:
        return encode_as_requested(await call(req), req.encoding_format)
    chunks = [items[i : i + max_inputs] for i in range(0, len(items), max_inputs)]
    gate = asyncio.Semaphore(parallel)
    failed = asyncio.Event()

    async def one(chunk: list[Any]) -> ProviderResponse | None:
        async with gate:
            if failed.is_set():  # a chunk already failed: the call is lost, send nothing more
                return None
            try:
                return await call(msgspec.structs.replace(req, input=chunk))
            except BaseException:
                failed.set()
                raise

    tasks = [asyncio.ensure_future(one(c)) for c in chunks]
    try:
        parts = await asyncio.gather(*tasks)
    except BaseException:
        # The first failure decides the call: cancel the rest (no more billed calls for a lost job)
        # and raise that error itself, classified as the adapter made it.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    done = [p for p in parts if p is not None]
    return encode_as_requested(join(done, [len(c) for c in chunks]), req.encoding_format)


def join(parts: Sequence[ProviderResponse], sizes: Sequence[int]) -> ProviderResponse:
    """Chunk answers in chunk order, as one embedding list: indexes renumbered, usage summed."""
    data: list[dict[str, Any]] = []
    usage = Usage()
    for part, size in zip(parts, sizes, strict=True):
        rows = sorted(part.body.get("data") or (), key=lambda d: d.get("index", 0))
        if len(rows) != size:
            raise ProviderError(
                ErrorClass.TRANSIENT,
                f"expected {size} embeddings in a chunk, got {len(rows)}",
                code="malformed_response",
            )
        for row in rows:
            data.append({**row, "index": len(data)})
        u = part.usage
        usage = Usage(
            prompt_tokens=usage.prompt_tokens + u.prompt_tokens,
            completion_tokens=usage.completion_tokens + u.completion_tokens,
            total_tokens=usage.total_tokens + u.total_tokens,
            cached_tokens=usage.cached_tokens + u.cached_tokens,
        )
    body = {
        **parts[0].body,
        "data": data,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }
    return ProviderResponse(body=body, usage=usage, request_id=parts[0].request_id)


def encode_as_requested(resp: ProviderResponse, encoding_format: str | None) -> ProviderResponse:
    """``encoding_format: "base64"``: each vector as base64 of little-endian float32, as OpenAI sends it.

    Vectors already encoded (an OpenAI-compatible API that honoured the field) are left alone.
    """
    if encoding_format != "base64":
        return resp
    for row in resp.body.get("data") or ():
        vec = row.get("embedding")
        if isinstance(vec, list):
            row["embedding"] = to_base64(vec)
    return resp


def to_base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def from_base64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
