"""Hand-ons: the slot of a call that just ended goes straight to the next job of this worker waiting for
it, on the same lease, with no admit.

A saturated provider's jobs wait in the worker's local lines (worker/local_lines.py) for one of its calls
to end. Without hand-ons the woken job asks the gate for the slot the ended call's settle frees, in the
same round trip: one round trip of Redis between one call's end and the next call's start, on every slot,
all the time. With them the next call starts at once on the ended call's lease and the settle, sent with
the result write, keeps the lease for it (settle.lua). The fleet's calls in flight never grow: a lease
only changes hands. What admit would have checked is checked by that settle instead, one round trip late
(Gate.may_hand_on says when a hand-on is allowed at all); and every few hand-ons a lease goes back through
admit, so workers with jobs waiting and no slots get their turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from shared.resilience import Admission, Gate
from shared.router import Candidate
from shared.scripts import ScriptCall
from worker.local_lines import LocalLines
from worker.outcome import Outcome

log = logging.getLogger("fusebox.executor")


class HandOns:
    def __init__(self, gate: Gate, local: LocalLines) -> None:
        self.gate = gate
        self.local = local
        local.on_lost = self.lost
        self._tasks: set[asyncio.Task[None]] = set()

    def free(self, outcome: Outcome) -> ScriptCall | None:
        """Wake the next job of this worker waiting for the slot ``outcome``'s call frees, handing the slot
        on where allowed; the settle to write with the result (keeping the lease if it was handed on).
        A job woken without the slot asks admit in the round trip this settle goes out in."""
        adm, scope = outcome.admission, outcome.scope
        assert scope is not None
        if outcome.response is not None and adm is not None and self.gate.may_hand_on(adm, "success"):
            who = self.local.release(scope, dataclasses.replace(adm, hops=adm.hops + 1))
            if who is None:
                return outcome.settle
            adm.handed_on = True
            return self.gate.settle_call(adm, "success", outcome.latency, outcome.tokens, hand_on=who)
        self.local.release(scope)
        return outcome.settle

    @staticmethod
    def woken(
        woken: tuple[str, Any], candidates: list[Candidate], handed: list[Admission]
    ) -> list[Candidate]:
        """A waiting job was woken for a slot of ``scope``: the candidate on that provider goes first, and the
        slot itself, if it came along, goes into ``handed`` (``_one_call`` takes it instead of admitting)."""
        scope, adm = woken
        if adm is not None:
            handed.append(adm)
        provider = scope.split("/")[0].split("@")[0]
        return sorted(candidates, key=lambda c: c.provider.name != provider)

    def lost(self, handed: Admission) -> None:
        """A slot handed on to a job that left without calling (cancelled, over its budget): free it, and
        wake the next job waiting for one."""
        task = asyncio.get_running_loop().create_task(self._release(handed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, handed: Admission) -> None:
        try:
            await self.gate.settle(handed, "ignored", 0.0, 0)
        except Exception as e:  # RedisUnavailable: the gate remembers it and releases it once Redis is back
            log.warning("releasing a %s slot nobody took failed: %s", handed.scope, e)
        self.local.release(handed.scope)
