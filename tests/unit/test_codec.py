"""Round trips of every wire/storage type through the msgpack codec and arq's serializer hooks."""

from __future__ import annotations

import msgspec
from arq.jobs import deserialize_job_raw, serialize_job

from shared import codec
from shared.schema import (
    Attempt,
    BatchInputLine,
    ChatRequest,
    EmbeddingRequest,
    ErrorInfo,
    JobResult,
    JobSpec,
    OutputLine,
    Usage,
)

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi", "name": "ann"}],
    "temperature": 0.2,
    "logit_bias": {"50256": -100},
    "metadata": {"tenant": "t1"},
}


def test_chat_request_keeps_unknown_fields():
    req = ChatRequest.from_body(BODY)
    assert req.extra == {"logit_bias": {"50256": -100}, "metadata": {"tenant": "t1"}}
    assert req.to_body() == BODY
    assert req.messages[0]["name"] == "ann"


def test_job_spec_round_trip():
    spec = JobSpec(id="b:1", request=ChatRequest.from_body(BODY), batch_id="b", custom_id="1", line=7)
    back = codec.decode_spec(codec.encode_spec(spec))
    assert back == spec
    assert back.req().to_body() == BODY
    assert back.kind == "chat"
    emb = JobSpec(
        id="e", embed=EmbeddingRequest.from_body({"model": "m", "input": ["a", "b"], "dimensions": 8})
    )
    back = codec.decode_spec(codec.encode_spec(emb))
    assert back.kind == "embed" and back.embed is not None and back.embed.texts() == ["a", "b"]


def test_job_result_round_trip():
    r = JobResult(
        id="x",
        status_code=429,
        error=ErrorInfo(
            code="rate_limit_exceeded", message="slow down", error_class="rate_limited", status=429
        ),
        attempts=[
            Attempt(
                provider="openai", model="gpt-4o", latency_ms=12.5, status=429, error_class="rate_limited"
            )
        ],
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7, cached_tokens=1),
        cost_usd=0.001,
    )
    assert codec.decode_result(codec.encode_result(r)) == r


def test_arq_serializer_round_trip_keeps_spec_bytes():
    raw = codec.encode_spec(JobSpec(id="j", request=ChatRequest.from_body(BODY)))
    blob = serialize_job("chat", (raw,), {}, 2, 123, serializer=codec.arq_serializer)
    fn, args, kwargs, tries, et = deserialize_job_raw(blob, deserializer=codec.arq_deserializer)
    assert (fn, kwargs, tries, et) == ("chat", {}, 2, 123)
    assert codec.decode_spec(args[0]).id == "j"


def test_arq_serializer_encodes_exceptions_as_text():
    # arq stores a failed job's exception in its result; msgpack must not choke on it.
    data = codec.arq_deserializer(codec.arq_serializer({"r": ValueError("boom")}))
    assert data == {"r": "ValueError: boom"}


def test_batch_input_line_decodes_from_json():
    line = msgspec.json.decode(
        b'{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}',
        type=BatchInputLine,
    )
    assert (line.custom_id, line.url, line.body["input"]) == ("a", "/v1/embeddings", "x")


def test_output_line_shapes():
    ok = JobResult(
        id="b:1", status_code=200, body={"object": "chat.completion"}, custom_id="1", request_id="r1"
    )
    out = msgspec.to_builtins(OutputLine.from_result(ok))
    assert out["response"] == {"status_code": 200, "request_id": "r1", "body": {"object": "chat.completion"}}
    assert out["error"] is None and out["id"].startswith("batch_req_")
    bad = JobResult(id="b:2", status_code=400, error=ErrorInfo(code="invalid_json", message="line 2: bad"))
    out = msgspec.to_builtins(OutputLine.from_result(bad))
    assert out["response"] is None
    assert out["error"] == {"code": "invalid_json", "message": "line 2: bad"}
    upstream = JobResult(
        id="b:3", status_code=401, error=ErrorInfo(code="invalid_api_key", message="no", status=401)
    )
    out = msgspec.to_builtins(OutputLine.from_result(upstream))
    assert out["response"]["status_code"] == 401
    assert out["response"]["body"]["error"]["code"] == "invalid_api_key"
