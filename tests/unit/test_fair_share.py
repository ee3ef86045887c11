"""A worker hands the slot its call freed to a job waiting in it only while it holds no more than its
share of the scope's slots: a split set at a batch's start must not hold for the whole batch."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

from shared.budget import Caps
from shared.gate import Admission
from shared.router import Candidate
from shared.schema import ChatRequest, JobSpec
from worker.calls import Calls
from worker.local_lines import LocalLines


def _calls() -> Calls:
    none: Any = None
    return Calls(none, none, none, LocalLines(per_scope_cap=10), None, lambda: None)


def _adm(limit: int, owners: int) -> Admission:
    return Admission(True, "p", None, "p", limit=limit, in_flight=limit, owners=owners)


def test_a_worker_over_its_share_gives_the_freed_slot_back() -> None:
    calls = _calls()
    calls.calling["p"] = 19  # with the call that just ended: 20 of 40, two workers
    assert calls.within_share(_adm(40, 2))
    calls.calling["p"] = 20
    assert not calls.within_share(_adm(40, 2))
    assert calls.within_share(_adm(40, 1))  # alone, every slot is its share


def test_the_share_rounds_up() -> None:
    calls = _calls()
    calls.calling["p"] = 13  # 14 of 40 with three workers: ceil(40 / 3) = 14
    assert calls.within_share(_adm(40, 3))
    calls.calling["p"] = 14
    assert not calls.within_share(_adm(40, 3))
    calls.calling["q"] = 30  # another scope's calls do not count
    calls.calling["p"] = 0
    assert calls.within_share(_adm(1, 5))


class _Flush:
    """A stand-in gate whose admissions are answered together, in order, as one round trip's are: each
    takes the next slot, and says how many are in flight with it."""

    def __init__(self, limit: int, in_flight: int) -> None:
        self.limit, self.in_flight = limit, in_flight
        self.sent = asyncio.Event()

    def policy(self, provider: str, model: str | None = None, owner: str | None = None) -> Any:
        return SimpleNamespace(scope=provider)

    async def admit(self, provider: str, *args: Any, **kwargs: Any) -> Admission:
        await self.sent.wait()
        self.in_flight += 1
        return Admission(True, provider, None, provider, limit=self.limit, in_flight=self.in_flight)

    def keepalive(self, adm: Admission) -> Any:
        return contextlib.nullcontext()


async def test_admissions_answered_together_wake_no_job_for_the_slots_they_take() -> None:
    """Four calls end together, so four waiting jobs ask for a slot in one round trip. The first answer
    says 5 of 8 in flight, but the three behind it take the rest: waking a job for each slot that answer
    counted as free would only have it refused (about 0.7 refused admissions per call with one worker,
    each a round trip and a script for nothing)."""
    gate = _Flush(limit=8, in_flight=4)
    local = LocalLines(per_scope_cap=10)
    hang = asyncio.get_running_loop().create_future()
    provider: Any = SimpleNamespace(name="p", chat=lambda req, model: hang)
    router: Any = SimpleNamespace(started=lambda cand: None, finished=lambda *a, **k: None)
    calls = Calls(router, gate, None, local, None, lambda: None)  # type: ignore[arg-type]
    spec = JobSpec(id="j", request=ChatRequest(model="p/m", messages=[{"role": "user", "content": "hi"}]))
    waiting = [asyncio.ensure_future(local.wait(["p"], 5)) for _ in range(6)]
    asking = [
        asyncio.ensure_future(calls._one_call(spec, Candidate(provider, "m"), 1, [], None, Caps()))
        for _ in range(4)
    ]
    await asyncio.sleep(0)
    gate.sent.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert gate.in_flight == 8
    assert [w.done() for w in waiting] == [False] * 6
    for t in asking + waiting:
        t.cancel()
    await asyncio.gather(*asking, *waiting, return_exceptions=True)
