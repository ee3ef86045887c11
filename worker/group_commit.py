"""Group commit: the Redis work of jobs finishing together, in one round trip.

A finishing job writes its result (the last attempt's settle plus the store's complete script,
which also records arq's finish of the job: worker/results.py); a job arq finishes itself (deferred,
retried, failed, or not one of Fusebox's calls) sends arq's ``finish_job`` transaction. Under load
dozens of jobs finish within a millisecond or two; sent one by one, each pays the per-call cost (connection
checkout, packing, a socket write and a read, a task wake-up) and the server its syscalls. Here the
first caller starts a flush one loop iteration later; everyone who arrives meanwhile (or while a
flush is in flight) joins the next one. Nothing waits on a timer: alone, a job's write goes out
on the next iteration, as before.

A job's start (arq's first ``run_job`` transaction: read its payload, count its try) is done by the
claim that took it (claim.lua), so costs no round trip of its own: ``StartPipeline`` answers it from
the claim's reply. Without one, jobs starting together send it in one round trip.

Semantics are the ungrouped ones: each caller gets its own replies in its own order; a script error
comes back in its place; a connection error reaches every caller of that flush, as it would have
reached each alone. arq's transaction stays a transaction (MULTI/EXEC around the whole group,
which only makes it more atomic).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from arq.utils import to_ms
from redis.asyncio import Redis

from shared.keys import ARQ_ABORT_JOBS, ARQ_IN_PROGRESS, ARQ_JOB, ARQ_RESULT, ARQ_RETRY
from shared.scripts import ScriptCall, run_pipelined

Op = TypeVar("Op")
MAX_OPS = 1024  # per round trip: bounds the request and reply a flush holds in memory


class GroupCommit(Generic[Op]):
    """Callers' op lists, sent together by ``send`` (ops in -> one reply per op out)."""

    def __init__(self, send: Callable[[list[Op]], Awaitable[list[Any]]]) -> None:
        self._send = send
        self._pending: list[tuple[Sequence[Op], asyncio.Future[list[Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0  # round trips made, and callers served: for tests and measurement
        self.callers = 0

    async def run(self, ops: Sequence[Op]) -> list[Any]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((ops, fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
            self._flusher.add_done_callback(self._flusher_done)
        return await fut

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        """A flusher cancelled before its first step (a shutdown cancelling every task at once) never ran
        its body, so its own cleanup never came: nobody may wait forever; the next caller needs a new one."""
        if task.cancelled() and self._flusher is task:
            self._flusher = None
            for _, fut in self._pending:
                fut.cancel()
            self._pending = []

    async def _flush(self) -> None:
        batch: list[tuple[Sequence[Op], asyncio.Future[list[Any]]]] = []
        try:
            await asyncio.sleep(0)  # the jobs woken in this loop iteration join this round trip
            while self._pending:
                batch, n = [], 0
                while self._pending and (not batch or n + len(self._pending[0][0]) <= MAX_OPS):
                    item = self._pending.pop(0)
                    batch.append(item)
                    n += len(item[0])
                flat = [op for ops, _ in batch for op in ops]
                self.flushes += 1
                self.callers += len(batch)
                try:
                    replies = await self._send(flat)
                except Exception as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                i = 0
                for ops, fut in batch:
                    if not fut.done():  # a caller cancelled meanwhile: its work was still sent
                        fut.set_result(replies[i : i + len(ops)])
                    i += len(ops)
                batch = []
        except BaseException:  # cancelled (shutdown): nobody may wait forever
            for _, fut in batch + self._pending:
                fut.cancel()
            self._pending = []
            raise
        finally:
            self._flusher = None


# -- the two groups a worker uses, one each per Redis client -----------------------------------------

_scripts: weakref.WeakKeyDictionary[Redis, GroupCommit[ScriptCall]] = weakref.WeakKeyDictionary()
_finishes: weakref.WeakKeyDictionary[Redis, GroupCommit[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def script_group(redis: Redis) -> GroupCommit[ScriptCall]:
    """Script calls (EVALSHA each, not atomic together), as ``run_pipelined(..., raise_on_error=False)``."""
    group = _scripts.get(redis)
    if group is None:
        group = _scripts[redis] = GroupCommit(lambda calls: run_pipelined(redis, calls, raise_on_error=False))
    return group


def finish_group(redis: Redis) -> GroupCommit[tuple[Any, ...]]:
    """Commands in one MULTI/EXEC (each reply, or its error, in place)."""
    group = _finishes.get(redis)
    if group is None:

        async def send(commands: list[tuple[Any, ...]]) -> list[Any]:
            async with redis.pipeline(transaction=True) as tr:
                for cmd in commands:
                    tr.execute_command(*cmd)
                return list(await tr.execute(raise_on_error=False))

        group = _finishes[redis] = GroupCommit(send)
    return group


def finish_job_commands(
    queue_name: str,
    job_id: str,
    finish: bool,
    result_data: bytes | None,
    result_timeout_s: float | None,
    keep_result_forever: bool,
    incr_score: int | None,
    keep_in_progress: float | None,
    score: int | None = None,
) -> list[tuple[Any, ...]]:
    """arq 0.28's ``Worker.finish_job`` transaction, command for command, except for a job claimed
    at ``score`` and parked meanwhile (claim.lua): a retry goes to ``score + incr_score`` (where
    arq's ZINCRBY takes it from an unparked score) and a job to run again returns to ``score``."""
    cmds: list[tuple[Any, ...]] = []
    delete_keys = []
    in_progress_key = ARQ_IN_PROGRESS + job_id
    if keep_in_progress is None:
        delete_keys.append(in_progress_key)
    else:
        cmds.append(("PEXPIRE", in_progress_key, to_ms(keep_in_progress)))
    if finish:
        if result_data:
            px = None if keep_result_forever else to_ms(result_timeout_s)
            cmds.append(("SET", ARQ_RESULT + job_id, result_data, *(("PX", px) if px is not None else ())))
        delete_keys += [ARQ_RETRY + job_id, ARQ_JOB + job_id]
        cmds.append(("ZREM", ARQ_ABORT_JOBS, job_id))
        cmds.append(("ZREM", queue_name, job_id))
    elif incr_score and score is not None:
        cmds.append(("ZADD", queue_name, score + incr_score, job_id))
    elif incr_score:
        cmds.append(("ZINCRBY", queue_name, incr_score, job_id))
    elif score is not None:  # arq leaves the score alone: the job runs again at once
        cmds.append(("ZADD", queue_name, "XX", score, job_id))
    if delete_keys:
        cmds.append(("DEL", *delete_keys))
    return cmds


async def finish_job(redis: Redis, queue_name: str, job_id: str, *args: Any, **kwargs: Any) -> None:
    """``Worker.finish_job`` for one job, grouped with the others finishing now; its errors raise."""
    for reply in await finish_group(redis).run(finish_job_commands(queue_name, job_id, *args, **kwargs)):
        if isinstance(reply, Exception):
            raise reply


class Started(NamedTuple):
    """A job's start as the claim did it (claim.lua): its payload (None: gone), its try, whether it was
    marked for abort (1/0)."""

    payload: bytes | None
    job_try: int
    aborted: int


class StartPipeline:
    """Stands in for the pipeline arq's ``run_job`` opens first (GET the job, INCR and EXPIRE its try
    count, ZREM its abort mark: one MULTI/EXEC). With the claim's ``Started`` it answers from that;
    otherwise it sends those commands with the other jobs starting or finishing now, in one
    transaction. Only the methods arq calls there exist, so a change in arq's ``run_job`` fails loudly
    here rather than silently going ungrouped."""

    def __init__(self, redis: Redis, started: Started | None = None) -> None:
        self._redis = redis
        self._started = started
        self._cmds: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> StartPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cmds = []

    def get(self, key: str) -> None:
        self._cmds.append(("GET", key))

    def incr(self, key: str) -> None:
        self._cmds.append(("INCRBY", key, 1))

    def expire(self, key: str, seconds: int) -> None:
        self._cmds.append(("EXPIRE", key, seconds))

    def zrem(self, key: str, *members: str) -> None:
        self._cmds.append(("ZREM", key, *members))

    async def execute(self) -> list[Any]:
        got = self._started
        if got is not None and [c[0] for c in self._cmds] in (_START, _START_ABORT):
            self._started = None
            return [got.payload, got.job_try, True, got.aborted][: len(self._cmds)]
        replies = await finish_group(self._redis).run(self._cmds)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


_START = ["GET", "INCRBY", "EXPIRE"]  # arq's start transaction, as StartPipeline records it
_START_ABORT = [*_START, "ZREM"]


class StartPool:
    """The worker's pool as ``run_job`` sees it on its first access: its ``pipeline`` is a
    ``StartPipeline``; anything else goes to the real pool."""

    def __init__(self, redis: Redis, started: Started | None = None) -> None:
        self._redis = redis
        self._started = started

    def pipeline(self, transaction: bool = True) -> StartPipeline:
        return StartPipeline(self._redis, self._started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)
