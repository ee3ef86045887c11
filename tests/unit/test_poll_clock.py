"""The worker's poll clock: a sleep between polls that a wake-up token or a wake() cuts short."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.poll_clock import PollClock


async def _spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_sleep_lasts_until_woken() -> None:
    clock = PollClock(poll_s=60.0)
    nap = asyncio.create_task(clock.sleep(240.0))
    await _spin()
    assert clock.sleeping and not nap.done()
    clock.wake()
    await asyncio.wait_for(nap, 5)
    assert not clock.sleeping
    clock.wake()  # nobody sleeping: nothing to do


async def test_a_token_that_came_since_the_poll_began_skips_the_sleep() -> None:
    clock = PollClock(poll_s=60.0)
    clock.woken = True
    await asyncio.wait_for(clock.sleep(60.0), 5)
    assert not clock.sleeping


async def test_a_token_on_the_wake_list_cuts_the_sleep_short() -> None:
    tokens: asyncio.Queue[Any] = asyncio.Queue()

    class Pool:
        async def blpop(self, keys: list[str], timeout: int) -> Any:
            assert keys == ["ns:wake"]
            return await tokens.get()

    clock = PollClock(poll_s=60.0)
    listener = asyncio.create_task(clock.listen(Pool(), "ns:wake"))
    nap = asyncio.create_task(clock.sleep(60.0))
    await tokens.put(None)  # BLPOP timed out: no token, keep sleeping
    await _spin()
    assert not nap.done() and not clock.woken
    await tokens.put([b"ns:wake", b"1"])
    await asyncio.wait_for(nap, 5)
    assert clock.woken
    listener.cancel()


def test_idle_polls_in_a_row_double_the_sleep_up_to_the_cap_and_a_token_starts_over() -> None:
    from worker.poll_clock import IDLE_MAX_S

    clock = PollClock(poll_s=0.01)
    pauses = [clock.idle() for _ in range(10)]
    assert pauses[:6] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32] and pauses[6:] == [IDLE_MAX_S] * 4
    clock.polling()  # no token came: the streak goes on
    assert clock.idle() == IDLE_MAX_S
    clock.woken = True
    clock.polling()  # a token came: jobs arrive again, so does the short sleep
    assert not clock.woken and clock.idle() == 0.01
