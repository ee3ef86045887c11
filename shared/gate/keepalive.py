"""Keeps a provider call's lease (and probe lease) alive while the call runs (``Gate.keepalive``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from shared.gate.types import Admission, RedisUnavailable

log = logging.getLogger("fusebox.gate")


class Renews(Protocol):
    async def renew(self, adm: Admission) -> bool: ...


class KeepAlive:
    """``Gate.keepalive``'s context: a plain class, as it is entered once per provider call (a generator
    based context manager costs several times as much)."""

    __slots__ = ("_adm", "_gate", "_task", "_timer")

    def __init__(self, gate: Renews, adm: Admission) -> None:
        self._gate, self._adm = gate, adm
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        adm = self._adm
        if adm.ok and adm.policy is not None:
            every = min(adm.policy.limits.lease_seconds, adm.policy.breaker.probe_lease_seconds) / 3
            self._timer = asyncio.get_running_loop().call_later(every, self._start, every)

    def _start(self, every: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._renew_loop(every))

    async def _renew_loop(self, every: float) -> None:
        adm = self._adm
        while True:
            try:
                held = await self._gate.renew(adm)
            except RedisUnavailable as e:
                log.warning("lease of a %s call not renewed: %s", adm.scope, e)
                held = True
            if not held:  # stalled longer than a lease: the slot may already be someone else's
                log.warning("lease of a %s call expired before it was renewed", adm.scope)
                return
            await asyncio.sleep(every)

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
