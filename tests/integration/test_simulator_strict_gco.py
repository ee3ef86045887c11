"""The simulator is as strict as Gemini, Cohere and Ollama, and the adapters pass it.

Each rule: the raw request the real API rejects gets the real status and error body, the request
it accepts passes; then the adapters, pointed at the simulator, do the same work and the simulator
records no rejection at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from shared.config import ProviderConfig
from shared.providers.cohere import CohereProvider
from shared.providers.embedding import from_base64
from shared.providers.gemini import GeminiProvider
from shared.providers.ollama import OllamaProvider
from shared.schema import ChatRequest, EmbeddingRequest
from shared.simulator import SimulatorServer
from shared.simulator.formats.gemini import SKIP_SIGNATURE, signature_for
from tests.integration.helpers import WEATHER_TOOL

Start = Callable[..., Awaitable[SimulatorServer]]
TOOL = WEATHER_TOOL
ENV = {"GEMINI_API_KEY": "AIza-test-key-0000000000", "COHERE_API_KEY": "co-test-key-000000000"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def statuses(sim: SimulatorServer, route: str) -> dict[str, int]:
    return sim.stats()["routes"][route]["by_status"]


# -- raw wire rules ---------------------------------------------------------------------------


def batch(n: int) -> dict[str, Any]:
    return {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": f"t{i}"}]}}
            for i in range(n)
        ]
    }


async def test_gemini_batch_embed_takes_at_most_100(sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    url = sim.url_for("gemini") + "/models/text-embedding-004:batchEmbedContents"
    ok = await client.post(url, json=batch(100))
    assert ok.status_code == 200 and len(ok.json()["embeddings"]) == 100
    r = await client.post(url, json=batch(101))
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT") and "at most 100" in err["message"]


def tool_history(call_part: dict[str, Any]) -> dict[str, Any]:
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
            {"role": "model", "parts": [call_part]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
            },
        ],
        "tools": [
            {"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}
        ],
    }


async def test_gemini3_requires_thought_signatures(sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    base = sim.url_for("gemini") + "/models/"
    forced = {
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "tools": tool_history({})["tools"],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    first = (await client.post(base + "gemini-3-pro-preview:generateContent", json=forced)).json()
    part = first["candidates"][0]["content"]["parts"][0]
    fc = part["functionCall"]
    assert part["thoughtSignature"] == signature_for(fc["name"], fc["args"])

    unsigned = tool_history({"functionCall": fc})
    r = await client.post(base + "gemini-3-pro-preview:generateContent", json=unsigned)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and "missing a thought_signature" in err["message"]
    # a signature that is not the one the model gave this call is no better
    forged = tool_history({"functionCall": fc, "thoughtSignature": signature_for("other", {})})
    assert (await client.post(base + "gemini-3-pro-preview:generateContent", json=forged)).status_code == 400

    for good in (part, {"functionCall": fc, "thoughtSignature": SKIP_SIGNATURE}):
        r = await client.post(base + "gemini-3-pro-preview:generateContent", json=tool_history(good))
        assert r.status_code == 200, r.text
    # Gemini 2.5 does not require them
    r = await client.post(base + "gemini-2.5-flash:generateContent", json=unsigned)
    assert r.status_code == 200
    # only the current turn is checked: an old unsigned step before a new user message is accepted
    later = tool_history({"functionCall": fc})
    later["contents"].append({"role": "model", "parts": [{"text": "21 degrees."}]})
    later["contents"].append({"role": "user", "parts": [{"text": "Thanks!"}]})
    r = await client.post(base + "gemini-3-pro-preview:generateContent", json=later)
    assert r.status_code == 200


async def test_cohere_rules(sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    base = sim.url_for("cohere")
    msgs = [{"role": "user", "content": "hi"}]
    for p, status in ((0.99, 200), (0.01, 200), (1.0, 400), (0.0, 400)):
        r = await client.post(
            base + "/v2/chat", json={"model": "command-a-03-2025", "messages": msgs, "p": p}
        )
        assert r.status_code == status, (p, r.text)
        if status == 400:
            assert r.json() == {"message": "invalid request: p must be between 0.01 and 0.99, inclusive"}
    tool_msg = [*msgs, {"role": "tool", "content": "21"}]
    r = await client.post(base + "/v2/chat", json={"model": "command-a-03-2025", "messages": tool_msg})
    assert r.status_code == 400 and "tool_call_id" in r.json()["message"]
    emb = {"model": "embed-v4.0", "input_type": "search_document"}
    assert (await client.post(base + "/v2/embed", json={**emb, "texts": ["a"] * 96})).status_code == 200
    r = await client.post(base + "/v2/embed", json={**emb, "texts": ["a"] * 97})
    assert r.status_code == 400 and "at most 96" in r.json()["message"]


async def test_ollama_rules(sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    base = sim.url_for("ollama")
    parts = [{"type": "text", "text": "hi"}]
    r = await client.post(
        base + "/api/chat",
        json={"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": parts}]},
    )
    assert r.status_code == 400 and "cannot unmarshal array" in r.json()["error"]
    call = {"function": {"name": "f", "arguments": '{"x": 1}'}}
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    r = await client.post(base + "/api/chat", json={"model": "llama3.2", "stream": False, "messages": msgs})
    assert r.status_code == 400 and "arguments" in r.json()["error"]
    r = await client.post(base + "/api/embed", json={"model": "nomic-embed-text", "input": [15339, 1917]})
    assert r.status_code == 400 and r.json() == {"error": "invalid input type"}


# -- the adapters pass the strict simulator ---------------------------------------------------------


def gemini(sim: SimulatorServer) -> GeminiProvider:
    cfg = ProviderConfig(type="gemini", base_url=sim.url_for("gemini"))
    return GeminiProvider("gemini", cfg, env=ENV)


async def test_gemini_adapter_embeds_150_and_round_trips_tools_on_gemini3(sim: SimulatorServer) -> None:
    p = gemini(sim)
    try:
        texts = [f"input number {i}" for i in range(150)]
        resp = await p.embed(
            EmbeddingRequest.from_body({"model": "m", "input": texts, "dimensions": 8}), "text-embedding-004"
        )
        vectors = [d["embedding"] for d in resp.body["data"]]
        assert len(vectors) == 150 and [d["index"] for d in resp.body["data"]] == list(range(150))
        # in order: the same text embedded alone gives the same vector
        one = await p.embed(
            EmbeddingRequest.from_body({"model": "m", "input": texts[137], "dimensions": 8}),
            "text-embedding-004",
        )
        assert one.body["data"][0]["embedding"] == vectors[137]
        b64 = await p.embed(
            EmbeddingRequest.from_body(
                {"model": "m", "input": texts[:3], "dimensions": 8, "encoding_format": "base64"}
            ),
            "text-embedding-004",
        )
        decoded = [from_base64(d["embedding"]) for d in b64.body["data"]]
        assert decoded == [pytest.approx(v, rel=1e-6) for v in vectors[:3]]

        ask = {"role": "user", "content": "Weather in Paris?"}
        first = await p.chat(
            ChatRequest.from_body(
                {"model": "m", "messages": [ask], "tools": [TOOL], "tool_choice": "required"}
            ),
            "gemini-3-pro-preview",
        )
        message = first.body["choices"][0]["message"]
        [call] = message["tool_calls"]
        assert call["extra_content"]["google"]["thought_signature"]
        second = await p.chat(
            ChatRequest.from_body(
                {
                    "model": "m",
                    "messages": [
                        ask,
                        message,
                        {"role": "tool", "tool_call_id": call["id"], "content": "21 C"},
                    ],
                    "tools": [TOOL],
                }
            ),
            "gemini-3-pro-preview",
        )
        assert second.body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    finally:
        await p.aclose()
    assert set(statuses(sim, "gemini")) == {"200"}


async def test_cohere_adapter_embeds_120_and_clamps_p(sim: SimulatorServer) -> None:
    p = CohereProvider("cohere", ProviderConfig(type="cohere", base_url=sim.url_for("cohere")), env=ENV)
    try:
        texts = [f"doc {i}" for i in range(120)]
        resp = await p.embed(EmbeddingRequest.from_body({"model": "m", "input": texts}), "embed-v4.0")
        assert len(resp.body["data"]) == 120
        alone = await p.embed(EmbeddingRequest.from_body({"model": "m", "input": [texts[100]]}), "embed-v4.0")
        assert alone.body["data"][0]["embedding"] == resp.body["data"][100]["embedding"]
        assert resp.usage.prompt_tokens > alone.usage.prompt_tokens > 0  # summed over both chunks
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 1.0}
        await p.chat(ChatRequest.from_body(chat), "command-a-03-2025")
    finally:
        await p.aclose()
    assert set(statuses(sim, "cohere")) == {"200"}


async def test_ollama_adapter_tool_round_trip(sim: SimulatorServer) -> None:
    p = OllamaProvider("ollama", ProviderConfig(type="ollama", base_url=sim.url_for("ollama")), env={})
    try:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
        messages = [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3 C"},
        ]
        resp = await p.chat(
            ChatRequest.from_body({"model": "m", "messages": messages, "tools": [TOOL]}), "llama3.2"
        )
        assert resp.body["choices"][0]["message"]["content"]
    finally:
        await p.aclose()
    assert set(statuses(sim, "ollama")) == {"200"}
