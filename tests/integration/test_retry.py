"""``fusebox retry``: an ended batch's failed lines run again into the same batch, exactly once."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from producer.batch_input import Validator
from producer.client import BatchBusy, FuseboxClient
from producer.output import write_results
from shared.batches.retry import BatchRetry
from shared.errors import ErrorClass, ProviderError
from shared.jobs.store import Store
from shared.keys import ARQ_JOB
from shared.providers.simulated import SimulatedProvider
from tests.conftest import PYTHON, subprocess_env
from tests.integration.helpers import batch_lines, running_worker


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """While ``down`` is set, every 4th line (content 'q 0', 'q 4', ...) fails with a final error."""
    state = {"down": True}
    original = SimulatedProvider.chat

    async def chat(self, req, model):  # type: ignore[no-untyped-def]
        n = int(req.messages[-1]["content"].split()[-1])
        if state["down"] and n % 4 == 0:
            raise ProviderError(ErrorClass.FINAL, "simulated refusal", status=400, code="refused")
        return await original(self, req, model)

    monkeypatch.setattr(SimulatedProvider, "chat", chat)
    return state


async def _ended(client: FuseboxClient, batch_id: str) -> dict:
    await client.wait_batch(batch_id, timeout=60, poll=0.05)
    return await client.batch(batch_id)


def _cli(settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "producer.cli", *args], env=subprocess_env(settings), cwd=cwd,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_retry_runs_failed_lines_again_exactly_once(settings, redis, outage, tmp_path):
    n = 40
    lines = batch_lines(n)
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(lines)
        first = await _ended(client, sub.batch_id)
        assert first["status"] == "completed"
        assert first["request_counts"] == {"total": n, "completed": 30, "failed": 10}
        tokens_before = first["usage"]["prompt_tokens"]

        outage["down"] = False
        out = await client.retry_batch(sub.batch_id, lines)
        assert (out.failed, out.requeued, out.not_retried) == (10, 10, 0)
        second = await _ended(client, sub.batch_id)

    assert second["status"] == "completed"
    assert second["request_counts"] == {"total": n, "completed": n, "failed": 0}
    assert second["completed_at"] >= first["completed_at"]
    results = [r async for r in client.results(sub.batch_id)]
    assert [r.custom_id for r in results] == [f"c{i}" for i in range(n)]
    assert all(r.ok for r in results)
    # Completion order lists every line once: the failed attempts' entries were taken out.
    done = [int(i) for i in await redis.lrange(settings.keys.batch_done(sub.batch_id), 0, -1)]
    assert sorted(done) == list(range(n))
    assert sorted(
        r.custom_id for r in [r async for r in client.results(sub.batch_id, ordered=False)]
    ) == sorted(f"c{i}" for i in range(n))
    # Usage counts each real call once: the refused attempts used no tokens, the retried ones add theirs.
    assert second["usage"]["prompt_tokens"] == sum(r.usage.prompt_tokens for r in results if r.usage)
    assert second["usage"]["prompt_tokens"] > tokens_before
    assert await redis.exists(settings.keys.batch_retry(sub.batch_id)) == 0
    assert await redis.ttl(settings.keys.batch_results(sub.batch_id)) > 0  # finalized again
    output = tmp_path / "out.jsonl"
    w = await write_results(client, sub.batch_id, output)
    assert (w.ok, w.failed, w.missing) == (n, 0, 0)
    ids = [json.loads(x)["custom_id"] for x in output.read_text().splitlines()]
    assert ids == [f"c{i}" for i in range(n)]


async def test_lines_still_failing_stay_failed_and_can_be_retried_again(settings, redis, outage):
    lines = batch_lines(12)
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(lines)
        await _ended(client, sub.batch_id)
        out = await client.retry_batch(sub.batch_id, lines)  # provider still refusing
        assert out.requeued == 3
        again = await _ended(client, sub.batch_id)
        assert again["request_counts"] == {"total": 12, "completed": 9, "failed": 3}
        assert again["status"] == "completed"
        outage["down"] = False
        assert (await client.retry_batch(sub.batch_id, lines)).requeued == 3
        final = await _ended(client, sub.batch_id)
    assert final["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    done = await redis.lrange(settings.keys.batch_done(sub.batch_id), 0, -1)
    assert sorted(int(i) for i in done) == list(range(12))


async def test_a_retry_wakes_idle_workers_for_the_lines_it_queued(settings, redis, outage):
    """Idle workers sleep up to half a second between polls: lines queued again wake a few at once."""
    lines = batch_lines(12)
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(lines)
        await _ended(client, sub.batch_id)
    await redis.delete(settings.keys.wake)
    outage["down"] = False
    assert (await client.retry_batch(sub.batch_id, lines)).requeued == 3
    assert await redis.llen(settings.keys.wake) == 3  # no worker runs: nobody took them
    async with running_worker(settings, redis):
        final = await _ended(client, sub.batch_id)
    assert final["request_counts"] == {"total": 12, "completed": 12, "failed": 0}


async def test_retry_with_another_file_changes_nothing(settings, redis, outage):
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(batch_lines(8))
        await _ended(client, sub.batch_id)
    other = [line.replace('"c', '"x') for line in batch_lines(8)]
    with pytest.raises(ValueError, match="not the batch's input"):
        await client.retry_batch(sub.batch_id, other)
    obj = await client.batch(sub.batch_id)
    assert obj["status"] == "completed" and obj["request_counts"]["failed"] == 2


async def test_cli_retry_no_failed_lines_is_a_no_op(settings, redis, tmp_path):
    client = FuseboxClient(redis, settings)
    (tmp_path / "in.jsonl").write_text("\n".join(batch_lines(5)) + "\n")
    async with running_worker(settings, redis):
        sub = await client.submit_batch(batch_lines(5), input_name="in.jsonl")
        await _ended(client, sub.batch_id)
    proc = await asyncio.to_thread(_cli, settings, "retry", sub.batch_id, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no failed lines; nothing to retry" in proc.stdout
    obj = await client.batch(sub.batch_id)
    assert obj["status"] == "completed" and obj["request_counts"]["completed"] == 5


async def test_retry_of_a_running_batch_is_refused(settings, redis, tmp_path):
    client = FuseboxClient(redis, settings)
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(batch_lines(3)) + "\n")
    sub = await client.submit_batch(batch_lines(3))  # no worker: it stays in_progress
    with pytest.raises(BatchBusy, match="in_progress"):
        await client.retry_batch(sub.batch_id, batch_lines(3))
    proc = await asyncio.to_thread(_cli, settings, "retry", sub.batch_id, str(path), cwd=tmp_path)
    assert proc.returncode == 2  # a usage error (documented exit codes)
    assert f"batch {sub.batch_id} is in_progress" in proc.stderr
    assert (await client.batch(sub.batch_id))["status"] == "in_progress"


async def test_an_interrupted_retry_completes_when_run_again(settings, redis, outage):
    lines = batch_lines(16)
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(lines)
        await _ended(client, sub.batch_id)
        outage["down"] = False
        # A retry that died after queueing only the first failed line (c0).
        r = BatchRetry(client.store, sub.batch_id)
        v = Validator(sub.batch_id, client.router)
        specs = [v.parse_jsonl(line, i + 1, i) for i, line in enumerate(lines) if i % 4 == 0]
        assert (await r._step("begin", sub.batch_id))[0] == b"begun"
        assert await r._step("mark", *(s.line for s in specs)) == 4
        start = 0
        while start >= 0:
            start = int(await r._step("compact", start, 3))
        argv = [
            0,
            60_000,
            ARQ_JOB,
            sub.batch_id,
            "-",  # the batch's lane (no tenant)
            specs[0].line,
            specs[0].custom_id,
            Store.job_payload(specs[0]),
        ]
        assert await r._step("requeue", *argv) == 1
        assert (await client.batch(sub.batch_id))["status"] == "validating"  # cannot finish half-retried
        out = await client.retry_batch(sub.batch_id, lines)
        assert out.requeued == 3
        final = await _ended(client, sub.batch_id)
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
    done = await redis.lrange(settings.keys.batch_done(sub.batch_id), 0, -1)
    assert sorted(int(i) for i in done) == list(range(16))


async def test_cli_retry_waits_and_writes_one_output_line_per_input_line(settings, redis, outage, tmp_path):
    lines = batch_lines(20)
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    client = FuseboxClient(redis, settings)
    async with running_worker(settings, redis):
        sub = await client.submit_batch(lines, input_name="in.jsonl")
        await _ended(client, sub.batch_id)
        outage["down"] = False
        # No INPUT argument: the batch recorded 'in.jsonl', found in the working directory.
        args = ("retry", sub.batch_id, "--wait", "-o", "out.jsonl")
        proc = await asyncio.to_thread(_cli, settings, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{sub.batch_id}: 5 of 5 failed lines queued again" in proc.stdout
    assert f"{sub.batch_id}: completed, 20 ok, 0 failed of 20" in proc.stdout
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(20)]
    assert all(o["error"] is None and o["response"]["status_code"] == 200 for o in out)
