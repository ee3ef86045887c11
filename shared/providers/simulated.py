"""The ``simulated`` provider: serves any ``simulated/<name>`` model in-process, no key, no network.

Replies are a pure function of the request (same request -> same text and same
embedding), token counts come from the input, and latency and failure rate are
configurable so demos, tests and benchmarks can exercise the whole job path.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from typing import Any

import msgspec

from shared.config import ProviderConfig, SimulatedConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers import embedding
from shared.providers.base import Health, Provider, ProviderResponse
from shared.schema import ChatRequest, EmbeddingRequest, Usage
from shared.tokens import estimate_messages, estimate_text

_WORDS = (
    "the a fuse box routes every prompt through careful limits and breakers so that many workers act as one "
    "client batch result token provider model latency queue redis job done fast steady calm bright signal "
    "answer question river stone cloud garden window lantern harbor meadow orbit pixel vector"
).split()


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode(parts)).digest()


class SimulatedProvider(Provider):
    type = "simulated"

    def __init__(self, sim: SimulatedConfig, name: str = "simulated") -> None:
        self.name = name
        self.sim = sim
        self.config = ProviderConfig(type="simulated", max_concurrency=1_000_000)

    def serves(self, model: str) -> bool:
        return False  # only reached through an explicit ``simulated/<name>``

    async def _behave(self) -> None:
        delay = self.sim.latency_ms
        if self.sim.latency_jitter_ms:
            delay += random.uniform(0, self.sim.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if self.sim.failure_rate and random.random() < self.sim.failure_rate:
            raise ProviderError(
                ErrorClass.TRANSIENT, "simulated upstream error (503)", status=503, code="server_error"
            )

    async def chat(self, req: ChatRequest, model: str) -> ProviderResponse:
        await self._behave()
        d = _digest(model, req.messages, req.tools, req.response_format)
        n_words = 8 + d[0] % 24
        limit = req.output_limit()
        finish = "stop"
        if limit is not None and n_words > limit:
            n_words, finish = max(limit, 1), "length"
        words = [_WORDS[d[(i % 31) + 1] * (i + 1) % len(_WORDS)] for i in range(n_words)]
        text = " ".join(words).capitalize() + "."
        prompt = estimate_messages(req.messages)
        completion = estimate_text(text)
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        rid = "sim-" + d[:8].hex()
        body = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": msgspec.to_builtins(usage),
        }
        return ProviderResponse(body=body, usage=usage, request_id=rid)

    async def embed(self, req: EmbeddingRequest, model: str) -> ProviderResponse:
        embedding.check(self.name, req, token_ids=True)  # stands in for OpenAI, which takes token ids
        await self._behave()
        dims = req.dimensions or self.sim.embedding_dimensions
        texts = req.texts()
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(model, t, dims)}
            for i, t in enumerate(texts)
        ]
        prompt = sum(estimate_text(t) for t in texts)
        usage = Usage(prompt_tokens=prompt, total_tokens=prompt)
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        resp = ProviderResponse(body=body, usage=usage, request_id="sim-" + _digest(model, texts)[:8].hex())
        return embedding.encode_as_requested(resp, req.encoding_format)

    async def health(self) -> Health:
        return Health(ok=True, detail="in-process")


def _vector(model: str, text: str, dims: int) -> list[float]:
    rng = random.Random(int.from_bytes(_digest(model, text)[:8], "big"))
    v = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [round(x / norm, 6) for x in v]
