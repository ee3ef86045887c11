"""The arq job that delivers one webhook attempt (see shared/webhooks/delivery.py).

Register with ``functions=[..., *WEBHOOK_FUNCTIONS]`` and put the worker's
Settings in ``ctx[SETTINGS_KEY]``; call ``close_webhooks(ctx)`` from on_shutdown
to close the HTTP client.
"""

from __future__ import annotations

import weakref
from typing import Any

from arq.connections import ArqRedis

from shared.config import Settings
from shared.webhooks.delivery import WebhookDeliverer

SETTINGS_KEY = "fusebox_settings"

# arq hands each job a copy of the worker's ctx, so the per-worker deliverer (and its
# HTTP client) is cached against the worker's Redis pool, which lives as long as the worker.
_deliverers: weakref.WeakKeyDictionary[ArqRedis, WebhookDeliverer] = weakref.WeakKeyDictionary()


def deliverer(ctx: dict[str, Any]) -> WebhookDeliverer:
    redis: ArqRedis = ctx["redis"]
    d = _deliverers.get(redis)
    if d is None:
        settings: Settings = ctx.get(SETTINGS_KEY) or Settings()
        d = WebhookDeliverer(redis, settings.keys, settings.file.webhooks)
        _deliverers[redis] = d
    return d


async def deliver_webhook(ctx: dict[str, Any], raw: bytes) -> None:
    """One delivery attempt; a failure enqueues the next attempt itself, so this job never raises for it."""
    await deliverer(ctx).deliver(raw)


async def close_webhooks(ctx: dict[str, Any]) -> None:
    d = _deliverers.pop(ctx["redis"], None)
    if d is not None:
        await d.aclose()


WEBHOOK_FUNCTIONS = [deliver_webhook]
