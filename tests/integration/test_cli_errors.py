"""Issue 14: documented exit codes, and one line (no traceback) for everything a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, subprocess_env

UNREACHABLE = "redis://127.0.0.1:1/0"


def _line(cid: str, model: str = "simulated/x") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": f"hi {cid}"}]}
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})


def fusebox(settings, cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(settings)
    env.update(extra)
    return subprocess.run(
        [PYTHON, "-m", "producer.cli", *args],
        env=env, capture_output=True, text=True, timeout=180, cwd=cwd,
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


async def _batch_ids(redis, settings) -> list[bytes]:
    return await redis.zrange(settings.keys.batches, 0, -1)


# -- exit codes -----------------------------------------------------------------------------------------
def test_run_exits_0_when_every_line_succeeds_1_when_some_or_all_fail(settings, tmp_path: Path):
    ok = _write(tmp_path / "ok.jsonl", [_line("a"), _line("b")])
    some = _write(tmp_path / "some.jsonl", [_line("a"), _line("b", model="no-such-model")])
    none = _write(tmp_path / "none.jsonl", [_line("a", model="no-such-model")])
    out = str(tmp_path / "out.jsonl")
    assert fusebox(settings, tmp_path, "run", str(ok), "-o", out).returncode == 0
    p = fusebox(settings, tmp_path, "run", str(some), "-o", out)
    assert p.returncode == 1 and "1 lines failed" in p.stderr, p.stderr
    p = fusebox(settings, tmp_path, "run", str(none), "-o", out)  # every line rejected at submission
    assert p.returncode == 1, p.stderr


@pytest.mark.one_server
def test_submit_exit_codes_with_and_without_wait(settings, tmp_path: Path):
    (tmp_path / "fusebox.toml").write_text("")  # the producer may use its local config
    ok = _write(tmp_path / "ok.jsonl", [_line("a"), _line("b")])
    some = _write(tmp_path / "some.jsonl", [_line("a"), _line("b", model="no-such-model")])
    worker = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "worker"], env=subprocess_env(settings), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert fusebox(settings, tmp_path, "submit", str(ok), "--wait").returncode == 0
        p = fusebox(settings, tmp_path, "submit", str(some), "--wait", "--batch-id", "b-some-wait")
        assert p.returncode == 1 and "1 failed" in p.stdout, (p.stdout, p.stderr)
        p = fusebox(settings, tmp_path, "submit", str(some), "--batch-id", "b-some")
        assert p.returncode == 1 and "1 rejected" in p.stdout, (p.stdout, p.stderr)
    finally:
        worker.terminate()
        worker.wait(30)


# -- one line, no traceback ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [["batches"], ["status", "b1"], ["submit", "IN"], ["usage"], ["results", "b1"], ["cancel", "b1"],
     ["breakers"], ["webhooks", "dead"], ["run", "IN", "-o", "OUT"]],
)  # fmt: skip
def test_unreachable_redis_is_one_line_and_exit_3(settings, tmp_path: Path, args: list[str]):
    src = _write(tmp_path / "in.jsonl", [_line("a")])
    args = [str(src) if a == "IN" else str(tmp_path / "out.jsonl") if a == "OUT" else a for a in args]
    p = fusebox(settings, tmp_path, *args, REDIS_URL=UNREACHABLE)
    assert p.returncode == 3, p.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in _one_line_error(p)
    verbose = fusebox(settings, tmp_path, "-v", *args, REDIS_URL=UNREACHABLE)
    assert verbose.returncode == 3 and "Traceback" in verbose.stderr  # -v shows the details


@pytest.mark.parametrize(
    "url", ["http://localhost:6379", "redis://host:port/0", "redis://", "localhost:6379"]
)
def test_a_malformed_redis_url_is_a_usage_error(settings, tmp_path: Path, url: str):
    p = fusebox(settings, tmp_path, "batches", REDIS_URL=url)
    assert p.returncode == 2 and "REDIS_URL" in _one_line_error(p)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty input"),
        (b"\x00\x01\x02\x03binary\xff", "binary file"),
        (b"caf\xe9 au lait\n", "not UTF-8"),
    ],
)
@pytest.mark.parametrize("cmd", ["run", "submit"])
def test_input_files_no_line_can_come_from(settings, tmp_path: Path, content: bytes, needle: str, cmd: str):
    src = tmp_path / "in.txt"
    src.write_bytes(content)
    args = ["-o", str(tmp_path / "out.jsonl")] if cmd == "run" else []
    p = fusebox(settings, tmp_path, cmd, str(src), "--model", "simulated/x", *args)
    assert p.returncode == 2 and needle in _one_line_error(p)


def test_jsonl_mistaken_for_prompts_and_a_missing_file(settings, tmp_path: Path):
    src = _write(tmp_path / "batch.jsonl", [_line("a")])
    p = fusebox(settings, tmp_path, "run", str(src), "--model", "simulated/x", "-o", str(tmp_path / "o"))
    assert p.returncode == 2 and "drop --model" in _one_line_error(p)
    p = fusebox(settings, tmp_path, "submit", str(tmp_path / "nope.jsonl"))
    assert p.returncode == 2 and "does not exist" in _one_line_error(p)
    p = fusebox(settings, tmp_path, "status", "no-such-batch")
    assert p.returncode == 2 and "no-such-batch" in _one_line_error(p)


@pytest.mark.one_server
async def test_an_unwritable_output_is_refused_before_any_work(settings, redis, tmp_path: Path):
    src = _write(tmp_path / "in.jsonl", [_line(f"c{i}") for i in range(50)])
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    (tmp_path / "a-file").write_text("")
    bad = ["missing-dir/out.jsonl", "a-file/out.jsonl", "."]
    if os.geteuid() != 0:  # root may write into a read-only directory
        bad.append("ro/out.jsonl")
    try:
        for out in bad:
            p = fusebox(settings, tmp_path, "run", str(src), "-o", str(tmp_path / out))
            assert p.returncode == 2 and "cannot write" in _one_line_error(p), out
            p = fusebox(settings, tmp_path, "submit", str(src), "--wait", "-o", str(tmp_path / out))
            assert p.returncode == 2 and "cannot write" in _one_line_error(p), out
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert await _batch_ids(redis, settings) == []  # no batch was created, nothing ran


async def test_submit_with_no_worker_ever_started_says_so(settings, redis, tmp_path: Path):
    src = _write(tmp_path / "in.jsonl", [_line("a")])
    p = fusebox(settings, tmp_path, "submit", str(src))  # no fusebox.toml here, no routing table
    assert p.returncode == 3 and "no worker has published" in _one_line_error(p)
    assert await _batch_ids(redis, settings) == []


async def test_producers_check_models_against_the_fleets_routing_table(settings, redis, tmp_path: Path):
    """The worker's directory has the config (a route alias); the producer's has none."""
    wdir, pdir = tmp_path / "worker", tmp_path / "producer"
    wdir.mkdir()
    pdir.mkdir()
    (wdir / "fusebox.toml").write_text('[routes.team-model]\ncandidates = ["simulated/x"]\n')
    worker = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "worker"], env=subprocess_env(settings), cwd=wdir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import asyncio

        for _ in range(600):  # the worker publishes its table when it starts
            if await redis.exists(settings.keys.routing_table):
                break
            await asyncio.sleep(0.05)
        src = _write(pdir / "in.jsonl", [_line("a", "team-model"), _line("b", "unknown-model")])
        p = fusebox(settings, pdir, "submit", str(src), "--wait", "--json")
        assert p.returncode == 1, p.stderr  # one line unknown to the fleet
        obj = json.loads(p.stdout)
        assert obj["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    finally:
        worker.terminate()
        worker.wait(30)
