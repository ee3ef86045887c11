"""arq jobs around batches: finalization (queued once by Lua when the last line lands) and expiry."""

from __future__ import annotations

import json
import logging
from typing import Any

from arq.cron import cron

from shared.jobs.store import Store
from shared.schema import Usage
from shared.webhooks import RequestCounts, batch_event
from shared.webhooks.records import enqueue_webhook

log = logging.getLogger("fusebox.batches")
STORE_KEY = "fusebox_store"


async def finalize_batch(ctx: dict[str, Any], batch_id: str) -> None:
    """finalizing -> completed, results get their TTL, and the batch webhook is queued (once)."""
    store: Store = ctx[STORE_KEY]
    info = await store.finalize(batch_id)
    url = info.get("webhook")
    if url:
        await _batch_webhook(ctx, store, batch_id, info, url)


async def _batch_webhook(
    ctx: dict[str, Any], store: Store, batch_id: str, info: dict[str, str], url: str
) -> None:
    usage = Usage(
        prompt_tokens=int(info.get("prompt_tokens", 0)),
        completion_tokens=int(info.get("completion_tokens", 0)),
        cached_tokens=int(info.get("cached_tokens", 0)),
    )
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    counts = RequestCounts(
        total=int(info.get("total", 0)),
        completed=int(info.get("completed", 0)),
        failed=int(info.get("failed", 0)),
    )
    event = batch_event(
        batch_id,
        info.get("status", "completed"),
        counts,
        usage=usage,
        cost_usd=float(info.get("cost_usd", 0.0)),
        metadata=json.loads(info["metadata"]) if "metadata" in info else None,
        retries=int(info.get("retries", 0)),
    )
    await enqueue_webhook(ctx["redis"], store.keys, url, event, None)


async def expire_batches(ctx: dict[str, Any]) -> None:
    store: Store = ctx[STORE_KEY]
    for bid in await store.expire_due():
        log.warning("batch %s passed its completion window: unrun lines expired", bid)


BATCH_FUNCTIONS = [finalize_batch]


# Checked every 5 s, so a window ends within ~5 s of its deadline (arq runs a cron once per tick
# fleet-wide; the check is one ZRANGEBYSCORE when nothing is due, and cancel() is idempotent).
def batch_cron(namespace: str) -> list:  # type: ignore[type-arg]
    """The periodic jobs of one deployment. arq's cron job ids are ``cron:<name>:<time>`` with no
    queue in them, so the name carries the namespace: deployments sharing a Redis never skip each
    other's ticks."""
    return [
        cron(
            expire_batches,
            name=f"expire_batches:{namespace}",
            second=set(range(0, 60, 5)),
            run_at_startup=True,
        )
    ]


BATCH_CRON = batch_cron("fusebox")
