"""Runs one job: route, pass the gate, call the provider, retry or fall back, store the result once.

Redis round trips per job on the happy path: one ``admit`` (breaker + concurrency
lease + rate reservation) and one pipelined ``settle`` + ``complete`` (release,
breaker window, exactly-once result, counters, usage, and arq's finish of the job),
each shared with the other jobs of the worker admitting or finishing then. arq's
start of the job was done by the claim that took it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from arq import Retry

from shared import codec, metrics
from shared.budget import Budgets, Caps
from shared.byok.resolver import Routed, TenantKeys
from shared.errors import ProviderError
from shared.gate import Admission, Gate
from shared.jobs.store import Store
from shared.retry import RetryPolicy
from shared.router import Candidate, Router
from shared.schema import Attempt, ErrorInfo, JobResult, JobSpec, RequestError
from shared.scripts import ScriptCall
from worker import spend
from worker.attempts import INTERNAL
from worker.calls import Calls
from worker.local_lines import LocalLines
from worker.outcome import Deferred, Outcome, come_back_in, result_of
from worker.results import REDIS_DOWN as _REDIS_DOWN
from worker.results import JobEnd, carry_attempts, write_result

log = logging.getLogger("fusebox.executor")

MAX_DEFER_S = 60.0
# A job waiting in the worker re-checks the gate (for a slot freed in another worker) this often, or, deep
# in a line this worker's own calls drain, about twice its turn there (at most LOCAL_WAIT_MAX_S):
# behind a small limit split over several workers, jobs re-checking every 0.5 s from 50-deep lines were
# refused 1.7 times per request.
LOCAL_WAIT_S, LOCAL_WAIT_MAX_S = 0.5, 5.0
MAX_LOCAL_ROUNDS = 20
# A job finding its providers' local lines full waits for a place before it is deferred: about until its
# turn at the pace this worker's calls there end, within these bounds. Long enough for a line that drains
# at the provider's pace, short enough that jobs of other providers further down the queue are still
# reached quickly (jobs waiting for room hold back this worker's claims).
ROOM_WAIT_S, ROOM_WAIT_MAX_S = 0.05, 0.25
AHEAD_MIN, AHEAD_STEP = 1 / 16, 1 / 64  # bounds of Executor.ahead_share, and its step back up
# An unexpected error (a bug, a script error) re-runs the job this many times at most, with backoff, before
# the line is answered with an ``internal_error``: never deleted without a result.
INTERNAL_TRIES = 5
INTERNAL_BACKOFF_S = 0.5
REDIS_RETRY_S = 1.0  # a job cut off by a Redis error runs again after this


class Executor:
    def __init__(
        self,
        store: Store,
        router: Router,
        gate: Gate,
        policy: RetryPolicy,
        max_tries: int = 1000,
        local_waiters: int = 50,
        tenant_keys: TenantKeys | None = None,
        budgets: Budgets | None = None,
        job_timeout: float | None = None,
    ) -> None:
        """``job_timeout`` is arq's: past it arq cancels the job and drops it without a result, so the
        executor ends a run a little before (the job runs again, or its line gets an error)."""
        self.tenant_keys = tenant_keys  # tenants' own provider keys (None: not configured)
        self.budgets = budgets  # spend caps per tenant / batch (None: not enforced)
        self.store = store
        self.router = router
        self.gate = gate
        self.policy = policy
        self.max_tries = max_tries  # arq's limit: the last try must finish the job, never defer it
        self.local = LocalLines(local_waiters)
        self.calls = Calls(router, gate, policy, self.local, budgets, self._known)
        self.local.on_lost = self._lost_slot
        self._giving_back: set[asyncio.Task[None]] = set()
        # How far ahead the worker may claim, as a share of its claim_ahead (fuse_worker.claimable): halved
        # whenever a job found no place in a local line (claims outran the provider), regained one job at a
        # time as jobs find places, so a full provider costs a few turned-away jobs, not a stream of them.
        self.ahead_share = 1.0
        self.job_timeout = job_timeout
        # Called when a claimed job's fate becomes known (its call starts, or it waits in a local line):
        # the worker may claim again (FuseboxWorker.capacity).
        self.on_known: Callable[[], None] | None = None

    async def run(self, raw: bytes, job_try: int = 1, end: JobEnd | None = None) -> JobResult | None:
        """Run the job; None when it was deferred (arq re-queues it) instead of finishing. ``end``: the
        worker running it as an arq job, whose finish its result write then records too.

        Whatever goes wrong, the job is never left to arq to drop: a Redis error runs it again (arq Retry;
        if Redis is down the worker re-queues it once it is back), and any other error (a bug, a script
        error, a run past job_timeout) runs it again with backoff until, on its last chance, the line is
        answered with an ``internal_error``.
        """
        spec = codec.decode_spec(raw)
        attempts: list[Attempt] = list(spec.prior_attempts)
        deadline = None
        if self.job_timeout is not None:
            margin = max(0.2, min(2.0, self.job_timeout * 0.1))
            deadline = asyncio.get_running_loop().time() + max(0.1, self.job_timeout - margin)
        try:
            async with asyncio.timeout_at(deadline) as cm:
                return await self._run(spec, job_try, attempts, deadline, end)
        except Retry:
            raise
        except TimeoutError as e:
            if not cm.expired():  # a socket timeout, not the job's deadline
                if job_try >= self.max_tries:
                    raise
                raise Retry(defer=REDIS_RETRY_S) from e
            limit = f"the job ran longer than its job_timeout ({self.job_timeout:g}s)"
            return await self._internal_error(spec, job_try, attempts, e, limit, end)
        except _REDIS_DOWN as e:
            # Ask arq to run it again. If Redis is still down arq cannot record that either, and the
            # worker re-queues the job once Redis is back (FuseboxWorker._reap_tasks); if it was a blip,
            # arq's own finish would otherwise delete the job without a result.
            if job_try >= self.max_tries:
                raise
            raise Retry(defer=REDIS_RETRY_S) from e
        except Exception as e:
            return await self._internal_error(spec, job_try, attempts, e, end=end)

    async def _run(
        self, spec: JobSpec, job_try: int, attempts: list[Attempt], deadline: float | None, end: JobEnd | None
    ) -> JobResult | None:
        started = time.perf_counter()
        routed = await self._route(spec)
        candidates, owners, refused = routed.candidates, routed.owners, routed.error
        if refused is not None:
            outcome = Outcome(None, None, refused)
        else:
            try:
                outcome = await self._call(spec, candidates, attempts, owners, deadline)
            except Deferred as d:
                if job_try < self.max_tries:
                    metrics.record_deferral(d.reasons)
                    if len(attempts) > len(spec.prior_attempts):
                        await self._carry(spec, attempts)
                    raise Retry(defer=d.delay) from None
                info = d.error or ErrorInfo(
                    code="providers_unavailable", message=str(d), error_class="unavailable", status=503
                )
                outcome = Outcome(None, None, info)
        result = self._result(spec, outcome, attempts, started)
        slot, given = None, False
        if outcome.keep and outcome.admission is not None and outcome.scope is not None:
            # The call's lease passes on to the next job waiting here, which calls at once, without an
            # admission of its own; the settle going out with this result keeps the lease in Redis.
            slot = self.gate.pass_on(outcome.admission)
            given = self.local.give(outcome.scope, slot)
        elif outcome.scope is not None and outcome.hand_off:
            # Woken now, the next job's admit joins the round trip this result's write (with the call's
            # settle, which frees the slot) goes out in, right behind it: one round trip between calls.
            self.local.release(outcome.scope)
        try:
            # a lease given on belongs to the job that took it: a failed write must not release it under that
            # job's call (its own settle releases it)
            owned = None if given else outcome.admission
            settled = await self._write(spec, result, outcome.settle, owned, end)
        except BaseException:
            if slot is not None and not given:
                self.gate.unsettled(slot)  # a kept lease no job took: released before the next admission
            raise
        if slot is not None:
            self.gate.passed_on(slot, settled)
            if given:
                self.calls.spare(slot, settled)
            else:  # the waiting job left meanwhile
                await self.calls.give_back(slot)
        metrics.record_result(result, spec.kind)
        return result

    def _lost_slot(self, slot: Any) -> None:
        """A job given a slot was cancelled before it could take it."""
        task = asyncio.get_running_loop().create_task(self.calls.give_back(slot))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    def _result(self, spec: JobSpec, outcome: Outcome, attempts: list[Attempt], started: float) -> JobResult:
        return result_of(self.router, spec, outcome, attempts, started)

    async def _write(
        self,
        spec: JobSpec,
        result: JobResult,
        settle: ScriptCall | None,
        adm: Admission | None = None,
        end: JobEnd | None = None,
    ) -> Any:
        return await write_result(self.store, self.gate, spec, result, settle, adm, end)

    async def _internal_error(
        self,
        spec: JobSpec,
        job_try: int,
        attempts: list[Attempt],
        exc: Exception,
        why: str = "",
        end: JobEnd | None = None,
    ) -> JobResult:
        """An unexpected error: run the job again later, or answer the line if this was its last chance."""
        attempts.append(Attempt(provider="", model="", latency_ms=0.0, status=500, error_class=INTERNAL))
        n = sum(1 for a in attempts if a.error_class == INTERNAL)
        what = why or f"{type(exc).__name__}: {str(exc)[:300]}"
        if n < INTERNAL_TRIES and job_try < self.max_tries:
            delay = INTERNAL_BACKOFF_S * 2 ** (n - 1) * random.uniform(0.8, 1.2)
            log.warning("job %s: try %d failed (%s); it runs again in %.1fs", spec.id, job_try, what, delay)
            await self._carry(spec, attempts)
            raise Retry(defer=delay) from None
        log.error("job %s failed %d times (%s): answered with internal_error", spec.id, n, what, exc_info=exc)
        err = ErrorInfo(
            code="internal_error", message=why or f"internal error ({type(exc).__name__})",
            error_class=INTERNAL, status=500,
        )  # fmt: skip
        result = self._result(spec, Outcome(None, None, err), attempts, time.perf_counter())
        await self._write(spec, result, None, None, end)
        return result

    async def _route(self, spec: JobSpec) -> Routed:
        """The job's candidates: the tenant's own entries and keys (shared/byok/resolver.py), or the
        fleet's route for jobs without a tenant or when tenants' keys are not configured."""
        model = spec.req().model
        if spec.tenant is not None and self.tenant_keys is not None:
            return await self.tenant_keys.route(spec.tenant, model, self.router)
        try:
            return Routed(self.router.candidates(model), {})
        except RequestError as e:
            return Routed([], {}, ErrorInfo(code=e.code, message=e.message, status=400))

    async def _call(
        self,
        spec: JobSpec,
        candidates: list[Candidate],
        attempts: list[Attempt],
        owners: dict[str, str],
        deadline: float | None,
    ) -> Outcome:
        # The job may stand in every candidate's line; admitted anywhere, it leaves them all.
        scopes = [
            self.gate.policy(c.provider.name, c.model, owners.get(c.provider.name)).scope for c in candidates
        ]
        lines = scopes if len(candidates) > 1 else []
        est = spend.estimate_tokens(spec)
        errors: list[ProviderError] = []
        loop = asyncio.get_running_loop()
        # Wait in the worker only through the first third of the run: the call itself needs the rest.
        wait_until = None if deadline is None else loop.time() + (deadline - loop.time()) / 3
        caps = Caps()
        if self.budgets is not None and (spec.tenant is not None or spec.batch_id is not None):
            caps = await self.budgets.caps(spec.tenant, spec.batch_id)  # cached: no round trip per job
        first = spec.batch_id is None
        tried_room = waited_room = False  # looked for a place in a local line; waited for one in vain
        slot: Admission | None = None  # a lease a call of this worker that just ended passed on to this job
        if self.local.queued(scopes) and self._calling_on(scopes):
            # Jobs of this worker already wait for every candidate and its calls there will wake them: the
            # gate would refuse this one too (a round trip for nothing), so it joins them (once there is
            # room; if none comes, it asks the gate after all, which says when to come back).
            room_wait = self._room_wait(scopes)
            if await self.local.wait_room(scopes, room_wait):
                self._placed()
                self._known()
                wait = self._local_wait(scopes, first)
                slot, freed = _woken(await self.local.wait(scopes, wait, first=first))
                if freed is not None:
                    candidates = sorted(candidates, key=lambda c: c.provider.name != freed)
            else:
                tried_room, waited_room = True, room_wait > 0 or self._crowded(scopes)
        for _ in range(MAX_LOCAL_ROUNDS):
            denied: list[Admission] = []
            outcome = await self.calls.try_candidates(
                spec, candidates, attempts, est, lines, denied, errors, owners, caps, slot
            )
            slot = None  # taken, or given back
            if outcome is not None:
                self._placed()
                return outcome
            delay = come_back_in(denied)
            full = [d.scope for d in denied if d.reason == "saturated"]
            in_time = wait_until is None or loop.time() < wait_until
            may_wait = len(full) == len(denied) and in_time
            room_wait = 0.0 if tried_room or not may_wait else self._room_wait(full)
            if may_wait and await self.local.wait_room(full, room_wait):
                self._placed()
                # A few jobs per provider wait here and take a slot the moment one of this worker's
                # calls ends; the rest go back to arq until about their turn.
                # While calls of this worker run on these scopes, their ends wake it in turn; re-asking the
                # gate sooner only takes a slot another worker's waiter was woken for.
                calling = self._calling_on(full)
                timeout = self._local_wait(full, first) if calling else min(delay, LOCAL_WAIT_S)
                self._known()
                slot, freed = _woken(await self.local.wait(full, timeout, first=first))
                if freed is not None:  # try the candidate that just freed a slot first
                    candidates = sorted(candidates, key=lambda c: c.provider.name != freed)
                continue
            if may_wait and (waited_room or room_wait > 0 or self._crowded(full)):
                # no place came in the time this worker's line should have made one, or other jobs of
                # this worker already wait for one: it claims too far ahead for now (a line too slow to
                # wait for at all, with no job waiting for a place, says nothing about claiming)
                self.ahead_share = max(AHEAD_MIN, self.ahead_share / 2)
            # Nothing can serve it now: re-queue instead of holding this worker slot.
            delay = min(MAX_DEFER_S, max(0.005, delay) * random.uniform(0.85, 1.15))
            raise Deferred(delay, [f"{d.scope}: {d.reason}" for d in denied])
        if slot is not None:
            await self.calls.give_back(slot)
        raise Deferred(0.05, ["still saturated after waiting in this worker"])

    def _known(self) -> None:
        if self.on_known is not None:
            self.on_known()

    def _placed(self) -> None:
        """A job found a place (a slot, or room in a local line): claiming ahead pays again."""
        self.ahead_share = min(1.0, self.ahead_share + AHEAD_STEP)

    def _room_wait(self, scopes: list[str]) -> float:
        """How long a job may wait for a place in the local lines of ``scopes``: until about its turn
        among the jobs already waiting for one, at the pace this worker's calls there end; not at all
        if that is past ROOM_WAIT_MAX_S (a slow provider: the job had better be deferred at once)."""
        pace = min(self.calls.latency.get(s, 0.0) / max(1, self.calls.calling[s]) for s in scopes)
        turn = (min(self.local.waiting_for_room(s) for s in scopes) + 1) * pace * 1.5
        return 0.0 if turn > ROOM_WAIT_MAX_S else max(ROOM_WAIT_S, turn)

    def _local_wait(self, scopes: list[str], first: bool) -> float:
        """How long a job joining the local lines of ``scopes`` (where this worker's calls run) waits before
        it asks the gate again: twice its turn at the pace those calls end (their ends wake it when the turn
        comes; a re-check before it is only refused), within the bounds above. An interactive job
        (``first``) goes before every batch line there."""
        turn = 2 * min(
            (self.local.depth(s, first) + 1) * self.calls.latency.get(s, 0.0) / max(1, self.calls.calling[s])
            for s in scopes
        )
        return min(LOCAL_WAIT_MAX_S, max(LOCAL_WAIT_S, turn))

    def _crowded(self, scopes: list[str]) -> bool:
        """Whether other jobs of this worker wait for a place in every one of these full lines."""
        return all(self.local.waiting_for_room(s) for s in scopes)

    def _calling_on(self, scopes: list[str]) -> bool:
        return any(self.calls.calling[s] for s in scopes)

    async def _carry(self, spec: JobSpec, attempts: list[Attempt]) -> None:
        await carry_attempts(self.store, spec, attempts)


def _woken(freed: Any) -> tuple[Admission | None, str | None]:
    """What woke a job waiting in a local line: (the slot passed on to it, or None; the provider whose
    call ended, or None on a timeout)."""
    if isinstance(freed, Admission):
        return freed, freed.provider
    return None, None if freed is None else freed.split("/")[0]
