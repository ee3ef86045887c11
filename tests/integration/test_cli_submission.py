"""Issue 8 defect 5: lines that crashed a submission are that line's error, and a submission that fails
midway leaves no half-batch in 'validating'. Issue 14: the sync client's construction and timeouts,
and 'fusebox status' naming the batch webhook's message id."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.client import CHUNK, FuseboxClient
from producer.sync_client import SyncFuseboxClient
from shared.webhooks import RequestCounts, batch_event
from shared.webhooks.records import enqueue_webhook
from tests.conftest import PYTHON, subprocess_env


def _line(cid: str, **extra: object) -> bytes:
    body = {"model": "simulated/x", "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


async def test_lines_that_crashed_submission_are_each_their_lines_error(settings, redis):
    client = FuseboxClient(redis, settings)
    deep = b'{"custom_id": "deep", "body": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    lines = [_line("ok1"), deep, _line("big", seed_x=2**70), b'{"custom_id": 7}', _line("ok2")]
    sub = await client.submit_batch(lines)
    assert (sub.total, sub.queued, sub.rejected) == (5, 2, 3)
    assert sub.status == "in_progress"  # sealed, not stuck in 'validating'
    errors = {}
    async for r in client.results(sub.batch_id):
        if r is not None and r.error is not None:
            errors[r.line] = (r.error.code, r.error.message.split(":")[0])
    assert errors == {
        1: ("invalid_json", "line 2"),
        2: ("invalid_value", "line 3"),
        3: ("invalid_custom_id", "line 4"),
    }


async def test_a_non_utf8_line_in_a_prompts_file_is_that_lines_error(settings, redis):
    client = FuseboxClient(redis, settings)
    sub = await client.submit_batch([b"hello\n", b"caf\xe9\n", b"bye\n"], prompts={"model": "simulated/x"})
    assert (sub.total, sub.queued, sub.rejected, sub.status) == (3, 2, 1, "in_progress")
    results = [r async for r in client.results(sub.batch_id)]
    bad = results[1]
    assert bad is not None and bad.error is not None and bad.custom_id == "line-2"
    assert bad.error.code == "invalid_utf8" and bad.error.message.startswith("line 2:")


async def test_a_submission_failing_midway_leaves_no_half_batch(settings, redis):
    client = FuseboxClient(redis, settings)

    def lines() -> Iterator[bytes]:
        for i in range(CHUNK + 100):  # the first chunk is queued before the failure
            yield _line(f"c{i}")
        raise OSError("disk went away")

    with pytest.raises(OSError):
        await client.submit_batch(lines(), batch_id="b-midway")
    obj = await client.batch("b-midway")
    assert obj["status"] == "failed", obj
    assert "disk went away" in obj["failure_reason"]
    for zset in (settings.keys.queue, settings.keys.lane(None)):
        queued = [m for m in await redis.zrange(zset, 0, -1) if m.startswith(b"b-midway:")]
        assert queued == []  # nothing of the half-batch is left to run


def test_sync_client_connect_and_wait_timeout_on_an_unknown_id(settings):
    with SyncFuseboxClient.connect(settings) as c:
        with pytest.raises(TimeoutError):
            c.wait("no-such-job", timeout=0.5)


async def test_status_shows_the_batch_webhooks_message_id(settings, redis, tmp_path: Path):
    (tmp_path / "fusebox.toml").write_text("")
    client = FuseboxClient(redis, settings)
    sub = await client.submit_batch([_line("a")], batch_id="b-hook")
    await redis.hset(settings.keys.batch("b-hook"), mapping={"webhook": "https://hooks.example/x"})
    await redis.hset(settings.keys.batch("b-hook"), "status", "completed")
    event = batch_event(sub.batch_id, "completed", RequestCounts(total=1, completed=1, failed=0))
    msg_id = await enqueue_webhook(redis, settings.keys, "https://hooks.example/x", event, None)
    p = subprocess.run(
        [PYTHON, "-m", "producer.cli", "status", "b-hook"], env=subprocess_env(settings),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert msg_id.startswith("msg_") and msg_id in p.stdout
    assert f"fusebox webhooks log {msg_id}" in p.stdout
