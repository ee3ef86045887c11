"""Embedding inputs across adapters: per-call limits (chunking), token-id inputs, base64 output;
plus Gemini thought signatures, Cohere's p range and Ollama's tool_call_id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.base import Provider
from shared.providers.cohere import CohereProvider
from shared.providers.embedding import from_base64, to_base64
from shared.providers.gemini import GeminiProvider
from shared.providers.gemini_request import SKIP_SIGNATURE
from shared.providers.ollama import OllamaProvider
from shared.providers.openai import OpenAIProvider
from shared.schema import ChatRequest, EmbeddingRequest
from tests.unit.wire import Wire, embed_answer, embed_texts

ENV = {"GEMINI_API_KEY": "g" * 39, "COHERE_API_KEY": "c" * 40, "OPENAI_API_KEY": "sk-" + "o" * 40}


def vec(text: str) -> list[float]:
    """A vector that names its input, so order can be checked after chunks are joined."""
    n = int(text.removeprefix("t"))
    return [float(n), n / 4]


class EmbedServer:
    """An async MockTransport handler answering each provider's embed call from the texts it got.

    Records every request's input count and the most requests it ever had in flight at once.
    """

    def __init__(self, fail_call: int | None = None) -> None:
        self.sizes: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_call = fail_call

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path
        texts = embed_texts(path, body)
        assert texts is not None, path
        self.sizes.append(len(texts))
        number = len(self.sizes)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)  # let the other chunks start: in-flight is what is measured
        finally:
            self.in_flight -= 1
        if number == self.fail_call:
            return httpx.Response(
                400, json={"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
            )
        return httpx.Response(200, json=embed_answer(path, body, [vec(t) for t in texts]))


MAKERS: dict[str, Callable[..., Provider]] = {
    "gemini": GeminiProvider,
    "cohere": CohereProvider,
    "openai": OpenAIProvider,
    "ollama": OllamaProvider,
}


def make(kind: str, handler: Any, **options: Any) -> Provider:
    cfg = ProviderConfig(type=kind, options=options, max_concurrency=16)
    return MAKERS[kind](kind, cfg, env=ENV, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("kind", "n", "limit"),
    [("gemini", 250, 100), ("cohere", 200, 96), ("openai", 5000, 2048), ("gemini", 101, 100)],
)
async def test_large_inputs_are_chunked_in_order_with_usage_summed(kind: str, n: int, limit: int) -> None:
    server = EmbedServer()
    texts = [f"t{i}" for i in range(n)]
    resp = await make(kind, server).embed(EmbeddingRequest.from_body({"model": "m", "input": texts}), "m")
    assert len(server.sizes) == -(-n // limit)
    assert max(server.sizes) <= limit and sum(server.sizes) == n
    assert [d["index"] for d in resp.body["data"]] == list(range(n))
    assert [d["embedding"] for d in resp.body["data"]] == [vec(t) for t in texts]
    if kind != "gemini":  # the server billed one token per text: the sum over chunks is the job's usage
        assert resp.usage.prompt_tokens == n
        assert resp.body["usage"] == {"prompt_tokens": n, "total_tokens": n}
    else:  # Gemini reports no counts: the per-chunk estimates add up
        assert resp.usage.prompt_tokens == resp.body["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("parallelism", [1, 3])
async def test_chunks_of_one_job_are_bounded_in_flight(parallelism: int) -> None:
    server = EmbedServer()
    p = make("cohere", server, embed_parallelism=parallelism)
    req = EmbeddingRequest.from_body({"model": "m", "input": [f"t{i}" for i in range(96 * 8)]})
    await p.embed(req, "m")
    assert len(server.sizes) == 8
    assert server.max_in_flight <= parallelism
    if parallelism > 1:
        assert server.max_in_flight > 1  # chunks do run side by side


async def test_a_failed_chunk_fails_the_call_with_its_own_error() -> None:
    server = EmbedServer(fail_call=2)
    p = make("gemini", server, embed_parallelism=1)
    req = EmbeddingRequest.from_body({"model": "m", "input": [f"t{i}" for i in range(350)]})
    with pytest.raises(ProviderError) as ei:
        await p.embed(req, "m")
    assert ei.value.error_class == ErrorClass.FINAL and ei.value.status == 400
    assert len(server.sizes) == 2  # sequential: the chunks after the failed one were never sent


@pytest.mark.parametrize("kind", ["gemini", "cohere", "ollama"])
@pytest.mark.parametrize("tokens", [[15339, 1917], [[15339, 1917], [9906]]])
async def test_token_id_inputs_are_rejected_before_any_call(kind: str, tokens: list[Any]) -> None:
    server = EmbedServer()
    with pytest.raises(ProviderError) as ei:
        await make(kind, server).embed(EmbeddingRequest.from_body({"model": "m", "input": tokens}), "m")
    err = ei.value
    assert (err.error_class, err.status, err.code) == (ErrorClass.FINAL, 400, "unsupported_input")
    assert err.message.startswith(f"{kind}: ") and "token" in err.message
    assert server.sizes == []  # nothing was sent, so nothing was embedded as the text "15339 1917"


async def test_openai_takes_token_ids_as_they_are() -> None:
    wire = Wire((200, {"object": "list", "data": [{"index": 0, "embedding": [0.5]}], "usage": {}}, {}))
    p = OpenAIProvider("openai", ProviderConfig(type="openai"), env=ENV, transport=wire.transport)
    await p.embed(EmbeddingRequest.from_body({"model": "m", "input": [[1, 2], [3]]}), "m")
    assert wire.body()["input"] == [[1, 2], [3]]


@pytest.mark.parametrize("kind", ["gemini", "cohere", "ollama", "openai"])
@pytest.mark.parametrize("n", [1, 3, 130])
async def test_base64_encoding_is_returned_by_every_provider(kind: str, n: int) -> None:
    texts = [f"t{i}" for i in range(n)]
    body = {"model": "m", "input": texts if n > 1 else texts[0], "encoding_format": "base64"}
    resp = await make(kind, EmbedServer()).embed(EmbeddingRequest.from_body(body), "m")
    got = [d["embedding"] for d in resp.body["data"]]
    assert all(isinstance(g, str) for g in got)
    assert [from_base64(g) for g in got] == [vec(t) for t in texts]  # these values are exact in float32


def test_base64_is_little_endian_float32() -> None:
    assert to_base64([1.0, -2.0]) == "AACAPwAAAMA="  # what OpenAI sends for [1.0, -2.0]


async def test_unknown_encoding_format_is_rejected() -> None:
    server = EmbedServer()
    with pytest.raises(ProviderError) as ei:
        await make("cohere", server).embed(
            EmbeddingRequest.from_body({"model": "m", "input": "x", "encoding_format": "int8"}), "m"
        )
    assert (ei.value.error_class, ei.value.status) == (ErrorClass.FINAL, 400) and server.sizes == []


# -- Gemini thought signatures ---------------------------------------------------------------


def gemini_answer(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"role": "model", "parts": list(parts)}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10},
    }


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


async def test_gemini3_thought_signatures_round_trip_on_the_tool_calls() -> None:
    answer = gemini_answer(
        {"functionCall": {"name": "f", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLXBhcmlz"},
        {
            "functionCall": {"name": "f", "args": {"city": "London"}}
        },  # parallel calls: only the first is signed
    )
    wire = Wire((200, answer, {}))
    p = GeminiProvider("gemini", ProviderConfig(type="gemini"), env=ENV, transport=wire.transport)
    ask = {"role": "user", "content": "Weather in Paris and London?"}
    first = await p.chat(
        ChatRequest.from_body({"model": "g", "messages": [ask], "tools": [TOOL]}), "gemini-3-pro"
    )
    message = first.body["choices"][0]["message"]
    paris, london = message["tool_calls"]
    assert paris["extra_content"] == {"google": {"thought_signature": "c2lnLXBhcmlz"}}
    assert "extra_content" not in london

    history = [
        ask,
        message,
        {"role": "tool", "tool_call_id": paris["id"], "content": "21"},
        {"role": "tool", "tool_call_id": london["id"], "content": "18"},
    ]
    await p.chat(ChatRequest.from_body({"model": "g", "messages": history, "tools": [TOOL]}), "gemini-3-pro")
    model_turn = wire.body()["contents"][1]
    assert model_turn["role"] == "model"
    assert model_turn["parts"] == [
        {"functionCall": {"name": "f", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLXBhcmlz"},
        {"functionCall": {"name": "f", "args": {"city": "London"}}},
    ]


@pytest.mark.parametrize(
    ("model", "placeholder"), [("gemini-3-flash-preview", True), ("gemini-2.5-flash", False)]
)
async def test_unsigned_history_gets_googles_placeholder_only_where_required(
    model: str, placeholder: bool
) -> None:
    wire = Wire((200, gemini_answer({"text": "ok"}), {}))
    p = GeminiProvider("gemini", ProviderConfig(type="gemini"), env=ENV, transport=wire.transport)
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        {"role": "tool", "tool_call_id": "call_2", "content": "2"},
    ]
    await p.chat(ChatRequest.from_body({"model": "g", "messages": history, "tools": [TOOL]}), model)
    first, second = wire.body()["contents"][1]["parts"]
    assert first.get("thoughtSignature") == (SKIP_SIGNATURE if placeholder else None)
    assert "thoughtSignature" not in second


# -- Cohere p, Ollama tool_call_id ----------------------------------------------------------


@pytest.mark.parametrize(("top_p", "p"), [(1.0, 0.99), (0.995, 0.99), (0.0, 0.01), (0.5, 0.5)])
async def test_cohere_p_is_clamped_into_its_range(top_p: float, p: float) -> None:
    answer = {"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": []}}
    wire = Wire((200, answer, {}))
    co = CohereProvider("cohere", ProviderConfig(type="cohere"), env=ENV, transport=wire.transport)
    body = {"model": "command-a", "messages": [{"role": "user", "content": "x"}], "top_p": top_p}
    await co.chat(ChatRequest.from_body(body), "command-a")
    assert wire.body()["p"] == p


async def test_ollama_sends_tool_call_id_even_without_the_call_in_history() -> None:
    answer = {"model": "m", "message": {"role": "assistant", "content": "ok"}, "done": True}
    wire = Wire((200, answer, {}))
    ol = OllamaProvider("ollama", ProviderConfig(type="ollama"), env={}, transport=wire.transport)
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_9", "content": "7"}]
    await ol.chat(ChatRequest.from_body({"model": "m", "messages": messages}), "m")
    assert wire.body()["messages"][1] == {"role": "tool", "content": "7", "tool_call_id": "call_9"}


async def test_the_in_process_simulated_provider_returns_base64_too() -> None:
    from shared.config import SimulatedConfig
    from shared.providers.simulated import SimulatedProvider

    p = SimulatedProvider(SimulatedConfig(latency_ms=0))
    plain = await p.embed(
        EmbeddingRequest.from_body({"model": "e", "input": ["a", "b"], "dimensions": 4}), "e"
    )
    b64 = await p.embed(
        EmbeddingRequest.from_body(
            {"model": "e", "input": ["a", "b"], "dimensions": 4, "encoding_format": "base64"}
        ),
        "e",
    )
    floats = [d["embedding"] for d in plain.body["data"]]
    assert [from_base64(d["embedding"]) for d in b64.body["data"]] == [
        pytest.approx(v, rel=1e-6) for v in floats
    ]
