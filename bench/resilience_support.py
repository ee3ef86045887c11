"""Helpers bench/resilience.py's scenarios share: reading the simulator's per-route stats, waiting for a
condition, and collecting a batch's results with none missing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.harness import Stack
from shared.schema import JobResult

Say = Callable[[str], None]


def route(stats: dict[str, Any], name: str) -> dict[str, Any]:
    out: dict[str, Any] = stats["routes"][name]
    return out


def poll(check: Callable[[], Any], timeout: float, every: float = 0.02) -> Any:
    """``check()``'s first truthy value, or AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def all_results(st: Stack, batch_id: str, n: int) -> list[JobResult]:
    res = st.results(batch_id)
    missing = [i for i, r in enumerate(res) if r is None]
    assert not missing, f"{len(missing)} lines without a result (first {missing[:5]})"
    assert len(res) == n
    return [r for r in res if r is not None]
