"""Runs one job: route, pass the gate, call the provider, retry or fall back, store the result once.

Redis round trips per job on the happy path: one ``admit`` (breaker + concurrency
lease + rate reservation) and one pipelined ``settle`` + ``complete`` (release,
breaker window, exactly-once result, counters, usage), on top of arq's own.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from shared import codec
from shared.errors import ErrorClass, ProviderError
from shared.keys import ARQ_JOB
from shared.providers.base import ProviderResponse
from shared.resilience import Admission, Gate, RedisUnavailable, outcome_of
from shared.retry import RetryPolicy
from shared.router import Candidate, Router
from shared.schema import Attempt, ChatRequest, ErrorInfo, JobResult, JobSpec, RequestError
from shared.scripts import ScriptCall, run_pipelined
from shared.store import JOB_FUNCTION, Store
from shared.tokens import estimate_messages, estimate_text
from shared.webhook_delivery import enqueue_webhook
from shared.webhooks import job_event
from worker.local_lines import LocalLines

DEFAULT_OUTPUT_ESTIMATE = 256  # tokens reserved for a reply whose request sets no max_tokens
MAX_DEFER_S = 60.0
LOCAL_WAIT_S = 0.5  # a job waiting in the worker re-checks the gate at least this often
MAX_LOCAL_ROUNDS = 20


@dataclass(slots=True)
class Outcome:
    response: ProviderResponse | None
    candidate: Candidate | None
    error: ErrorInfo | None
    settle: ScriptCall | None = None  # the last attempt's settle, sent with the result write
    scope: str | None = None  # the gate scope that settle frees a slot of


class Deferred(Exception):
    """Every candidate refused admission (saturated / open): come back in ``delay`` seconds."""

    def __init__(self, delay: float, reasons: list[str]) -> None:
        super().__init__(f"all candidates unavailable ({', '.join(reasons)}); retry in {delay:.2f}s")
        self.delay = delay


class Executor:
    def __init__(
        self,
        store: Store,
        router: Router,
        gate: Gate,
        policy: RetryPolicy,
        max_tries: int = 1000,
        local_waiters: int = 50,
    ) -> None:
        self.store = store
        self.router = router
        self.gate = gate
        self.policy = policy
        self.max_tries = max_tries  # arq's limit: the last try must finish the job, never defer it
        self.local = LocalLines(local_waiters)

    async def run(self, raw: bytes, job_try: int = 1) -> JobResult | None:
        """Run the job; None when it was deferred (arq re-queues it) instead of finishing."""
        spec = codec.decode_spec(raw)
        started = time.perf_counter()
        attempts: list[Attempt] = list(spec.prior_attempts)
        try:
            candidates = self.router.candidates(spec.req().model)
        except RequestError as e:
            outcome = Outcome(None, None, ErrorInfo(code=e.code, message=e.message, status=400))
        else:
            try:
                outcome = await self._call(spec, candidates, attempts)
            except Deferred as d:
                if job_try < self.max_tries:
                    if len(attempts) > len(spec.prior_attempts):
                        await self._carry(spec, attempts)
                    raise Retry(defer=d.delay) from None
                info = ErrorInfo(
                    code="providers_unavailable", message=str(d), error_class="unavailable", status=503
                )
                outcome = Outcome(None, None, info)
        result = self._result(spec, outcome, attempts, started)
        calls = [c for c in (outcome.settle, self.store.complete_call(result, spec.tenant)) if c is not None]
        try:
            replies = await run_pipelined(self.store.redis, calls)
        except (OSError, RedisConnectionError, RedisTimeoutError) as e:
            # the worker re-queues the job once Redis answers again (FuseboxWorker._reap_tasks)
            raise RedisUnavailable(f"could not store the result of {spec.id}: {e}") from None
        if outcome.scope is not None:
            self.local.release(outcome.scope)
        written, _ = self.store.completed(replies[-1])
        if written and spec.webhook:
            await self._job_webhook(spec.webhook, result)
        return result

    def _estimate(self, spec: JobSpec) -> int:
        if spec.request is not None:
            return estimate_messages(spec.request.messages) + (
                spec.request.output_limit() or DEFAULT_OUTPUT_ESTIMATE
            )
        assert spec.embed is not None
        return sum(estimate_text(t) for t in spec.embed.texts())

    async def _call(self, spec: JobSpec, candidates: list[Candidate], attempts: list[Attempt]) -> Outcome:
        # The job may stand in every candidate's line; admitted anywhere, it leaves them all.
        lines = (
            [self.gate.policy(c.provider.name, c.model).scope for c in candidates]
            if len(candidates) > 1
            else []
        )
        est = self._estimate(spec)
        errors: list[ProviderError] = []
        for _ in range(MAX_LOCAL_ROUNDS):
            denied: list[Admission] = []
            outcome = await self._try_candidates(spec, candidates, attempts, est, lines, denied, errors)
            if outcome is not None:
                return outcome
            delay = _come_back_in(denied)
            full = [d.scope for d in denied if d.reason == "saturated"]
            if len(full) == len(denied) and self.local.has_room(full):
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
    ) -> Outcome | None:
        """An outcome, or None when some candidates refused admission (``denied``) and none served it.

        A job's attempts on each candidate are bounded for the whole job (``max_attempts``, earlier rounds
        and runs included): one that waits for a saturated fallback does not call a failing primary again.
        """
        req = spec.req()
        last: ProviderError | None = None
        for cand in candidates:
            used = _used(attempts, cand, self.policy.max_attempts)
            for n in range(used, self.policy.max_attempts):
                adm = await self.gate.admit(
                    cand.provider.name, cand.model, est, waiter=spec.id, other_lines=lines
                )
                if not adm.ok:
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
                provider_fault = err is not None and err.error_class in (
                    ErrorClass.TRANSIENT,
                    ErrorClass.RATE_LIMITED,
                )
                self.router.finished(cand, latency, not provider_fault)
                tokens = resp.usage.total_tokens if resp is not None else 0
                settle = self.gate.settle_call(adm, outcome_of(err), latency, tokens)
                if resp is not None:
                    attempts.append(
                        Attempt(provider=cand.provider.name, model=cand.model, latency_ms=latency)
                    )
                    return Outcome(resp, cand, None, settle, adm.scope)
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
                    return Outcome(None, cand, _info(err), settle, adm.scope)
                await self.gate.settle(adm, outcome_of(err), latency, tokens)
                self.local.release(adm.scope)
                if err.error_class in (ErrorClass.CONTEXT, ErrorClass.UNAVAILABLE):
                    break  # this candidate cannot serve it: the next one
                if n + 1 < self.policy.max_attempts:
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
            last = errors[-1] if errors else _spent_error(attempts)
        return Outcome(None, None, _info(last))

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


def _used(attempts: list[Attempt], cand: Candidate, budget: int) -> int:
    """How much of its attempt budget on ``cand`` this job has spent: its failures there (the whole budget
    once the candidate said it cannot serve the job). 429s spend none: they are back-pressure, which
    adaptive concurrency and Retry-After handle, not a sign the job should give up on the provider."""
    n = 0
    for a in attempts:
        if a.provider != cand.provider.name or a.model != cand.model or a.error_class is None:
            continue
        if a.error_class in (ErrorClass.CONTEXT, ErrorClass.UNAVAILABLE):
            return budget
        if a.error_class != ErrorClass.RATE_LIMITED:
            n += 1
    return n


def _spent_error(attempts: list[Attempt]) -> ProviderError:
    """The failure to report for a job whose attempts were all spent in earlier runs (only Attempts left)."""
    a = next(a for a in reversed(attempts) if a.error_class is not None)
    msg = f"every candidate failed; last: {a.provider}/{a.model} ({a.error_class}, status {a.status})"
    return ProviderError(ErrorClass(a.error_class), msg, status=a.status or None)


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
