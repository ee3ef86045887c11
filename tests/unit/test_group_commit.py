"""GroupCommit's grouping logic (no Redis: ``send`` is a recording stand-in)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker import group_commit
from worker.group_commit import GroupCommit


class Sender:
    def __init__(self, fail: list[Exception | None] | None = None, gate: asyncio.Event | None = None) -> None:
        self.sent: list[list[str]] = []
        self.fail = fail or []
        self.gate = gate

    async def __call__(self, ops: list[str]) -> list[Any]:
        self.sent.append(list(ops))
        if self.gate is not None:
            await self.gate.wait()
        err = self.fail.pop(0) if self.fail else None
        if err is not None:
            raise err
        return [f"r:{op}" if not op.startswith("bad") else ValueError(op) for op in ops]


async def test_callers_of_one_iteration_share_one_round_trip_and_get_their_own_replies() -> None:
    send = Sender()
    g: GroupCommit[str] = GroupCommit(send)
    a, b, c = await asyncio.gather(g.run(["a1", "a2"]), g.run(["b1"]), g.run(["c1", "bad", "c3"]))
    assert send.sent == [["a1", "a2", "b1", "c1", "bad", "c3"]]
    assert a == ["r:a1", "r:a2"] and b == ["r:b1"]
    assert c[0] == "r:c1" and isinstance(c[1], ValueError) and c[2] == "r:c3"  # an error in its place
    assert (g.flushes, g.callers) == (1, 3)


async def test_arrivals_during_a_flush_join_the_next_one() -> None:
    gate = asyncio.Event()
    send = Sender(gate=gate)
    g: GroupCommit[str] = GroupCommit(send)
    first = asyncio.ensure_future(g.run(["a"]))
    await asyncio.sleep(0.01)  # the first flush is in flight, held at the gate
    late = [asyncio.ensure_future(g.run([x])) for x in ("b", "c")]
    await asyncio.sleep(0.01)
    assert send.sent == [["a"]]
    gate.set()
    assert await first == ["r:a"] and [await t for t in late] == [["r:b"], ["r:c"]]
    assert send.sent == [["a"], ["b", "c"]]
    assert await g.run(["d"]) == ["r:d"]  # alone: sent at once, by a new flusher
    assert send.sent[-1] == ["d"]


async def test_a_failed_round_trip_reaches_each_caller_of_it_and_only_them() -> None:
    gate = asyncio.Event()
    boom = ConnectionError("redis went away")
    send = Sender(fail=[boom, None], gate=gate)
    g: GroupCommit[str] = GroupCommit(send)
    first = [asyncio.ensure_future(g.run([x])) for x in ("a", "b")]
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(g.run(["c"]))
    gate.set()
    for t in first:
        with pytest.raises(ConnectionError):
            await t
    assert await second == ["r:c"]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    gate = asyncio.Event()
    send = Sender(gate=gate)
    g: GroupCommit[str] = GroupCommit(send)
    a = asyncio.ensure_future(g.run(["a"]))
    b = asyncio.ensure_future(g.run(["b"]))
    await asyncio.sleep(0.01)
    a.cancel()
    gate.set()
    assert await b == ["r:b"]
    assert send.sent == [["a", "b"]]  # its work was already on its way: still sent


async def test_groups_are_cut_at_max_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "MAX_OPS", 3)
    send = Sender()
    g: GroupCommit[str] = GroupCommit(send)
    out = await asyncio.gather(
        g.run(["a", "b"]), g.run(["c"]), g.run(["d", "e"]), g.run(["f", "g", "h", "i"])
    )
    assert send.sent == [["a", "b", "c"], ["d", "e"], ["f", "g", "h", "i"]]  # one caller is never split
    assert out[3] == ["r:f", "r:g", "r:h", "r:i"]


async def test_a_cancelled_flusher_leaves_nobody_waiting() -> None:
    gate = asyncio.Event()
    g: GroupCommit[str] = GroupCommit(Sender(gate=gate))
    waiting = [asyncio.ensure_future(g.run([x])) for x in ("a", "b")]
    await asyncio.sleep(0.01)
    later = asyncio.ensure_future(g.run(["c"]))
    await asyncio.sleep(0)
    assert g._flusher is not None
    g._flusher.cancel()
    for t in [*waiting, later]:
        with pytest.raises(asyncio.CancelledError):
            await t
    assert g._flusher is None


async def test_a_flusher_cancelled_before_it_ran_leaves_nobody_waiting() -> None:
    """A shutdown cancels every task at once, a flusher that has not run yet included: its callers are
    cancelled, not left waiting forever (a worker then hung in arq's shielded finish_job), and the next
    caller gets a new flusher."""
    g: GroupCommit[str] = GroupCommit(Sender())
    first = asyncio.ensure_future(g.run(["a"]))
    await asyncio.sleep(0)  # ``first`` ran: the flusher is created, not started
    assert g._flusher is not None
    g._flusher.cancel()
    done, _ = await asyncio.wait([first], timeout=5)
    assert done == {first} and first.cancelled()
    assert await g.run(["b"]) == ["r:b"]


def test_finish_commands_follow_arq() -> None:
    cmds = group_commit.finish_job_commands("q", "j1", True, b"res", 3600, False, None, None)
    assert cmds == [
        ("SET", "arq:result:j1", b"res", "PX", 3_600_000),
        ("ZREM", "arq:abort", "j1"),
        ("ZREM", "q", "j1"),
        ("DEL", "arq:in-progress:j1", "arq:retry:j1", "arq:job:j1"),
    ]
    cmds = group_commit.finish_job_commands("q", "j1", False, None, 3600, False, 1500, None)
    assert cmds == [("ZINCRBY", "q", 1500, "j1"), ("DEL", "arq:in-progress:j1")]


def test_finish_commands_of_a_parked_job_start_from_its_claimed_score() -> None:
    # claimed at 1000 and parked meanwhile: a retry lands where arq's ZINCRBY would have put it
    cmds = group_commit.finish_job_commands("q", "j1", False, None, 3600, False, 1500, None, score=1000)
    assert cmds == [("ZADD", "q", 2500, "j1"), ("DEL", "arq:in-progress:j1")]
    # cancelled to run again: back at its score, due at once (arq leaves the score alone)
    cmds = group_commit.finish_job_commands("q", "j1", False, None, 3600, False, None, None, score=1000)
    assert cmds == [("ZADD", "q", "XX", 1000, "j1"), ("DEL", "arq:in-progress:j1")]
