"""Spend caps in the executor: what a call is estimated to cost, and its reservation before the call."""

from __future__ import annotations

from shared.budget import Budgets, Caps, Hold
from shared.router import Candidate, Router
from shared.schema import ChatRequest, ErrorInfo, JobSpec, Usage
from shared.tokens import estimate_messages, estimate_text
from worker.outcome import Deferred

DEFAULT_OUTPUT_ESTIMATE = 256  # tokens reserved for a reply whose request sets no max_tokens


def estimate_tokens(spec: JobSpec) -> int:
    """Prompt plus the reply's limit (or a default): what the gate reserves against tpm."""
    if spec.request is not None:
        return estimate_messages(spec.request.messages) + (
            spec.request.output_limit() or DEFAULT_OUTPUT_ESTIMATE
        )
    assert spec.embed is not None
    return sum(estimate_text(t) for t in spec.embed.texts())


def estimate_cost(router: Router, spec: JobSpec, cand: Candidate) -> float:
    req = spec.req()
    if isinstance(req, ChatRequest):
        prompt, out = estimate_messages(req.messages), req.output_limit() or DEFAULT_OUTPUT_ESTIMATE
    else:
        prompt, out = estimate_tokens(spec), 0
    usage = Usage(prompt_tokens=prompt, completion_tokens=out, total_tokens=prompt + out)
    return router.cost(cand, usage, spec.kind) or 0.0


async def reserve(
    budgets: Budgets, router: Router, spec: JobSpec, cand: Candidate, caps: Caps, recheck_s: float
) -> Hold | ErrorInfo:
    """Reserve the call's estimated cost against the job's caps. Refused: a batch line waits (raises
    Deferred; its batch shows it is paused, and it runs once the cap is raised); a single job fails
    (-> its ``budget_exceeded`` error)."""
    held = await budgets.hold(spec.tenant, spec.batch_id, caps, estimate_cost(router, spec, cand))
    if isinstance(held, Hold):
        return held
    err = ErrorInfo(code="budget_exceeded", message=held.reason, error_class="final", status=402)
    if spec.batch_id is not None:
        await budgets.pause(spec.batch_id, held.reason)
        raise Deferred(recheck_s, ["budget"], err)
    return err
