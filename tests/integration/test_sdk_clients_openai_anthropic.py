"""The official OpenAI and Anthropic SDK clients against a running ``fusebox simulate``.

Real clients check the simulator's wire format (paths, headers, bodies, SSE, error shapes and
the typed exceptions they map to); Fusebox's own adapters then run the issue-9 cases against the
same strict server, which must record no rejection for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.anthropic import AnthropicProvider
from shared.providers.openai import AzureOpenAIProvider, OpenAIProvider
from shared.schema import ChatRequest, EmbeddingRequest
from shared.simulator import SimConfig, SimulatorProcess

KEY = "sk-sim-sdk-0123456789"
USER = [{"role": "user", "content": "Say hello."}]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(SimConfig.model_validate({"seed": 3, "defaults": {"api_key": KEY}})) as s:
        yield s


@pytest.fixture
def oai(sim: SimulatorProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url_for("openai"), api_key=KEY, max_retries=0)


@pytest.fixture
def claude(sim: SimulatorProcess) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.url_for("anthropic"), api_key=KEY, max_retries=0)


def _status_counts(sim: SimulatorProcess, route: str) -> dict[str, int]:
    return dict(sim.stats()["routes"][route]["by_status"])


# ---- OpenAI ---------------------------------------------------------------------------------


async def test_openai_sdk_chat_tools_n_and_json_schema(oai: openai.AsyncOpenAI) -> None:
    r = await oai.chat.completions.create(model="gpt-4o-mini", messages=USER, n=2, max_completion_tokens=50)
    assert len(r.choices) == 2 and r.choices[0].message.content and r.usage is not None
    r = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, tools=[WEATHER], tool_choice="required"
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
    r = await oai.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": SCHEMA, "strict": True},
        },
    )
    assert set(json.loads(r.choices[0].message.content or "")) == {"name", "age"}


async def test_openai_sdk_stream_reassembles(oai: openai.AsyncOpenAI) -> None:
    plain = await oai.chat.completions.create(model="gpt-4o", messages=USER, seed=1)
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, seed=1, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
        usage = chunk.usage or usage
    assert text == plain.choices[0].message.content  # the same reply, streamed
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "inp", ["hello", ["a", "b", "c"], [15339, 1917], [[15339, 1917], [3, 4, 5]]], ids=str
)
async def test_openai_sdk_embeddings_every_input_shape(oai: openai.AsyncOpenAI, inp: Any) -> None:
    n = len(inp) if isinstance(inp, list) and not isinstance(inp[0], int) else 1
    # The SDK asks for base64 by default and decodes it: the simulator's encoding is checked too.
    r = await oai.embeddings.create(model="text-embedding-3-small", input=inp, dimensions=16)
    assert [d.index for d in r.data] == list(range(n)) and all(len(d.embedding) == 16 for d in r.data)
    f = await oai.embeddings.create(
        model="text-embedding-3-small", input=inp, dimensions=16, encoding_format="float"
    )
    for a, b in zip(f.data, r.data, strict=True):  # base64 float32 decodes to the float answer
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)


@pytest.mark.parametrize("shape", ["text", "tokens"])
async def test_openai_sdk_embeddings_at_most_2048_inputs(oai: openai.AsyncOpenAI, shape: str) -> None:
    def inputs(n: int) -> Any:
        return [f"t{i}" for i in range(n)] if shape == "text" else [[i, 7] for i in range(n)]

    r = await oai.embeddings.create(model="text-embedding-3-small", input=inputs(2048), dimensions=4)
    assert len(r.data) == 2048
    with pytest.raises(openai.BadRequestError) as ei:  # one over OpenAI's per-call limit
        await oai.embeddings.create(model="text-embedding-3-small", input=inputs(2049), dimensions=4)
    assert ei.value.status_code == 400 and ei.value.type == "invalid_request_error"
    assert "'$.input' is invalid" in ei.value.message and ei.value.param is None


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"model": "o3", "max_tokens": 10}, "max_tokens", "unsupported_parameter"),
        ({"model": "gpt-5-mini", "temperature": 0.3}, "temperature", "unsupported_value"),
        ({"model": "o4-mini", "top_p": 0.5}, "top_p", "unsupported_value"),
        ({"model": "o1", "logprobs": True}, "logprobs", "unsupported_parameter"),
    ],
)
async def test_openai_sdk_reasoning_rules_raise_bad_request(
    oai: openai.AsyncOpenAI, kwargs: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        await oai.chat.completions.create(messages=USER, **kwargs)
    assert ei.value.status_code == 400 and ei.value.code == code and ei.value.param == param
    assert ei.value.type == "invalid_request_error"


async def test_openai_sdk_typed_errors(sim: SimulatorProcess, oai: openai.AsyncOpenAI) -> None:
    bad = openai.AsyncOpenAI(base_url=sim.url_for("openai"), api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(model="gpt-4o", messages=[])


# ---- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_sdk_messages_tools_and_structured_output(claude: anthropic.AsyncAnthropic) -> None:
    m = await claude.messages.create(
        model="claude-sonnet-4-6", max_tokens=200, system="Be brief.", messages=USER
    )
    assert m.type == "message" and m.content[0].type == "text" and m.stop_reason == "end_turn"
    assert m.usage.input_tokens > 0
    m = await claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=USER,
        tools=[{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}],  # type: ignore[index]
        tool_choice={"type": "any"},
    )
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    m = await claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=200,
        messages=USER,
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    assert set(json.loads(m.content[0].text)) == {"name", "age"}  # type: ignore[union-attr]


async def test_anthropic_sdk_stream_final_message(claude: anthropic.AsyncAnthropic) -> None:
    plain = await claude.messages.create(model="claude-sonnet-4-6", max_tokens=300, messages=USER)
    async with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=300, messages=USER) as s:
        final = await s.get_final_message()
    assert final.content[0].text == plain.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == plain.stop_reason and final.usage.output_tokens == plain.usage.output_tokens
    tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]  # type: ignore[index]
    async with claude.messages.stream(
        model="claude-sonnet-4-6", max_tokens=300, messages=USER, tools=tools, tool_choice={"type": "any"}
    ) as s:
        final = await s.get_final_message()
    assert final.content[0].type == "tool_use" and isinstance(final.content[0].input["city"], str)  # type: ignore[union-attr]


V2023 = {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize(
    ("headers", "extra", "message"),
    [
        ({}, {"temperature": 0.5}, "temperature: Extra inputs are not permitted"),  # SDK default 2026-10-21
        (V2023, {"temperature": 0.5, "top_p": 0.9}, "`temperature` and `top_p` cannot both be specified"),
        (V2023, {"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        (V2023, {"metadata": {"user_id": "u", "project": "x"}}, "metadata.project: Extra inputs"),
        (V2023, {"service_tier": "default"}, "service_tier: Input should be 'auto' or 'standard_only'"),
        (V2023, {"frequency_penalty": 0.2}, "frequency_penalty: Extra inputs are not permitted"),
    ],
)
async def test_anthropic_sdk_strict_rules_raise_bad_request(
    claude: anthropic.AsyncAnthropic, headers: dict[str, str], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as ei:
        await claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=USER, extra_headers=headers, extra_body=extra
        )
    assert ei.value.status_code == 400
    assert ei.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message in ei.value.body["error"]["message"]  # type: ignore[index]


async def test_anthropic_sdk_typed_errors(sim: SimulatorProcess) -> None:
    bad = anthropic.AsyncAnthropic(base_url=sim.url_for("anthropic"), api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await bad.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=USER)


# ---- Fusebox's adapters: every issue-9 case succeeds against the strict simulator -----------


def _openai(sim: SimulatorProcess) -> OpenAIProvider:
    cfg = ProviderConfig(type="openai", base_url=sim.url_for("openai"))
    return OpenAIProvider("openai", cfg, env={"OPENAI_API_KEY": KEY})


async def test_adapters_pass_the_strict_simulator(sim: SimulatorProcess) -> None:
    before = {r: _status_counts(sim, r) for r in ("openai", "anthropic")}
    p = _openai(sim)
    for model in ("o3", "gpt-5-mini", "o4-mini"):
        job = {
            "model": model,
            "messages": USER,
            "max_tokens": 400,
            "temperature": 0.2,
            "top_p": 0.3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        r = await p.chat(ChatRequest.from_body(job), model)
        assert r.body["object"] == "chat.completion" and r.body["choices"][0]["message"]["content"]
    emb = await p.embed(
        EmbeddingRequest.from_body({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8}),
        "text-embedding-3-small",
    )
    assert [d["index"] for d in emb.body["data"]] == [0, 1]
    await p.aclose()

    # Azure's v1 surface: /openai/v1/chat/completions, api-key header, deployment in "model".
    az = AzureOpenAIProvider(
        "azure",
        ProviderConfig(type="azure", base_url=sim.base_url, options={"deployments": {"o3": "o3"}}),
        env={"AZURE_OPENAI_API_KEY": KEY},
    )
    r = await az.chat(ChatRequest.from_body({"model": "o3", "messages": USER, "max_tokens": 99}), "o3")
    assert r.body["choices"][0]["message"]["content"]
    await az.aclose()

    c = AnthropicProvider(
        "claude",
        ProviderConfig(type="anthropic", base_url=sim.url_for("anthropic")),
        env={"ANTHROPIC_API_KEY": KEY},
    )
    job = {
        "model": "claude-sonnet-4-6",
        "messages": USER,
        "temperature": 1.5,
        "top_p": 0.9,
        "metadata": {"project": "alpha", "run": "7"},
        "user": "user-42",
        "service_tier": "default",
        "stream": True,
        "frequency_penalty": 0.3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}},
    }
    r = await c.chat(ChatRequest.from_body(job), "claude-sonnet-4-6")
    assert set(json.loads(r.body["choices"][0]["message"]["content"])) == {"name", "age"}
    c26 = AnthropicProvider(
        "claude26",
        ProviderConfig(
            type="anthropic", base_url=sim.url_for("anthropic"), options={"anthropic_version": "2026-10-21"}
        ),
        env={"ANTHROPIC_API_KEY": KEY},
    )
    r = await c26.chat(ChatRequest.from_body({**job, "response_format": None}), "claude-sonnet-4-6")
    assert r.body["choices"][0]["message"]["content"]
    await c.aclose()
    await c26.aclose()

    after = {r: _status_counts(sim, r) for r in ("openai", "anthropic")}
    for route in after:  # every call above was answered 200: the simulator rejected nothing
        new = {k: v - before[route].get(k, 0) for k, v in after[route].items()}
        assert {k: v for k, v in new.items() if v} == {"200": new.get("200", 0)} and new["200"] > 0


# ---- Azure OpenAI: both GA surfaces ---------------------------------------------------------


async def test_azure_sdk_client_dated_surface_and_reasoning_version_rule(sim: SimulatorProcess) -> None:
    new = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_version="2025-04-01-preview", api_key=KEY, max_retries=0
    )
    r = await new.chat.completions.create(model="o3", messages=USER, max_completion_tokens=50)
    assert r.choices[0].message.content
    e = await new.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in e.data] == [0, 1]
    old = openai.AsyncAzureOpenAI(
        azure_endpoint=sim.base_url, api_version="2024-10-21", api_key=KEY, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as ei:
        await old.chat.completions.create(model="o3", messages=USER)
    assert "enabled only for api versions 2025-04-01-preview and later" in str(ei.value)
    assert (await old.chat.completions.create(model="gpt-4o", messages=USER)).choices[0].message.content


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({}, True),  # the default: the GA v1 surface, no api-version
        ({"api_version": "2025-04-01-preview"}, True),
        ({"api_version": "2024-10-21"}, False),  # the last dated GA predates reasoning deployments
    ],
)
async def test_azure_adapter_reasoning_deployment(
    sim: SimulatorProcess, options: dict[str, Any], ok: bool
) -> None:

    cfg = ProviderConfig(
        type="azure", base_url=sim.base_url, options={**options, "deployments": {"r": "o4-mini"}}
    )
    az = AzureOpenAIProvider("azure", cfg, env={"AZURE_OPENAI_API_KEY": KEY})
    job = ChatRequest.from_body({"model": "r", "messages": USER, "max_tokens": 40, "temperature": 0.1})
    try:
        if ok:
            assert (await az.chat(job, "r")).body["choices"][0]["message"]["content"]
        else:
            with pytest.raises(ProviderError) as ei:
                await az.chat(job, "r")
            assert (ei.value.error_class, ei.value.status) == (ErrorClass.FINAL, 400)
            assert "2025-04-01-preview" in ei.value.message
    finally:
        await az.aclose()
