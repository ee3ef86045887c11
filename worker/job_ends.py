"""How a job's end is recorded in arq, part of FuseboxWorker (worker/fuse_worker.py).

A finishing job's result write usually records arq's end of it too (complete.lua, worker/results.py
JobEnd): arq's own finish then has nothing left to do. Otherwise arq's ``finish_job`` transaction goes
out grouped with the other jobs finishing now (worker/group_commit.py), at the score the job was
claimed at (it is parked meanwhile: claim.lua). Either way the job's lease is done with.
"""

from __future__ import annotations

import logging
from typing import Any

from arq import Worker

from shared.keys import ARQ_ABORT_JOBS, ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RETRY
from worker import group_commit
from worker.lease import Leases
from worker.results import REDIS_DOWN

log = logging.getLogger("fusebox.worker")


class JobEnds(Worker):
    leases: Leases | None
    _ended: set[str]  # jobs whose result write recorded their end in arq: finish_job skips them

    def finish_keys(self, job_id: str) -> list[str] | None:
        """The arq keys a job's result write finishes it with (worker/results.py JobEnd): arq's finish of a
        job whose result is not kept (``keep_result`` 0), while its lease is this worker's."""
        assert self.leases is not None
        if self.keep_result_s or self.keep_result_forever or job_id not in self.leases.live:
            return None
        self.leases.finishing(job_id)  # the write deletes the lease: the heartbeat must not renew it
        keys = (ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RETRY)
        return [*(k + job_id for k in keys), ARQ_ABORT_JOBS, self.queue_name]

    def ended(self, job_id: str) -> None:
        self._ended.add(job_id)

    def _was_ended(self, job_id: str) -> bool:
        """Whether the job's result write finished it in arq (complete.lua); if so its lease is done with."""
        if job_id not in self._ended:
            return False
        self._ended.discard(job_id)
        self.leases.finished(job_id)  # type: ignore[union-attr]
        return True

    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        assert self.leases is not None
        if self._was_ended(job_id):  # its result write did it (complete.lua); whatever arq asks now is moot
            return
        self.leases.finishing(job_id)
        score = self.leases.scores.get(job_id)  # the job is parked in the queue meanwhile (claim.lua)
        await group_commit.finish_job(self.pool, self.queue_name, job_id, *args, **kwargs, score=score)
        self.leases.finished(job_id)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        assert self.leases is not None
        if self._was_ended(job_id):
            return
        self.leases.finishing(job_id)
        await super().finish_failed_job(job_id, result_data)
        self.leases.finished(job_id)

    def _reap_tasks(self) -> None:
        """Collect finished job tasks here: arq re-raises their errors one per poll, stalling the loop."""
        for job_id, t in list(self.tasks.items()):
            if not t.done():
                continue
            del self.tasks[job_id]
            exc = None if t.cancelled() else t.exception()
            if exc is not None and not isinstance(exc, REDIS_DOWN):
                log.error("job %s: %s: %s", job_id, type(exc).__name__, exc)
