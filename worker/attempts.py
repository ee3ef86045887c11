"""A job's attempts, as carried from run to run: how much of each candidate's budget a job has spent."""

from __future__ import annotations

from shared.errors import ErrorClass, ProviderError
from shared.router import Candidate
from shared.schema import Attempt

# The Attempt recorded for a run that ended in an unexpected error (carried like provider attempts).
INTERNAL = "internal"


def spent(
    attempts: list[Attempt], candidates: list[Candidate], budget: int
) -> tuple[dict[tuple[str, str], int], int]:
    """How much of its attempt budget on each candidate the job has spent in the current round (the whole
    budget once a candidate said it cannot serve the job), and how many rounds it has completed: a round
    ends when every candidate's budget is spent. 429s spend none: they are back-pressure, which adaptive
    concurrency and Retry-After handle, not a sign the job should give up on the provider."""
    used = {(c.provider.name, c.model): 0 for c in candidates}
    never: set[tuple[str, str]] = set()
    rounds = 0
    for a in attempts:
        k = (a.provider, a.model)
        if k not in used or a.error_class in (None, ErrorClass.RATE_LIMITED, INTERNAL):
            continue
        if a.error_class in (ErrorClass.CONTEXT, ErrorClass.UNAVAILABLE):
            never.add(k)
        else:
            used[k] += 1
        if len(never) < len(used) and all(c in never or n >= budget for c, n in used.items()):
            rounds += 1
            used = dict.fromkeys(used, 0)
    return {k: budget if k in never else n for k, n in used.items()}, rounds


def spent_error(attempts: list[Attempt]) -> ProviderError:
    """The failure to report for a job whose attempts were all spent in earlier runs (only Attempts left)."""
    a = next(a for a in reversed(attempts) if a.error_class not in (None, INTERNAL))
    msg = f"every candidate failed; last: {a.provider}/{a.model} ({a.error_class}, status {a.status})"
    return ProviderError(ErrorClass(a.error_class), msg, status=a.status or None)


def failed_attempts(attempts: list[Attempt]) -> int:
    """Provider attempts that failed, 429s (back-pressure) and internal errors left out."""
    return sum(1 for a in attempts if a.provider and a.error_class not in (None, ErrorClass.RATE_LIMITED))
