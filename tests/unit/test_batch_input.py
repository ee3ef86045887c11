"""Every bad-input case gets a clear per-line error; good lines are accepted."""

from __future__ import annotations

import json

import pytest

from producer.batch_input import Validator, file_digest, numbered_lines
from shared.config import FileConfig
from shared.providers.registry import build_providers
from shared.router import Router
from shared.schema import JobResult, JobSpec


def _validator() -> Validator:
    cfg = FileConfig()
    return Validator("b1", Router(build_providers(cfg, env={}), cfg))


def _line(cid="a", url="/v1/chat/completions", body=None, **extra) -> str:
    if body is None:
        body = {"model": "simulated/x", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body, **extra})


def _reject(v: Validator, raw: str, lineno: int = 3) -> JobResult:
    out = v.parse_jsonl(raw, lineno, 0)
    assert isinstance(out, JobResult), out
    assert out.status_code == 400 and out.error is not None
    assert out.error.message.startswith(f"line {lineno}: ")
    return out


def test_good_lines_are_accepted():
    v = _validator()
    chat = v.parse_jsonl(_line("a"), 1, 0)
    emb = v.parse_jsonl(_line("b", "/v1/embeddings", {"model": "simulated/e", "input": "x"}), 2, 1)
    assert isinstance(chat, JobSpec) and chat.kind == "chat" and chat.id == "b1:a" and chat.line == 0
    assert isinstance(emb, JobSpec) and emb.kind == "embed" and emb.line == 1


@pytest.mark.parametrize(
    ("raw", "code", "needle"),
    [
        ('{"custom_id": "a", ', "invalid_json", "invalid JSON"),
        ("[1, 2]", "invalid_line", "JSON object"),
        (
            json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
            "missing_custom_id",
            "custom_id",
        ),
        (_line(url="/v1/completions"), "unsupported_url", "/v1/completions"),
        (_line(body={"messages": [{"role": "user", "content": "x"}]}), "missing_model", "model"),
        (_line(body={"model": "simulated/x", "messages": []}), "invalid_body", "messages"),
        (_line(body={"model": "simulated/x", "messages": [{"content": "x"}]}), "invalid_body", "role"),
        (_line(url="/v1/embeddings", body={"model": "simulated/e"}), "invalid_body", "input"),
        (_line(body={"model": "simulated/x", "messages": "hi"}), "invalid_body", "messages"),
        (_line(method="GET"), "invalid_method", "POST"),
    ],
)
def test_bad_lines(raw, code, needle):
    out = _reject(_validator(), raw)
    assert out.error.code == code
    assert needle in out.error.message


def test_unknown_model_names_the_env_var():
    v = _validator()
    out = _reject(v, _line(body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
    assert out.error.code == "model_not_found"
    assert "OPENAI_API_KEY" in out.error.message
    out = _reject(
        v, _line("b", body={"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "x"}]})
    )
    assert "ANTHROPIC_API_KEY" in out.error.message
    out = _reject(
        v, _line("c", body={"model": "nosuch/model", "messages": [{"role": "user", "content": "x"}]})
    )
    assert "[providers.nosuch]" in out.error.message
    out = _reject(v, _line("d", body={"model": "mystery", "messages": [{"role": "user", "content": "x"}]}))
    assert "simulated/" in out.error.message


def test_duplicate_custom_id_names_both_lines():
    v = _validator()
    assert isinstance(v.parse_jsonl(_line("dup"), 2, 0), JobSpec)
    out = _reject(v, _line("dup"), lineno=9)
    assert out.error.code == "duplicate_custom_id"
    assert "line 9" in out.error.message and "line 2" in out.error.message
    assert out.custom_id is None  # the id belongs to line 2's result


def test_oversize_line():
    v = _validator()
    v.max_line_bytes = 100
    out = _reject(
        v, _line(body={"model": "simulated/x", "messages": [{"role": "user", "content": "x" * 200}]})
    )
    assert out.error.code == "line_too_large"


def test_prompt_lines():
    v = _validator()
    spec = v.parse_prompt("Tell me a joke", 4, 2, "simulated/x", "Be brief", {"temperature": 0.5})
    assert isinstance(spec, JobSpec) and spec.custom_id == "line-4" and spec.line == 2
    assert spec.request is not None
    assert spec.request.messages == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert spec.request.temperature == 0.5


def test_numbered_lines_skip_blank_but_keep_physical_numbers():
    got = list(numbered_lines([b"a\n", b"\n", b"  \n", b"b\r\n"]))
    assert got == [(1, 0, b"a"), (4, 1, b"b")]


def test_file_digest_depends_on_content_and_options(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text("x\n")
    a, b = file_digest(str(p)), file_digest(str(p), "model")
    p.write_text("y\n")
    assert len({a, b, file_digest(str(p))}) == 3 and a.startswith("batch_")


def test_prompt_options_detects_plain_prompt_files(tmp_path):
    from producer.batch_input import prompt_options
    from shared.schema import RequestError

    jsonl, prompts = tmp_path / "a.jsonl", tmp_path / "p.txt"
    jsonl.write_text("\n" + _line() + "\n")
    prompts.write_text("Tell me a joke\n")
    assert prompt_options(str(jsonl), None, None, None) is None
    assert prompt_options(str(prompts), "simulated/x", "Be brief", None) == {
        "model": "simulated/x",
        "system": "Be brief",
    }
    assert prompt_options(str(prompts), None, None, "simulated/d") == {"model": "simulated/d", "system": None}
    with pytest.raises(RequestError) as e:
        prompt_options(str(prompts), None, None, None)
    assert e.value.code == "missing_model" and "--model" in e.value.message
