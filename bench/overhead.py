"""Fusebox's per-job overhead and batch enqueue speed, as ratios measured in one run.

1. bare arq: N no-op jobs through one worker (same worker settings as Fusebox's);
2. Fusebox: N batch lines through the full job path (decode, route, simulated
   provider at zero latency, result + counters written atomically);
3. enqueue: Fusebox's pipelined batch submit vs a loop of arq's ``enqueue_job``.

Usage: python bench/overhead.py [-n 5000] [--redis-url URL]
Last line: ``overhead ratio: X enqueue ratio: Y``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arq import Worker

from producer.client import FuseboxClient
from shared import codec
from shared.config import FileConfig, Settings
from shared.embedded import EmbeddedValkey, free_port
from shared.redis_conn import connect
from worker.settings import FuseboxWorker, build_worker


async def noop(ctx: dict[str, Any], raw: bytes) -> None:
    return None


def _lines(n: int) -> list[str]:
    return [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "simulated/bench",
                    "messages": [{"role": "user", "content": f"prompt {i}"}],
                },
            }
        )
        for i in range(n)
    ]


def _settings(url: str) -> Settings:
    return Settings(redis_url=url, namespace="fbbench-" + uuid.uuid4().hex[:8]).with_file(FileConfig())


async def _drain(worker: Worker) -> float:
    t0 = time.perf_counter()
    await worker.async_run()
    return time.perf_counter() - t0


async def bare_arq(url: str, n: int, worker_class: type[Worker] = Worker) -> float:
    """No-op jobs through ``worker_class`` (arq's own, or Fusebox's with its batched claim)."""
    s = _settings(url)
    redis = connect(url, s.keys)
    payload = codec.encode(b"x" * 200)
    for i in range(n):  # not timed
        await redis.enqueue_job("chat", payload, _job_id=f"noop{i}")
    assert await redis.zcard(s.keys.queue) == n, "bare arq jobs were not all queued"
    wc = s.file.worker
    worker = worker_class(
        functions=[noop],
        queue_name=s.keys.queue,
        redis_pool=redis,
        burst=True,
        handle_signals=False,
        max_jobs=wc.max_jobs,
        poll_delay=wc.poll_delay,
        keep_result=0,
        job_serializer=codec.arq_serializer,
        job_deserializer=codec.arq_deserializer,
        log_results=False,
    )
    worker.functions = {"chat": worker.functions["noop"]}
    secs = await _drain(worker)
    await worker.close()
    return n / secs


async def fusebox(url: str, n: int) -> tuple[float, float]:
    s = _settings(url)
    redis = connect(url, s.keys)
    client = FuseboxClient(redis, s)
    sub = await client.submit_batch(_lines(n))
    worker = build_worker(s, redis, burst=True, handle_signals=False)
    secs = await _drain(worker)
    counts = await client.counts(sub.batch_id)
    assert counts is not None and counts.completed == n, f"fusebox completed {counts} of {n}"
    await worker.close()
    return n / secs, secs


async def enqueue(url: str, n: int) -> tuple[float, float]:
    s = _settings(url)
    redis = connect(url, s.keys)
    client = FuseboxClient(redis, s)
    lines = _lines(n)
    t0 = time.perf_counter()
    await client.submit_batch(lines)
    batch_rate = n / (time.perf_counter() - t0)

    s2 = _settings(url)
    loop_n = max(n // 5, 500)
    payload = codec.encode(b"x" * 200)
    t0 = time.perf_counter()
    for i in range(loop_n):
        await redis.enqueue_job("chat", payload, _job_id=f"loop{i}", _queue_name=s2.keys.queue)
    loop_rate = loop_n / (time.perf_counter() - t0)
    await redis.aclose()
    return batch_rate, loop_rate


async def main_async(url: str, n: int, rounds: int) -> None:
    arq_rates, fb_rates, fw_rates = [], [], []
    for _ in range(rounds):  # interleaved, so machine noise hits all sides alike
        arq_rates.append(await bare_arq(url, n))
        fb_rates.append((await fusebox(url, n))[0])
        fw_rates.append(await bare_arq(url, n, FuseboxWorker))
    arq_best, fb_best, fw_best = max(arq_rates), max(fb_rates), max(fw_rates)
    batch_rate, loop_rate = await enqueue(url, n)
    print(
        f"bare arq no-op:      {arq_best:8.0f} jobs/s  (rounds: {', '.join(f'{r:.0f}' for r in arq_rates)})"
    )
    print(f"fusebox full path:   {fb_best:8.0f} jobs/s  (rounds: {', '.join(f'{r:.0f}' for r in fb_rates)})")
    print(f"fusebox worker no-op:{fw_best:8.0f} jobs/s  (batched claim)")
    print(f"job path alone (full path / fusebox worker no-op): {fb_best / fw_best:.2f}")
    print(f"batch submit:        {batch_rate:8.0f} lines/s (pipelined, validated)")
    print(f"enqueue_job loop:    {loop_rate:8.0f} jobs/s")
    print(f"overhead ratio: {fb_best / arq_best:.2f} enqueue ratio: {batch_rate / loop_rate:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    args = ap.parse_args()
    server = None
    url = args.redis_url
    if not url:
        server = EmbeddedValkey(tempfile.mkdtemp(prefix="fbbench-"), tcp_port=free_port(), persist=False)
        url = server.start()
    try:
        asyncio.run(main_async(url, args.n, args.rounds))
    finally:
        if server:
            server.wipe()


if __name__ == "__main__":
    main()
