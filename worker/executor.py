"""Runs one job: route, pass the gate, call the provider, retry or fall back, store the result once.

Redis round trips per job on the happy path: one ``admit`` (breaker + concurrency
lease + rate reservation) and one pipelined ``settle`` + ``complete`` (release,
breaker window, exactly-once result, counters, usage), on top of arq's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import httpx
import msgspec
from arq import Retry
from arq.jobs import serialize_job
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import codec, metrics
from shared.budget import Budgets, Caps, Reservation
from shared.byok.crypto import MasterKeyError
from shared.byok.resolver import TenantKeys
from shared.errors import ErrorClass, ProviderError
from shared.keys import ARQ_JOB
from shared.providers.base import ProviderResponse
from shared.resilience import Admission, Gate, RedisUnavailable, outcome_of
from shared.retry import RetryPolicy
from shared.router import Candidate, Router
from shared.schema import Attempt, ChatRequest, ErrorInfo, JobResult, JobSpec, RequestError, Usage
from shared.scripts import ScriptCall
from shared.store import JOB_FUNCTION, Store
from shared.tokens import estimate_messages, estimate_text
from shared.webhook_delivery import enqueue_webhook
from shared.webhooks import job_event
from worker import group_commit
from worker.attempts import INTERNAL, failed_attempts, spent, spent_error
from worker.local_lines import LocalLines

log = logging.getLogger("fusebox.executor")

DEFAULT_OUTPUT_ESTIMATE = 256  # tokens reserved for a reply whose request sets no max_tokens
MAX_DEFER_S = 60.0
LOCAL_WAIT_S = 0.5  # a job waiting in the worker re-checks the gate at least this often
MAX_LOCAL_ROUNDS = 20
# An unexpected error (a bug, a script error) re-runs the job this many times at most, with backoff, before
# the line is answered with an ``internal_error``: never deleted without a result.
INTERNAL_TRIES = 5
INTERNAL_BACKOFF_S = 0.5
REDIS_RETRY_S = 1.0  # a job cut off by a Redis error runs again after this
_REDIS_DOWN = (OSError, RedisConnectionError, RedisTimeoutError, RedisUnavailable)
BUDGET_RECHECK_S = 5.0  # a batch line waiting for its budget checks again this often


@dataclass(slots=True)
class Outcome:
    response: ProviderResponse | None
    candidate: Candidate | None
    error: ErrorInfo | None
    settle: ScriptCall | None = None  # the last attempt's settle, sent with the result write
    scope: str | None = None  # the gate scope that settle frees a slot of
    admission: Admission | None = None  # the call that settle ends


class Deferred(Exception):
    """Every candidate refused admission (saturated / open), or failed this round: come back in ``delay``
    seconds. ``error`` is the line's answer if it may not come back (arq's last try)."""

    def __init__(self, delay: float, reasons: list[str], error: ErrorInfo | None = None) -> None:
        super().__init__(f"all candidates unavailable ({', '.join(reasons)}); retry in {delay:.2f}s")
        self.delay = delay
        self.error = error
        self.reasons = reasons


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
        self.budget_recheck_s = BUDGET_RECHECK_S
        self.store = store
        self.router = router
        self.gate = gate
        self.policy = policy
        self.max_tries = max_tries  # arq's limit: the last try must finish the job, never defer it
        self.local = LocalLines(local_waiters)
        self.job_timeout = job_timeout

    async def run(self, raw: bytes, job_try: int = 1) -> JobResult | None:
        """Run the job; None when it was deferred (arq re-queues it) instead of finishing.

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
                return await self._run(spec, job_try, attempts, deadline)
        except Retry:
            raise
        except TimeoutError as e:
            if not cm.expired():  # a socket timeout, not the job's deadline
                if job_try >= self.max_tries:
                    raise
                raise Retry(defer=REDIS_RETRY_S) from e
            limit = f"the job ran longer than its job_timeout ({self.job_timeout:g}s)"
            return await self._internal_error(spec, job_try, attempts, e, limit)
        except _REDIS_DOWN as e:
            # Ask arq to run it again. If Redis is still down arq cannot record that either, and the
            # worker re-queues the job once Redis is back (FuseboxWorker._reap_tasks); if it was a blip,
            # arq's own finish would otherwise delete the job without a result.
            if job_try >= self.max_tries:
                raise
            raise Retry(defer=REDIS_RETRY_S) from e
        except Exception as e:
            return await self._internal_error(spec, job_try, attempts, e)

    async def _run(
        self, spec: JobSpec, job_try: int, attempts: list[Attempt], deadline: float | None
    ) -> JobResult | None:
        started = time.perf_counter()
        refused: ErrorInfo | None = None
        try:
            candidates = self.router.candidates(spec.req().model)
        except RequestError as e:
            refused = ErrorInfo(code=e.code, message=e.message, status=400)
        else:
            candidates, owners, refused = await self._own_keys(spec, candidates)
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
        await self._write(spec, result, outcome.settle, outcome.admission)
        metrics.record_result(result, spec.kind)
        if outcome.scope is not None:
            self.local.release(outcome.scope)
        return result

    async def _write(
        self, spec: JobSpec, result: JobResult, settle: ScriptCall | None, adm: Admission | None = None
    ) -> None:
        """Store the result exactly once, with the last attempt's settle in the same round trip. A settle
        that fails (a script error) never costs the result; its lease is released before the next admit."""
        calls = [c for c in (settle, self.store.complete_call(result, spec.tenant)) if c is not None]
        try:
            replies = await group_commit.script_group(self.store.redis).run(calls)
        except (OSError, RedisConnectionError, RedisTimeoutError) as e:
            if adm is not None:
                self.gate.unsettled(adm)
            # the worker re-queues the job once Redis answers again (FuseboxWorker._reap_tasks)
            raise RedisUnavailable(f"could not store the result of {spec.id}: {e}") from None
        if settle is not None and isinstance(replies[0], Exception):
            log.error("job %s: settling its call failed: %s", spec.id, replies[0])
            if adm is not None:
                self.gate.unsettled(adm)
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        written, _ = self.store.completed(replies[-1])
        if written and spec.webhook:
            try:
                await self._job_webhook(spec.webhook, result)
            except _REDIS_DOWN:
                raise
            except Exception as e:  # the result is stored: running the job again would not resend it
                log.error("job %s: its webhook could not be queued: %s: %s", spec.id, type(e).__name__, e)

    async def _internal_error(
        self, spec: JobSpec, job_try: int, attempts: list[Attempt], exc: Exception, why: str = ""
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
        info = ErrorInfo(
            code="internal_error", message=why or f"internal error ({type(exc).__name__})",
            error_class=INTERNAL, status=500,
        )  # fmt: skip
        result = self._result(spec, Outcome(None, None, info), attempts, time.perf_counter())
        await self._write(spec, result, None)
        return result

    def _estimate(self, spec: JobSpec) -> int:
        if spec.request is not None:
            return estimate_messages(spec.request.messages) + (
                spec.request.output_limit() or DEFAULT_OUTPUT_ESTIMATE
            )
        assert spec.embed is not None
        return sum(estimate_text(t) for t in spec.embed.texts())

    async def _own_keys(
        self, spec: JobSpec, candidates: list[Candidate]
    ) -> tuple[list[Candidate], dict[str, str], ErrorInfo | None]:
        """The candidates with the tenant's own keys swapped in, the providers called with them
        (-> the tenant, whose per-key gate scope they use), or the error if no key may be used.
        Jobs without a tenant, or of tenants with no keys that may use the fleet's, are untouched;
        the tenant's records are cached in the worker (TenantKeys.ttl), so no round trip per job."""
        if spec.tenant is None or self.tenant_keys is None:
            return candidates, {}, None
        try:
            view = await self.tenant_keys.view(spec.tenant)
        except MasterKeyError as e:
            return (
                [],
                {},
                ErrorInfo(code="master_key_unavailable", message=str(e), error_class="final", status=500),
            )
        if not view.keys and view.allow_fleet_keys:
            return candidates, {}, None
        out: list[Candidate] = []
        owners: dict[str, str] = {}
        missing: list[str] = []
        for c in candidates:
            key = view.keys.get(c.provider.name)
            if key is not None:
                out.append(Candidate(self.tenant_keys.adapter(spec.tenant, key), c.model))
                owners[c.provider.name] = spec.tenant
            elif view.allow_fleet_keys:
                out.append(c)
            else:
                missing.append(c.provider.name)
        if out:
            return out, owners, None
        names = ", ".join(missing)
        msg = (
            f"tenant {spec.tenant!r} has no key of its own for {names} and may not use the fleet's keys: "
            f"store one (PUT /v1/fusebox/provider-keys/{missing[0]}) or allow fleet keys"
        )
        return [], {}, ErrorInfo(code="tenant_key_missing", message=msg, error_class="final", status=403)

    async def _call(
        self,
        spec: JobSpec,
        candidates: list[Candidate],
        attempts: list[Attempt],
        owners: dict[str, str],
        deadline: float | None,
    ) -> Outcome:
        # The job may stand in every candidate's line; admitted anywhere, it leaves them all.
        lines = (
            [
                self.gate.policy(c.provider.name, c.model, owners.get(c.provider.name)).scope
                for c in candidates
            ]
            if len(candidates) > 1
            else []
        )
        est = self._estimate(spec)
        errors: list[ProviderError] = []
        loop = asyncio.get_running_loop()
        # Wait in the worker only through the first third of the run: the call itself needs the rest.
        wait_until = None if deadline is None else loop.time() + (deadline - loop.time()) / 3
        caps = Caps()
        if self.budgets is not None and (spec.tenant is not None or spec.batch_id is not None):
            caps = await self.budgets.caps(spec.tenant, spec.batch_id)  # cached: no round trip per job
        for _ in range(MAX_LOCAL_ROUNDS):
            denied: list[Admission] = []
            outcome = await self._try_candidates(
                spec, candidates, attempts, est, lines, denied, errors, owners, caps
            )
            if outcome is not None:
                return outcome
            delay = _come_back_in(denied)
            full = [d.scope for d in denied if d.reason == "saturated"]
            in_time = wait_until is None or loop.time() < wait_until
            if len(full) == len(denied) and in_time and self.local.has_room(full):
                # A few jobs per provider wait here and take a slot the moment one of this worker's
                # calls ends; the rest go back to arq until about their turn.
                freed = await self.local.wait(full, min(delay, LOCAL_WAIT_S))
                if freed is not None:  # try the candidate that just freed a slot first
                    candidates = sorted(candidates, key=lambda c: c.provider.name != freed.split("/")[0])
                continue
            # Nothing can serve it now: re-queue instead of holding this worker slot.
            delay = min(MAX_DEFER_S, max(0.005, delay) * random.uniform(0.85, 1.15))
            raise Deferred(delay, [f"{d.scope}: {d.reason}" for d in denied])
        raise Deferred(0.05, ["still saturated after waiting in this worker"])

    async def _try_candidates(
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
    ) -> Outcome | None:
        """An outcome, or None when some candidates refused admission (``denied``) and none served it.

        A job's attempts on each candidate are bounded per round (``max_attempts``, earlier runs included):
        one that waits for a saturated fallback does not call a failing primary again. A round ends when
        every candidate has spent its budget; a batch line then waits for the next round (deferred, with
        a backoff growing per round) until its own attempt/time budget is spent, where a single job fails.
        """
        req = spec.req()
        last: ProviderError | None = None
        for cand in candidates:
            budget = spent(attempts, candidates, self.policy.max_attempts)[0]
            used = budget.get((cand.provider.name, cand.model), 0)
            for n in range(used, self.policy.max_attempts):
                resv: Reservation | None = None
                if caps.any:
                    resv, refused = await self._reserve(spec, cand, caps)
                    if refused is not None:
                        return refused
                adm = await self.gate.admit(
                    cand.provider.name,
                    cand.model,
                    est,
                    waiter=spec.id,
                    other_lines=lines,
                    owner=owners.get(cand.provider.name),
                )
                if not adm.ok:
                    if resv is not None:
                        await self.budgets.settle(resv, 0.0)  # type: ignore[union-attr]
                    denied.append(adm)
                    break  # saturated / open: the next candidate, or wait / defer the job
                self.router.started(cand)
                t0 = time.perf_counter()
                resp: ProviderResponse | None = None
                err: ProviderError | None = None
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
                    # cancelled (shutdown, job timeout): free the slot now, say nothing about health
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.gate.settle(adm, "ignored", _ms(t0), 0))
                    self.local.release(adm.scope)
                    raise
                latency = _ms(t0)
                if resv is not None:  # the real cost replaces the estimate (a failed call costs nothing)
                    real = self.router.cost(cand, resp.usage, spec.kind) if resp is not None else 0.0
                    await self.budgets.settle(resv, real or 0.0)  # type: ignore[union-attr]
                provider_fault = err is not None and err.error_class in (
                    ErrorClass.TRANSIENT,
                    ErrorClass.RATE_LIMITED,
                )
                self.router.finished(cand, latency, not provider_fault)
                metrics.record_call(
                    cand.provider.name, cand.model, 200 if err is None else err.status,
                    None if err is None else err.error_class.value, latency / 1000,
                )  # fmt: skip
                tokens = resp.usage.total_tokens if resp is not None else 0
                settle = self.gate.settle_call(adm, outcome_of(err), latency, tokens)
                if resp is not None:
                    attempts.append(
                        Attempt(provider=cand.provider.name, model=cand.model, latency_ms=latency)
                    )
                    return Outcome(resp, cand, None, settle, adm.scope, adm)
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
                    return Outcome(None, cand, _info(err), settle, adm.scope, adm)
                await self._settle(spec, adm, outcome_of(err), latency, tokens)
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
                raise Deferred(delay, [f"every candidate failed (round {rounds})"], _info(last))
        return Outcome(None, None, _info(last))

    async def _reserve(
        self, spec: JobSpec, cand: Candidate, caps: Caps
    ) -> tuple[Reservation | None, Outcome | None]:
        """Reserve the call's estimated cost against the job's caps. Refused: a batch line waits (its
        batch shows it is paused, and it runs once the cap is raised); a single job fails."""
        assert self.budgets is not None
        req = spec.req()
        if isinstance(req, ChatRequest):
            prompt, out = estimate_messages(req.messages), req.output_limit() or DEFAULT_OUTPUT_ESTIMATE
        else:
            prompt, out = self._estimate(spec), 0
        usage = Usage(prompt_tokens=prompt, completion_tokens=out, total_tokens=prompt + out)
        est = self.router.cost(cand, usage, spec.kind) or 0.0
        resv = await self.budgets.reserve(spec.tenant, spec.batch_id, caps, est)
        if resv.ok:
            return resv, None
        info = ErrorInfo(code="budget_exceeded", message=resv.reason, error_class="final", status=402)
        if spec.batch_id is not None:
            await self.budgets.pause(spec.batch_id, resv.reason)
            raise Deferred(self.budget_recheck_s, ["budget"], info)
        return None, Outcome(None, cand, info)

    async def _settle(self, spec: JobSpec, adm: Admission, outcome: str, latency: float, tokens: int) -> None:
        """Settle a failed attempt before the next one. A script error here must not end the job: the
        breaker misses one outcome, and the lease is released before this worker's next admission."""
        try:
            await self.gate.settle(adm, outcome, latency, tokens)
        except _REDIS_DOWN:
            raise
        except Exception as e:
            log.error("job %s: settling a %s call failed: %s: %s", spec.id, adm.scope, type(e).__name__, e)
            self.gate.unsettled(adm)

    async def _carry(self, spec: JobSpec, attempts: list[Attempt]) -> None:
        """Rewrite the queued payload so the next run starts with ``attempts``: arq re-runs a deferred
        job from the payload stored at enqueue, and its result must list every attempt. Only jobs
        deferred after a failed attempt pay this round trip; if it fails, the job still runs again."""
        carried = msgspec.structs.replace(spec, prior_attempts=attempts)
        enqueued_ms = int((spec.submitted_at or time.time()) * 1000)
        payload = serialize_job(
            JOB_FUNCTION[spec.kind], (codec.encode_spec(carried),), {}, None, enqueued_ms,
            serializer=codec.arq_serializer,
        )  # fmt: skip
        with contextlib.suppress(RedisError, OSError):
            # XX: never resurrect a job that is gone; KEEPTTL: the job's expiry stays as enqueued
            await self.store.redis.set(ARQ_JOB + spec.id, payload, xx=True, keepttl=True)

    async def _job_webhook(self, url: str, result: JobResult) -> None:
        await enqueue_webhook(self.store.redis, self.store.keys, url, job_event(result), None)

    def _result(self, spec: JobSpec, outcome: Outcome, attempts: list[Attempt], started: float) -> JobResult:
        cand, resp, err = outcome.candidate, outcome.response, outcome.error
        cost = 0.0
        if resp is not None and cand is not None:
            cost = self.router.cost(cand, resp.usage, spec.kind) or 0.0
        return JobResult(
            id=spec.id,
            status_code=200 if resp is not None else ((err.status if err else None) or 500),
            body=resp.body if resp is not None else None,
            error=err,
            custom_id=spec.custom_id,
            batch_id=spec.batch_id,
            line=spec.line,
            provider=cand.provider.name if cand else None,
            model=cand.model if cand else None,
            request_id=resp.request_id if resp is not None else None,
            attempts=attempts,
            latency_ms=_ms(started),
            usage=resp.usage if resp is not None else None,
            cost_usd=round(cost, 10),
            completed_at=time.time(),
        )


def _come_back_in(denied: list[Admission]) -> float:
    """When to retry a job every candidate refused.

    Each saturated candidate put the job in its line and said when its turn comes
    there; the job waits in all of them at once, so their service rates add up.
    """
    lines = [d.retry_in for d in denied if d.reason == "saturated" and d.retry_in > 0]
    if lines:
        return 1.0 / sum(1.0 / w for w in lines)
    return min(d.retry_in for d in denied)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _info(err: ProviderError) -> ErrorInfo:
    return ErrorInfo(code=err.code, message=err.message, error_class=err.error_class.value, status=err.status)
