"""Every Redis key Fusebox reads or writes, in one place.

All Fusebox keys live under one namespace (``FUSEBOX_NAMESPACE``, default
``fusebox``) so several deployments or test runs can share a server. arq's
own per-job keys are fixed by arq and listed here for completeness.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

ARQ_JOB = job_key_prefix
ARQ_IN_PROGRESS = in_progress_key_prefix
ARQ_RESULT = result_key_prefix
ARQ_RETRY = retry_key_prefix


@dataclass(frozen=True, slots=True)
class Keys:
    ns: str = "fusebox"

    # -- queue -----------------------------------------------------------
    @property
    def queue(self) -> str:
        """The arq queue (sorted set of job ids scored by run-at ms)."""
        return f"{self.ns}:queue"

    # -- single jobs -----------------------------------------------------
    def result(self, job_id: str) -> str:
        """Stored JobResult (msgpack) of a job that is not part of a batch."""
        return f"{self.ns}:result:{job_id}"

    # -- batches ---------------------------------------------------------
    @property
    def batches(self) -> str:
        """Sorted set of batch ids scored by creation time."""
        return f"{self.ns}:batches"

    def batch(self, batch_id: str) -> str:
        """Hash: status, counters (total, completed, failed), timestamps, metadata."""
        return f"{self.ns}:batch:{batch_id}"

    def batch_results(self, batch_id: str) -> str:
        """Hash: result key (custom_id, or '#line:N' for rejected lines) -> JobResult msgpack."""
        return f"{self.ns}:batch:{batch_id}:results"

    def batch_order(self, batch_id: str) -> str:
        """List of result keys in input order (restores input order without sorting in memory)."""
        return f"{self.ns}:batch:{batch_id}:order"

    def batch_done(self, batch_id: str) -> str:
        """List of result keys in completion order (iterate results as they complete)."""
        return f"{self.ns}:batch:{batch_id}:done"


def job_id_for(batch_id: str, custom_id: str) -> str:
    """Deterministic arq job id: re-submitting a batch line never creates a second job."""
    return f"{batch_id}:{custom_id}"
