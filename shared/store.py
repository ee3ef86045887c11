"""Batch records, results and counters in Redis: every multi-key change is one Lua script."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import serialize_job

from shared import codec, scripts
from shared.keys import ARQ_JOB, Keys
from shared.schema import JobResult, JobSpec

JOB_FUNCTION = {"chat": "chat", "embed": "embed"}
# arq drops a queued job that has not started within this long.
JOB_EXPIRY_MS = 7 * 24 * 3600 * 1000


class BatchCounts(tuple[int, int, int, str]):
    __slots__ = ()

    @property
    def total(self) -> int:
        return self[0]

    @property
    def completed(self) -> int:
        return self[1]

    @property
    def failed(self) -> int:
        return self[2]

    @property
    def status(self) -> str:
        return self[3]

    @property
    def done(self) -> int:
        return self[1] + self[2]


class Store:
    def __init__(self, redis: ArqRedis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._enqueue = scripts.load(redis, "enqueue")
        self._complete = scripts.load(redis, "complete")
        self._seal = scripts.load(redis, "seal")

    # -- producer side ---------------------------------------------------
    async def create_batch(self, batch_id: str, fields: dict[str, Any]) -> bool:
        """Create the batch record; False if it already exists (a resumed submission)."""
        key = self.keys.batch(batch_id)
        now = time.time()
        created = await self.redis.hsetnx(key, "created_at", repr(now))
        mapping = {"status": "validating", **{k: str(v) for k, v in fields.items()}}
        async with self.redis.pipeline(transaction=True) as pipe:
            if created:
                pipe.hset(key, mapping=mapping)
                pipe.zadd(self.keys.batches, {batch_id: now})
            elif fields:
                pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            await pipe.execute()
        return bool(created)

    def job_payload(self, spec: JobSpec) -> bytes:
        """The arq job exactly as ``ArqRedis.enqueue_job`` would store it."""
        return serialize_job(
            JOB_FUNCTION[spec.kind],
            (codec.encode_spec(spec),),
            {},
            None,
            int(time.time() * 1000),
            serializer=codec.arq_serializer,
        )

    async def enqueue_chunk(
        self, batch_id: str, jobs: Sequence[JobSpec], rejected: Sequence[JobResult]
    ) -> tuple[int, int, int]:
        """One round trip per chunk: queue new jobs, store rejected lines -> (queued, skipped, rejected)."""
        argv: list[Any] = [int(time.time() * 1000), JOB_EXPIRY_MS, ARQ_JOB]
        for spec in jobs:
            argv += ("j", spec.id, self.job_payload(spec), spec.line)
        for res in rejected:
            argv += ("r", "", codec.encode_result(res), res.line)
        k = self.keys
        keys = [k.queue, k.batch_results(batch_id), k.batch_done(batch_id), k.batch(batch_id)]
        q, s, r = await self._enqueue(keys=keys, args=argv)
        return int(q), int(s), int(r)

    async def seal(self, batch_id: str, total: int) -> bool:
        """All lines are submitted; True if the batch is already complete."""
        return bool(await self._seal(keys=[self.keys.batch(batch_id)], args=[total, time.time()]))

    # -- worker side -----------------------------------------------------
    async def complete(self, result: JobResult) -> tuple[bool, bool]:
        """Store a result once. (written, batch_finished)."""
        payload = codec.encode_result(result)
        if result.batch_id is None:
            written = await self.redis.set(self.keys.result(result.id), payload, nx=True, ex=7 * 24 * 3600)
            return bool(written), False
        b = result.batch_id
        keys = [self.keys.batch_results(b), self.keys.batch_done(b), self.keys.batch(b)]
        written, last = await self._complete(
            keys=keys, args=[result.line, payload, "1" if result.ok else "0", time.time()]
        )
        return bool(written), bool(last)

    # -- reading ---------------------------------------------------------
    async def counts(self, batch_id: str) -> BatchCounts | None:
        vals = await self.redis.hmget(self.keys.batch(batch_id), "total", "completed", "failed", "status")
        if vals[3] is None:
            return None
        total, completed, failed = (int(v) if v is not None else 0 for v in vals[:3])
        return BatchCounts((total, completed, failed, vals[3].decode()))

    async def batch_info(self, batch_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.batch(batch_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def get_result(self, job_id: str) -> JobResult | None:
        raw = await self.redis.get(self.keys.result(job_id))
        return codec.decode_result(raw) if raw is not None else None

    async def iter_results(
        self, batch_id: str, total: int, chunk: int = 1000
    ) -> AsyncIterator[JobResult | None]:
        """Results in input order, ``chunk`` at a time (a 100k batch is never whole in memory)."""
        key = self.keys.batch_results(batch_id)
        for start in range(0, total, chunk):
            fields = [str(i) for i in range(start, min(start + chunk, total))]
            for raw in await self.redis.hmget(key, fields):
                yield codec.decode_result(raw) if raw is not None else None

    async def iter_completed(
        self, batch_id: str, start: int = 0, chunk: int = 1000
    ) -> AsyncIterator[JobResult]:
        """Results in completion order from position ``start``; stops at the current end."""
        done_key, res_key = self.keys.batch_done(batch_id), self.keys.batch_results(batch_id)
        while True:
            lines = await self.redis.lrange(done_key, start, start + chunk - 1)
            if not lines:
                return
            for raw in await self.redis.hmget(res_key, lines):
                if raw is not None:
                    yield codec.decode_result(raw)
            start += len(lines)
