"""Issue 9's proof, the Gemini / Cohere / Ollama half: one batch through real worker processes to
the strict simulator.

It covers a 150-input Gemini embedding (two batchEmbedContents calls), a 120-input Cohere
embedding (two /v2/embed calls), base64 output from Gemini, token-free Cohere chat with top_p 1.0
(clamped to 0.99), a Gemini 3 tool round trip carrying the thought signature the first turn
returned, and an Ollama tool round trip. Every line must succeed, every embedding line gives one
vector per input in input order, and the simulator must have answered every request with 200:
any adapter request the real APIs reject would show up as a 400 in its stats.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from producer.client import FuseboxClient
from shared.config import FileConfig
from shared.providers.embedding import from_base64
from shared.simulator import SimConfig, SimulatorProcess
from shared.simulator.wire import vector
from tests.conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow

KEY_ENVS = {"GEMINI_API_KEY": "AIza-proof-key-000000000", "COHERE_API_KEY": "co-proof-key-000000000"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
DIMS = 8


def config(sim: SimulatorProcess) -> str:
    return f"""
[worker]
max_jobs = 20
poll_delay = 0.01

[providers.gemini]
type = "gemini"
base_url = "{sim.url_for("gemini")}"
api_key_env = "GEMINI_API_KEY"
max_concurrency = 4
models = ["gemini-3-pro-preview", "text-embedding-004"]

[providers.cohere]
type = "cohere"
base_url = "{sim.url_for("cohere")}"
api_key_env = "COHERE_API_KEY"
max_concurrency = 4
models = ["command-a-03-2025", "embed-v4.0"]

[providers.ollama]
type = "ollama"
base_url = "{sim.url_for("ollama")}"
models = ["llama3.2"]
"""


def line(custom_id: str, url: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def embed_line(custom_id: str, model: str, texts: list[str], **extra: Any) -> str:
    return line(custom_id, "/v1/embeddings", {"model": model, "input": texts, "dimensions": DIMS, **extra})


async def run_batch(client: FuseboxClient, lines: list[str]) -> dict[str, Any]:
    sub = await client.submit_batch(lines)
    counts = await client.wait_batch(sub.batch_id, timeout=120)
    results = {r.custom_id: r async for r in client.results(sub.batch_id) if r is not None}
    assert (counts.total, len(results)) == (len(lines), len(lines))
    failed = {k: (r.error.code, r.error.message) for k, r in results.items() if not r.ok}
    assert not failed
    assert (counts.completed, counts.failed) == (len(lines), 0)
    return results


async def test_one_batch_through_workers_meets_the_strict_simulator(settings, redis, tmp_path: Path) -> None:
    with SimulatorProcess(SimConfig()) as sim:
        cfg = tmp_path / "fusebox.toml"
        cfg.write_text(config(sim))
        env = subprocess_env(settings, FUSEBOX_CONFIG=str(cfg), **KEY_ENVS)
        workers = [
            subprocess.Popen([PYTHON, "-m", "producer.cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for _ in range(2)
        ]  # fmt: skip
        # the submitter checks models against the same providers the workers have
        client = FuseboxClient(
            redis, settings.with_file(FileConfig.model_validate(tomllib.loads(config(sim))))
        )
        try:
            # The first turn of the tool loop, so the batch can carry the signed call back.
            first_turn = {"model": "gemini/gemini-3-pro-preview", "messages": [ASK], "tools": [TOOL],
                          "tool_choice": "required"}  # fmt: skip
            pre = await run_batch(client, [line("turn1", "/v1/chat/completions", first_turn)])
            assistant = pre["turn1"].body["choices"][0]["message"]
            [call] = assistant["tool_calls"]
            assert call["extra_content"]["google"]["thought_signature"]

            g_texts = [f"gemini input {i}" for i in range(150)]
            c_texts = [f"cohere input {i}" for i in range(120)]
            ollama_call = {"id": "call_o1", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
            lines = [
                embed_line("g-embed", "gemini/text-embedding-004", g_texts),
                embed_line("g-embed-b64", "gemini/text-embedding-004", g_texts, encoding_format="base64"),
                embed_line("c-embed", "cohere/embed-v4.0", c_texts),
                line("g-turn1", "/v1/chat/completions", first_turn),
                line(
                    "g-turn2",
                    "/v1/chat/completions",
                    {
                        "model": "gemini/gemini-3-pro-preview",
                        "messages": [
                            ASK,
                            assistant,
                            {"role": "tool", "tool_call_id": call["id"], "content": "21 C"},
                        ],
                        "tools": [TOOL],
                    },
                ),
                line(
                    "c-chat",
                    "/v1/chat/completions",
                    {
                        "model": "cohere/command-a-03-2025",
                        "messages": [ASK],
                        "top_p": 1.0,
                        "temperature": 0.3,
                    },
                ),
                line(
                    "o-tools",
                    "/v1/chat/completions",
                    {
                        "model": "ollama/llama3.2",
                        "messages": [
                            ASK,
                            {"role": "assistant", "content": None, "tool_calls": [ollama_call]},
                            {"role": "tool", "tool_call_id": "call_o1", "content": "3 C"},
                        ],
                        "tools": [TOOL],
                    },
                ),
            ]
            results = await run_batch(client, lines)

            def vectors(custom_id: str) -> list[Any]:
                data = results[custom_id].body["data"]
                assert [d["index"] for d in data] == list(range(len(data)))
                return [d["embedding"] for d in data]

            # one vector per input, in input order: the simulator's vectors are a function of the text
            assert vectors("g-embed") == [vector("text-embedding-004", t, DIMS) for t in g_texts]
            assert vectors("c-embed") == [vector("embed-v4.0", t, DIMS) for t in c_texts]
            b64 = [from_base64(v) for v in vectors("g-embed-b64")]
            assert b64 == [pytest.approx(vector("text-embedding-004", t, DIMS), abs=1e-6) for t in g_texts]
            assert results["c-embed"].usage.prompt_tokens > 0
            turn1 = results["g-turn1"].body["choices"][0]
            assert turn1["finish_reason"] == "tool_calls"
            assert turn1["message"]["tool_calls"][0]["extra_content"] == call["extra_content"]
            assert results["g-turn2"].body["choices"][0]["message"]["role"] == "assistant"

            stats = sim.stats()["routes"]
            # every provider request was accepted: 2+2 Gemini embed calls, 2 Cohere embed calls, chats
            for route in ("gemini", "cohere", "ollama"):
                assert set(stats[route]["by_status"]) == {"200"}, (route, stats[route]["by_status"])
            assert stats["gemini"]["by_status"]["200"] == 2 + 2 + 2 + 1  # embeds, embeds b64, turn1 x2, turn2
            assert stats["cohere"]["by_status"]["200"] == 2 + 1
            assert stats["ollama"]["by_status"]["200"] == 1
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(20)
                except subprocess.TimeoutExpired:
                    w.kill()
