"""The vendors' own SDKs as the schema oracle for Gemini and Cohere (test-only dependencies).

1. Every request body the adapters build, for a corpus of varied jobs, validates against the SDK's
   pydantic types (google-genai forbids unknown fields; cohere's models allow extras, so unknown
   keys are checked against the model's fields here).
2. Every simulator response parses with the SDK's response models.
3. The official clients, pointed at a simulator process, do chat and embeddings.

Ollama has no SDK among our dependencies: its request bodies are checked against the documented
JSON (api.md: the ``/api/chat`` message fields and ``/api/embed`` input).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pydantic
import pytest

from shared.config import ProviderConfig
from shared.providers.cohere import CohereProvider
from shared.providers.gemini import GeminiProvider
from shared.providers.ollama import OllamaProvider
from shared.schema import ChatRequest, EmbeddingRequest
from shared.simulator import SimulatorProcess, SimulatorServer
from tests.unit.wire import embed_answer, embed_texts

genai_types = pytest.importorskip("google.genai.types")
cohere = pytest.importorskip("cohere")

ENV = {"GEMINI_API_KEY": "AIza-test-key-0000000000", "COHERE_API_KEY": "co-test-key-000000000"}
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CALL = {
    "id": "call_abc",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}
SIGNED = {**CALL, "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJlLWJ5dGVz"}}}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
USER = {"role": "user", "content": "What is the weather in Paris?"}

CHAT_CORPUS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [USER]},
    "system_and_developer": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "No emoji."},
            USER,
        ]
    },
    "samplers": {
        "messages": [USER],
        "temperature": 0.7,
        "top_p": 1.0,
        "max_tokens": 300,
        "stop": ["END", "STOP"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
    },
    "max_completion_tokens_and_single_stop": {"messages": [USER], "max_completion_tokens": 50, "stop": "END"},
    "tools_auto": {"messages": [USER], "tools": [TOOL], "tool_choice": "auto"},
    "tools_required": {"messages": [USER], "tools": [TOOL], "tool_choice": "required"},
    "tools_none": {"messages": [USER], "tools": [TOOL], "tool_choice": "none"},
    "tools_named": {
        "messages": [USER],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "tool_results": {
        "messages": [
            USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_def"}]},
            {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 21}'},
            {"role": "tool", "tool_call_id": "call_def", "content": "sunny"},
        ],
        "tools": [TOOL],
    },
    "tool_results_signed": {
        "messages": [
            USER,
            {"role": "assistant", "content": "Let me check.", "tool_calls": [SIGNED]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "21 C"},
        ],
        "tools": [TOOL],
    },
    "images": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe both."},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ]
    },
    "json_object": {"messages": [USER], "response_format": {"type": "json_object"}},
    "json_schema": {
        "messages": [USER],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
    },
    "multi_turn": {
        "messages": [
            USER,
            {"role": "assistant", "content": "Sunny."},
            {"role": "user", "content": "Tomorrow?"},
        ]
    },
}
EMBED_CORPUS: dict[str, dict[str, Any]] = {
    "one_string": {"input": "hello"},
    "strings": {"input": ["a", "b", "c"]},
    "dimensions": {"input": ["a", "b"], "dimensions": 64},
    "many": {"input": [f"t{i}" for i in range(130)]},
}

GEMINI_TEXT = {
    "candidates": [
        {"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP", "index": 0}
    ],
    "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
}
COHERE_TEXT = {
    "id": "x",
    "finish_reason": "COMPLETE",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
}


class Echo:
    """A MockTransport handler that records bodies and answers embeddings with the right count."""

    def __init__(self, chat_answer: dict[str, Any]) -> None:
        self.chat_answer = chat_answer
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path
        self.bodies.append((path, body))
        texts = embed_texts(path, body)
        if texts is not None:
            return httpx.Response(200, json=embed_answer(path, body, [[0.1] for _ in texts]))
        return httpx.Response(200, json=self.chat_answer)


def validate_json(model: Any, value: Any) -> Any:
    """JSON-mode validation, as the SDK reads the wire (camelCase aliases, base64 bytes)."""
    return model.model_validate_json(json.dumps(value))


# -- Gemini requests --------------------------------------------------------------------------------

GEMINI_REQUEST_FIELDS = {
    "contents": genai_types.Content,
    "systemInstruction": genai_types.Content,
    "generationConfig": genai_types.GenerationConfig,
    "tools": genai_types.Tool,
    "toolConfig": genai_types.ToolConfig,
    "safetySettings": genai_types.SafetySetting,
    "cachedContent": None,
    "labels": None,  # what google-genai's own request builder sends for the Gemini API
}


def check_gemini_generate(body: dict[str, Any]) -> None:
    assert set(body) <= set(GEMINI_REQUEST_FIELDS), set(body) - set(GEMINI_REQUEST_FIELDS)
    for key, value in body.items():
        model = GEMINI_REQUEST_FIELDS[key]
        for item in value if isinstance(value, list) else [value]:
            if model is not None:
                validate_json(model, item)


def check_gemini_embed(body: dict[str, Any]) -> None:
    requests = body["requests"] if "requests" in body else [body]
    assert len(requests) <= 100
    for r in requests:
        assert set(r) <= {"model", "content", "taskType", "outputDimensionality", "title"}, r
        assert r["model"].startswith("models/")
        validate_json(genai_types.Content, r["content"])
        validate_json(
            genai_types.EmbedContentConfig, {k: v for k, v in r.items() if k not in ("model", "content")}
        )


@pytest.mark.parametrize(
    "body",
    [
        {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "temperature": 0.5},  # not top-level
        {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": "x"}}]}]},
        {
            "contents": [
                {"role": "model", "parts": [{"functionCall": {"name": "f"}, "thoughtSignature": "!!"}]}
            ]
        },
        {"contents": [], "generationConfig": {"stopSequences": "END"}},
        {"contents": [{"role": "user", "parts": [{"text": "x", "bogus": 1}]}]},
    ],
)
def test_the_gemini_oracle_rejects_what_the_api_rejects(body: dict[str, Any]) -> None:
    with pytest.raises((AssertionError, pydantic.ValidationError)):
        check_gemini_generate(body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "tool", "content": "x"}]},  # no tool_call_id
        {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]},  # unknown key
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0.5},  # OpenAI's name
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "p": 1.0},  # out of range
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"},
    ],
)
def test_the_cohere_oracle_rejects_what_the_api_rejects(body: dict[str, Any]) -> None:
    with pytest.raises((AssertionError, pydantic.ValidationError)):
        check_cohere_chat(body)


@pytest.mark.parametrize("case", sorted(CHAT_CORPUS))
@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-3-pro-preview"])
async def test_gemini_chat_requests_validate_against_google_genai(case: str, model: str) -> None:
    echo = Echo(GEMINI_TEXT)
    p = GeminiProvider("gemini", ProviderConfig(type="gemini"), env=ENV, transport=httpx.MockTransport(echo))
    extra = {
        "top_k": 40,
        "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
    }
    await p.chat(ChatRequest.from_body({"model": model, **CHAT_CORPUS[case], **extra}), model)
    [(path, body)] = echo.bodies
    assert path.endswith(f"/models/{model}:generateContent")
    check_gemini_generate(body)


@pytest.mark.parametrize("case", sorted(EMBED_CORPUS))
async def test_gemini_embed_requests_validate_against_google_genai(case: str) -> None:
    echo = Echo(GEMINI_TEXT)
    p = GeminiProvider(
        "gemini",
        ProviderConfig(type="gemini", options={"task_type": "RETRIEVAL_DOCUMENT"}),
        env=ENV,
        transport=httpx.MockTransport(echo),
    )
    await p.embed(EmbeddingRequest.from_body({"model": "m", **EMBED_CORPUS[case]}), "gemini-embedding-001")
    assert echo.bodies
    for _, body in echo.bodies:
        check_gemini_embed(body)


# -- Cohere requests --------------------------------------------------------------------------------

COHERE_MESSAGES = {
    "user": cohere.UserChatMessageV2,
    "assistant": cohere.AssistantChatMessageV2,
    "system": cohere.SystemChatMessageV2,
    "tool": cohere.ToolChatMessageV2,
}


def known_keys(model: type[pydantic.BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def strict(model: type[pydantic.BaseModel], value: dict[str, Any]) -> None:
    """Cohere's models accept extra keys; the API's schema does not, so check them here."""
    assert set(value) <= known_keys(model), (model.__name__, set(value) - known_keys(model))
    model.model_validate(value)


def chat_params() -> set[str]:
    import inspect

    from cohere.v2.client import V2Client

    return set(inspect.signature(V2Client.chat).parameters) - {"self", "request_options"}


def check_cohere_chat(body: dict[str, Any]) -> None:
    assert set(body) <= chat_params(), set(body) - chat_params()
    for m in body["messages"]:
        strict(COHERE_MESSAGES[m["role"]], m)
        for tc in m.get("tool_calls") or ():
            strict(cohere.ToolCallV2, tc)
            strict(cohere.ToolCallV2Function, tc["function"])
    for t in body.get("tools") or ():
        strict(cohere.ToolV2, t)
        strict(cohere.ToolV2Function, t["function"])
    if "response_format" in body:
        pydantic.TypeAdapter(cohere.ResponseFormatV2).validate_python(body["response_format"])
    if "tool_choice" in body:
        pydantic.TypeAdapter(cohere.V2ChatRequestToolChoice).validate_python(body["tool_choice"])
        assert body["tool_choice"] in ("REQUIRED", "NONE")  # the SDK type is open-ended; the API is not
    if "p" in body:
        assert 0.01 <= body["p"] <= 0.99  # the API's documented range (the SDK types do not say)
    for key in ("temperature", "frequency_penalty", "presence_penalty"):
        if key in body:
            assert isinstance(body[key], int | float)


@pytest.mark.parametrize("case", sorted(set(CHAT_CORPUS) - {"images"}))
async def test_cohere_chat_requests_validate_against_cohere_sdk(case: str) -> None:
    echo = Echo(COHERE_TEXT)
    p = CohereProvider("cohere", ProviderConfig(type="cohere"), env=ENV, transport=httpx.MockTransport(echo))
    await p.chat(
        ChatRequest.from_body({"model": "command-a-03-2025", **CHAT_CORPUS[case], "k": 5}),
        "command-a-03-2025",
    )
    [(path, body)] = echo.bodies
    assert path == "/v2/chat"
    check_cohere_chat(body)


@pytest.mark.parametrize("case", sorted(EMBED_CORPUS))
async def test_cohere_embed_requests_validate_against_cohere_sdk(case: str) -> None:
    import inspect

    from cohere.v2.client import V2Client

    params = set(inspect.signature(V2Client.embed).parameters) - {"self", "request_options"}
    echo = Echo(COHERE_TEXT)
    p = CohereProvider("cohere", ProviderConfig(type="cohere"), env=ENV, transport=httpx.MockTransport(echo))
    await p.embed(EmbeddingRequest.from_body({"model": "m", **EMBED_CORPUS[case]}), "embed-v4.0")
    for _, body in echo.bodies:
        assert set(body) <= params
        assert 1 <= len(body["texts"]) <= 96 and all(isinstance(t, str) for t in body["texts"])
        pydantic.TypeAdapter(cohere.EmbedInputType).validate_python(body["input_type"])
        pydantic.TypeAdapter(list[cohere.EmbeddingType]).validate_python(body["embedding_types"])


# -- Ollama requests: the documented JSON -------------------------------------------------------------

OLLAMA_CHAT_FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"}
OLLAMA_MESSAGE_FIELDS = {"role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"}


@pytest.mark.parametrize("case", sorted(CHAT_CORPUS))
async def test_ollama_chat_requests_follow_the_documented_json(case: str) -> None:
    echo = Echo({"model": "m", "message": {"role": "assistant", "content": "ok"}, "done": True})
    p = OllamaProvider("ollama", ProviderConfig(type="ollama"), env={}, transport=httpx.MockTransport(echo))
    await p.chat(ChatRequest.from_body({"model": "m", **CHAT_CORPUS[case]}), "llama3.2")
    [(path, body)] = echo.bodies
    assert path == "/api/chat" and body["stream"] is False
    assert set(body) <= OLLAMA_CHAT_FIELDS
    for m in body["messages"]:
        assert set(m) <= OLLAMA_MESSAGE_FIELDS and m["role"] in ("system", "user", "assistant", "tool")
        assert isinstance(m["content"], str)
        assert all(isinstance(i, str) for i in m.get("images", ()))
        for tc in m.get("tool_calls", ()):
            assert isinstance(tc["function"]["name"], str) and isinstance(tc["function"]["arguments"], dict)
        if m["role"] == "tool":
            assert "tool_name" in m or "tool_call_id" in m
    for key in body.get("options", {}):
        assert key in {
            "temperature",
            "top_p",
            "num_predict",
            "stop",
            "seed",
            "top_k",
            "presence_penalty",
            "frequency_penalty",
        }


@pytest.mark.parametrize("case", sorted(EMBED_CORPUS))
async def test_ollama_embed_requests_follow_the_documented_json(case: str) -> None:
    echo = Echo({})
    p = OllamaProvider("ollama", ProviderConfig(type="ollama"), env={}, transport=httpx.MockTransport(echo))
    await p.embed(EmbeddingRequest.from_body({"model": "m", **EMBED_CORPUS[case]}), "nomic-embed-text")
    [(_, body)] = echo.bodies
    assert set(body) <= {"model", "input", "dimensions", "truncate", "keep_alive", "options"}
    assert isinstance(body["input"], list) and all(isinstance(t, str) for t in body["input"])


# -- simulator responses parse with the SDK response models ---------------------------------------------


async def test_simulator_gemini_responses_parse_with_google_genai(sim: SimulatorServer) -> None:
    base = sim.url_for("gemini") + "/models/"
    tools = [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"type": "object"}}]}]
    user = [{"role": "user", "parts": [{"text": "hi"}]}]
    async with httpx.AsyncClient() as c:
        for model, extra in (
            ("gemini-2.5-flash", {}),
            (
                "gemini-3-pro-preview",
                {"tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
            ),
            ("gemini-2.5-flash", {"generationConfig": {"responseMimeType": "application/json"}}),
        ):
            r = await c.post(base + f"{model}:generateContent", json={"contents": user, **extra})
            assert r.status_code == 200
            parsed = genai_types.GenerateContentResponse.model_validate_json(r.content)
            assert parsed.candidates and parsed.usage_metadata.total_token_count > 0
            if extra.get("tools"):
                part = parsed.candidates[0].content.parts[0]
                assert part.function_call.name == "f" and part.thought_signature
        one = await c.post(
            base + "text-embedding-004:embedContent", json={"content": {"parts": [{"text": "a"}]}}
        )
        validate_json(genai_types.ContentEmbedding, one.json()["embedding"])
        batch = {
            "requests": [
                {"model": "models/text-embedding-004", "content": {"parts": [{"text": t}]}} for t in "ab"
            ]
        }
        many = await c.post(base + "text-embedding-004:batchEmbedContents", json=batch)
        assert len(genai_types.EmbedContentResponse.model_validate_json(many.content).embeddings) == 2
        err = await c.post(
            base + "text-embedding-004:batchEmbedContents", json={"requests": batch["requests"] * 51}
        )
        assert err.status_code == 400
        from google.genai import errors

        assert errors.APIError(400, err.json()).status == "INVALID_ARGUMENT"


async def test_simulator_cohere_responses_parse_with_cohere_sdk(sim: SimulatorServer) -> None:
    base = sim.url_for("cohere")
    msgs = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    async with httpx.AsyncClient() as c:
        for extra in ({}, {"tools": [tool], "tool_choice": "REQUIRED"}):
            r = await c.post(
                base + "/v2/chat", json={"model": "command-a-03-2025", "messages": msgs, **extra}
            )
            strict_response = r.json()
            parsed = pydantic.TypeAdapter(cohere.V2ChatResponse).validate_python(strict_response)
            assert set(strict_response) <= known_keys(cohere.V2ChatResponse)
            assert set(strict_response["message"]) <= known_keys(cohere.AssistantMessageResponse)
            assert parsed.finish_reason in ("COMPLETE", "TOOL_CALL")
            if extra:
                assert parsed.message.tool_calls[0].function.name == "f"
        emb = {
            "model": "embed-v4.0",
            "texts": ["a", "b"],
            "input_type": "search_query",
            "embedding_types": ["float"],
        }
        r = await c.post(base + "/v2/embed", json=emb)
        parsed_emb = pydantic.TypeAdapter(cohere.EmbedByTypeResponse).validate_python(r.json())
        assert set(r.json()) <= known_keys(cohere.EmbedByTypeResponse)
        assert len(parsed_emb.embeddings.float_) == 2


# -- the official clients against a simulator process ---------------------------------------------------


@pytest.fixture(scope="module")
def sim_process() -> Iterator[SimulatorProcess]:
    with SimulatorProcess() as proc:
        yield proc


async def test_google_genai_client_against_the_simulator(sim_process: SimulatorProcess) -> None:
    from google import genai

    base = sim_process.url_for("gemini").removesuffix("/v1beta")
    client = genai.Client(
        api_key="AIza-test", http_options=genai_types.HttpOptions(base_url=base, api_version="v1beta")
    )
    resp = await client.aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="Say hello",
        config=genai_types.GenerateContentConfig(
            system_instruction="Be brief.", max_output_tokens=200, temperature=0.2
        ),
    )
    assert resp.text and resp.usage_metadata.prompt_token_count > 0
    decl = genai_types.FunctionDeclaration(name="get_weather", parameters_json_schema={"type": "object"})
    forced = await client.aio.models.generate_content(
        model="gemini-3-pro-preview",
        contents="Weather?",
        config=genai_types.GenerateContentConfig(
            tools=[genai_types.Tool(function_declarations=[decl])],
            tool_config=genai_types.ToolConfig(
                function_calling_config=genai_types.FunctionCallingConfig(mode="ANY")
            ),
        ),
    )
    part = forced.candidates[0].content.parts[0]
    assert part.function_call.name == "get_weather" and part.thought_signature
    # the SDK sends the model's turn back as it got it (signature included): the strict simulator accepts it
    follow = await client.aio.models.generate_content(
        model="gemini-3-pro-preview",
        contents=[
            genai_types.Content(role="user", parts=[genai_types.Part(text="Weather?")]),
            forced.candidates[0].content,
            genai_types.Content(
                role="user",
                parts=[genai_types.Part.from_function_response(name="get_weather", response={"temp_c": 21})],
            ),
        ],
        config=genai_types.GenerateContentConfig(tools=[genai_types.Tool(function_declarations=[decl])]),
    )
    assert follow.candidates
    emb = await client.aio.models.embed_content(
        model="text-embedding-004",
        contents=["a", "b", "c"],
        config=genai_types.EmbedContentConfig(output_dimensionality=16),
    )
    assert [len(e.values) for e in emb.embeddings] == [16, 16, 16]
    await client.aio.aclose()


async def test_cohere_client_against_the_simulator(sim_process: SimulatorProcess) -> None:
    client = cohere.AsyncClientV2(api_key="co-test", base_url=sim_process.url_for("cohere"))
    resp = await client.chat(
        model="command-a-03-2025", messages=[{"role": "user", "content": "hi"}], p=0.99, max_tokens=100
    )
    assert resp.finish_reason == "COMPLETE" and resp.message.content[0].text
    tool = cohere.ToolV2(
        type="function", function=cohere.ToolV2Function(name="f", parameters={"type": "object"})
    )
    called = await client.chat(
        model="command-a-03-2025",
        messages=[{"role": "user", "content": "hi"}],
        tools=[tool],
        tool_choice="REQUIRED",
    )
    assert called.finish_reason == "TOOL_CALL" and called.message.tool_calls[0].function.name == "f"
    emb = await client.embed(
        model="embed-v4.0", texts=["a", "b"], input_type="search_document", embedding_types=["float"]
    )
    assert len(emb.embeddings.float_) == 2
    with pytest.raises(cohere.BadRequestError):
        await client.embed(
            model="embed-v4.0", texts=["a"] * 97, input_type="search_document", embedding_types=["float"]
        )
    with pytest.raises(cohere.BadRequestError):
        await client.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "hi"}], p=1.0)
