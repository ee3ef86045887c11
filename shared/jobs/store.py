"""Batch records, results, counters and usage in Redis: every multi-key change is one Lua script.

Batch lifecycle (modelled on OpenAI's Batch API): validating -> in_progress ->
finalizing -> completed; failed (no line passed validation); cancelling ->
cancelled; cancelling -> expired (past the completion window).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import serialize_job

from shared import codec, scripts, usage
from shared.config import BatchConfig
from shared.keys import ARQ_JOB, Keys, lane_name
from shared.schema import JobResult, JobSpec
from shared.scripts import ScriptCall

JOB_FUNCTION = {"chat": "chat", "embed": "embed"}
FINALIZE_FUNCTION = "finalize_batch"
# arq drops a queued job that has not started within this long.
JOB_EXPIRY_MS = 7 * 24 * 3600 * 1000
ENDED = frozenset({"completed", "failed", "cancelled", "expired"})


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


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)


class Store:
    def __init__(self, redis: ArqRedis, keys: Keys, batches: BatchConfig | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = batches or BatchConfig()
        self._enqueue = scripts.load(redis, "enqueue", __file__)
        self._complete = scripts.load(redis, "complete", __file__)
        self._seal = scripts.load(redis, "seal", __file__)
        self._cancel = scripts.load(redis, "cancel", __file__)
        self._finalize_jobs: dict[str, tuple[str, str, bytes]] = {}

    # -- arq payloads ----------------------------------------------------
    @staticmethod
    def job_payload(spec: JobSpec) -> bytes:
        """The arq job exactly as ``ArqRedis.enqueue_job`` would store it."""
        return serialize_job(
            JOB_FUNCTION[spec.kind], (codec.encode_spec(spec),), {}, None, int(time.time() * 1000),
            serializer=codec.arq_serializer,
        )  # fmt: skip

    def finalize_job(self, batch_id: str) -> tuple[str, str, bytes]:
        """(arq job key, job id, payload) of the job that finalizes ``batch_id`` (queued by Lua, once).

        Every completion passes it along (Lua queues it only for the last line), so it is cached.
        """
        hit = self._finalize_jobs.get(batch_id)
        if hit is None:
            if len(self._finalize_jobs) > 1000:
                self._finalize_jobs.clear()
            job_id = f"finalize:{self.keys.ns}:{batch_id}"
            payload = serialize_job(
                FINALIZE_FUNCTION,
                (batch_id,),
                {},
                None,
                int(time.time() * 1000),
                serializer=codec.arq_serializer,
            )
            hit = self._finalize_jobs[batch_id] = (ARQ_JOB + job_id, job_id, payload)
        return hit

    # -- producer side ---------------------------------------------------
    async def create_batch(self, batch_id: str, fields: dict[str, Any]) -> bool:
        """Create the batch record; False if it already exists (a resumed submission)."""
        key = self.keys.batch(batch_id)
        now = time.time()
        created = await self.redis.hsetnx(key, "created_at", repr(now))
        async with self.redis.pipeline(transaction=True) as pipe:
            if created:
                pipe.hset(key, mapping={"status": "validating", **{k: str(v) for k, v in fields.items()}})
                pipe.zadd(self.keys.batches, {batch_id: now})
                window = self.cfg.completion_window_s
                if "completion_window_s" in fields:
                    window = float(fields["completion_window_s"])
                if window:
                    pipe.hset(key, "expires_at", repr(now + window))
                    pipe.zadd(self.keys.batch_expiry, {batch_id: now + window})
            elif fields:
                pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            await pipe.execute()
        return bool(created)

    async def enqueue_chunk(
        self, batch_id: str, jobs: Sequence[JobSpec], rejected: Sequence[JobResult]
    ) -> tuple[int, int, int]:
        """One round trip per chunk: queue new jobs in their tenant's lane, store rejected lines ->
        (queued, skipped, rejected). A batch has one tenant; a chunk mixing tenants takes one call each."""
        groups: dict[str | None, list[JobSpec]] = {}
        for spec in jobs:
            groups.setdefault(spec.tenant, []).append(spec)
        if not groups:
            groups[None] = []
        total = [0, 0, 0]
        for i, (tenant, specs) in enumerate(groups.items()):
            got = await self._enqueue_lane(batch_id, tenant, specs, rejected if i == 0 else ())
            total = [a + b for a, b in zip(total, got, strict=True)]
        return total[0], total[1], total[2]

    async def _enqueue_lane(
        self, batch_id: str, tenant: str | None, jobs: Sequence[JobSpec], rejected: Sequence[JobResult]
    ) -> tuple[int, int, int]:
        argv: list[Any] = [int(time.time() * 1000), JOB_EXPIRY_MS, ARQ_JOB, batch_id, lane_name(tenant)]
        for spec in jobs:
            argv += ("j", spec.custom_id, self.job_payload(spec), spec.line)
        for res in rejected:
            argv += ("r", "", codec.encode_result(res), res.line)
        k = self.keys
        keys = [
            k.lane(tenant),
            k.batch_results(batch_id),
            k.batch_done(batch_id),
            k.batch(batch_id),
            k.batch_ids(batch_id),
            k.batch_specs(batch_id),
            k.batches_active,
            k.wake,
            k.lanes,
        ]
        q, s, r = await self._enqueue(keys=keys, args=argv)
        return int(q), int(s), int(r)

    async def batch_lane(self, batch_id: str) -> str:
        """The lane key holding the batch's queued lines (enqueue.lua records its name)."""
        name = await self.redis.hget(self.keys.batch(batch_id), "lane")
        return self.keys.lane(name.decode() if name else None)

    async def seal(self, batch_id: str, total: int, validation_failed: bool = False) -> str:
        """All lines are submitted; returns the batch status afterwards."""
        fin_key, fin_id, fin_payload = self.finalize_job(batch_id)
        status = await self._seal(
            keys=[self.keys.batch(batch_id), self.keys.queue, fin_key],
            args=[total, time.time(), "1" if validation_failed else "0", fin_id, fin_payload],
        )
        return status.decode() if isinstance(status, bytes) else str(status)

    # -- worker side -----------------------------------------------------
    async def complete(self, result: JobResult, tenant: str | None = None) -> tuple[bool, str | None]:
        """Store a result once, with its counters and usage. -> (written, new batch status or None)."""
        c = self.complete_call(result, tenant)
        return self.completed(await c.script(keys=c.keys, args=c.args))

    @staticmethod
    def completed(reply: Any) -> tuple[bool, str | None]:
        """Decode complete.lua's reply."""
        written, status = reply
        return bool(written), (status.decode() if status else None)

    def complete_call(
        self, result: JobResult, tenant: str | None = None, arq_keys: Sequence[str] = ()
    ) -> ScriptCall:
        """The complete.lua call for ``result`` (callers may pipeline it with the gate's settle);
        ``arq_keys``: the job's arq keys, to record its finish in the same step (complete.lua)."""
        payload = codec.encode_result(result)
        now = time.time()
        b = result.batch_id
        usage_key = self.keys.usage_minute(int(now // 60))
        if b is None:
            keys = [self.keys.result(result.id), "", "", usage_key, "", "", self.keys.job_notify(result.id)]
            fin_id, fin_payload = "", b""
        else:
            fin_key, fin_id, fin_payload = self.finalize_job(b)
            keys = [
                self.keys.batch_results(b), self.keys.batch_done(b), self.keys.batch(b), usage_key,
                self.keys.queue, fin_key, self.keys.lane_out(tenant),
            ]  # fmt: skip
        args = [
            result.line, payload, "1" if result.ok else "0", now, fin_id, fin_payload, usage.USAGE_TTL_S,
            self.cfg.results_ttl_s, *usage.script_args(result, tenant), result.id,
        ]  # fmt: skip
        return ScriptCall(self._complete, [*keys, *arq_keys], args)

    async def finalize(self, batch_id: str) -> dict[str, str]:
        """Run by the finalize job: finalizing -> completed, and results get their TTL."""
        key = self.keys.batch(batch_id)
        ttl = self.cfg.results_ttl_s
        info = await self.batch_info(batch_id)
        if info.get("status") == "finalizing":
            # Only this job moves finalizing on; a re-run finds 'completed' and changes nothing.
            await self.redis.hset(key, mapping={"status": "completed", "completed_at": repr(time.time())})
            info = await self.batch_info(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in (key, self.keys.batch_results(batch_id), self.keys.batch_done(batch_id),
                      self.keys.batch_ids(batch_id)):  # fmt: skip
                pipe.expire(k, ttl)
            pipe.zrem(self.keys.batch_expiry, batch_id)
            # every line is answered: reconciliation has nothing left to watch
            pipe.delete(self.keys.batch_specs(batch_id), self.keys.batch_requeued(batch_id))
            pipe.srem(self.keys.batches_active, batch_id)
            await pipe.execute()
        return info

    async def cancel(self, batch_id: str, reason: str = "cancelled") -> tuple[int, str]:
        """Stop dispatching a batch: queued lines (in the arq queue or still in the tenant's lane) get a
        ``batch_<reason>`` error, running ones finish.

        Returns (lines answered by the cancellation, status). Safe to call again.
        """
        k = self.keys
        fin_key, fin_id, fin_payload = self.finalize_job(batch_id)
        lane = await self.batch_lane(batch_id)
        keys = [k.queue, k.batch_results(batch_id), k.batch_done(batch_id), k.batch(batch_id),
                k.batch_ids(batch_id), fin_key, lane]  # fmt: skip
        message = (
            "batch was cancelled before this request ran"
            if reason == "cancelled"
            else ("batch passed its completion window before this request ran")
        )
        base = [ARQ_JOB, batch_id, reason, message, 0.0, fin_id, fin_payload]
        removed_total, status = 0, b""
        pattern = _glob_escape(batch_id) + ":*"
        # the lane first: a line claimed meanwhile moves to the queue, scanned after
        for zset in (lane, k.queue):
            cursor = 0
            while True:
                cursor, found = await self.redis.zscan(zset, cursor, match=pattern, count=1000)
                ids = [m for m, _ in found]
                base[4] = time.time()
                if ids or (cursor == 0 and zset == k.queue):
                    removed, status = await self._cancel(keys=keys, args=[*base, *ids])
                    if removed == -1:
                        return removed_total, (status.decode() if status else "unknown")
                    removed_total += int(removed)
                if cursor == 0:
                    break
        return removed_total, status.decode() if isinstance(status, bytes) else str(status)

    async def expire_due(self) -> list[str]:
        """Expire every batch whose completion window has passed (run periodically by workers)."""
        due = await self.redis.zrangebyscore(self.keys.batch_expiry, "-inf", time.time())
        expired = []
        for raw in due:
            bid = raw.decode()
            _, status = await self.cancel(bid, reason="expired")
            await self.redis.zrem(self.keys.batch_expiry, bid)
            if status in ("cancelling", "expired"):
                expired.append(bid)
        return expired

    # -- reading ---------------------------------------------------------
    async def counts(self, batch_id: str) -> BatchCounts | None:
        vals = await self.redis.hmget(self.keys.batch(batch_id), "total", "completed", "failed", "status")
        if vals[3] is None:
            return None
        total, completed, failed = (int(v) if v is not None else 0 for v in vals[:3])
        return BatchCounts((total, completed, failed, vals[3].decode()))

    async def batch_info(self, batch_id: str) -> dict[str, str]:
        """The batch hash, plus ``paused`` (why its lines wait, e.g. its budget) while they do."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.batch(batch_id))
            pipe.get(self.keys.batch_paused(batch_id))
            raw, paused = await pipe.execute()
        out = {k.decode(): v.decode() for k, v in raw.items()}
        # A note left by a line that waited just before the batch ended is no longer true.
        if raw and paused is not None and out.get("status") in ("validating", "in_progress", "finalizing"):
            out["paused"] = paused.decode()
        return out

    async def list_batches(self, limit: int = 20) -> list[dict[str, str]]:
        ids = await self.redis.zrevrange(self.keys.batches, 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in ids:
                pipe.hgetall(self.keys.batch(bid.decode()))
            rows = await pipe.execute()
        out = []
        for bid, row in zip(ids, rows, strict=True):
            if row:
                out.append({"id": bid.decode(), **{k.decode(): v.decode() for k, v in row.items()}})
        return out

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
    ) -> AsyncIterator[tuple[int, JobResult]]:
        """(position, result) in completion order from ``start``; stops at the current end."""
        done_key, res_key = self.keys.batch_done(batch_id), self.keys.batch_results(batch_id)
        while True:
            lines = await self.redis.lrange(done_key, start, start + chunk - 1)
            if not lines:
                return
            for i, raw in enumerate(await self.redis.hmget(res_key, lines)):
                if raw is not None:
                    yield start + i, codec.decode_result(raw)
            start += len(lines)
