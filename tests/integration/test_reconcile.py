"""Issue 8, defect 2: a batch always ends, every line answered once, even when Redis loses writes.

Reconciliation (worker/reconcile.py) queues again every line that has neither a job nor a result.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from bench.harness import Stack, chat_lines
from shared.embedded import free_port, server_binary
from shared.jobs.store import Store
from shared.keys import ARQ_JOB
from shared.schema import JobResult
from tests.integration.helpers import poll, stack_exactly_once
from worker.reconcile import MAX_REQUEUES, Reconciler

SIM = {"a": {"format": "openai", "latency": {"ms": 30}}}
PROVIDERS = {"a": {"max_concurrency": 16, "models": ["m"]}}


def _extra(reconcile_s: float) -> dict[str, object]:
    return {
        "routes": {"r": {"candidates": ["a/m"]}},
        "worker": {"max_jobs": 200, "poll_delay": 0.01, "reconcile_seconds": reconcile_s},
    }


@pytest.mark.slow
def test_lines_whose_jobs_vanished_are_queued_again_and_answered_once(redis_url: str) -> None:
    """Some lines lose their arq job with no result (what a lost write, or a job deleted without a
    result, leaves): without reconciliation the batch waits for them forever."""
    n, lost = 300, 25
    with Stack(
        sim_routes=SIM, providers=PROVIDERS, workers=0, extra_config=_extra(1), redis_url=redis_url
    ) as st:
        assert st.client is not None
        r, k = st.client.redis, st.settings.keys
        sub = st.submit(chat_lines(n, "r"))
        gone = [f"{sub.batch_id}:c{i}" for i in range(0, n, n // lost)][:lost]
        st.run(r.delete(*(ARQ_JOB + j for j in gone)))
        st.run(r.zrem(k.lane(None), *gone))  # batch lines wait in their tenant's lane
        for _ in range(2):
            st.start_worker()
        st.wait(sub.batch_id, timeout=60)
        stack_exactly_once(st, sub.batch_id, n)
        # the batch ended: nothing is left for reconciliation to hold
        assert not st.run(r.exists(k.batch_specs(sub.batch_id), k.batch_requeued(sub.batch_id)))
        assert not st.run(r.sismember(k.batches_active, sub.batch_id))


async def test_reconcile_drops_answered_lines_relinks_jobs_and_bounds_requeues(settings, redis) -> None:
    """The pass itself, step by step, with no worker running."""
    from producer.client import FuseboxClient

    client = FuseboxClient(redis, settings)
    lines = chat_lines(4, "simulated/chat")
    sub = await client.submit_batch(lines)
    bid, k = sub.batch_id, settings.keys
    store = Store(redis, k)
    rec = Reconciler(redis, store, "test", 30)
    assert await redis.hlen(k.batch_specs(bid)) == 4
    # c0 answered, c1's job lost, c2's job off the queue with nobody running it, c3 untouched
    res = JobResult(id=f"{bid}:c0", status_code=200, custom_id="c0", batch_id=bid, line=0)
    await store.complete(res)
    await redis.delete(ARQ_JOB + f"{bid}:c0", ARQ_JOB + f"{bid}:c1")
    lane = k.lane(None)  # no tenant: the default lane, where the batch's lines wait for their turn
    await redis.zrem(lane, f"{bid}:c0", f"{bid}:c1", f"{bid}:c2")
    p = await rec.reconcile(bid)
    assert (p.dropped, p.requeued, p.relinked, p.failed) == (1, 1, 1, 0)
    assert await redis.zscore(lane, f"{bid}:c1") is not None  # queued again in its lane
    assert await redis.exists(ARQ_JOB + f"{bid}:c1")
    assert await redis.zscore(lane, f"{bid}:c2") is not None
    # a job in the arq queue (claimed from its lane, then lost its lease) is not relinked
    await redis.zrem(lane, f"{bid}:c3")
    await redis.zadd(k.queue, {f"{bid}:c3": 1})
    assert (await rec.reconcile(bid)).relinked == 0
    await redis.zrem(k.queue, f"{bid}:c3")
    await redis.zadd(lane, {f"{bid}:c3": 1})
    assert sorted(await redis.hkeys(k.batch_specs(bid))) == [b"c1", b"c2", b"c3"]
    # a line lost again and again ends with an error, so the batch can end
    for _ in range(MAX_REQUEUES):
        await redis.delete(ARQ_JOB + f"{bid}:c1")
        await redis.zrem(lane, f"{bid}:c1")
        p = await rec.reconcile(bid)
    assert (p.requeued, p.failed) == (0, 1)
    counts = await store.counts(bid)
    assert counts is not None and (counts.completed, counts.failed) == (1, 1)
    codes = {r.custom_id: r.error.code if r.error else None async for _, r in store.iter_completed(bid)}
    assert codes == {"c0": None, "c1": "job_lost"}
    p = await rec.reconcile(bid)  # nothing else changes: c2 and c3 are queued
    assert (p.requeued, p.relinked, p.failed) == (0, 0, 0)


# -- Redis killed with -9, its AOF tail lost ---------------------------------------------------


def _server_binary() -> str:
    for exe in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if exe and os.path.exists(exe):
            return exe
    return server_binary()


class AofServer:
    """A Redis (or the bundled Valkey) on loopback with AOF ``everysec``, restartable on its port."""

    def __init__(self, data: Path) -> None:
        self.exe = _server_binary()
        self.data = data
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--auto-aof-rewrite-percentage", "0", "--aof-load-truncated", "yes"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis as sync_redis

        def up() -> bool:
            try:
                return bool(sync_redis.Redis(port=self.port, socket_timeout=0.5).ping())
            except Exception:
                return False

        poll(up, 30)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def incr_aof(self) -> Path:
        files = sorted(self.data.rglob("*.incr.aof")) or sorted(self.data.rglob("*.aof"))
        return files[-1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.slow
def test_redis_kill_9_with_a_lost_aof_tail_mid_batch(tmp_path: Path) -> None:
    """Redis dies mid-batch and comes back without its last writes (half of everything written since
    the batch was queued): answered lines lose their results, leases and deferrals vanish. The batch
    still completes and every line is answered exactly once."""
    n = 1000
    server = AofServer(tmp_path / "redis")
    server.data.mkdir()
    server.start()
    try:
        with Stack(
            sim_routes=SIM, providers=PROVIDERS, workers=2, extra_config=_extra(2), redis_url=server.url
        ) as st:
            assert st.client is not None
            r, k = st.client.redis, st.settings.keys
            sub = st.submit(chat_lines(n, "r"))
            queued_at = server.incr_aof().stat().st_size  # every write of the submission is in the file
            poll(lambda: st.run(r.hlen(k.batch_results(sub.batch_id))) >= n // 3, 60)
            before = st.run(r.hlen(k.batch_results(sub.batch_id)))
            server.kill9()
            aof = server.incr_aof()
            size = aof.stat().st_size
            with open(aof, "r+b") as f:  # lose half of what was written after the submission
                f.truncate(queued_at + (size - queued_at) // 2)
            server.start()
            st.run(r.connection_pool.disconnect())
            after = st.run(r.hlen(k.batch_results(sub.batch_id)))
            assert after < before, (before, after)  # results were really lost
            assert st.run(r.hlen(k.batch_ids(sub.batch_id))) == n  # the submission was not
            st.wait(sub.batch_id, timeout=60)
            stack_exactly_once(st, sub.batch_id, n)
    finally:
        server.stop()
