"""A batch through real Redis and real workers: in-process, in a subprocess worker, and via the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import msgspec

from producer.client import FuseboxClient
from shared.config import BreakerConfig, FileConfig, SimulatedConfig
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.integration.helpers import batch_lines
from worker.settings import build_worker

EXAMPLE = ROOT / "examples" / "batch.jsonl"


async def test_batch_in_process_worker(settings, redis):
    client = FuseboxClient(redis, settings)
    worker = build_worker(settings, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        sub = await client.submit_batch(batch_lines(300, content="hello {i}"))
        counts = await client.wait_batch(sub.batch_id, timeout=60)
        results = [r async for r in client.results(sub.batch_id)]
    finally:
        task.cancel()
    assert (sub.total, sub.queued, sub.rejected) == (300, 300, 0)
    assert (counts.total, counts.completed, counts.failed, counts.status) == (300, 300, 0, "completed")
    assert [r.custom_id for r in results] == [f"c{i}" for i in range(300)]
    assert all(r.provider == "simulated" and r.usage and r.usage.total_tokens > 0 for r in results)


async def test_resubmitting_a_batch_creates_no_second_job(settings, redis):
    client = FuseboxClient(redis, settings)
    first = await client.submit_batch(batch_lines(50, content="hello {i}"), batch_id="b-same")
    again = await client.submit_batch(batch_lines(50, content="hello {i}"), batch_id="b-same")
    assert (first.queued, first.skipped) == (50, 0)
    assert (again.queued, again.skipped, again.resumed) == (0, 50, True)
    assert await redis.zcard(settings.keys.lane(None)) == 50  # batch lines wait in their lane


async def test_transient_failures_are_retried_and_counted_once(settings, redis):
    # the breaker would (rightly) trip on an early unlucky streak; this test is about retries
    no_trip = BreakerConfig(minimum_calls=1_000_000, consecutive_failures=1_000_000)
    s = settings.with_file(FileConfig(simulated=SimulatedConfig(failure_rate=0.3), breaker=no_trip))
    client = FuseboxClient(redis, s)
    worker = build_worker(s, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        sub = await client.submit_batch(batch_lines(200, content="hello {i}"))
        counts = await client.wait_batch(sub.batch_id, timeout=60)
        results = [r async for r in client.results(sub.batch_id)]
    finally:
        task.cancel()
    assert counts.done == counts.total == 200
    retried = [r for r in results if len(r.attempts) > 1]
    assert retried, "with a 30% failure rate some jobs must have needed a retry"
    assert all(r.attempts[-1].error_class is None for r in results if r.ok)
    # 3 attempts at 30% failure: about 2.7% end failed; all failures carry the provider's error
    assert all(r.error and r.error.error_class == "transient" for r in results if not r.ok)
    assert counts.failed == sum(1 for r in results if not r.ok)


def test_worker_in_separate_process(settings):
    env = subprocess_env(settings)
    prod = subprocess.run(
        [PYTHON, "-c", _SUBMIT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    batch_id = prod.stdout.strip()
    subprocess.run(
        [PYTHON, "-m", "producer.cli", "worker", "--burst"],
        env=env,
        timeout=120,
        check=True,
        capture_output=True,
    )
    check = subprocess.run(
        [PYTHON, "-c", _COUNTS, batch_id], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert check.stdout.split() == ["120", "120", "0", "completed"]


_SUBMIT = """
import asyncio, json
from producer.client import FuseboxClient
async def main():
    c = FuseboxClient.connect()
    lines = [json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "simulated/emb", "input": f"text {i}"}}) for i in range(120)]
    sub = await c.submit_batch(lines)
    print(sub.batch_id)
    await c.aclose()
asyncio.run(main())
"""

_COUNTS = """
import asyncio, sys
from producer.client import FuseboxClient
async def main():
    c = FuseboxClient.connect()
    n = await c.counts(sys.argv[1])
    print(n.total, n.completed, n.failed, n.status)
    await c.aclose()
asyncio.run(main())
"""


def test_fusebox_run_cli_on_the_example(settings, tmp_path: Path):
    out = tmp_path / "out.jsonl"
    env = subprocess_env(settings)
    proc = subprocess.run(
        [PYTHON, "-m", "producer.cli", "run", str(EXAMPLE), "-o", str(out), "--fresh"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    inputs = [json.loads(x) for x in EXAMPLE.read_text().splitlines() if x.strip()]
    outputs = [msgspec.json.decode(x) for x in out.read_bytes().splitlines()]
    assert len(outputs) == len(inputs) == 1000
    assert [o["custom_id"] for o in outputs] == [i["custom_id"] for i in inputs]
    chat = next(o for o in outputs if o["custom_id"].startswith("chat"))
    emb = next(o for o in outputs if o["custom_id"].startswith("emb"))
    assert chat["response"]["status_code"] == 200 and chat["error"] is None
    assert chat["response"]["body"]["object"] == "chat.completion"
    assert chat["response"]["body"]["choices"][0]["message"]["role"] == "assistant"
    assert emb["response"]["body"]["object"] == "list"
    assert len(emb["response"]["body"]["data"][0]["embedding"]) == 64
    assert chat["id"].startswith("batch_req_")


def test_fusebox_run_bad_lines_get_errors_rest_proceeds(settings, tmp_path: Path):
    good = batch_lines(3, content="hello {i}")
    bad = [
        '{"custom_id": "broken", ',  # malformed JSON
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),  # no custom_id
        good[0],  # duplicate of line 1
        json.dumps({"custom_id": "u", "method": "POST", "url": "/v1/images", "body": {"model": "m"}}),
        json.dumps({"custom_id": "nm", "method": "POST",
                    "url": "/v1/chat/completions", "body": {"messages": []}}),
        json.dumps({"custom_id": "g", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}}),
    ]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(good + bad) + "\n")
    out, errs = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    proc = subprocess.run(
        [PYTHON, "-m", "producer.cli", "run", str(src), "-o", str(out), "--errors", str(errs)],
        env=subprocess_env(settings), capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # the batch finished, some lines failed
    ok = [json.loads(x) for x in out.read_text().splitlines()]
    failed = [json.loads(x) for x in errs.read_text().splitlines()]
    assert [o["custom_id"] for o in ok] == ["c0", "c1", "c2"]
    codes = [(f["custom_id"], f["error"]["code"]) for f in failed]
    assert codes == [
        (None, "invalid_json"),
        (None, "missing_custom_id"),
        (None, "duplicate_custom_id"),
        ("u", "unsupported_url"),
        ("nm", "missing_model"),
        ("g", "model_not_found"),
    ]
    assert "line 6" in failed[2]["error"]["message"] and "line 1" in failed[2]["error"]["message"]
    assert "OPENAI_API_KEY" in failed[5]["error"]["message"]
    assert "6 failed" in proc.stderr
