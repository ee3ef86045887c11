"""In-worker waiting for a saturated provider, bounded so it never becomes head-of-line blocking.

A job refused because every candidate is saturated either goes back to arq
(deferred, no worker slot held) or, if its turn is near and few jobs of this
worker already wait for that provider, waits here: woken as soon as a call of
this worker on that provider ends, or when the gate said its turn should come.
That saves the arq round trips of a deferral for jobs that would run a moment later.
Single (interactive) jobs are woken before batch lines: a freed slot goes to them first.

A job that finds the line full waits briefly for room (``wait_room``) before it is deferred: a
worker claiming a little faster than its share of the provider drains would otherwise turn
every job past the cap back to arq (a full arq round of Redis work each). Jobs waiting for room
count as undecided, so they stop the worker claiming more (fuse_worker.claimable) until they move.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any


class LocalLines:
    def __init__(self, per_scope_cap: int) -> None:
        self.cap = per_scope_cap
        # a slot handed to a waiting job (``give``) that it can no longer take is given back through this
        self.on_lost: Callable[[Any], None] | None = None
        self.waiting = 0  # jobs waiting here now, all scopes
        # a waiter's future: the scope whose slot freed (ask the gate for it), or the slot itself (``give``)
        self._waiters: defaultdict[str, deque[asyncio.Future[Any]]] = defaultdict(deque)
        self._first: defaultdict[str, deque[asyncio.Future[Any]]] = defaultdict(deque)  # interactive
        self._room: defaultdict[str, deque[asyncio.Future[None]]] = defaultdict(deque)  # for has_room

    def has_room(self, scopes: Sequence[str]) -> bool:
        return all(self.depth(s) < self.cap for s in scopes)

    def depth(self, scope: str, first: bool = False) -> int:
        """Jobs waiting in ``scope``'s line now that a new waiter would wait behind: interactive ones
        (``first``), or all."""
        ahead = len(self._first.get(scope) or ())
        return ahead if first else ahead + len(self._waiters.get(scope) or ())

    def waiting_for_room(self, scope: str) -> int:
        # A woken future leaves the deque at once (_wake_room), a timed-out one in wait_room's finally:
        # the length is the count, without a scan per job.
        q = self._room.get(scope)
        return len(q) if q else 0

    def queued(self, scopes: Sequence[str]) -> bool:
        """Whether jobs of this worker wait in the line of every one of ``scopes``."""
        return all(self._waiters.get(s) or self._first.get(s) for s in scopes)

    async def wait(self, scopes: Sequence[str], timeout: float, first: bool = False) -> Any:
        """Until a call on one of ``scopes`` ends in this worker (-> that scope, or the slot it passed on:
        ``give``), or ``timeout`` (-> None). ``first``: an interactive job, woken before every batch line
        waiting here."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lines = self._first if first else self._waiters
        for s in scopes:
            lines[s].append(fut)
        self.waiting += 1
        try:
            return await _within(fut, timeout)
        except asyncio.CancelledError:
            # cancelled (shutdown, job timeout) just after a slot was given to it: nobody else will free it
            if fut.done() and not fut.cancelled() and not isinstance(fut.result(), str) and self.on_lost:
                self.on_lost(fut.result())
            raise
        finally:
            self.waiting -= 1
            for s in scopes:
                _discard(lines[s], fut)
                self._wake_room(s)

    async def wait_room(self, scopes: Sequence[str], timeout: float) -> bool:
        """Until every line of ``scopes`` has room (-> True), or ``timeout`` (-> False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.has_room(scopes):
            left = deadline - loop.time()
            if left <= 0:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            for s in scopes:
                self._room[s].append(fut)
            try:
                await _within(fut, left)
            finally:
                for s in scopes:
                    _discard(self._room[s], fut)
        return True

    def _wake_room(self, scope: str) -> None:
        """A place in ``scope``'s line freed: the longest-waiting job for room may take it."""
        q = self._room.get(scope)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def release(self, scope: str) -> None:
        """A slot of ``scope`` just freed: wake the longest-waiting interactive job for it, else the
        longest-waiting batch line."""
        self.give(scope, scope)

    def give(self, scope: str, slot: Any) -> bool:
        """Wake the job ``release`` would with ``slot`` (a slot it may use without asking the gate);
        False if no job waits for ``scope``."""
        for lines in (self._first, self._waiters):
            q = lines.get(scope)
            while q:
                fut = q.popleft()
                if not fut.done():
                    fut.set_result(slot)
                    return True
        return False


async def _within(fut: asyncio.Future[Any], timeout: float) -> Any:
    """``fut``'s result, or None once ``timeout`` passed. A timer on the future itself: asyncio.wait_for
    (Python 3.11) waits on a second future that ``fut`` completes, so its task resumes one loop iteration
    later, and a passed-on slot would stay idle that much longer."""
    timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
    try:
        return await fut
    finally:
        timer.cancel()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def _discard(line: deque[Any], fut: asyncio.Future[Any]) -> None:
    """Take ``fut`` out of ``line`` if it is there. Not by catching deque.remove's ValueError: its message
    holds repr(fut), which formats the future and its callbacks (a few percent of a busy worker's CPU)."""
    if fut in line:
        line.remove(fut)
