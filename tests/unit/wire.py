"""MockTransport helpers shared by the provider adapter tests."""

from __future__ import annotations

import json
from typing import Any

import httpx


class Wire:
    """A MockTransport handler that records requests and replays canned answers in order."""

    def __init__(self, *answers: tuple[int, Any, dict[str, str]] | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body, headers = answer
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(
            status, content=content, headers={"content-type": "application/json", **headers}
        )

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def embed_texts(path: str, body: dict[str, Any]) -> list[str] | None:
    """The texts of one embedding call in any adapter's API shape (None: not an embedding call)."""
    if path.endswith(":batchEmbedContents"):
        return [r["content"]["parts"][0]["text"] for r in body["requests"]]
    if path.endswith(":embedContent"):
        return [body["content"]["parts"][0]["text"]]
    if path.endswith("/v2/embed"):
        return list(body["texts"])
    if path.endswith(("/embeddings", "/api/embed")):  # OpenAI, Ollama
        return [body["input"]] if isinstance(body["input"], str) else list(body["input"])
    return None


def embed_answer(path: str, body: dict[str, Any], vectors: list[list[float]]) -> dict[str, Any]:
    """That API's answer carrying ``vectors`` (one per text, in order)."""
    n = len(vectors)
    if path.endswith(":batchEmbedContents"):
        return {"embeddings": [{"values": v} for v in vectors]}
    if path.endswith(":embedContent"):
        return {"embedding": {"values": vectors[0]}}
    if path.endswith("/v2/embed"):
        return {"embeddings": {"float": vectors}, "meta": {"billed_units": {"input_tokens": n}}}
    if path.endswith("/api/embed"):
        return {"model": body["model"], "embeddings": vectors, "prompt_eval_count": n}
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }
