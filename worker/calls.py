"""A job's provider calls: each candidate in turn, within its attempt budget, each call admitted by
the gate, sent, and settled (worker/executor.py decides what a job does when none is admitted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from shared import metrics
from shared.budget import Budgets, Caps, Hold
from shared.errors import ErrorClass, ProviderError
from shared.gate import Admission, Gate, outcome_of
from shared.providers.base import ProviderResponse
from shared.retry import RetryPolicy
from shared.router import Candidate, Router
from shared.schema import Attempt, ChatRequest, ErrorInfo, JobSpec
from worker import spend
from worker.attempts import failed_attempts, spent, spent_error
from worker.local_lines import LocalLines
from worker.outcome import Call, Deferred, Outcome, info, ms_since
from worker.results import REDIS_DOWN as _REDIS_DOWN

log = logging.getLogger("fusebox.executor")

BUDGET_RECHECK_S = 5.0  # a batch line waiting for its budget checks again this often


class Calls:
    """One worker's provider calls: what it has in flight and how long they take, by gate scope (the
    executor paces its local lines by them)."""

    def __init__(
        self,
        router: Router,
        gate: Gate,
        policy: RetryPolicy,
        local: LocalLines,
        budgets: Budgets | None,
        started: Callable[[], None],
    ) -> None:
        """``started``: called as each call starts (the worker may claim again)."""
        self.router = router
        self.gate = gate
        self.policy = policy
        self.local = local
        self.budgets = budgets
        self.budget_recheck_s = BUDGET_RECHECK_S
        self._started = started
        self.calling: Counter[str] = Counter()  # this worker's provider calls in flight, by gate scope
        self.asking: Counter[str] = Counter()  # this worker's admissions not answered yet, by gate scope
        self.latency: dict[str, float] = {}  # moving mean of this worker's call latency by scope, seconds

    async def try_candidates(
        self,
        spec: JobSpec,
        candidates: list[Candidate],
        attempts: list[Attempt],
        est: int,
        lines: list[str],
        denied: list[Admission],
        errors: list[ProviderError],
        owners: dict[str, str],
        caps: Caps,
        slot: Admission | None = None,
    ) -> Outcome | None:
        """An outcome, or None when some candidates refused admission (``denied``) and none served it.

        A job's attempts on each candidate are bounded per round (``max_attempts``, earlier runs included):
        one that waits for a saturated fallback does not call a failing primary again. A round ends when
        every candidate has spent its budget; a batch line then waits for the next round (deferred, with
        a backoff growing per round) until its own attempt/time budget is spent, where a single job fails.

        ``slot``: a lease a finished call of this worker passed on to this job (Gate.settle_call's keep),
        used for the first call on its scope instead of an admission; given back if unused.
        """
        try:
            last: ProviderError | None = None
            for cand in candidates:
                budget = spent(attempts, candidates, self.policy.max_attempts)[0]
                used = budget.get((cand.provider.name, cand.model), 0)
                for n in range(used, self.policy.max_attempts):
                    owner = owners.get(cand.provider.name)
                    granted = None
                    if slot is not None:
                        if self.gate.policy(cand.provider.name, cand.model, owner).scope == slot.scope:
                            granted, slot = slot, None  # taken: _one_call calls on it or gives it back
                    call = await self._one_call(spec, cand, est, lines, owner, caps, granted)
                    if isinstance(call, ErrorInfo):
                        return Outcome(None, cand, call)  # a single job over its budget
                    adm, resp, err, latency = call.adm, call.resp, call.err, call.latency
                    if not adm.ok:
                        denied.append(adm)
                        break  # saturated / open: the next candidate, or wait / defer the job
                    tokens = resp.usage.total_tokens if resp is not None else 0
                    # a job of this worker waiting for this scope takes the slot next (released in _run)
                    share = self.within_share(adm)
                    handoff = share and self.local.queued([adm.scope])
                    # a job waits here for this scope: the lease runs on for it (no release, no admission)
                    keep = handoff and resp is not None and self.gate.can_pass_on(adm)
                    settle = self.gate.settle_call(adm, outcome_of(err), latency, tokens, handoff, keep)
                    if resp is not None:
                        attempts.append(
                            Attempt(provider=cand.provider.name, model=cand.model, latency_ms=latency)
                        )
                        return Outcome(resp, cand, None, settle, adm.scope, adm, share, keep)
                    assert err is not None
                    last = err
                    errors.append(err)
                    attempts.append(
                        Attempt(
                            provider=cand.provider.name,
                            model=cand.model,
                            latency_ms=latency,
                            status=err.status or 0,
                            error_class=err.error_class.value,
                        )
                    )
                    if err.error_class is ErrorClass.FINAL:
                        return Outcome(None, cand, info(err), settle, adm.scope, adm, share)
                    await self._settle(spec, adm, outcome_of(err), latency, tokens, handoff)
                    if share:
                        self.local.release(adm.scope)
                    if err.error_class in (ErrorClass.CONTEXT, ErrorClass.UNAVAILABLE):
                        break  # this candidate cannot serve it: the next one
                    if n + 1 < self.policy.max_attempts:
                        metrics.RETRIES.labels(cand.provider.name).inc()
                        delay = self.policy.delay(n, err.retry_after)
                        if self.policy.should_defer(delay):
                            raise Deferred(delay, [f"{cand.label} asked to wait"])
                        await asyncio.sleep(delay)
            if denied and (last is None or last.error_class is not ErrorClass.CONTEXT):
                return None
            if last is not None and last.error_class is ErrorClass.RATE_LIMITED:
                # Back-pressure, not failure (adaptive concurrency even probes for it): the job goes back to
                # arq until the provider's wait is over; only arq's last try fails it.
                delay = max(last.retry_after or 0.0, self.policy.delay(self.policy.max_attempts - 1))
                raise Deferred(delay, [f"{attempts[-1].provider}/{attempts[-1].model}: rate limited"])
            if last is None:  # every candidate's attempts were spent in earlier rounds or runs
                last = errors[-1] if errors else spent_error(attempts)
            if last.error_class is ErrorClass.TRANSIENT and spec.batch_id is not None:
                # Transient failures never fail a batch line early: it waits for another round.
                age = time.time() - (spec.submitted_at or time.time())
                if self.policy.may_wait(failed_attempts(attempts), age):
                    rounds = spent(attempts, candidates, self.policy.max_attempts)[1]
                    delay = self.policy.round_delay(rounds)
                    raise Deferred(delay, [f"every candidate failed (round {rounds})"], info(last))
            return Outcome(None, None, info(last))
        finally:
            if slot is not None:  # no call took it
                await self.give_back(slot)

    async def give_back(self, slot: Admission) -> None:
        """Release a passed-on lease no job took (its outcome is not the provider's)."""
        try:
            await self.gate.settle(slot, "ignored", 0.0, 0)
        except Exception:
            self.gate.unsettled(slot)  # released before this worker's next admission

    def within_share(self, adm: Admission) -> bool:
        """Whether this worker, handing the slot its call just freed to a job of its own, would hold no
        more than its share of the scope's slots (the limit over the workers holding them). A freed slot
        goes to a job waiting in the same worker without a round trip of its own, so whichever worker took
        the most slots at a batch's start would keep them; its loop then answers its calls later than the
        others' would (bench/peers.py: 2 workers on one provider at 0.74-0.80 of its ceiling when they
        split its slots 3:1, at 0.86-0.90 when evenly). Over its share, the slot goes back to the gate,
        which calls a deferred job back, and a job waiting in a worker under its share takes it (such a
        worker, admitted while slots are free, wakes its next waiting job: ``_one_call``)."""
        return self.calling[adm.scope] + 1 <= self.share(adm)

    def free_after(self, adm: Admission) -> int:
        """The scope's slots still free once this worker's other admissions now under way are answered:
        those sent in the same round trip after this one take slots this one's reply counted as free.
        Waking a waiting job for each would only have it refused (a round trip and a script for
        nothing: about 0.7 per call with one worker before)."""
        return adm.limit - adm.in_flight - self.asking[adm.scope]

    def spare(self, slot: Admission, reply: Any) -> None:
        """After the settle that kept ``slot`` for the next call: if the gate has slots free beyond it (its
        limit rose, or another worker gave some back) and this worker is under its share, a job waiting
        here asks the gate for one (admitted with slots left, it wakes the next: ``_one_call``). A worker
        passing its slots on makes no admissions of its own, so without this its calls would stay at the
        count they had (a limit lowered by 429s and grown back went unused) until a waiting job's
        re-check came round."""
        if not isinstance(reply, list) or len(reply) < 7 or not self.local.queued([slot.scope]):
            return
        limit, in_flight, owners = int(reply[3]), int(reply[4]), int(reply[5])  # owners 0: not counted
        share = -(-limit // max(1, owners or slot.owners))
        if limit - in_flight - self.asking[slot.scope] > 0 and self.calling[slot.scope] < share:
            self.local.release(slot.scope)

    @staticmethod
    def share(adm: Admission) -> int:
        """This worker's share of the scope's slots: its limit over the workers holding them, rounded up."""
        return -(-adm.limit // max(1, adm.owners))

    async def _one_call(
        self,
        spec: JobSpec,
        cand: Candidate,
        est: int,
        lines: list[str],
        owner: str | None,
        caps: Caps,
        slot: Admission | None = None,
    ) -> Call | ErrorInfo:
        """Reserve the call's cost (if the job has spend caps), pass the gate, call, reconcile the cost.
        Whatever ends it early (refused admission, an error, a cancel, job_timeout) refunds the
        reservation in ``finally``: spend only ever counts the real cost of calls that answered."""
        hold: Hold | None = None
        if caps.any:
            assert self.budgets is not None
            held = await spend.reserve(self.budgets, self.router, spec, cand, caps, self.budget_recheck_s)
            if isinstance(held, ErrorInfo):
                if slot is not None:
                    await self.give_back(slot)
                return held
            hold = held
        try:
            if slot is not None:  # passed on by a call of this worker that just ended: already admitted
                return await self._sent(spec, cand, slot.passed(slot.owners, spec.id), hold)
            name = cand.provider.name
            asked = self.gate.policy(name, cand.model, owner).scope
            self.asking[asked] += 1
            try:
                adm = await self.gate.admit(
                    name,
                    cand.model,
                    est,
                    waiter=spec.id,
                    other_lines=lines,
                    owner=owner,
                    first=spec.batch_id is None,
                )
            finally:
                self.asking[asked] -= 1
            if not adm.ok:
                return Call(adm)
            if self.free_after(adm) > 0 and self.calling[adm.scope] + 1 < self.share(adm):
                # slots are free (a worker over its share gave one back) and this one is under its share:
                # the next job waiting here asks for one too
                self.local.release(adm.scope)
            return await self._sent(spec, cand, adm, hold)
        finally:
            if hold is not None:
                await hold.release()

    async def _sent(self, spec: JobSpec, cand: Candidate, adm: Admission, hold: Hold | None) -> Call:
        call = await self._send(spec, cand, adm)
        if hold is not None:  # the real cost replaces the estimate (a failed call costs nothing)
            real = self.router.cost(cand, call.resp.usage, spec.kind) if call.resp is not None else 0.0
            try:
                await hold.settle(real or 0.0)
            except BaseException:
                self.gate.unsettled(adm)  # its lease is released before this worker's next admit
                raise
        return call

    async def _send(self, spec: JobSpec, cand: Candidate, adm: Admission) -> Call:
        """The provider call of an admitted job; provider errors and timeouts come back in the Call."""
        req = spec.req()
        self.router.started(cand)
        self._started()
        t0 = time.perf_counter()
        resp: ProviderResponse | None = None
        err: ProviderError | None = None
        self.calling[adm.scope] += 1
        try:
            async with self.gate.keepalive(adm):
                if isinstance(req, ChatRequest):
                    resp = await cand.provider.chat(req, cand.model)
                else:
                    resp = await cand.provider.embed(req, cand.model)
        except ProviderError as e:
            err = e
        except (TimeoutError, OSError, httpx.TransportError) as e:
            err = ProviderError(ErrorClass.TRANSIENT, f"{type(e).__name__}: {e}", code="timeout")
        except BaseException:
            # cancelled (shutdown, job timeout) or a bug: free the slot and the token reservation now,
            # say nothing about health
            self.router.finished(cand, ms_since(t0), True, observed=False)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.gate.settle(adm, "ignored", ms_since(t0), 0))
            self.local.release(adm.scope)
            raise
        finally:
            self.calling[adm.scope] -= 1
        latency = ms_since(t0)
        seen = self.latency.get(adm.scope)
        self.latency[adm.scope] = latency / 1000 if seen is None else 0.9 * seen + 0.1 * latency / 1000
        fault = err is not None and err.error_class in (ErrorClass.TRANSIENT, ErrorClass.RATE_LIMITED)
        self.router.finished(cand, latency, not fault)
        metrics.record_call(
            cand.provider.name, cand.model, 200 if err is None else err.status,
            None if err is None else err.error_class.value, latency / 1000,
        )  # fmt: skip
        return Call(adm, resp, err, latency)

    async def _settle(
        self, spec: JobSpec, adm: Admission, outcome: str, latency: float, tokens: int, handoff: bool
    ) -> None:
        """Settle a failed attempt before the next one. A script error here must not end the job: the
        breaker misses one outcome, and the lease is released before this worker's next admission."""
        try:
            await self.gate.settle(adm, outcome, latency, tokens, handoff)
        except _REDIS_DOWN:
            raise
        except Exception as e:
            log.error("job %s: settling a %s call failed: %s: %s", spec.id, adm.scope, type(e).__name__, e)
            self.gate.unsettled(adm)
