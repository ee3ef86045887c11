"""Issue 8 defect 5 and issue 14: lines that used to crash a submission are that line's error; input
files no line can come from are refused with a message; the routing table producers check models by."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from producer.batch_input import Validator, numbered_lines, prompt_options
from shared.config import FileConfig, RouteConfig
from shared.providers.registry import build_providers
from shared.router import Router
from shared.routing_table import build_table, router_from_table
from shared.schema import Attempt, ErrorInfo, JobResult, JobSpec, RequestError
from shared.usage import UsageRow, dims, group_rows


def _validator() -> Validator:
    cfg = FileConfig()
    return Validator("b1", Router(build_providers(cfg, env={}), cfg))


def _line(cid: object = "a", body: object = None) -> bytes:
    if body is None:
        body = {"model": "simulated/x", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


def _error(item: JobSpec | JobResult) -> tuple[str, str]:
    assert isinstance(item, JobResult), item
    assert item.error is not None
    return item.error.code, item.error.message


def test_a_line_nested_a_thousand_deep_is_that_lines_error() -> None:
    deep = b'{"custom_id": "d", "body": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    code, msg = _error(_validator().parse_jsonl(deep, 7, 0))
    assert code == "invalid_json" and msg.startswith("line 7:") and "nested" in msg


def test_an_integer_beyond_64_bits_is_that_lines_error() -> None:
    body = {"model": "simulated/x", "messages": [{"role": "user", "content": "hi"}], "seed_x": 2**70}
    code, msg = _error(_validator().parse_jsonl(_line("big", body), 4, 0))
    assert code == "invalid_value" and msg.startswith("line 4:") and "64 bits" in msg


def test_a_non_utf8_line_in_a_prompts_file_names_its_line() -> None:
    v = _validator()
    code, msg = _error(v.parse_prompt(b"caf\xe9 au lait", 12, 3, "simulated/x", None, {}))
    assert code == "invalid_utf8" and msg.startswith("line 12:")
    assert isinstance(v.parse_prompt("café".encode(), 13, 4, "simulated/x", None, {}), JobSpec)


@pytest.mark.parametrize("cid", [1, 1.5, ["a"], {"a": 1}, True])
def test_a_custom_id_that_is_not_a_string_says_so(cid: object) -> None:
    code, msg = _error(_validator().parse_jsonl(_line(cid), 2, 0))
    assert code == "invalid_custom_id" and "custom_id must be a string" in msg


def test_a_utf8_bom_is_stripped_from_the_first_line(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbf" + _line("a") + b"\n" + _line("b") + b"\n"
    lines = list(numbered_lines(raw.splitlines(keepends=True)))
    assert [n for n, _, _ in lines] == [1, 2]
    v = _validator()
    assert [v.parse_jsonl(r, n, i).custom_id for n, i, r in lines] == ["a", "b"]  # type: ignore[union-attr]
    f = tmp_path / "bom.jsonl"
    f.write_bytes(raw)
    assert prompt_options(str(f), None, None, None) is None  # JSONL, not a prompts file


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "empty_input"),
        (b"\n  \n\n", "empty_input"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary_input"),
        (b"caf\xe9\n", "invalid_utf8"),
    ],
)
def test_input_no_line_can_come_from_is_refused(tmp_path: Path, content: bytes, code: str) -> None:
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    with pytest.raises(RequestError) as e:
        prompt_options(str(f), "simulated/x", None, None)
    assert e.value.code == code
    if code == "empty_input":
        assert "empty input" in e.value.message


def test_a_jsonl_file_passed_as_prompts_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "batch.jsonl"
    f.write_bytes(_line("a") + b"\n")
    with pytest.raises(RequestError) as e:
        prompt_options(str(f), "simulated/x", None, None)
    assert e.value.code == "jsonl_as_prompts" and "drop --model" in e.value.message


def test_routing_table_round_trip_resolves_what_the_workers_resolve() -> None:
    cfg = FileConfig.model_validate(
        {
            "providers": {"acme": {"type": "openai", "base_url": "http://127.0.0.1:9", "models": ["m1"]}},
            "routes": {"fast": {"candidates": ["acme/m1", "simulated/x"]}},
            "default_model": "fast",
        }
    )
    providers = build_providers(cfg, env={})
    table = json.loads(json.dumps(build_table(providers, cfg)))
    assert "api_key" not in json.dumps(table)
    r = router_from_table(table)
    local = Router(providers, cfg)
    assert [c.label for c in r.resolve("fast")] == [c.label for c in local.resolve("fast")]
    assert r.resolve("m1")[0].provider.name == "acme"  # a listed model, no prefix
    assert r.resolve(None)[0].provider.name == "acme"  # the default model
    with pytest.raises(RequestError) as e:
        r.resolve("nope-model")
    assert e.value.code == "model_not_found"
    with pytest.raises(RequestError):
        r.resolve("gpt-4o")  # needs the openai provider, which this fleet does not have
    assert isinstance(RouteConfig.model_validate(table["routes"]["fast"]), RouteConfig)


def test_usage_attributes_a_failed_job_to_the_provider_that_failed() -> None:
    r = JobResult(
        id="j", status_code=503, batch_id="b",
        error=ErrorInfo(code="provider_unavailable", message="down", error_class="transient"),
        attempts=[Attempt(provider="a", model="m", latency_ms=5, status=503, error_class="transient")],
    )  # fmt: skip
    assert dims(r, None).startswith("a|m|")


def test_usage_rows_group_by_the_chosen_columns() -> None:
    rows = [UsageRow("a", "m", "t1", "b1", requests=2), UsageRow("a", "m", "t2", "b2", requests=3)]
    (one,) = group_rows(rows, "provider,model")
    assert (one.provider, one.model, one.tenant, one.requests) == ("a", "m", "*", 5)
    assert [r.tenant for r in group_rows(rows, "tenant")] == ["t1", "t2"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tables_fit_an_80_column_terminal_and_are_plain_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    from producer.tables import print_table

    monkeypatch.setenv("COLUMNS", "80")
    rows = [
        [f"batch_{'x' * 24}{i}", "in_progress", 1234, 5, 99999, "a-long-input-file-name.jsonl"]
        for i in range(3)
    ]
    headers = ["id", "status", "done", "failed", "total", "input"]
    tty = _Tty()
    print_table(headers, rows, numeric={2, 3, 4}, stream=tty)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue()).splitlines()
    assert lines and max(len(ln) for ln in lines) <= 80, lines
    assert "in_progress" in tty.getvalue()
    plain = io.StringIO()
    print_table(headers, rows, numeric={2, 3, 4}, stream=plain)
    out = plain.getvalue().splitlines()
    assert out[0].split() == headers and len(out) == 4
    assert "\x1b" not in plain.getvalue()
