"""A worker's shutdown, part of FuseboxWorker (worker/fuse_worker.py): SIGTERM/SIGINT give running jobs
a grace period, then the rest are re-queued and every lease this worker still holds is released."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from signal import Signals

from worker.fill import Fill
from worker.job_ends import JobEnds
from worker.results import REDIS_DOWN

log = logging.getLogger("fusebox.worker")


class Drain(JobEnds):
    fill: Fill
    shutdown_grace: float
    _draining: bool
    _orphans: set[str]  # jobs whose end could not be recorded: their leases go once Redis answers

    def handle_sig(self, signum: Signals) -> None:
        """First SIGTERM/SIGINT: take no new jobs, give running ones ``shutdown_grace`` seconds to
        finish, then cancel the rest (arq re-queues each and deletes its lease). A second signal, or
        arq's own close, cancels at once."""
        sig = Signals(signum)
        running = sum(not t.done() for t in self.tasks.values())
        if self._draining or sig == signal.SIGUSR1 or self.shutdown_grace <= 0 or not running:
            super().handle_sig(signum)
            return
        self._draining = True
        self.allow_pick_jobs = False
        log.warning(
            "shutdown on %s: taking no new jobs; %d running get %.0fs to finish (signal again to stop now)",
            sig.name,
            running,
            self.shutdown_grace,
        )
        self.loop.create_task(self._drain(sig))

    async def _drain(self, sig: Signals) -> None:
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.shutdown_grace)
        super().handle_sig(sig)

    async def close(self) -> None:
        if self._pool is not None and self.leases is not None:
            if not self._handle_signals:
                super().handle_sig(signal.SIGUSR1)
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self._reap_tasks()
            # Leases whose finish never ran (cancelled early, Redis errors): give the jobs back now.
            with contextlib.suppress(*REDIS_DOWN):
                n = await self.leases.release(self.leases.held | self._orphans)
                if n:
                    log.warning("released %d job leases at shutdown: those jobs run again now", n)
            if self.fill.key:  # the others need not wait for this worker's load to go stale
                with contextlib.suppress(*REDIS_DOWN):
                    await self._pool.hdel(self.fill.key, self.leases.owner)
        await super().close()
