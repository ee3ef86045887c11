"""Fusebox's arq worker: batched claims, job leases, priority lanes, drain on SIGTERM, Redis outages."""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from functools import partial
from typing import Any

from arq.utils import timestamp_ms
from redis.commands.core import AsyncScript

from shared import scripts
from shared.keys import ARQ_ABORT_JOBS, ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RETRY, LANE_OUT_SUFFIX, Keys
from worker import group_commit
from worker.batch_jobs import STORE_KEY
from worker.drain import Drain
from worker.fill import YIELD_POLLS, Fill
from worker.jobs import CTX_KEY, END_KEY
from worker.lease import Leases
from worker.poll_clock import PollClock
from worker.reconcile import Reconciler
from worker.results import REDIS_DOWN as _REDIS_DOWN

log = logging.getLogger("fusebox.worker")
# Set in a job's task from its start until arq's run_job first reaches for the pool (see pool): the
# start replies the claim brought (claim.lua), or True if it brought none.
_STARTING: ContextVar[group_commit.Started | bool] = ContextVar("fusebox_job_starting", default=False)
# A poll claims fewer than CLAIM_BATCH jobs only if no jobs of this worker wait for a slot, or it has
# passed SKIP_POLLS such claims up in a row (at most SKIP_POLLS poll_delays later than it could have).
CLAIM_BATCH, SKIP_POLLS = 4, 3
# A worker that can claim fewer than CLAIM_MORE jobs sleeps SLOW_POLLS poll delays, woken early once it
# can claim CLAIM_MORE (FuseboxWorker.capacity), unless its last claim found the queue dry: each claim
# then takes several jobs, however many workers share the work.
CLAIM_MORE, SLOW_POLLS = 8, 4
CLAIMED = 5  # claim.lua's reply per job: id, score, payload, try, aborted


class FuseboxWorker(Drain):
    """arq's worker with these changes: it claims jobs in batches (one round trip, not four per job);
    a running job holds a short lease renewed by a heartbeat, not arq's job_timeout + 10 s key
    (worker/lease.py); a job's result write records its end in arq (worker/job_ends.py); SIGTERM/SIGINT
    give running jobs a grace period, then re-queue the rest and release their leases (worker/drain.py);
    it reconciles batches (worker/reconcile.py); and it survives a Redis
    outage: it stops taking jobs, says so, and resumes.

    arq's own loop dies on the first connection error. Jobs that were running when
    Redis went away are not lost: their leases are released once Redis answers (or expire).
    """

    redis_label = ""
    _down_since: float | None = None
    _claim: AsyncScript | None = None

    def __init__(
        self,
        *args: Any,
        lease_seconds: float = 10.0,
        shutdown_grace: float = 0.0,
        reconcile_seconds: float = 30.0,
        claim_ahead: int | None = None,
        wake_key: str | None = None,
        lane_keys: Keys | None = None,
        lane_window: int = 0,
        fleet_key: str | None = None,
        fill_cpu: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # We sleep between polls ourselves (``_idle``), so a wake-up token cuts the sleep short;
        # arq's own poll loop then never sleeps.
        self.clock, self.poll_delay_s = PollClock(self.poll_delay_s), 0.0
        self.claim_ahead = claim_ahead
        self.wake_key = wake_key
        self.burst_mode = self.burst  # see _poll_iteration
        # Batch lines wait in per-tenant lanes (shared/keys.py); None: this worker takes none from them.
        self.lane_keys = lane_keys if lane_window > 0 else None
        self.lane_window = lane_window
        self.fill = Fill(fleet_key, fill_cpu)  # one worker at a time (worker/fill.py), if asked for
        self.leases = Leases(self.pool, self.queue_name, lease_seconds) if self._pool is not None else None
        self._lease_s = lease_seconds
        self.shutdown_grace = shutdown_grace
        self.reconcile_seconds = reconcile_seconds
        self._draining = False
        self._orphans: set[str] = set()
        self._side_tasks: list[asyncio.Task[None]] = []
        # claimed jobs' start replies (payload, try, aborted), from the claim to their run_job's start
        self._started: dict[str, group_commit.Started] = {}
        # jobs whose result write recorded their end in arq (complete.lua): finish_job skips them
        self._ended: set[str] = set()
        self._skipped = 0  # polls in a row that passed a small claim up (_poll_queue)
        self._dry = True  # the last claim took fewer jobs than it asked for: the queue has no more due
        self.ctx[END_KEY] = self

    def claimable(self) -> int:
        """How many jobs to claim now: free slots, but no more than ``claim_ahead`` jobs whose fate is not
        known yet (claimed, not yet in a provider call nor in a local line for a full provider). Claims
        then follow the rate jobs start at instead of grabbing ``max_jobs`` at once (a burst of 200
        admits, refusals and deferrals for a provider with 40 slots), and no worker hoards jobs another
        could run. Jobs in a local line do not count: a full provider must not stop this worker from
        reaching another provider's jobs further down the queue."""
        free = self.max_jobs - self.job_counter
        executor = self.ctx.get(CTX_KEY)
        if self.claim_ahead is None or executor is None:
            return free
        known = min(executor.router.in_call + executor.local.waiting, self.job_counter)
        ahead = max(1, round(self.claim_ahead * executor.ahead_share))
        return min(free, ahead - (self.job_counter - known))

    async def start_jobs(self, job_ids: list[bytes], lanes: bool = False, read: int = 0) -> None:
        """Claim every job we have a free slot for in one Lua call (arq: four round trips per job): due
        jobs of the queue first (``job_ids``, or up to ``read`` of them read by the script itself), then,
        if ``lanes`` may hold lines, batch lines by the tenants' weights."""
        free = self.claimable()
        lanes = lanes and self.lane_keys is not None
        if free <= 0 or not (job_ids or lanes or read):
            return
        assert self.leases is not None
        # A job this worker still runs is never started again: Redis may have lost its lease (a
        # restart from a stale AOF), and a second run of one job id in one worker breaks arq's
        # bookkeeping (KeyError in run_job, a deferral turned into a failure, the line lost).
        ids = [j for j in job_ids if j.decode() not in self.tasks]
        if not ids and not lanes and not read:
            return
        if self._claim is None:
            self._claim = scripts.load(self.pool, "claim", __file__)
        k = self.lane_keys
        claimed = await self._claim(
            keys=[
                self.queue_name, *((k.lanes, k.lane_weights, k.lane_turns) if k else ("", "", "")),
                self.fill.key or "",
            ],
            args=[
                ARQ_IN_PROGRESS, self.leases.lease_ms, timestamp_ms(), free, self.leases.owner,
                k.lane_prefix if k else "", self.lane_window if lanes else 0, LANE_OUT_SUFFIX,
                0 if ids else read, ARQ_JOB, ARQ_RETRY, ARQ_ABORT_JOBS if self.allow_abort_jobs else "",
                *self.fill.claim_args(self.job_counter, self.max_jobs), *(ids or self._finishing()),
            ],
        )  # fmt: skip
        if self.fill.claimed(claimed):
            self._dry = False
            return
        self._dry = len(claimed) < CLAIMED * free
        if claimed:
            self.clock.idle_polls = 0
        self._reap_tasks()  # a task that ended meanwhile: a claim of its job is a new run
        give_back: list[tuple[str, int]] = []
        for i in range(0, len(claimed), CLAIMED):
            job_id = claimed[i].decode()
            score = int(float(claimed[i + 1]))
            if job_id in self.tasks:
                # A second run of one id in one worker breaks arq's bookkeeping (KeyError in run_job, a
                # deferral turned into a failure, the line lost). A job this worker runs already: after a
                # failover (or a restart from a stale AOF) the primary may have lost its lease, or still
                # hold it in its lane (the claim was lost with the old one); its run goes on, the lease is
                # ours again. A job whose run ended during this claim (deferred, and due again already)
                # while its task winds down: give it back at once (nobody would renew this lease).
                if job_id not in self.leases.live:
                    give_back.append((job_id, score))
                continue
            await self.sem.acquire()  # never waits: we claimed no more than the free slots
            self.job_counter += 1
            self.leases.claimed(job_id, score)
            self._started[job_id] = group_commit.Started(claimed[i + 2], claimed[i + 3], claimed[i + 4])
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            task.add_done_callback(partial(self._job_done, job_id))
            self.tasks[job_id] = task
        if give_back:
            await self.leases.give_back(give_back)

    def _stocked(self) -> bool:
        """Whether jobs of this worker wait in its local lines (worker/local_lines.py) for a slot, and the
        last few polls did not all pass their claim up."""
        executor = self.ctx.get(CTX_KEY)
        waiting = getattr(getattr(executor, "local", None), "waiting", 0)
        return waiting >= CLAIM_BATCH and self._skipped < SKIP_POLLS

    def _finishing(self) -> list[str]:
        """Jobs whose end arq has recorded (their lease is gone, a deferred one may be due again) while
        their task still runs: not to be claimed by this worker until the task is reaped."""
        assert self.leases is not None
        live = self.leases.live
        return [j for j, t in self.tasks.items() if j not in live and not t.done()]

    @property
    def pool(self) -> Any:
        # The first thing arq's run_job does with the pool is its start transaction: answered from what
        # the claim brought, or grouped with the other jobs starting now (worker/group_commit.py). Every
        # other use gets the pool itself.
        started = _STARTING.get()
        if started:
            _STARTING.set(False)
            got = started if isinstance(started, group_commit.Started) else None
            return group_commit.StartPool(self._pool, got)  # type: ignore[arg-type]
        return self._pool

    async def run_job(self, job_id: str, score: int) -> None:
        _STARTING.set(self._started.pop(job_id, True))  # this task's own context: no other job sees it
        await super().run_job(job_id, score)

    def _job_done(self, job_id: str, _: asyncio.Task[None]) -> None:
        """Here, not when the task is reaped (arq's poll loop may reap it first): stop renewing its lease,
        and if arq could not record the job's end (Redis went away, or it was cancelled before its
        finish), release the lease once Redis answers, so the job runs again now."""
        assert self.leases is not None
        self._started.pop(job_id, None)  # cancelled before its start
        self.loop.call_soon(self.capacity)  # after arq's own callback freed the job's slot
        self._was_ended(job_id)  # its write finished it (complete.lua), and arq's finish never came
        self.leases.finishing(job_id)
        if job_id in self.leases.held:
            self._orphans.add(job_id)

    async def main(self) -> None:
        # arq's startup talks to Redis first thing and dies if it cannot: wait for it instead.
        delay = 0.2
        while self._pool is not None:
            try:
                await self._pool.ping()
                break
            except _REDIS_DOWN as e:
                if delay == 0.2:
                    log.error(
                        "Redis %s is unreachable (%s): waiting for it before starting", self.redis_label, e
                    )
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        if self.leases is None:  # built from redis_settings: the pool exists only now
            self.leases = Leases(self.pool, self.queue_name, self._lease_s)
        self._side_tasks = [self.loop.create_task(self.leases.heartbeat())]
        if self.wake_key:
            self._side_tasks.append(self.loop.create_task(self.clock.listen(self.pool, self.wake_key)))
        executor = self.ctx.get(CTX_KEY)
        if executor is not None:
            executor.on_known = self.capacity
        store = self.ctx.get(STORE_KEY)
        if store is not None:  # a worker that runs Fusebox's jobs (not a bare FuseboxWorker in tests)
            reconciler = Reconciler(self.pool, store, self.leases.owner, self.reconcile_seconds)
            self._side_tasks.append(self.loop.create_task(reconciler.run()))
        try:
            await super().main()
        finally:
            for t in self._side_tasks:
                t.cancel()

    async def _poll_iteration(self) -> None:
        # arq's burst mode ends once its queue is empty, but batch lines may still wait in the tenants'
        # lanes: arq's check is switched off and switched on for one poll when ours says we are done.
        self.burst = False
        await self._poll_once()
        if self.burst_mode and await self._burst_done():
            self.burst = True

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started():
            return True
        try:
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.zcard(self.queue_name)  # running jobs stay in it until they finish
                if self.lane_keys is not None:
                    pipe.exists(self.lane_keys.lanes)
                got = await pipe.execute()
        except _REDIS_DOWN:
            return False
        return not any(got)

    async def _poll_once(self) -> None:
        self._reap_tasks()
        self.clock.polling()
        try:
            if self._orphans:
                await self._release_orphans()
            await self._poll_queue()
        except _REDIS_DOWN as e:
            loop = asyncio.get_running_loop()
            if self._down_since is None:
                self._down_since = loop.time()
                log.error(
                    "Redis %s is unreachable (%s): not taking jobs until it is back", self.redis_label, e
                )
            await asyncio.sleep(min(2.0, 0.2 + (loop.time() - self._down_since) / 10))
            return
        if self._down_since is not None:
            log.warning("Redis %s is back: taking jobs again", self.redis_label)
            self._down_since = None
        await self._idle()

    async def _poll_queue(self) -> None:
        """arq's poll, reading the queue only when we would claim something (arq reads up to
        ``queue_read_limit`` ids every poll while it has any free slot)."""
        count = self.queue_read_limit
        if self.burst_mode and self.max_burst_jobs >= 0:
            remaining = self.max_burst_jobs - self._jobs_started()
            if remaining < 1:
                return
            count = min(remaining, count)
        free = self.claimable() if self.allow_pick_jobs else 0
        if 0 < free < CLAIM_BATCH and self._stocked():
            # A claim for a slot or two while jobs of ours already wait for slots here: they take the slots
            # that free up first; a later poll claims several at once (a claim per poll and worker was about
            # a seventh of a worker's CPU with four workers). At most SKIP_POLLS polls in a row.
            self._skipped += 1
            free = 0
        if free > 0:
            self._skipped = 0
            # One round trip: claim.lua reads the due range itself. Running jobs are parked past now
            # (claim.lua), so the due range holds jobs to take; a few extra cover running ones found
            # there all the same (parked again) and this worker's finishing jobs (passed over).
            await self.start_jobs([], lanes=True, read=min(count, free + 8))
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, t in list(self.tasks.items()):  # as arq does: a task that ended during the poll
            if t.done():
                del self.tasks[job_id]
                t.result()
        await self.heart_beat()

    async def _idle(self) -> None:
        """Sleep until the next poll (``_pause``), or less if a wake-up token arrives."""
        if not self.clock.woken:
            await self.clock.sleep(await self._pause())

    async def _pause(self) -> float:
        poll_s = self.clock.poll_s
        if not self.allow_pick_jobs:
            return poll_s
        if self.fill.yielded:
            return poll_s * YIELD_POLLS
        if not self._dry:
            return poll_s * (SLOW_POLLS if self.claimable() < CLAIM_MORE else 1)
        if self.tasks or self.burst_mode or not self.wake_key:
            # a busy worker's jobs may defer themselves; a burst ends soon; without wake-up tokens a long
            # sleep would hold up new jobs
            return poll_s
        pause = self.clock.idle()
        if pause <= poll_s:
            return poll_s
        now = timestamp_ms()
        try:  # the next due job (deferred, or its lease running out) is taken on time
            nxt = await self.pool.zrangebyscore(self.queue_name, f"({now}", "+inf", 0, 1, withscores=True)
        except _REDIS_DOWN:
            return poll_s  # the next poll finds out and says so
        if nxt:
            pause = min(pause, max(poll_s, (nxt[0][1] - now) / 1000))
        return pause

    def capacity(self) -> None:
        """A claimed job's fate became known, or a job ended: poll now if a claim would take CLAIM_MORE."""
        if self.clock.sleeping and not self._dry and self.claimable() >= CLAIM_MORE:
            self.clock.wake()

    async def _release_orphans(self) -> None:
        assert self.leases is not None
        ids = list(self._orphans)
        n = await self.leases.release(ids)
        self._orphans.difference_update(ids)
        if n:
            log.warning("re-queued %d jobs whose end could not be recorded (Redis outage)", n)
