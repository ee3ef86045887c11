"""The resilience gate; its code lives in ``shared.gate`` (this module keeps the old imports working)."""

from shared.gate import (
    FORCE_TARGETS,
    OUTCOMES,
    Admission,
    Gate,
    Outcome,
    Reason,
    RedisUnavailable,
    outcome_of,
)

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
