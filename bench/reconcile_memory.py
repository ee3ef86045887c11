"""What keeping each batch line's payload for reconciliation costs in Redis memory.

    python bench/reconcile_memory.py [--lines 10000] [--prompt-chars 400]

Submits one batch (no worker runs it) and compares the stored payloads (``Keys.batch_specs``) with
the arq job keys they duplicate, and with the whole namespace. Needs REDIS_URL or starts the bundled
Valkey.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import chat_lines
from producer.client import FuseboxClient
from shared.config import FileConfig, Settings
from shared.embedded import EmbeddedValkey, free_port
from shared.keys import ARQ_JOB
from shared.redis_conn import connect


async def measure(url: str, lines: int, prompt_chars: int) -> None:
    settings = Settings(redis_url=url, namespace="fbmem-" + uuid.uuid4().hex[:8]).with_file(FileConfig())
    redis = connect(url, settings.keys)
    client = FuseboxClient(redis, settings)
    pad = "x" * prompt_chars
    rows = [line.replace("question", pad + " question") for line in chat_lines(lines, "simulated/chat")]
    sub = await client.submit_batch(rows)
    k = settings.keys
    specs = await redis.memory_usage(k.batch_specs(sub.batch_id), samples=0) or 0
    jobs = 0
    async for key in redis.scan_iter(match=f"{ARQ_JOB}{sub.batch_id}:*", count=1000):
        jobs += await redis.memory_usage(key, samples=0) or 0
    ids = await redis.memory_usage(k.batch_ids(sub.batch_id), samples=0) or 0
    print(
        f"{lines} lines, ~{prompt_chars}-char prompts: job keys {jobs / 1e6:.2f} MB, stored payloads "
        f"{specs / 1e6:.2f} MB ({specs / max(jobs, 1):.2f}x the job keys, {specs / lines:.0f} B per line), "
        f"ids hash {ids / 1e6:.2f} MB"
    )
    await client.cancel(sub.batch_id)
    await redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--prompt-chars", type=int, default=400)
    args = ap.parse_args()
    import os

    url = os.environ.get("REDIS_URL")
    server = None
    if not url:
        server = EmbeddedValkey(Path(tempfile.mkdtemp()), tcp_port=free_port(), persist=False)
        url = server.start()
    try:
        asyncio.run(measure(url, args.lines, args.prompt_chars))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
