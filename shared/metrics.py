"""Prometheus metrics: per-process counters (workers, API) and fleet gauges read from Redis.

Two kinds, kept apart on purpose:
- process metrics (``REGISTRY``): what this process did (jobs, provider calls, tokens, cost, retries,
  webhook deliveries). Counters only grow; Prometheus sums them over the fleet.
- fleet metrics (``render_fleet``): the shared state in Redis (queue depth, breaker state, in-flight vs
  limit, rpm/tpm use), read at scrape time by the API so a hundred workers do not each report it.

Label sets are bounded: provider, model, scope, outcome and error class, never job or batch ids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.keys import Keys

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "forced_closed", "disabled")
# Provider call latencies run from tens of milliseconds to minutes (long generations).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Counter(
    "fusebox_jobs",
    "Jobs that ended in this process, by outcome (succeeded, failed).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
DEFERRALS = Counter(
    "fusebox_job_deferrals",
    "Jobs handed back to the queue to run later (saturated or open providers, long waits).",
    ["reason"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "fusebox_provider_retries",
    "Provider calls repeated after a retryable failure.",
    ["provider"],
    registry=REGISTRY,
)
REQUESTS = Counter(
    "fusebox_provider_requests",
    "Provider calls by status class (2xx, 4xx, 5xx, none) and error class ('' when ok).",
    ["provider", "model", "status_class", "error_class"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "fusebox_provider_request_duration_seconds",
    "Provider call latency.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "fusebox_tokens",
    "Tokens used by successful calls (prompt, completion, cached).",
    ["provider", "model", "type"],
    registry=REGISTRY,
)
COST = Counter(
    "fusebox_cost_usd",
    "Estimated spend in US dollars.",
    ["provider", "model"],
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "fusebox_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, dead, disabled).",
    ["outcome"],
    registry=REGISTRY,
)


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: prometheus_client validates and locks on every ``labels`` call,
    a few per job on the worker's hot path. Label sets are bounded (see above), so is the cache."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def record_call(
    provider: str, model: str, status: int | None, error_class: str | None, seconds: float
) -> None:
    _child(REQUESTS, provider, model, status_class(status), error_class or "").inc()
    _child(LATENCY, provider, model).observe(seconds)


def record_usage(provider: str, model: str, prompt: int, completion: int, cached: int, cost: float) -> None:
    for kind, n in (("prompt", prompt), ("completion", completion), ("cached", cached)):
        if n:
            _child(TOKENS, provider, model, kind).inc(n)
    if cost > 0:
        _child(COST, provider, model).inc(cost)


# Why a job was handed back to the queue: the gate's refusal reasons (a bounded set), else a wait.
_DEFER_REASONS = frozenset({"open", "forced_open", "saturated", "rate_limited", "half_open_busy"})


def record_deferral(reasons: Sequence[str]) -> None:
    """``reasons`` as the executor words them ('scope: reason' or free text); label by the gate's reason."""
    found = {r.rsplit(": ", 1)[-1] for r in reasons}
    label = next((r for r in sorted(found) if r in _DEFER_REASONS), "retry_wait")
    DEFERRALS.labels(label).inc()


def record_result(result: Any, kind: str) -> None:
    """A job's end: its outcome, and the tokens and cost of the call that answered it."""
    _child(JOBS, kind, "succeeded" if result.ok else "failed").inc()
    u = result.usage
    if u is not None and result.provider:
        record_usage(
            result.provider,
            result.model or "",
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            result.cost_usd,
        )


def render_process() -> bytes:
    return generate_latest(REGISTRY)


# -- fleet state ----------------------------------------------------------------


@dataclass(slots=True)
class QueueState:
    due: int  # jobs whose run-at has come (waiting for a worker), batch lines in lanes included
    scheduled: int  # deferred jobs (run-at in the future) and running ones (parked, claim.lua)
    oldest_due_age_s: float  # how long the oldest due job has waited (0 when none)
    lanes: dict[str, int] = field(default_factory=dict)  # batch lines waiting in each tenant's lane


@dataclass(slots=True)
class FleetState:
    queue: QueueState
    scopes: list[dict[str, Any]]  # Gate.snapshot() dicts
    worker_slots: int  # max_jobs of one worker: how many jobs one more worker can run at once
    redis_up: bool = True
    dead_webhooks: int = 0
    extra: dict[str, float] = field(default_factory=dict)


async def read_queue(
    redis: Any, queue_key: str, now: float | None = None, keys: Keys | None = None
) -> QueueState:
    """Depth and age of arq's queue (a sorted set scored by run-at ms) and, with ``keys``, of the
    tenants' batch lanes: one round trip, two while lanes hold lines."""
    now_ms = int((now if now is not None else time.time()) * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue_key, "-inf", now_ms)
        pipe.zcount(queue_key, f"({now_ms}", "+inf")
        pipe.zrange(queue_key, 0, 0, withscores=True)
        if keys is not None:
            pipe.smembers(keys.lanes)
        due, scheduled, head, *rest = await pipe.execute()
    heads = [float(head[0][1])] if due and head else []
    lanes: dict[str, int] = {}
    names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in (rest[0] if rest else ()))
    if names and keys is not None:
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(keys.lane(name))
                pipe.zrange(keys.lane(name), 0, 0, withscores=True)
            got = await pipe.execute()
        for i, name in enumerate(names):
            n, lane_head = int(got[2 * i]), got[2 * i + 1]
            if n:
                lanes[name] = n
                heads += [float(lane_head[0][1])] if lane_head else []
    age = max(0.0, (now_ms - min(heads)) / 1000) if heads else 0.0
    return QueueState(int(due) + sum(lanes.values()), int(scheduled), age, lanes)


def free_capacity(scopes: Sequence[dict[str, Any]]) -> int:
    """Calls the fleet could start right now: Σ over provider scopes that admit calls of
    (effective limit - in flight). Per-model scopes are counted through their provider when the
    provider has its own scope too, so a provider is never counted twice."""
    free = 0
    for s in scopes:
        if s.get("model") and any(o.get("scope") == s.get("provider") for o in scopes):
            continue
        if s["state"] in ("open", "forced_open"):
            continue
        limit = s["effective_limit"]
        if limit >= 1_000_000:  # an unlimited (in-process) provider: bounded by the workers alone
            return -1
        free += max(0, limit - s["in_flight"])
    return free


def workers_wanted(state: FleetState, running: int) -> int:
    """How many workers can usefully run now (the autoscaling target).

    useful_jobs = min(due jobs + jobs in flight, in flight + free provider capacity), the work that
    has somewhere to go: jobs bound to saturated or open providers would only wait in a worker.
    wanted = ceil(useful_jobs / worker_slots), at least 1 while anything is queued or running.
    """
    in_flight = sum(
        s["in_flight"]
        for s in state.scopes
        if not (s.get("model") and any(o.get("scope") == s.get("provider") for o in state.scopes))
    )
    free = free_capacity(state.scopes)
    work = state.queue.due + max(in_flight, running)
    useful = work if free < 0 else min(work, max(in_flight, running) + free)
    if useful <= 0:
        return 0
    return max(1, math.ceil(useful / max(1, state.worker_slots)))


class _FleetCollector(Collector):
    def __init__(self, state: FleetState, running: int) -> None:
        self.state = state
        self.running = running

    def collect(self) -> Iterable[GaugeMetricFamily]:
        st = self.state
        yield _gauge("fusebox_redis_up", "1 when Redis answered this scrape.", 1 if st.redis_up else 0)
        q = st.queue
        depth = GaugeMetricFamily("fusebox_queue_jobs", "Jobs in the queue.", labels=["state"])
        depth.add_metric(["due"], q.due)
        depth.add_metric(["scheduled"], q.scheduled)
        yield depth
        lanes = GaugeMetricFamily(
            "fusebox_lane_jobs", "Batch lines waiting in a tenant's lane (part of due).", labels=["tenant"]
        )
        for tenant, n in q.lanes.items():
            lanes.add_metric([tenant], n)
        yield lanes
        yield _gauge(
            "fusebox_queue_oldest_job_age_seconds",
            "How long the oldest due job has waited for a worker.",
            q.oldest_due_age_s,
        )
        yield _gauge(
            "fusebox_workers_wanted",
            "Workers that can usefully run now (queued work with free provider capacity).",
            workers_wanted(st, self.running),
        )
        yield _gauge("fusebox_webhook_dead_letters", "Webhooks given up on.", st.dead_webhooks)
        families = {
            "state": GaugeMetricFamily(
                "fusebox_breaker_state", "1 for the breaker's current state.", labels=["scope", "state"]
            ),
            "in_flight": GaugeMetricFamily(
                "fusebox_inflight_requests", "Provider calls in flight (leases held).", labels=["scope"]
            ),
            "max_concurrency": GaugeMetricFamily(
                "fusebox_concurrency_limit", "Configured concurrency limit.", labels=["scope"]
            ),
            "effective_limit": GaugeMetricFamily(
                "fusebox_adaptive_limit", "Effective (adaptive) concurrency limit.", labels=["scope"]
            ),
            "failure_rate": GaugeMetricFamily(
                "fusebox_breaker_failure_ratio", "Failure ratio in the breaker's window.", labels=["scope"]
            ),
            "calls": GaugeMetricFamily(
                "fusebox_breaker_window_calls", "Calls in the breaker's window.", labels=["scope"]
            ),
            "rpm_used": GaugeMetricFamily(
                "fusebox_rate_limit_requests_per_minute_used",
                "Requests reserved in the last minute.",
                labels=["scope"],
            ),
            "tpm_used": GaugeMetricFamily(
                "fusebox_rate_limit_tokens_per_minute_used",
                "Tokens reserved in the last minute.",
                labels=["scope"],
            ),
            "open_for": GaugeMetricFamily(
                "fusebox_breaker_open_seconds",
                "How long the breaker has been open (0 when not).",
                labels=["scope"],
            ),
        }
        for s in st.scopes:
            scope = s["scope"]
            for name in BREAKER_STATES:
                families["state"].add_metric([scope, name], 1 if s["state"] == name else 0)
            for k in ("in_flight", "max_concurrency", "effective_limit", "failure_rate", "calls"):
                families[k].add_metric([scope], float(s[k]))
            for k in ("rpm_used", "tpm_used"):
                if s.get(k) is not None:
                    families[k].add_metric([scope], float(s[k]))
            last = s.get("last_transition") or {}
            open_for = 0.0
            if s["state"] in ("open", "forced_open") and last.get("at"):
                open_for = max(0.0, s["now"] - last["at"])
            families["open_for"].add_metric([scope], open_for)
        yield from families.values()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def render_fleet(state: FleetState, running: int = 0) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_FleetCollector(state, running))
    return generate_latest(reg)
