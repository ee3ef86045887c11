"""The async Python client: submit jobs and batches, wait, read results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from producer.batch_input import Validator, numbered_lines
from shared import codec, routing_table
from shared.batches.retry import BatchBusy, BatchRetry, RetryOutcome
from shared.byok.entries import own_entries
from shared.config import Settings
from shared.jobs import durability
from shared.jobs.store import ENDED, JOB_FUNCTION, BatchCounts, Store
from shared.keys import wake_workers
from shared.providers.registry import build_providers
from shared.redis_conn import connect
from shared.router import Router
from shared.schema import ChatRequest, EmbeddingRequest, JobResult, JobSpec, RequestError
from shared.ssrf import check_url
from shared.usage import UsageRow, read_usage

CHUNK = 500
FIRST_CHUNK = 50  # workers start on these while the rest is validated and queued
__all__ = ["BatchBusy", "FuseboxClient", "RetryOutcome", "Submission"]


@dataclass
class Submission:
    batch_id: str
    total: int = 0
    queued: int = 0
    skipped: int = 0  # already queued or answered by an earlier submission of the same batch
    rejected: int = 0
    resumed: bool = False
    status: str = "validating"  # the batch status right after submission


ProgressFn = Callable[[Submission], Awaitable[None] | None]


TABLE_TTL_S = 10.0  # how long a read of the fleet's routing table is reused


class FuseboxClient:
    """``routing='fleet'`` checks models against the table the workers publish to Redis (falling back
    to the local fusebox.toml until a worker has published one); ``'local'`` uses the local config only
    (``fusebox run``, whose in-process worker is the whole fleet)."""

    def __init__(self, redis: ArqRedis, settings: Settings | None = None, *, routing: str = "fleet") -> None:
        self.settings = settings or Settings()
        self.redis = redis
        self.store = Store(redis, self.settings.keys, self.settings.file.batches)
        self.routing = routing
        self._router: Router | None = None
        self._durable_checked = False
        self._table: tuple[float, Router] | None = None

    @classmethod
    def connect(cls, settings: Settings | None = None, url: str | None = None) -> FuseboxClient:
        settings = settings or Settings()
        url = url or settings.redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set")
        return cls(connect(url, settings.keys), settings)

    async def aclose(self) -> None:
        await self.redis.aclose()

    @property
    def router(self) -> Router:
        """The local config's router (fusebox.toml and this process's environment)."""
        if self._router is None:
            cfg = self.settings.file
            self._router = Router(build_providers(cfg), cfg)
        return self._router

    async def check_durable(self) -> None:
        """In durable mode, ConfigError unless the server supports it; run before anything is written."""
        cfg = self.settings.file.redis
        if cfg.durable and not self._durable_checked:
            await durability.check_server(self.redis, cfg)
            self._durable_checked = True

    async def _acknowledge(self) -> None:
        """In durable mode, return only once Redis has fsynced everything submitted so far."""
        if self.settings.file.redis.durable:
            await self.check_durable()
            await durability.wait_on_disk(self.redis, self.settings.keys, self.settings.file.redis)

    async def model_router(self) -> Router:
        """Used to refuse unknown models at submission, before anything is queued."""
        if self.routing == "local":
            return self.router
        now = time.monotonic()
        if self._table is not None and now - self._table[0] < TABLE_TTL_S:
            return self._table[1]
        table = await routing_table.read(self.redis, self.settings.keys)
        if table is None:
            return self.router
        self._table = (now, routing_table.router_from_table(table))
        return self._table[1]

    async def fleet_known(self) -> bool:
        """Whether a worker has published the fleet's routing table (or routing is local)."""
        return self.routing == "local" or await routing_table.read(self.redis, self.settings.keys) is not None

    # -- single jobs -----------------------------------------------------
    async def submit(
        self,
        body: dict[str, Any],
        *,
        kind: str = "chat",
        job_id: str | None = None,
        webhook: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """Enqueue one chat (OpenAI chat.completions body) or embed job; returns its id.

        ``webhook`` gets a signed ``job.completed`` / ``job.failed`` summary when it ends.
        """
        req = ChatRequest.from_body(body) if kind == "chat" else EmbeddingRequest.from_body(body)
        try:
            (await self.model_router()).resolve(req.model)
        except RequestError:
            if not (await own_entries(self.redis, self.settings.keys, tenant)).serves(req.model):
                raise
        await self.check_durable()
        if webhook:
            await self.check_webhook_url(webhook)
        spec = JobSpec(
            id=job_id or uuid.uuid4().hex, submitted_at=time.time(), webhook=webhook, tenant=tenant
        )
        if isinstance(req, ChatRequest):
            spec.request = req
        else:
            spec.embed = req
        await self.redis.enqueue_job(JOB_FUNCTION[spec.kind], codec.encode_spec(spec), _job_id=spec.id)
        async with self.redis.pipeline(transaction=False) as pipe:
            wake_workers(pipe, self.settings.keys)  # an idle worker takes it now, not at its next poll
            await pipe.execute()
        await self._acknowledge()
        return spec.id

    async def result(self, job_id: str) -> JobResult | None:
        return await self.store.get_result(job_id)

    async def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.05) -> JobResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            res = await self.store.get_result(job_id)
            if res is not None:
                return res
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} has no result after {timeout}s")
            await asyncio.sleep(poll)

    # -- batches ---------------------------------------------------------
    async def submit_batch(
        self,
        lines: Iterable[bytes | str],
        *,
        batch_id: str | None = None,
        prompts: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        webhook: str | None = None,
        tenant: str | None = None,
        completion_window_s: float | None = None,
        input_name: str | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Submission:
        """Validate and enqueue lines ``CHUNK`` at a time (one round trip per chunk).

        ``prompts`` switches to plain-prompt input: ``{"model": ..., "system": ..., **extra_body}``.
        Re-submitting with the same ``batch_id`` resumes: lines already queued or answered are skipped.
        ``webhook`` gets a signed summary when the batch ends.
        """
        batch_id = batch_id or "batch_" + uuid.uuid4().hex[:24]
        await self.check_durable()
        if webhook:
            await self.check_webhook_url(webhook)
        fields: dict[str, Any] = {}
        if metadata:
            fields["metadata"] = json.dumps(metadata, separators=(",", ":"))
        named = {"webhook": webhook, "tenant": tenant, "completion_window_s": completion_window_s,
                 "input": input_name}  # fmt: skip
        for name, val in named.items():
            if val is not None:
                fields[name] = val
        sub = Submission(batch_id)
        router = await self.model_router()
        sub.resumed = not await self.store.create_batch(batch_id, fields)
        own = await own_entries(self.redis, self.settings.keys, tenant)
        v = Validator(batch_id, router, self.settings.file.batches.max_line_bytes, tenant=tenant, own=own)
        jobs: list[JobSpec] = []
        rejected: list[JobResult] = []

        async def flush() -> None:
            q, s, r = await self.store.enqueue_chunk(batch_id, jobs, rejected)
            sub.queued, sub.skipped, sub.rejected = sub.queued + q, sub.skipped + s, sub.rejected + r
            jobs.clear()
            rejected.clear()
            if on_progress is not None:
                maybe = on_progress(sub)
                if maybe is not None:
                    await maybe

        chunk = FIRST_CHUNK  # the first lines reach the workers at once; then full chunks
        try:
            for item in _parsed(v, lines, prompts):
                (jobs if isinstance(item, JobSpec) else rejected).append(item)  # type: ignore[arg-type]
                sub.total += 1
                if len(jobs) + len(rejected) >= chunk:
                    await flush()
                    chunk = CHUNK
            await flush()
        except Exception as e:
            # Line problems are the lines' errors; this is the submission itself failing (reading the
            # input, Redis): no half-batch may stay 'validating', so it ends 'failed' with the reason.
            if not sub.resumed:
                await self._abort(batch_id, f"submission failed after {sub.total} lines: {e}")
            raise
        nothing_valid = sub.total > 0 and sub.rejected == sub.total
        sub.status = await self.store.seal(
            batch_id, sub.total, validation_failed=nothing_valid or sub.total == 0
        )
        await self._acknowledge()
        return sub

    async def retry_batch(
        self, batch_id: str, lines: Iterable[bytes | str], *, prompts: dict[str, Any] | None = None
    ) -> RetryOutcome:
        """Run an ended batch's failed lines again, into the same batch; each line is answered once.

        ``lines`` is the batch's input again (requests are not kept in Redis), read as
        ``submit_batch`` reads it: ``prompts`` must match the original submission. Lines whose
        input is still invalid stay failed. Raises BatchBusy while the batch has not ended, and
        ValueError if ``lines`` is not this batch's input (a custom_id differs); nothing changes then.
        A retry interrupted midway is completed by calling this again.
        """
        r = BatchRetry(self.store, batch_id)
        _, resuming, _total = await r.check()
        failed = await r.failed_lines(_total)
        if not failed and not resuming:
            return RetryOutcome(batch_id, status=(await r.check())[0])
        info = await self.store.batch_info(batch_id)
        own = await own_entries(self.redis, self.settings.keys, info.get("tenant"))
        v = Validator(batch_id, await self.model_router(), self.settings.file.batches.max_line_bytes,
                      tenant=info.get("tenant"), own=own)  # fmt: skip
        specs: dict[int, JobSpec] = {}
        for item in _parsed(v, lines, prompts):
            want = failed.get(item.line, _ABSENT)
            if want is _ABSENT:
                continue
            if want is not None and item.custom_id != want:
                raise ValueError(
                    f"input line {item.line + 1} (non-blank) has custom_id {item.custom_id!r}, but batch "
                    f"{batch_id} has {want!r} there: this is not the batch's input file"
                )
            if isinstance(item, JobSpec):
                specs[item.line] = item
        out = await r.run(specs, len(failed))
        await self._acknowledge()
        return out

    async def _abort(self, batch_id: str, reason: str) -> None:
        """Best effort (Redis may be what failed): unqueue what was queued, mark the batch failed."""
        with contextlib.suppress(Exception):
            await self.store.cancel(batch_id)
            await self.redis.hset(
                self.settings.keys.batch(batch_id),
                mapping={"status": "failed", "failed_at": repr(time.time()), "failure_reason": reason[:500]},
            )

    async def cancel(self, batch_id: str) -> tuple[int, str]:
        """No new dispatch; running calls finish; unrun lines answered 'batch_cancelled'. -> (n, status)."""
        if await self.store.counts(batch_id) is None:
            raise KeyError(f"no batch {batch_id!r}")
        return await self.store.cancel(batch_id)

    async def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch record in OpenAI's Batch object shape (plus Fusebox usage totals)."""
        info = await self.store.batch_info(batch_id)
        if not info:
            raise KeyError(f"no batch {batch_id!r}")
        return batch_object(batch_id, info)

    async def batches(self, limit: int = 20) -> list[dict[str, Any]]:
        return [batch_object(row.pop("id"), row) for row in await self.store.list_batches(limit)]

    async def usage(self, since_s: float = 3600, batch: str | None = None) -> list[UsageRow]:
        return await read_usage(self.redis, self.settings.keys, since_s, batch=batch)

    async def check_webhook_url(self, url: str) -> None:
        """Refuse webhook URLs that point inside the network (SSRF), unless allow-listed."""
        await check_url(url, self.settings.file.webhooks.allow_hosts)

    async def counts(self, batch_id: str) -> BatchCounts | None:
        return await self.store.counts(batch_id)

    async def wait_batch(
        self,
        batch_id: str,
        *,
        poll: float = 0.2,
        on_progress: Callable[[BatchCounts], None] | None = None,
        timeout: float | None = None,
    ) -> BatchCounts:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            c = await self.store.counts(batch_id)
            if c is None:
                raise KeyError(f"no batch {batch_id!r}")
            if on_progress is not None:
                on_progress(c)
            if c.status in ENDED:
                return c
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout}s ({c.done}/{c.total})")
            await asyncio.sleep(poll)

    async def results(self, batch_id: str, *, ordered: bool = True) -> AsyncIterator[JobResult | None]:
        """Every result; in input order by default, else in completion order."""
        if ordered:
            c = await self.store.counts(batch_id)
            if c is None:
                raise KeyError(f"no batch {batch_id!r}")
            async for r in self.store.iter_results(batch_id, c.total):
                yield r
        else:
            async for _, r in self.store.iter_completed(batch_id):
                yield r


_ABSENT = object()


def _parsed(
    v: Validator, lines: Iterable[bytes | str], prompts: dict[str, Any] | None
) -> Iterator[JobSpec | JobResult]:
    """Each non-blank line validated: JSONL, or a prompts file when ``prompts`` is given."""
    pextra = dict(prompts or {})
    pmodel, psystem = pextra.pop("model", None), pextra.pop("system", None)
    for lineno, index, raw in numbered_lines(lines):
        if prompts is not None:
            yield v.parse_prompt(raw, lineno, index, pmodel, psystem, pextra)
        else:
            yield v.parse_jsonl(raw, lineno, index)


def batch_object(batch_id: str, info: dict[str, str]) -> dict[str, Any]:
    """OpenAI's Batch object fields from the stored hash."""

    def ts(name: str) -> int | None:
        v = info.get(name)
        return int(float(v)) if v else None

    total = int(info.get("total", 0))
    completed, failed = int(info.get("completed", 0)), int(info.get("failed", 0))
    return {
        "id": batch_id,
        "object": "batch",
        "status": info.get("status"),
        "input": info.get("input"),
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": json.loads(info["metadata"]) if "metadata" in info else None,
        "created_at": ts("created_at"),
        "in_progress_at": ts("in_progress_at"),
        "finalizing_at": ts("finalizing_at"),
        "completed_at": ts("completed_at"),
        "failed_at": ts("failed_at"),
        "cancelling_at": ts("cancelling_at"),
        "cancelled_at": ts("cancelled_at"),
        "expired_at": ts("expired_at"),
        "expires_at": ts("expires_at"),
        "webhook": info.get("webhook"),
        "failure_reason": info.get("failure_reason"),
        "tenant": info.get("tenant"),
        "budget_usd": float(info["budget_usd"]) if "budget_usd" in info else None,
        "paused": info.get("paused"),  # why its lines wait (its budget), while they do
        "usage": {
            "prompt_tokens": int(info.get("prompt_tokens", 0)),
            "completion_tokens": int(info.get("completion_tokens", 0)),
            "cached_tokens": int(info.get("cached_tokens", 0)),
            "cost_usd": round(float(info.get("cost_usd", 0.0)), 6),
        },
    }
