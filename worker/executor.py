"""Runs one job: route, call providers with retries and fallback, store the result once."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from arq import Retry

from shared import codec
from shared.config import RetryConfig
from shared.errors import ErrorClass, ProviderError
from shared.providers.base import ProviderResponse
from shared.router import Candidate, Router
from shared.schema import (
    Attempt,
    ChatRequest,
    ErrorInfo,
    JobResult,
    JobSpec,
    RequestError,
)
from shared.store import Store

# Waits longer than this are not slept in a worker slot: the job is re-deferred through arq.
MAX_INLINE_WAIT_S = 2.0


@dataclass(slots=True)
class Outcome:
    response: ProviderResponse | None
    candidate: Candidate | None
    error: ErrorInfo | None


class Executor:
    def __init__(self, store: Store, router: Router, retry: RetryConfig) -> None:
        self.store = store
        self.router = router
        self.retry = retry

    async def run(self, raw: bytes, job_try: int = 1) -> JobResult:
        spec = codec.decode_spec(raw)
        started = time.perf_counter()
        attempts: list[Attempt] = []
        try:
            candidates = self.router.candidates(spec.req().model)
        except RequestError as e:
            outcome = Outcome(
                None, None, ErrorInfo(code=e.code, message=e.message, error_class="final", status=400)
            )
        else:
            outcome = await self._call(spec, candidates, attempts)
        result = self._result(spec, outcome, attempts, started)
        written, _ = await self.store.complete(result, spec.tenant)
        if written and spec.webhook:
            await self._job_webhook(spec.webhook, result)
        return result

    async def _job_webhook(self, url: str, result: JobResult) -> None:
        from shared.webhook_delivery import enqueue_webhook
        from shared.webhooks import job_event

        await enqueue_webhook(self.store.redis, self.store.keys, url, job_event(result), None)

    async def _call(self, spec: JobSpec, candidates: list[Candidate], attempts: list[Attempt]) -> Outcome:
        req = spec.req()
        last: ProviderError | None = None
        for cand in candidates:
            for n in range(self.retry.max_attempts):
                t0 = time.perf_counter()
                try:
                    if isinstance(req, ChatRequest):
                        resp = await cand.provider.chat(req, cand.model)
                    else:
                        resp = await cand.provider.embed(req, cand.model)
                except ProviderError as e:
                    err = e
                except (TimeoutError, OSError) as e:
                    err = ProviderError(ErrorClass.TRANSIENT, f"{type(e).__name__}: {e}", code="timeout")
                else:
                    attempts.append(
                        Attempt(provider=cand.provider.name, model=cand.model, latency_ms=_ms(t0))
                    )
                    return Outcome(resp, cand, None)
                last = err
                attempts.append(
                    Attempt(
                        provider=cand.provider.name,
                        model=cand.model,
                        latency_ms=_ms(t0),
                        status=err.status or 0,
                        error_class=err.error_class.value,
                    )
                )
                if err.error_class is ErrorClass.FINAL:
                    return Outcome(None, cand, _info(err))
                if err.error_class in (ErrorClass.CONTEXT, ErrorClass.UNAVAILABLE):
                    break  # this candidate cannot serve it; try the next one
                if n + 1 < self.retry.max_attempts:
                    await self._wait(n, err)
        assert last is not None
        return Outcome(None, None, _info(last))

    async def _wait(self, n: int, err: ProviderError) -> None:
        backoff = min(self.retry.backoff_max, self.retry.backoff_base * (2**n))
        wait = max(err.retry_after or 0.0, random.uniform(backoff / 2, backoff))
        if wait > MAX_INLINE_WAIT_S:
            raise Retry(defer=wait)
        await asyncio.sleep(wait)

    @staticmethod
    def _result(spec: JobSpec, outcome: Outcome, attempts: list[Attempt], started: float) -> JobResult:
        cand, resp = outcome.candidate, outcome.response
        return JobResult(
            id=spec.id,
            status_code=200 if resp is not None else (outcome.error.status or 500 if outcome.error else 500),
            body=resp.body if resp is not None else None,
            error=outcome.error,
            custom_id=spec.custom_id,
            batch_id=spec.batch_id,
            line=spec.line,
            provider=cand.provider.name if cand else None,
            model=cand.model if cand else None,
            request_id=resp.request_id if resp is not None else None,
            attempts=attempts,
            latency_ms=_ms(started),
            usage=resp.usage if resp is not None else None,
            completed_at=time.time(),
        )


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def _info(err: ProviderError) -> ErrorInfo:
    return ErrorInfo(code=err.code, message=err.message, error_class=err.error_class.value, status=err.status)
