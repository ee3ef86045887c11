"""When a worker polls its queue next: a poll delay after the last poll, or at once when woken (an
enqueue's wake-up token, or room for a bigger claim)."""

from __future__ import annotations

import asyncio
from typing import Any


class PollClock:
    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self.woken = False  # a wake-up token came since the last poll began: poll again at once
        self._sleep: asyncio.Future[None] | None = None

    @property
    def sleeping(self) -> bool:
        return self._sleep is not None

    async def sleep(self, polls: int = 1) -> None:
        """Until ``polls`` poll delays have passed, or ``wake``."""
        if self.woken:
            return
        loop = asyncio.get_running_loop()
        fut = self._sleep = loop.create_future()
        timer = loop.call_later(self.poll_s * polls, _done, fut)
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
