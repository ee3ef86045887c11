"""What ops look at, read from Redis: per-provider state, recent latency and error series, the fleet
gauges behind /metrics, batches in progress. Shared by the HTTP ops API, the dashboard and /metrics.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis

from shared.gate import Gate
from shared.keys import Keys
from shared.metrics import FleetState, read_queue
from shared.usage import LATENCY_BUCKETS_MS

IN_PROGRESS = ("validating", "in_progress", "finalizing", "cancelling")


def quantile(hist: dict[str, int], q: float) -> float | None:
    """The ``q`` quantile (ms) of a latency histogram {upper bound ms or 'inf': count}, interpolated
    linearly inside the bucket it falls in; None for an empty histogram."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for le in (*LATENCY_BUCKETS_MS, "inf"):
        n = hist.get(str(le), 0)
        upper = float(le) if le != "inf" else float(LATENCY_BUCKETS_MS[-1]) * 2
        if n and seen + n >= rank:
            return round(lower + (upper - lower) * (rank - seen) / n, 1)
        seen += n
        lower = upper
    return lower


async def provider_series(redis: Redis, keys: Keys, minutes: int = 30) -> dict[str, list[dict[str, Any]]]:
    """Per provider, one point per minute of the last ``minutes``: requests, errors, error rate,
    p50/p95 job latency (from the usage buckets every finished job adds to)."""
    now_min = int(time.time() // 60)
    span = list(range(now_min - minutes + 1, now_min + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for m in span:
            pipe.hgetall(keys.usage_minute(m))
        buckets = await pipe.execute()
    per: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for m, bucket in zip(span, buckets, strict=True):
        for raw_field, raw_val in bucket.items():
            provider, _model, _tenant, _batch, metric = raw_field.decode().split("|", 4)
            if provider == "-":
                continue
            point = per[provider].setdefault(m, {"req": 0, "err": 0, "lat": defaultdict(int)})
            n = int(float(raw_val))
            if metric == "req":
                point["req"] += n
            elif metric.startswith("err:"):
                point["err"] += n
            elif metric.startswith("lat:"):
                point["lat"][metric[4:]] += n
    out: dict[str, list[dict[str, Any]]] = {}
    for provider, points in per.items():
        series = []
        for m in span:
            p = points.get(m)
            req = p["req"] if p else 0
            err = p["err"] if p else 0
            series.append(
                {
                    "minute": m * 60,
                    "requests": req,
                    "errors": err,
                    "error_rate": round(err / req, 4) if req else 0.0,
                    "p50_ms": quantile(p["lat"], 0.5) if p else None,
                    "p95_ms": quantile(p["lat"], 0.95) if p else None,
                }
            )
        out[provider] = series
    return out


async def batches_in_progress(redis: Redis, keys: Keys, limit: int = 50) -> list[dict[str, Any]]:
    """The newest batches that have not ended, with progress and an ETA from their rate so far."""
    ids = await redis.zrevrange(keys.batches, 0, 200)
    async with redis.pipeline(transaction=False) as pipe:
        for bid in ids:
            pipe.hmget(keys.batch(bid.decode()), "status", "total", "completed", "failed", "created_at")
        rows = await pipe.execute()
    now = time.time()
    out = []
    for bid, (status, total, completed, failed, created) in zip(ids, rows, strict=True):
        if status is None or status.decode() not in IN_PROGRESS:
            continue
        t = int(total or 0)
        done = int(completed or 0) + int(failed or 0)
        age = max(0.001, now - float(created or now))
        rate = done / age
        eta = (t - done) / rate if rate > 0 and t else None
        out.append(
            {
                "id": bid.decode(),
                "status": status.decode(),
                "total": t,
                "completed": int(completed or 0),
                "failed": int(failed or 0),
                "progress": round(done / t, 4) if t else 0.0,
                "eta_seconds": round(eta, 1) if eta is not None else None,
            }
        )
        if len(out) >= limit:
            break
    return out


async def fleet_state(redis: Redis, keys: Keys, gate: Gate, worker_slots: int) -> FleetState:
    queue = await read_queue(redis, keys.queue, keys=keys)
    dead = await redis.zcard(keys.webhooks_dead)
    return FleetState(
        queue=queue, scopes=await gate.snapshots(), worker_slots=worker_slots, dead_webhooks=dead
    )
