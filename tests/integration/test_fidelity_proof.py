"""Issue 9's proof: one batch through real worker processes to the strict simulator, every rule.

The simulator (a ``python -m shared.simulator`` process over real HTTP) answers 400 to anything
the real APIs reject, so a zero-rejection run shows every request the adapters built was valid.
The batch covers, per provider:

- OpenAI: o3 and gpt-5-mini with ``max_tokens`` (sent as ``max_completion_tokens``), a line with
  ``stream: true`` (never streamed), a 2,500-input embedding (OpenAI takes 2,048 per call: two
  calls), token-id inputs (flat and nested), and an Azure line on the v1 surface;
- Anthropic: temperature 1.5 + top_p (only temperature is sent, clamped to Anthropic's 0-1),
  OpenAI-style ``metadata``, ``service_tier: "default"`` (sent as ``standard_only``) and
  ``stream: true``; ``response_format`` json_schema (structured output);
- Gemini: 150-input embeddings (batchEmbedContents takes 100: two calls each), one of them base64,
  a Gemini 3 tool round trip whose second turn carries back the thought signature of the first;
- Cohere: a 120-input embedding (/v2/embed takes 96: two calls), a base64 one, chat with top_p 1.0
  (Cohere's ``p`` tops out at 0.99);
- Ollama: a tool round trip (the tool result names its call).

Two lines fail by design, before any request: Anthropic ``response_format: json_object`` (no
Anthropic equivalent; code ``unsupported_parameter``) and token ids to Gemini (it embeds text
only; code ``unsupported_input``). The exact per-route request counts show neither reached it.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from producer.client import FuseboxClient
from shared.config import FileConfig, Settings
from shared.providers.embedding import from_base64
from shared.simulator import SimConfig, SimulatorProcess
from shared.simulator.wire import vector
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import WEATHER_TOOL, stop_processes

pytestmark = pytest.mark.slow

KEY_ENVS = {
    "OPENAI_API_KEY": "sk-proof-key-000000000",
    "AZURE_OPENAI_API_KEY": "az-proof-key-000000000",
    "ANTHROPIC_API_KEY": "sk-ant-proof-key-000000000",
    "GEMINI_API_KEY": "AIza-proof-key-000000000",
    "COHERE_API_KEY": "co-proof-key-000000000",
}
TOOL = WEATHER_TOOL
ASK = {"role": "user", "content": "What is the weather in Paris?"}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
DIMS = 8
CHAT = "/v1/chat/completions"
# Lines whose documented behaviour is a clear error raised before any request: custom_id -> code.
FAIL_BY_DESIGN = {"a-json-object": "unsupported_parameter", "g-embed-tokens": "unsupported_input"}


def config(sim: SimulatorProcess) -> str:
    return f"""
[worker]
max_jobs = 20
poll_delay = 0.01

[providers.openai]
type = "openai"
base_url = "{sim.url_for("openai")}"
max_concurrency = 4
models = ["o3", "gpt-5-mini", "gpt-4o", "text-embedding-3-small"]

[providers.azure]
type = "azure"
base_url = "{sim.base_url}"
models = ["o4-mini"]
options = {{ deployments = {{ "o4-mini" = "o4-mini" }} }}

[providers.anthropic]
type = "anthropic"
base_url = "{sim.url_for("anthropic")}"
models = ["claude-sonnet-4-6"]

[providers.gemini]
type = "gemini"
base_url = "{sim.url_for("gemini")}"
max_concurrency = 4
models = ["gemini-3-pro-preview", "text-embedding-004"]

[providers.cohere]
type = "cohere"
base_url = "{sim.url_for("cohere")}"
max_concurrency = 4
models = ["command-a-03-2025", "embed-v4.0"]

[providers.ollama]
type = "ollama"
base_url = "{sim.url_for("ollama")}"
models = ["llama3.2"]
"""


def line(custom_id: str, url: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def chat(custom_id: str, model: str, messages: list[Any], **extra: Any) -> str:
    return line(custom_id, CHAT, {"model": model, "messages": messages, **extra})


def embed(custom_id: str, model: str, inputs: Any, **extra: Any) -> str:
    return line(custom_id, "/v1/embeddings", {"model": model, "input": inputs, "dimensions": DIMS, **extra})


@asynccontextmanager
async def fleet(
    settings: Settings, redis: Any, tmp_path: Path
) -> AsyncIterator[tuple[SimulatorProcess, FuseboxClient]]:
    """The strict simulator, two worker processes configured for it, and a submitting client."""
    with SimulatorProcess(SimConfig()) as sim:
        text = config(sim)
        cfg = tmp_path / "fusebox.toml"
        cfg.write_text(text)
        env = subprocess_env(settings, FUSEBOX_CONFIG=str(cfg), **KEY_ENVS)
        workers = [
            subprocess.Popen([PYTHON, "-m", "producer.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for _ in range(2)
        ]  # fmt: skip
        try:
            # the submitter checks models against the same providers the workers have
            yield (
                sim,
                FuseboxClient(redis, settings.with_file(FileConfig.model_validate(tomllib.loads(text)))),
            )
        finally:
            stop_processes(workers)


async def run_batch(client: FuseboxClient, lines: list[str]) -> dict[str, Any]:
    """Every line's result; each line succeeded unless it is in FAIL_BY_DESIGN, which failed with its code."""
    sub = await client.submit_batch(lines)
    counts = await client.wait_batch(sub.batch_id, timeout=120)
    results = {r.custom_id: r async for r in client.results(sub.batch_id) if r is not None}
    assert (counts.total, len(results)) == (len(lines), len(lines))
    failed = {k: (r.error.code, r.error.message) for k, r in results.items() if not r.ok}
    expected = {k: c for k, c in FAIL_BY_DESIGN.items() if k in results}
    assert {k: code for k, (code, _) in failed.items()} == expected, failed
    assert (counts.completed, counts.failed) == (len(lines) - len(expected), len(expected))
    return results


async def test_one_batch_through_workers_meets_the_strict_simulator(settings, redis, tmp_path: Path) -> None:
    async with fleet(settings, redis, tmp_path) as (sim, client):
        # The first turn of the Gemini tool loop runs first, so the batch can carry the signed call back.
        first_turn = {"model": "gemini/gemini-3-pro-preview", "messages": [ASK], "tools": [TOOL],
                      "tool_choice": "required"}  # fmt: skip
        pre = await run_batch(client, [line("turn1", CHAT, first_turn)])
        assistant = pre["turn1"].body["choices"][0]["message"]
        [call] = assistant["tool_calls"]
        assert call["extra_content"]["google"]["thought_signature"]

        o_texts = [f"openai input {i}" for i in range(2500)]
        g_texts = [f"gemini input {i}" for i in range(150)]
        c_texts = [f"cohere input {i}" for i in range(120)]
        tokens = [[15339, 1917], [3, 4, 5]]
        ollama_call = {"id": "call_o1", "type": "function",
                       "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
        json_schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
        lines = [
            # OpenAI and Azure
            chat("o3", "openai/o3", [ASK], max_tokens=300, temperature=0.2),
            chat("gpt5", "openai/gpt-5-mini", [ASK], max_tokens=300, top_p=0.5),
            chat("stream", "openai/gpt-4o", [ASK], stream=True, stream_options={"include_usage": True}),
            chat("azure-v1", "azure/o4-mini", [ASK], max_tokens=300, temperature=0.1),
            embed("o-embed", "openai/text-embedding-3-small", o_texts),
            embed("o-tokens", "openai/text-embedding-3-small", tokens),
            embed("o-tokens-flat", "openai/text-embedding-3-small", tokens[0]),
            # Anthropic
            chat(
                "a-samplers",
                "anthropic/claude-sonnet-4-6",
                [ASK],
                temperature=1.5,
                top_p=0.9,
                metadata={"project": "alpha", "run": "7"},
                user="user-42",
                service_tier="default",
                stream=True,
            ),
            chat("a-json-schema", "anthropic/claude-sonnet-4-6", [ASK], response_format=json_schema),
            chat(
                "a-json-object", "anthropic/claude-sonnet-4-6", [ASK], response_format={"type": "json_object"}
            ),
            # Gemini
            embed("g-embed", "gemini/text-embedding-004", g_texts),
            embed("g-embed-b64", "gemini/text-embedding-004", g_texts, encoding_format="base64"),
            embed("g-embed-tokens", "gemini/text-embedding-004", tokens),
            line("g-turn1", CHAT, first_turn),
            chat(
                "g-turn2",
                "gemini/gemini-3-pro-preview",
                [ASK, assistant, {"role": "tool", "tool_call_id": call["id"], "content": "21 C"}],
                tools=[TOOL],
            ),
            # Cohere and Ollama
            embed("c-embed", "cohere/embed-v4.0", c_texts),
            embed("c-embed-b64", "cohere/embed-v4.0", c_texts[:5], encoding_format="base64"),
            chat("c-chat", "cohere/command-a-03-2025", [ASK], top_p=1.0, temperature=0.3),
            chat(
                "o-tools",
                "ollama/llama3.2",
                [
                    ASK,
                    {"role": "assistant", "content": None, "tool_calls": [ollama_call]},
                    {"role": "tool", "tool_call_id": "call_o1", "content": "3 C"},
                ],
                tools=[TOOL],
            ),
        ]
        results = await run_batch(client, lines)

        def body(custom_id: str) -> dict[str, Any]:
            out: dict[str, Any] = results[custom_id].body
            return out

        def message(custom_id: str) -> dict[str, Any]:
            assert body(custom_id)["object"] == "chat.completion"
            out: dict[str, Any] = body(custom_id)["choices"][0]["message"]
            return out

        def vectors(custom_id: str) -> list[Any]:
            data = body(custom_id)["data"]
            assert [d["index"] for d in data] == list(range(len(data)))
            return [d["embedding"] for d in data]

        def expect(model: str, texts: list[str]) -> list[list[float]]:
            # the simulator's vectors are a function of (model, text): equality shows one per input, in order
            return [vector(model, t, DIMS) for t in texts]

        for cid in ("o3", "gpt5", "stream", "azure-v1", "a-samplers", "c-chat", "o-tools", "g-turn2"):
            assert message(cid)["role"] == "assistant" and message(cid)["content"], cid
        assert set(json.loads(message("a-json-schema")["content"])) == {"name", "age"}
        assert results["stream"].usage.completion_tokens > 0

        assert vectors("o-embed") == expect("text-embedding-3-small", o_texts)
        assert results["o-embed"].usage.prompt_tokens > 0
        assert vectors("o-tokens") == expect("text-embedding-3-small", ["15339 1917", "3 4 5"])
        assert vectors("o-tokens-flat") == expect("text-embedding-3-small", ["15339 1917"])
        assert vectors("g-embed") == expect("text-embedding-004", g_texts)
        assert vectors("c-embed") == expect("embed-v4.0", c_texts)
        assert results["c-embed"].usage.prompt_tokens > 0
        for cid, model, texts in (("g-embed-b64", "text-embedding-004", g_texts),
                                  ("c-embed-b64", "embed-v4.0", c_texts[:5])):  # fmt: skip
            decoded = [from_base64(v) for v in vectors(cid)]
            assert decoded == [pytest.approx(v, abs=1e-6) for v in expect(model, texts)], cid

        turn1 = body("g-turn1")["choices"][0]
        assert turn1["finish_reason"] == "tool_calls"
        assert turn1["message"]["tool_calls"][0]["extra_content"] == call["extra_content"]

        # Every request was accepted (no 4xx, no injected failure), and the counts are exactly the
        # calls the succeeding lines need: the by-design failures never reached the simulator.
        expected = {
            "openai": 1 + 1 + 1 + 1 + 2 + 1 + 1,  # o3, gpt5, stream, azure v1, 2,500 inputs in 2, tokens x2
            "anthropic": 2,  # samplers, json_schema (json_object: none)
            "gemini": 1 + 2 + 2 + 1 + 1,  # first turn, 150 inputs in 2 (x2), turn 1, turn 2 (tokens: none)
            "cohere": 2 + 1 + 1,  # 120 inputs in 2, base64, chat
            "ollama": 1,
        }
        stats = sim.stats()["routes"]
        seen = {
            route: (stats[route]["by_status"], stats[route]["requests"], stats[route]["injected"])
            for route in expected
        }
        assert seen == {route: ({"200": n}, n, {}) for route, n in expected.items()}
