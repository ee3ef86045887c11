"""``fusebox retry``: run a finished batch's failed lines again, into the same batch.

The original requests are not kept in Redis (a 100k-line batch would hold its whole input there
for the results TTL), so a retry reads the batch's input file again, like a resumed ``fusebox
run``. The steps are in retry.lua beside this module; each is atomic and a retry that was
interrupted can simply be run again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared import scripts
from shared.jobs.store import ENDED, JOB_EXPIRY_MS, Store
from shared.keys import ARQ_JOB, lane_name, wake_workers
from shared.schema import JobSpec

CHUNK = 500
COMPACT_SLICE = 2000


class BatchBusy(RuntimeError):
    """The batch has not ended, so it has no final set of failed lines to retry."""

    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"batch {batch_id} is {status}; only a batch that has ended can be retried")
        self.status = status


@dataclass
class RetryOutcome:
    batch_id: str
    failed: int = 0  # failed lines found
    requeued: int = 0  # queued again
    not_retried: int = 0  # failed lines whose input line is missing or still invalid
    status: str = ""  # batch status afterwards


class BatchRetry:
    def __init__(self, store: Store, batch_id: str) -> None:
        self.store, self.batch_id = store, batch_id
        self._script = scripts.load(store.redis, "retry", __file__)
        k, b = store.keys, batch_id
        self._keys = [
            k.batch(b), k.batch_results(b), k.batch_done(b), k.batch_retry(b), k.batch_done_scratch(b),
            k.lane(None), k.batch_ids(b), k.batch_expiry, k.batch_specs(b), k.batches_active, k.lanes,
        ]  # fmt: skip

    async def _step(self, step: str, *args: object) -> object:
        return await self._script(keys=self._keys, args=[step, time.time(), *args])

    async def check(self) -> tuple[str, bool, int]:
        """(status, resuming an interrupted retry, total); BatchBusy if it cannot be retried."""
        info = await self.store.batch_info(self.batch_id)
        if not info:
            raise KeyError(f"no batch {self.batch_id!r}")
        status = info.get("status", "")
        resuming = status == "validating" and "retry_started_at" in info
        if status not in ENDED and not resuming:
            raise BatchBusy(self.batch_id, status)
        return status, resuming, int(info.get("total", 0))

    async def failed_lines(self, total: int) -> dict[int, str | None]:
        """Input index -> custom_id of every line whose stored result is an error."""
        out: dict[int, str | None] = {}
        async for r in self.store.iter_results(self.batch_id, total):
            if r is not None and not r.ok:
                out[r.line] = r.custom_id
        return out

    async def run(self, specs: Mapping[int, JobSpec] | Iterable[JobSpec], found: int) -> RetryOutcome:
        """Queue ``specs`` (one per failed line to run again) and re-open the batch."""
        jobs = list(specs.values() if isinstance(specs, Mapping) else specs)
        out = RetryOutcome(self.batch_id, failed=found)
        outcome, status = await self._step("begin", self.batch_id)  # type: ignore[misc]
        if outcome == b"busy":
            raise BatchBusy(self.batch_id, _str(status))
        if outcome == b"missing":
            raise KeyError(f"no batch {self.batch_id!r}")
        # lines run again from the batch's lane (its tenant's), like the first time
        lane = await self.store.redis.hget(self.store.keys.batch(self.batch_id), "lane")
        name = lane.decode() if lane else lane_name(jobs[0].tenant if jobs else None)
        self._keys[5] = self.store.keys.lane(name)
        try:
            for i in range(0, len(jobs), CHUNK):
                if await self._step("mark", *(s.line for s in jobs[i : i + CHUNK])) == -2:
                    return await self._stopped(out)
            start = 0
            while start >= 0:
                start = int(await self._step("compact", start, COMPACT_SLICE))  # type: ignore[arg-type]
                if start == -2:
                    return await self._stopped(out)
            for i in range(0, len(jobs), CHUNK):
                argv: list[object] = [int(time.time() * 1000), JOB_EXPIRY_MS, ARQ_JOB, self.batch_id, name]
                for spec in jobs[i : i + CHUNK]:
                    argv += (spec.line, spec.custom_id, Store.job_payload(spec))
                n = int(await self._step("requeue", *argv))  # type: ignore[arg-type]
                if n == -2:
                    return await self._stopped(out)
                out.requeued += n
                if n > 0:
                    async with self.store.redis.pipeline(transaction=False) as pipe:
                        wake_workers(pipe, self.store.keys, min(n, 4))  # as enqueue.lua does
                        await pipe.execute()
        finally:
            await self._step("finish")
        out.not_retried = max(found - out.requeued, 0)
        total = int(await self.store.redis.hget(self.store.keys.batch(self.batch_id), "total") or 0)
        out.status = await self.store.seal(self.batch_id, total)
        return out

    async def _stopped(self, out: RetryOutcome) -> RetryOutcome:
        """The batch left the retry (cancelled meanwhile): report where it is."""
        c = await self.store.counts(self.batch_id)
        out.status = c.status if c else "unknown"
        return out


def _str(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
