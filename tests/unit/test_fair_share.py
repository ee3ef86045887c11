"""A worker hands the slot its call freed to a job waiting in it only while it holds no more than its
share of the scope's slots: a split set at a batch's start must not hold for the whole batch."""

from __future__ import annotations

from typing import Any

from shared.gate import Admission
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
