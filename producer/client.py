"""The async Python client: submit jobs and batches, wait, read results."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from producer.batch_input import Validator, numbered_lines
from shared import codec
from shared.config import Settings
from shared.providers.registry import build_providers
from shared.redis_conn import connect
from shared.router import Router
from shared.schema import ChatRequest, EmbeddingRequest, JobResult, JobSpec
from shared.store import JOB_FUNCTION, BatchCounts, Store

CHUNK = 500


@dataclass
class Submission:
    batch_id: str
    total: int = 0
    queued: int = 0
    skipped: int = 0  # already queued or answered by an earlier submission of the same batch
    rejected: int = 0
    resumed: bool = False
    finished: bool = False  # every line already had a result when submission ended


ProgressFn = Callable[[Submission], Awaitable[None] | None]


class FuseboxClient:
    def __init__(self, redis: ArqRedis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.redis = redis
        self.store = Store(redis, self.settings.keys)
        self._router: Router | None = None

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
        """Used to refuse unknown models at submission, before anything is queued."""
        if self._router is None:
            cfg = self.settings.file
            self._router = Router(build_providers(cfg), cfg)
        return self._router

    # -- single jobs -----------------------------------------------------
    async def submit(self, body: dict[str, Any], *, kind: str = "chat", job_id: str | None = None) -> str:
        """Enqueue one chat (OpenAI chat.completions body) or embed job; returns its id."""
        req = ChatRequest.from_body(body) if kind == "chat" else EmbeddingRequest.from_body(body)
        self.router.candidates(req.model)
        spec = JobSpec(id=job_id or uuid.uuid4().hex, submitted_at=time.time())
        if isinstance(req, ChatRequest):
            spec.request = req
        else:
            spec.embed = req
        await self.redis.enqueue_job(JOB_FUNCTION[spec.kind], codec.encode_spec(spec), _job_id=spec.id)
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
        on_progress: ProgressFn | None = None,
    ) -> Submission:
        """Validate and enqueue lines ``CHUNK`` at a time (one round trip per chunk).

        ``prompts`` switches to plain-prompt input: ``{"model": ..., "system": ..., **extra_body}``.
        Re-submitting with the same ``batch_id`` resumes: lines already queued or answered are skipped.
        """
        batch_id = batch_id or "batch_" + uuid.uuid4().hex[:24]
        sub = Submission(batch_id)
        sub.resumed = not await self.store.create_batch(batch_id, metadata or {})
        v = Validator(batch_id, self.router)
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

        pextra = dict(prompts or {})
        pmodel, psystem = pextra.pop("model", None), pextra.pop("system", None)
        for lineno, index, raw in numbered_lines(lines):
            if prompts is not None:
                text = raw.decode() if isinstance(raw, bytes) else raw
                item = v.parse_prompt(text, lineno, index, pmodel, psystem, pextra)
            else:
                item = v.parse_jsonl(raw, lineno, index)
            (jobs if isinstance(item, JobSpec) else rejected).append(item)  # type: ignore[arg-type]
            sub.total += 1
            if len(jobs) + len(rejected) >= CHUNK:
                await flush()
        await flush()
        sub.finished = await self.store.seal(batch_id, sub.total)
        return sub

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
            if c.status in ("completed", "failed", "cancelled", "expired"):
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
            async for r in self.store.iter_completed(batch_id):
                yield r
