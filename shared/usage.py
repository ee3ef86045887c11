"""Usage and cost aggregates in per-minute buckets, per provider, model, tenant and batch.

Each finished job adds a handful of counters to the hash of its minute (inside
the same Lua call that stores its result, so nothing is counted twice). Reading
sums the buckets of a time range.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from redis.asyncio import Redis

from shared.keys import Keys
from shared.schema import JobResult

# Minute-bucket metrics: req, in, out, cached, cost, err:<class>, lat:<bucket>.
# Latency histogram upper bounds in ms (the last bucket is everything slower).
LATENCY_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
USAGE_TTL_S = 8 * 24 * 3600
_NONE = "-"


def _clean(v: str | None) -> str:
    return (v or _NONE).replace("|", "/")


def dims(r: JobResult, tenant: str | None) -> str:
    provider, model = r.provider, r.model
    if provider is None and r.attempts:
        # A failed job names no provider; the one whose error ended it is the last attempt's.
        provider, model = r.attempts[-1].provider, r.attempts[-1].model
    return f"{_clean(provider)}|{_clean(model)}|{_clean(tenant)}|{_clean(r.batch_id)}"


def latency_bucket(ms: float) -> str:
    for le in LATENCY_BUCKETS_MS:
        if ms <= le:
            return str(le)
    return "inf"


def script_args(r: JobResult, tenant: str | None) -> list[str | int | float]:
    """complete.lua's usage arguments: cost, prompt/completion/cached tokens, dimensions, latency
    bucket and error class; the script adds them to the minute bucket as '<dims>|<metric>' fields."""
    u = r.usage
    tokens = (u.prompt_tokens, u.completion_tokens, u.cached_tokens) if u is not None else (0, 0, 0)
    err = r.error.error_class if r.error is not None else ""
    return [r.cost_usd, *tokens, dims(r, tenant), latency_bucket(r.latency_ms), err]


@dataclass
class UsageRow:
    provider: str
    model: str
    tenant: str
    batch: str
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: dict[str, int] = field(default_factory=dict)


async def read_usage(
    redis: Redis, keys: Keys, since_s: float, until: float | None = None, batch: str | None = None
) -> list[UsageRow]:
    """Sum the minute buckets in [now - since_s, until]; optionally only one batch's rows."""
    end = int((until or time.time()) // 60)
    start = int((time.time() - since_s) // 60)
    rows: dict[str, UsageRow] = {}
    minutes = list(range(start, end + 1))
    for i in range(0, len(minutes), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for m in minutes[i : i + 500]:
                pipe.hgetall(keys.usage_minute(m))
            buckets = await pipe.execute()
        for bucket in buckets:
            for raw_field, raw_val in bucket.items():
                f = raw_field.decode()
                provider, model, tenant, b, metric = f.split("|", 4)
                if batch is not None and b != batch:
                    continue
                row = rows.get(f.rsplit("|", 1)[0])
                if row is None:
                    row = rows[f.rsplit("|", 1)[0]] = UsageRow(provider, model, tenant, b)
                _add(row, metric, raw_val.decode())
    return sorted(rows.values(), key=lambda r: (r.provider, r.model, r.tenant, r.batch))


def _add(row: UsageRow, metric: str, val: str) -> None:
    if metric == "cost":
        row.cost_usd += float(val)
        return
    n = int(val)
    if metric == "req":
        row.requests += n
    elif metric == "in":
        row.input_tokens += n
    elif metric == "out":
        row.output_tokens += n
    elif metric == "cached":
        row.cached_tokens += n
    elif metric.startswith("err:"):
        row.errors[metric[4:]] = row.errors.get(metric[4:], 0) + n
    elif metric.startswith("lat:"):
        row.latency_ms[metric[4:]] = row.latency_ms.get(metric[4:], 0) + n


GROUPS = ("provider", "model", "tenant", "batch")


def group_rows(rows: list[UsageRow], by: str) -> list[UsageRow]:
    """Merge rows that agree on the ``by`` dimensions (comma-separated); the others read '*'."""
    keep = [g for g in GROUPS if g in by.split(",")]
    out: dict[tuple[str, ...], UsageRow] = {}
    for r in rows:
        key = tuple(getattr(r, g) for g in keep)
        g = out.get(key)
        if g is None:
            names = {d: (getattr(r, d) if d in keep else "*") for d in GROUPS}
            g = out[key] = UsageRow(**names)
        g.requests += r.requests
        g.input_tokens += r.input_tokens
        g.output_tokens += r.output_tokens
        g.cached_tokens += r.cached_tokens
        g.cost_usd += r.cost_usd
        for k, v in r.errors.items():
            g.errors[k] = g.errors.get(k, 0) + v
        for k, v in r.latency_ms.items():
            g.latency_ms[k] = g.latency_ms.get(k, 0) + v
    return sorted(out.values(), key=lambda r: tuple(getattr(r, g) for g in keep))


def totals(rows: list[UsageRow]) -> dict[str, float]:
    t: dict[str, float] = defaultdict(float)
    for r in rows:
        t["requests"] += r.requests
        t["errors"] += sum(r.errors.values())
        t["input_tokens"] += r.input_tokens
        t["output_tokens"] += r.output_tokens
        t["cached_tokens"] += r.cached_tokens
        t["cost_usd"] += r.cost_usd
    return dict(t)
