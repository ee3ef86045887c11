"""arq job functions. Each takes the msgpack-encoded JobSpec as its only argument."""

from __future__ import annotations

from typing import Any

from worker.executor import Executor

CTX_KEY = "fusebox_executor"


async def chat(ctx: dict[str, Any], raw: bytes) -> None:
    executor: Executor = ctx[CTX_KEY]
    await executor.run(raw, ctx.get("job_try", 1))


async def embed(ctx: dict[str, Any], raw: bytes) -> None:
    # Same path as chat; arq registers functions by name, so each kind has its own.
    executor: Executor = ctx[CTX_KEY]
    await executor.run(raw, ctx.get("job_try", 1))
