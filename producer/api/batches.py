"""OpenAI batches over the HTTP API: submission from an uploaded file, the Batch object, output files.

Submission streams the file from Redis through the same Validator and enqueue script as
``fusebox submit``, one chunk of lines per round trip, with the next chunk validated while the
previous one is being enqueued. Output and error files are virtual: their content is rendered
from the batch's results in Redis as it is read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.exceptions import RedisError

from producer.api.auth import ApiContext
from producer.batch_input import Validator
from shared import budget
from shared.byok.entries import own_entries
from shared.jobs.store import ENDED
from shared.schema import CHAT_URL, URL_KINDS, JobResult, JobSpec, OutputLine, RequestError

log = logging.getLogger("fusebox.api")
SUBMITTER_LEASE_S = 30  # a submitter that stops renewing this long is presumed dead
CHUNK = 500  # lines per enqueue round trip; also bounds how long one step holds the event loop
MAX_ERRORS_LISTED = 100  # errors.data of a failed batch; the error file has every line
OUTPUT_SUFFIX, ERROR_SUFFIX = "-output", "-errors"
_enc = msgspec.json.Encoder()
_BACKGROUND: set[asyncio.Task[None]] = set()  # strong references to running submissions


def virtual_file(file_id: str) -> tuple[str, str] | None:
    """(batch id, 'output' | 'errors') for an output/error file id, else None."""
    for suffix in (OUTPUT_SUFFIX, ERROR_SUFFIX):
        if file_id.startswith("file-batch_") and file_id.endswith(suffix):
            return file_id[len("file-") : -len(suffix)], suffix[1:]
    return None


def start_submission(ctx: ApiContext, batch_id: str, info: dict[str, str]) -> None:
    """Submit in the background; the caller holds the batch's submitter lease."""
    args = (ctx, batch_id, info["input_file_id"], info.get("endpoint", CHAT_URL), info["tenant"])
    task = asyncio.create_task(submit_from_file(*args))
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def claim_submission(ctx: ApiContext, batch_id: str) -> bool:
    """Take the batch's submitter lease: one process at a time submits a batch."""
    key = ctx.settings.keys.batch_submitter(batch_id)
    return bool(await ctx.redis.set(key, "1", nx=True, ex=SUBMITTER_LEASE_S))


async def resume_if_orphaned(ctx: ApiContext, batch_id: str, info: dict[str, str]) -> None:
    """A batch left 'validating' by a replica that died mid-submission is resumed by whoever reads it:
    enqueueing is idempotent per (batch, custom_id), so lines queued before are skipped."""
    if info.get("status") != "validating" or "input_file_id" not in info:
        return
    if await claim_submission(ctx, batch_id):
        log.warning("resuming the submission of batch %s: its submitter is gone", batch_id)
        start_submission(ctx, batch_id, info)


async def submit_from_file(ctx: ApiContext, batch_id: str, file_id: str, endpoint: str, tenant: str) -> None:
    """Validate and enqueue every line of ``file_id``; seal the batch (or fail it if no line is valid)."""
    store = ctx.store
    lease = ctx.settings.keys.batch_submitter(batch_id)
    renewed = time.monotonic()
    try:
        kind = URL_KINDS[endpoint]
        own = await own_entries(ctx.redis, ctx.settings.keys, tenant)
        v = Validator(batch_id, ctx.router, store.cfg.max_line_bytes, tenant=tenant, own=own)
        jobs: list[JobSpec] = []
        rejected: list[JobResult] = []
        total = accepted = 0
        pending: asyncio.Task[tuple[int, int, int]] | None = None
        lineno = index = 0
        async for raw in ctx.files.iter_lines(file_id):
            lineno += 1
            if not raw or raw.isspace():
                continue
            item = v.parse_jsonl(raw.rstrip(b"\r"), lineno, index)
            if isinstance(item, JobSpec) and item.kind != kind:
                e = RequestError("mismatched_endpoint", f"url does not match the batch's endpoint {endpoint}")
                item = v.reject(index, lineno, e, item.custom_id)
            if isinstance(item, JobSpec):
                jobs.append(item)
                accepted += 1
            else:
                rejected.append(item)
            index += 1
            total += 1
            if len(jobs) + len(rejected) >= CHUNK:
                if pending is not None:
                    await pending
                pending = asyncio.create_task(store.enqueue_chunk(batch_id, jobs, rejected))
                jobs, rejected = [], []
                if time.monotonic() - renewed > SUBMITTER_LEASE_S / 3:
                    renewed = time.monotonic()
                    await ctx.redis.expire(lease, SUBMITTER_LEASE_S)
        if pending is not None:
            await pending
        await store.enqueue_chunk(batch_id, jobs, rejected)
        status = await store.seal(batch_id, total, validation_failed=accepted == 0)
        if status == "cancelling":  # cancelled while validating: answer the lines queued since
            await store.cancel(batch_id)
    except (RedisError, OSError):
        # Redis went away: the lease runs out and the next reader of the batch resumes it.
        log.exception("submission of batch %s interrupted; it resumes when the batch is read again", batch_id)
    except Exception as e:
        log.exception("submission of batch %s failed", batch_id)
        now = repr(time.time())
        err = json.dumps([{"code": "submission_failed", "message": f"{type(e).__name__}: {e}"}])
        await store.redis.hset(
            store.keys.batch(batch_id), mapping={"status": "failed", "failed_at": now, "errors": err}
        )


async def line_errors(ctx: ApiContext, batch_id: str, total: int) -> list[dict[str, Any]]:
    """errors.data of a batch that failed validation: its first lines' errors, with line numbers."""
    out: list[dict[str, Any]] = []
    async for r in ctx.store.iter_results(batch_id, min(total, MAX_ERRORS_LISTED)):
        if r is not None and r.error is not None:
            msg = r.error.message
            line = int(msg.split(":", 1)[0][5:]) if msg.startswith("line ") and ":" in msg else None
            out.append({"code": r.error.code, "message": msg, "param": None, "line": line})
    return out


def _ts(info: dict[str, str], name: str) -> int | None:
    v = info.get(name)
    return int(float(v)) if v else None


async def batch_object(ctx: ApiContext, batch_id: str, info: dict[str, str]) -> dict[str, Any]:
    """OpenAI's Batch object from the stored hash."""
    status = info.get("status", "validating")
    total = int(info.get("total", 0))
    completed, failed = int(info.get("completed", 0)), int(info.get("failed", 0))
    errors = None
    if "errors" in info:
        errors = {"object": "list", "data": json.loads(info["errors"])}
    elif status == "failed":
        errors = {"object": "list", "data": await line_errors(ctx, batch_id, total)}
    ended = status in ENDED
    p, c = int(info.get("prompt_tokens", 0)), int(info.get("completion_tokens", 0))
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": info.get("endpoint", "/v1/chat/completions"),
        "errors": errors,
        "input_file_id": info.get("input_file_id", ""),
        "completion_window": info.get("completion_window", "24h"),
        "status": status,
        "output_file_id": f"file-{batch_id}{OUTPUT_SUFFIX}" if ended and completed else None,
        "error_file_id": f"file-{batch_id}{ERROR_SUFFIX}" if ended and failed else None,
        "created_at": _ts(info, "created_at") or 0,
        "in_progress_at": _ts(info, "in_progress_at"),
        "expires_at": _ts(info, "expires_at"),
        "finalizing_at": _ts(info, "finalizing_at"),
        "completed_at": _ts(info, "completed_at"),
        "failed_at": _ts(info, "failed_at"),
        "expired_at": _ts(info, "expired_at"),
        "cancelling_at": _ts(info, "cancelling_at"),
        "cancelled_at": _ts(info, "cancelled_at"),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": json.loads(info["metadata"]) if info.get("metadata") else None,
        "fusebox": budget.batch_fields(info),
        "usage": {
            "input_tokens": p,
            "input_tokens_details": {"cached_tokens": int(info.get("cached_tokens", 0))},
            "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p + c,
        },
    }


async def owned_batch(ctx: ApiContext, tenant: str, batch_id: str) -> dict[str, str] | None:
    info = await ctx.store.batch_info(batch_id)
    return info if info and info.get("tenant") == tenant else None


async def output_lines(ctx: ApiContext, batch_id: str, which: str, total: int) -> AsyncIterator[bytes]:
    """The output ('output': successes), error ('errors': failures) or whole ('all') file, in input order."""
    buf = bytearray()
    async for r in ctx.store.iter_results(batch_id, total):
        if r is not None and (which == "all" or r.ok == (which == "output")):
            buf += _enc.encode(OutputLine.from_result(r))
            buf += b"\n"
            if len(buf) >= 256 * 1024:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


async def completion_lines(ctx: ApiContext, batch_id: str, poll: float = 0.2) -> AsyncIterator[bytes]:
    """NDJSON of output lines in completion order, following the batch until it ends."""
    pos = 0
    while True:
        counts = await ctx.store.counts(batch_id)
        buf, before = bytearray(), pos
        async for i, r in ctx.store.iter_completed(batch_id, start=pos):
            pos = i + 1
            buf += _enc.encode(OutputLine.from_result(r)) + b"\n"
            if len(buf) >= 64 * 1024:
                yield bytes(buf)
                buf.clear()
        if buf:
            yield bytes(buf)
        if counts is None or (counts.status in ENDED and (pos >= counts.done or pos == before)):
            return
        await asyncio.sleep(poll)
