"""Where a run of a job ends up in Redis: its result (exactly once, with the last call's settle in the
same round trip, then its webhook), or, for a job that runs again, the attempts carried to that run."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
from arq.jobs import serialize_job
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import codec
from shared.gate import Admission, Gate, RedisUnavailable
from shared.jobs.store import JOB_FUNCTION, Store
from shared.keys import ARQ_JOB
from shared.schema import Attempt, JobResult, JobSpec
from shared.scripts import ScriptCall
from shared.webhooks import job_event
from shared.webhooks.records import enqueue_webhook
from worker import group_commit

log = logging.getLogger("fusebox.executor")
REDIS_DOWN = (OSError, RedisConnectionError, RedisTimeoutError, RedisUnavailable)


class JobEnd(Protocol):
    """The worker running a job as an arq job: its result write may record the job's end in arq too
    (complete.lua), one round trip less per job."""

    def finish_keys(self, job_id: str) -> Sequence[str] | None:
        """The arq keys complete.lua finishes the job with, or None if arq's own finish must run."""

    def ended(self, job_id: str) -> None:
        """The write finished the job in arq: arq's finish_job has nothing left to do."""


async def write_result(
    store: Store,
    gate: Gate,
    spec: JobSpec,
    result: JobResult,
    settle: ScriptCall | None,
    adm: Admission | None,
    end: JobEnd | None = None,
) -> Any:
    """Store the result exactly once, with the last attempt's settle and (``end``) arq's finish of the
    job in the same round trip. A settle that fails (a script error) never costs the result; its lease
    is released before the next admit. Returns the settle's reply (None without one, or if it failed)."""
    arq_keys = end.finish_keys(spec.id) if end is not None else None
    calls = [c for c in (settle, store.complete_call(result, spec.tenant, arq_keys or ())) if c is not None]
    try:
        replies = await group_commit.script_group(store.redis).run(calls)
    except (OSError, RedisConnectionError, RedisTimeoutError) as e:
        if adm is not None:
            gate.unsettled(adm)
        # the worker re-queues the job once Redis answers again (FuseboxWorker._reap_tasks)
        raise RedisUnavailable(f"could not store the result of {spec.id}: {e}") from None
    settled = replies[0] if settle is not None else None
    if isinstance(settled, Exception):
        log.error("job %s: settling its call failed: %s", spec.id, settled)
        if adm is not None:
            gate.unsettled(adm)
        settled = None
    if isinstance(replies[-1], Exception):
        raise replies[-1]
    if arq_keys and end is not None:
        end.ended(spec.id)
    written, _ = store.completed(replies[-1])
    if written and spec.webhook:
        try:
            await enqueue_webhook(store.redis, store.keys, spec.webhook, job_event(result), None)
        except REDIS_DOWN:
            raise
        except Exception as e:  # the result is stored: running the job again would not resend it
            log.error("job %s: its webhook could not be queued: %s: %s", spec.id, type(e).__name__, e)
    return settled


async def carry_attempts(store: Store, spec: JobSpec, attempts: list[Attempt]) -> None:
    """Rewrite the queued payload so the next run starts with ``attempts``: arq re-runs a deferred
    job from the payload stored at enqueue, and its result must list every attempt. Only jobs
    deferred after a failed attempt pay this round trip; if it fails, the job still runs again."""
    carried = msgspec.structs.replace(spec, prior_attempts=attempts)
    enqueued_ms = int((spec.submitted_at or time.time()) * 1000)
    payload = serialize_job(
        JOB_FUNCTION[spec.kind], (codec.encode_spec(carried),), {}, None, enqueued_ms,
        serializer=codec.arq_serializer,
    )  # fmt: skip
    with contextlib.suppress(RedisError, OSError):
        # XX: never resurrect a job that is gone; KEEPTTL: the job's expiry stays as enqueued
        await store.redis.set(ARQ_JOB + spec.id, payload, xx=True, keepttl=True)
