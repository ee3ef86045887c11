"""A thin blocking wrapper around FuseboxClient for scripts and notebooks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from producer.client import FuseboxClient, RetryOutcome, Submission
from shared.config import Settings
from shared.jobs.store import BatchCounts
from shared.schema import JobResult
from shared.usage import UsageRow

T = TypeVar("T")


class SyncFuseboxClient:
    """Same operations as FuseboxClient, blocking. Runs its own event loop in a daemon thread."""

    def __init__(self, settings: Settings | None = None, url: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fusebox-client", daemon=True)
        self._thread.start()
        self._client = self._call(self._connect(settings, url))

    @classmethod
    def connect(cls, settings: Settings | None = None, url: str | None = None) -> SyncFuseboxClient:
        """Same as the constructor; mirrors ``FuseboxClient.connect()`` (REDIS_URL by default)."""
        return cls(settings, url)

    @staticmethod
    async def _connect(settings: Settings | None, url: str | None) -> FuseboxClient:
        return FuseboxClient.connect(settings, url)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, body: dict[str, Any], *, kind: str = "chat", webhook: str | None = None) -> str:
        return self._call(self._client.submit(body, kind=kind, webhook=webhook))

    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """Blocks until the job has a result; TimeoutError after ``timeout`` seconds (an unknown id
        never gets one)."""
        return self._call(self._client.wait(job_id, timeout=timeout))

    def submit_batch(self, lines: Iterable[bytes | str], **kwargs: Any) -> Submission:
        return self._call(self._client.submit_batch(lines, **kwargs))

    def wait_batch(self, batch_id: str, timeout: float | None = None) -> BatchCounts:
        return self._call(self._client.wait_batch(batch_id, timeout=timeout))

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._call(self._client.batch(batch_id))

    def retry_batch(self, batch_id: str, lines: Iterable[bytes | str], **kwargs: Any) -> RetryOutcome:
        return self._call(self._client.retry_batch(batch_id, lines, **kwargs))

    def cancel(self, batch_id: str) -> tuple[int, str]:
        return self._call(self._client.cancel(batch_id))

    def usage(self, since_s: float = 3600, batch: str | None = None) -> list[UsageRow]:
        return self._call(self._client.usage(since_s, batch))

    def results(self, batch_id: str, *, ordered: bool = True) -> Iterator[JobResult | None]:
        agen = self._client.results(batch_id, ordered=ordered)
        while True:
            try:
                yield self._call(agen.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SyncFuseboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
