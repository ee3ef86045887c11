"""Short in-progress leases for a worker's running jobs, renewed by one heartbeat per worker.

arq's in-progress key lives job_timeout + 10 s (310 s on defaults), so a job whose worker died
waited that long to run again. Here the key is a lease of ``lease_seconds`` naming its worker;
the worker renews all its leases in one Lua call every third of that. A dead worker's jobs run
again one lease after it stopped renewing; a slow call on a live worker keeps its lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterable

from arq.utils import timestamp_ms
from redis.asyncio import Redis

from shared import scripts
from shared.keys import ARQ_IN_PROGRESS, ARQ_RETRY

log = logging.getLogger("fusebox.worker")


def new_owner() -> str:
    """A worker id unique per process start (a restarted worker never mistakes old leases for its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    def __init__(self, redis: Redis, queue: str, lease_s: float, owner: str | None = None) -> None:
        self.redis = redis
        self.queue = queue
        self.lease_ms = int(lease_s * 1000)
        self.every = lease_s / 3
        self.owner = owner or new_owner()
        # running jobs: renewed by the heartbeat until arq starts finishing them
        self.live: set[str] = set()
        # jobs whose lease may still exist: claimed, and arq's finish (which deletes it) not yet done
        self.held: set[str] = set()
        # the queue score each held job was claimed at (the queue holds it parked meanwhile, claim.lua)
        self.scores: dict[str, int] = {}
        self._beat = scripts.load(redis, "heartbeat", __file__)
        self._release = scripts.load(redis, "release", __file__)
        self._warned = False

    def claimed(self, job_id: str, score: int | None = None) -> None:
        self.live.add(job_id)
        self.held.add(job_id)
        if score is not None:
            self.scores[job_id] = score

    def finishing(self, job_id: str) -> None:
        """arq is about to record the job's end: from now on its lease must not be renewed or re-taken."""
        self.live.discard(job_id)

    def finished(self, job_id: str) -> None:
        """arq's finish deleted the lease (or kept it on purpose, for a cron job)."""
        self.held.discard(job_id)
        self.scores.pop(job_id, None)

    async def renew(self) -> tuple[int, int, list[str]]:
        ids = list(self.live)
        if not ids:
            return 0, 0, []
        renewed, restored, lost = await self._beat(
            keys=[self.queue], args=[self.owner, self.lease_ms, timestamp_ms(), ARQ_IN_PROGRESS, *ids]
        )
        taken = [x.decode() if isinstance(x, bytes) else str(x) for x in lost]
        return int(renewed), int(restored), taken

    async def heartbeat(self) -> None:
        """Renew every third of a lease until cancelled; Redis errors are logged once and retried."""
        while True:
            await asyncio.sleep(self.every)
            try:
                _, restored, taken = await self.renew()
            except Exception as e:  # Redis down: the worker's poll loop says so; keep beating
                if not self._warned:
                    log.warning("job leases not renewed: %s: %s", type(e).__name__, e)
                    self._warned = True
                continue
            self._warned = False
            if restored:
                log.warning("re-took %d job leases Redis had lost", restored)
            if taken:
                # Our lease lapsed (stalled worker, Redis lost it) and another worker took the job; both
                # run it now and its result is written once. Stop renewing a lease that is not ours.
                log.warning("%d running jobs were taken over by another worker: %s", len(taken), taken[:5])
                self.live.difference_update(taken)

    async def give_back(self, claimed: list[tuple[str, int]]) -> int:
        """Drop leases just taken on jobs (id, score claimed at) this worker must not start now: due again
        at once. The jobs' own bookkeeping here (an earlier run still winding down) is left alone; the try
        the claim counted for them is uncounted."""
        pairs = [x for j, score in claimed for x in (j, score)]
        args = [self.owner, ARQ_IN_PROGRESS, ARQ_RETRY, *pairs]
        return int(await self._release(keys=[self.queue], args=args))

    async def release(self, ids: Iterable[str]) -> int:
        """Delete our leases of ``ids`` (those still ours) so the jobs run again at once."""
        todo = list(ids)
        if not todo:
            return 0
        pairs = [x for j in todo for x in (j, self.scores.get(j, ""))]
        n = int(await self._release(keys=[self.queue], args=[self.owner, ARQ_IN_PROGRESS, "", *pairs]))
        self.held.difference_update(todo)
        self.live.difference_update(todo)
        for j in todo:
            self.scores.pop(j, None)
        return n
