"""The resilience gate (circuit breaker, concurrency leases, rpm/tpm limits, adaptive concurrency):
``core`` (the Gate and its hot path), ``types`` (Admission, outcomes), ``ops`` (forcing, snapshots),
``policy`` (a scope's settings from fusebox.toml)."""

from shared.gate.core import Gate
from shared.gate.ops import FORCE_TARGETS
from shared.gate.types import OUTCOMES, Admission, Outcome, Reason, RedisUnavailable, outcome_of

__all__ = [
    "FORCE_TARGETS",
    "OUTCOMES",
    "Admission",
    "Gate",
    "Outcome",
    "Reason",
    "RedisUnavailable",
    "outcome_of",
]
