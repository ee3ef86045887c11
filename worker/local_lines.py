"""In-worker waiting for a saturated provider, bounded so it never becomes head-of-line blocking.

A job refused because every candidate is saturated either goes back to arq
(deferred, no worker slot held) or, if its turn is near and few jobs of this
worker already wait for that provider, waits here: woken as soon as a call of
this worker on that provider ends, or when the gate said its turn should come.
That saves the arq round trips of a deferral for jobs that would run a moment later.
Single (interactive) jobs are woken before batch lines: a freed slot goes to them first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Sequence


class LocalLines:
    def __init__(self, per_scope_cap: int) -> None:
        self.cap = per_scope_cap
        self.waiting = 0  # jobs waiting here now, all scopes
        self._waiters: defaultdict[str, deque[asyncio.Future[str]]] = defaultdict(deque)
        self._first: defaultdict[str, deque[asyncio.Future[str]]] = defaultdict(deque)  # interactive

    def has_room(self, scopes: Sequence[str]) -> bool:
        return all(len(self._waiters[s]) + len(self._first[s]) < self.cap for s in scopes)

    async def wait(self, scopes: Sequence[str], timeout: float, first: bool = False) -> str | None:
        """Until a call on one of ``scopes`` ends in this worker (-> that scope), or ``timeout`` (-> None).
        ``first``: an interactive job, woken before every batch line waiting here."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        lines = self._first if first else self._waiters
        for s in scopes:
            lines[s].append(fut)
        self.waiting += 1
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self.waiting -= 1
            for s in scopes:
                with contextlib.suppress(ValueError):
                    lines[s].remove(fut)

    def release(self, scope: str) -> None:
        """A slot of ``scope`` just freed: wake the longest-waiting interactive job for it, else the
        longest-waiting batch line."""
        for lines in (self._first, self._waiters):
            q = lines.get(scope)
            while q:
                fut = q.popleft()
                if not fut.done():
                    fut.set_result(scope)
                    return
