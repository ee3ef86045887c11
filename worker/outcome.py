"""What one run of a job ends with: an Outcome (answer or error, and the settle to send with it), or
Deferred (come back later); and the JobResult built from an Outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.errors import ProviderError
from shared.gate import Admission
from shared.providers.base import ProviderResponse
from shared.router import Candidate, Router
from shared.schema import Attempt, ErrorInfo, JobResult, JobSpec
from shared.scripts import ScriptCall


@dataclass(slots=True)
class Call:
    """One admitted call's end (``resp`` or ``err``), or the admission that refused it (``adm.ok`` False)."""

    adm: Admission
    resp: ProviderResponse | None = None
    err: ProviderError | None = None
    latency: float = 0.0


@dataclass(slots=True)
class Outcome:
    response: ProviderResponse | None
    candidate: Candidate | None
    error: ErrorInfo | None
    settle: ScriptCall | None = None  # the last attempt's settle, sent with the result write
    scope: str | None = None  # the gate scope that settle frees a slot of
    admission: Admission | None = None  # the call that settle ends
    hand_off: bool = True  # a job waiting in this worker may take that slot (no: over its share, Calls)
    keep: bool = False  # that settle keeps the lease for the job waiting here (Gate.settle_call's keep)


class Deferred(Exception):
    """Every candidate refused admission (saturated / open), or failed this round: come back in ``delay``
    seconds. ``error`` is the line's answer if it may not come back (arq's last try)."""

    def __init__(self, delay: float, reasons: list[str], error: ErrorInfo | None = None) -> None:
        super().__init__(f"all candidates unavailable ({', '.join(reasons)}); retry in {delay:.2f}s")
        self.delay = delay
        self.error = error
        self.reasons = reasons


def result_of(
    router: Router, spec: JobSpec, outcome: Outcome, attempts: list[Attempt], started: float
) -> JobResult:
    cand, resp, err = outcome.candidate, outcome.response, outcome.error
    cost = 0.0
    if resp is not None and cand is not None:
        cost = router.cost(cand, resp.usage, spec.kind) or 0.0
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
        latency_ms=ms_since(started),
        usage=resp.usage if resp is not None else None,
        cost_usd=round(cost, 10),
        completed_at=time.time(),
    )


def come_back_in(denied: list[Admission]) -> float:
    """When to retry a job every candidate refused.

    Each saturated candidate put the job in its line and said when its turn comes
    there; the job waits in all of them at once, so their service rates add up.
    """
    lines = [d.retry_in for d in denied if d.reason == "saturated" and d.retry_in > 0]
    if lines:
        return 1.0 / sum(1.0 / w for w in lines)
    return min(d.retry_in for d in denied)


def ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def info(err: ProviderError) -> ErrorInfo:
    return ErrorInfo(code=err.code, message=err.message, error_class=err.error_class.value, status=err.status)
