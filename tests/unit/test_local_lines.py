"""In-worker waiting: a freed slot wakes interactive jobs before batch lines, each in arrival order."""

from __future__ import annotations

import asyncio

from worker.local_lines import LocalLines


async def test_a_freed_slot_wakes_interactive_waiters_first() -> None:
    lines = LocalLines(per_scope_cap=10)
    woken: list[str] = []

    async def wait(name: str, first: bool) -> None:
        if await lines.wait(["p"], timeout=5, first=first) is not None:
            woken.append(name)

    tasks = [
        asyncio.create_task(wait(name, first))
        for name, first in (("batch1", False), ("batch2", False), ("job1", True), ("job2", True))
    ]
    await asyncio.sleep(0)
    assert lines.waiting == 4 and lines.has_room(["p"])
    for _ in range(4):
        lines.release("p")
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert woken == ["job1", "job2", "batch1", "batch2"]
    assert lines.waiting == 0


async def test_both_kinds_of_waiters_count_against_the_cap() -> None:
    lines = LocalLines(per_scope_cap=2)
    t1 = asyncio.create_task(lines.wait(["p"], timeout=5, first=True))
    t2 = asyncio.create_task(lines.wait(["p"], timeout=5))
    await asyncio.sleep(0)
    assert not lines.has_room(["p"])
    lines.release("p")
    lines.release("p")
    assert await t1 == "p" and await t2 == "p"


async def test_a_job_waits_for_room_and_gets_the_place_a_leaving_waiter_frees() -> None:
    lines = LocalLines(per_scope_cap=1)
    assert not lines.queued(["p"])
    held = asyncio.create_task(lines.wait(["p"], timeout=5))
    await asyncio.sleep(0)
    assert lines.queued(["p"]) and not lines.queued(["p", "q"]) and not lines.has_room(["p"])
    assert await lines.wait_room(["p"], timeout=0.01) is False  # nobody left: no room
    room = asyncio.create_task(lines.wait_room(["p"], timeout=5))
    await asyncio.sleep(0)
    assert not room.done() and lines.waiting_for_room("p") == 1 and lines.waiting_for_room("q") == 0
    lines.release("p")  # the waiter leaves the line: its place goes to the job waiting for room
    assert await held == "p"
    assert await room is True and lines.has_room(["p"]) and lines.waiting_for_room("p") == 0


async def test_a_slot_given_to_a_waiting_job_reaches_it_or_comes_back() -> None:
    lines = LocalLines(per_scope_cap=10)
    lost: list[object] = []
    lines.on_lost = lost.append
    assert not lines.give("p", "slot-0")  # nobody waits: the giver must free it itself
    first = asyncio.create_task(lines.wait(["p"], timeout=5))
    second = asyncio.create_task(lines.wait(["p"], timeout=5))
    await asyncio.sleep(0)
    assert lines.give("p", "slot-1") and lines.give("p", ("slot", 2))
    assert await first == "slot-1"
    second.cancel()  # cancelled with a slot in hand (shutdown, job timeout) before it could use it
    await asyncio.gather(second, return_exceptions=True)
    assert lost == [] or lost == [("slot", 2)]  # wait_for may still hand it over on 3.11
    if not lost:
        assert second.result() == ("slot", 2)


async def test_a_given_slot_reaches_its_job_in_the_next_loop_iteration() -> None:
    """The job a slot is given to runs in the loop's next iteration (asyncio.wait_for, on Python 3.11,
    took two: the slot idled an iteration longer between calls); a wait that times out returns None."""
    lines = LocalLines(per_scope_cap=10)
    got: list[object] = []

    async def wait() -> None:
        got.append(await lines.wait(["p"], timeout=5))

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    slot = object()
    assert lines.give("p", slot)
    await asyncio.sleep(0)  # one iteration
    assert got == [slot]
    await task
    assert await lines.wait(["p"], timeout=0.01) is None and lines.waiting == 0


async def test_waiting_for_room_ends_when_a_place_frees_or_at_its_timeout() -> None:
    lines = LocalLines(per_scope_cap=1)
    held = asyncio.create_task(lines.wait(["p"], timeout=5))
    await asyncio.sleep(0)
    assert await lines.wait_room(["p"], timeout=0.01) is False  # full, and nothing freed a place in time
    room = asyncio.create_task(lines.wait_room(["p"], timeout=5))
    await asyncio.sleep(0)
    assert lines.waiting_for_room("p") == 1
    lines.release("p")  # the waiting job takes the slot: its place in the line frees
    assert await held == "p" and await room is True
    assert lines.waiting_for_room("p") == 0
