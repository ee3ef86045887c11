"""When a worker polls its queue next: a poll delay after the last poll, or at once when woken (an
enqueue's wake-up token, or room for a bigger claim). An idle worker sleeps longer (``PollClock.idle``)."""

from __future__ import annotations

import asyncio
from typing import Any

# An idle worker (no jobs, and its last claim found none left) doubles its sleep with each such poll in a
# row, up to IDLE_MAX_S (arq's own poll delay), never past the queue's next due job (FuseboxWorker._pause):
# polls on the clock cost Redis and the worker CPU however many workers wait. Enqueues send wake-up tokens,
# so only work that sends none (a lane freed at a tenant's bound, a re-queue by reconciliation) waits so long.
IDLE_MAX_S = 0.5


class PollClock:
    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self.woken = False  # a wake-up token came since the last poll began: poll again at once
        self.idle_polls = 0  # idle polls in a row: reset by a claim that took jobs, or a token
        self._sleep: asyncio.Future[None] | None = None

    def polling(self) -> None:
        """A poll begins: a token from here on means jobs it may not have seen."""
        if self.woken:
            self.idle_polls = 0
        self.woken = False

    def idle(self) -> float:
        """The sleep after one more idle poll in a row."""
        n = self.idle_polls = self.idle_polls + 1
        return min(IDLE_MAX_S, self.poll_s * 2 ** min(n - 1, 16))

    @property
    def sleeping(self) -> bool:
        return self._sleep is not None

    async def sleep(self, seconds: float) -> None:
        """Until ``seconds`` have passed, or ``wake``."""
        if self.woken:
            return
        loop = asyncio.get_running_loop()
        fut = self._sleep = loop.create_future()
        timer = loop.call_later(seconds, _done, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._sleep = None

    def wake(self) -> None:
        if self._sleep is not None:
            _done(self._sleep)

    async def listen(self, pool: Any, key: str) -> None:
        """BLPOP the wake-up list (one connection of ``pool``) and cut the current sleep short."""
        while True:
            try:
                got = await pool.blpop([key], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis down: the poll loop reports it; polling on the clock still works
                await asyncio.sleep(1.0)
                continue
            if got is not None:
                self.woken = True
                self.wake()


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
