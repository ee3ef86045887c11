"""Two workers on one provider share its slots: the slot a call frees goes to a job waiting in the same
worker only while that worker holds no more than its share (worker/calls.py, Calls.within_share), so
the split the workers happened to take at a batch's start does not hold for the whole batch."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from producer.client import FuseboxClient
from shared.config import FileConfig, Settings
from shared.redis_conn import connect
from tests.integration.helpers import batch_lines, running_worker

LIMIT = 8


async def test_two_workers_hold_the_providers_slots_about_evenly(settings: Settings, redis) -> None:  # type: ignore[no-untyped-def]
    cfg = FileConfig.model_validate(
        {
            # a provider's own simulator settings are its options ([simulated] is the built-in one's)
            "providers": {
                "sim8": {"type": "simulated", "max_concurrency": LIMIT, "options": {"latency_ms": 20}}
            },
            # both workers claim from the start (the default fills one worker first: test_fill.py)
            "worker": {"fill_cpu": 0},
        }
    )
    s = settings.with_file(cfg)
    n = 400
    client = FuseboxClient(redis, s)
    pools = [connect(s.redis_url or "", s.keys) for _ in range(2)]
    try:
        async with AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(running_worker(s, pool)) for pool in pools]
            sub = await client.submit_batch(batch_lines(n, model="sim8/chat"))
            counts = await client.wait_batch(sub.batch_id, poll=0.05, timeout=120)
            assert counts.completed == n
            done = [w.jobs_complete for w in workers]
    finally:
        await asyncio.gather(*(p.aclose() for p in pools))
    assert sum(done) >= n
    # an even split is n/2 each: neither worker keeps most of the slots (nor is starved by the share rule)
    assert min(done) >= n * 0.3, done
