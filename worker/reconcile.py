"""Periodic reconciliation: every batch reaches an end state even if Redis lost some of its writes.

A batch line is always in one of: queued / running / deferred (its arq job exists) or answered (its
result exists). Redis losing its last writes (a crash with ``appendfsync everysec``, a failover to a
lagging replica) or a job deleted without a result can leave a line with neither, and the batch would
wait for it forever. Once per ``reconcile_seconds`` one worker of the fleet (a Redis lock) walks each
active batch's stored line payloads (``Keys.batch_specs``) in chunks, in Lua, and queues lost lines
again; results are written exactly once, so this never answers a line twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import scripts
from shared.jobs.store import JOB_EXPIRY_MS, Store
from shared.keys import ARQ_IN_PROGRESS, ARQ_JOB, lane_name

log = logging.getLogger("fusebox.reconcile")
CHUNK = 500  # lines per Lua call: keeps each call short on a busy server
MAX_REQUEUES = 3  # a line lost more often than this gets an error result (the batch must end)


@dataclass
class Pass:
    batches: int = 0
    dropped: int = 0  # stored payloads of answered lines removed
    requeued: int = 0  # lost lines queued again
    relinked: int = 0  # jobs (or a finalize job) put back on the queue
    failed: int = 0  # lines answered with an error instead


class Reconciler:
    def __init__(self, redis: Redis, store: Store, owner: str, every: float) -> None:
        self.redis = redis
        self.store = store
        self.keys = store.keys
        self.owner = owner
        self.every = every
        self._script = scripts.load(redis, "reconcile", __file__)

    async def run(self) -> None:
        """Until cancelled: try the fleet-wide lock each period; the holder reconciles every active batch."""
        await asyncio.sleep(self.every * random.uniform(0.2, 1.0))  # workers started together spread out
        while True:
            try:
                await self.tick()
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                # Redis down: the worker's poll loop reports it; try again next period
                log.debug("reconciliation skipped: %s: %s", type(e).__name__, e)
            except Exception:
                log.exception("reconciliation failed; trying again next period")
            await asyncio.sleep(self.every * random.uniform(0.8, 1.2))

    async def tick(self) -> Pass | None:
        """One pass if no other worker did one in the last period (the lock expires after one)."""
        lock = await self.redis.set(self.keys.reconcile_lock, self.owner, nx=True, px=int(self.every * 1000))
        if not lock:
            return None
        return await self.reconcile_all()

    async def reconcile_all(self) -> Pass:
        total = Pass()
        for raw in await self.redis.smembers(self.keys.batches_active):
            bid = raw.decode() if isinstance(raw, bytes) else str(raw)
            p = await self.reconcile(bid)
            total.batches += 1
            total.dropped += p.dropped
            total.requeued += p.requeued
            total.relinked += p.relinked
            total.failed += p.failed
        return total

    async def reconcile(self, batch_id: str) -> Pass:
        k = self.keys
        fin_key, fin_id, fin_payload = self.store.finalize_job(batch_id)
        lane = await self.redis.hget(k.batch(batch_id), "lane")
        name = lane_name(lane.decode() if lane else None)
        keys = [
            k.batch_specs(batch_id), k.batch_ids(batch_id), k.batch_results(batch_id), k.queue,
            k.batch(batch_id), k.batch_done(batch_id), k.batch_requeued(batch_id), fin_key, k.batches_active,
            k.lane(name), k.lanes,
        ]  # fmt: skip
        p = Pass(batches=1)
        cursor: bytes | str | int = "0"
        while True:
            now = time.time()
            args = [
                cursor, CHUNK, ARQ_JOB, ARQ_IN_PROGRESS, batch_id, int(now * 1000), JOB_EXPIRY_MS,
                MAX_REQUEUES, fin_id, fin_payload, repr(now), name,
            ]  # fmt: skip
            cursor, dropped, requeued, relinked, failed, _ = await self._script(keys=keys, args=args)
            p.dropped += int(dropped)
            p.requeued += int(requeued)
            p.relinked += int(relinked)
            p.failed += int(failed)
            if cursor in (b"0", "0", 0):
                break
        if p.requeued or p.relinked or p.failed:
            log.warning(
                "batch %s: %d lost lines queued again, %d jobs re-linked, %d lines failed as lost",
                batch_id,
                p.requeued,
                p.relinked,
                p.failed,
            )
        return p
