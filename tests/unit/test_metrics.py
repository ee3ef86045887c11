"""Prometheus exposition: names follow conventions, values come from the state given, labels are bounded."""

from __future__ import annotations

from typing import Any

import fakeredis
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.keys import Keys
from shared.metrics import FleetState, QueueState, read_queue, render_fleet, workers_wanted


def _scope(scope: str, **kw: Any) -> dict[str, Any]:
    base = {
        "scope": scope,
        "provider": scope.split("/")[0],
        "model": scope.split("/")[1] if "/" in scope else None,
        "state": "closed",
        "now": 1000.0,
        "in_flight": 0,
        "max_concurrency": 10,
        "effective_limit": 10,
        "failure_rate": 0.0,
        "calls": 0,
        "rpm_used": None,
        "tpm_used": None,
        "last_transition": None,
    }
    base.update(kw)
    return base


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_fleet_metrics_carry_the_snapshot_values() -> None:
    state = FleetState(
        queue=QueueState(due=120, scheduled=7, oldest_due_age_s=3.5),
        scopes=[
            _scope(
                "openai",
                in_flight=8,
                effective_limit=8,
                max_concurrency=16,
                calls=40,
                failure_rate=0.25,
                rpm_used=55.0,
            ),
            _scope("anthropic", state="open", last_transition={"at": 990.0}),
        ],
        worker_slots=40,
        dead_webhooks=2,
    )
    s = _samples(render_fleet(state))
    assert s[("fusebox_queue_jobs", (("state", "due"),))] == 120
    assert s[("fusebox_queue_jobs", (("state", "scheduled"),))] == 7
    assert s[("fusebox_queue_oldest_job_age_seconds", ())] == 3.5
    assert s[("fusebox_inflight_requests", (("scope", "openai"),))] == 8
    assert s[("fusebox_concurrency_limit", (("scope", "openai"),))] == 16
    assert s[("fusebox_adaptive_limit", (("scope", "openai"),))] == 8
    assert s[("fusebox_breaker_failure_ratio", (("scope", "openai"),))] == 0.25
    assert s[("fusebox_rate_limit_requests_per_minute_used", (("scope", "openai"),))] == 55
    assert s[("fusebox_breaker_state", (("scope", "anthropic"), ("state", "open")))] == 1
    assert s[("fusebox_breaker_state", (("scope", "anthropic"), ("state", "closed")))] == 0
    assert s[("fusebox_breaker_open_seconds", (("scope", "anthropic"),))] == 10
    assert s[("fusebox_breaker_open_seconds", (("scope", "openai"),))] == 0
    assert s[("fusebox_webhook_dead_letters", ())] == 2
    assert s[("fusebox_redis_up", ())] == 1


def test_workers_wanted_counts_only_work_with_free_provider_capacity() -> None:
    q = QueueState(due=1000, scheduled=0, oldest_due_age_s=1)
    # one provider, limit 40, all 40 in flight: more workers would only wait on it
    busy = FleetState(q, [_scope("a", in_flight=40, effective_limit=40)], worker_slots=40)
    assert workers_wanted(busy, running=40) == 1
    # two providers with 80 free slots between them: the backlog can use 2 more workers' worth
    free = FleetState(q, [_scope("a", effective_limit=40), _scope("b", effective_limit=40)], worker_slots=40)
    assert workers_wanted(free, running=0) == 2
    # an open breaker's capacity does not count
    half = FleetState(
        q, [_scope("a", effective_limit=40), _scope("b", state="open", effective_limit=40)], worker_slots=40
    )
    assert workers_wanted(half, running=0) == 1
    # nothing queued, nothing running: scale to zero
    idle = FleetState(QueueState(0, 0, 0), [_scope("a")], worker_slots=40)
    assert workers_wanted(idle, running=0) == 0
    # an unlimited provider (in-process simulated): bounded by the backlog alone
    sim = FleetState(q, [_scope("simulated", effective_limit=1_000_000)], worker_slots=200)
    assert workers_wanted(sim, running=0) == 5
    # a per-model scope is not counted on top of its provider's own scope
    nested = FleetState(
        q, [_scope("a", effective_limit=40), _scope("a/m1", effective_limit=40)], worker_slots=40
    )
    assert workers_wanted(nested, running=0) == 1


async def test_read_queue_splits_due_and_scheduled() -> None:
    r = fakeredis.FakeAsyncRedis()
    now = 1_000_000.0
    await r.zadd("q", {"a": (now - 5) * 1000, "b": (now - 1) * 1000, "c": (now + 30) * 1000})
    q = await read_queue(r, "q", now=now)
    assert (q.due, q.scheduled) == (2, 1)
    assert q.oldest_due_age_s == 5.0
    empty = await read_queue(r, "nothing", now=now)
    assert (empty.due, empty.scheduled, empty.oldest_due_age_s) == (0, 0, 0.0)


async def test_read_queue_counts_batch_lines_waiting_in_lanes_as_due() -> None:
    r = fakeredis.FakeAsyncRedis()
    k = Keys("t")
    now = 1_000_000.0
    await r.zadd(k.queue, {"a": (now - 5) * 1000, "c": (now + 30) * 1000})
    await r.zadd(k.lane("ta"), {"x": (now - 60) * 1000, "y": now * 1000})
    await r.zadd(k.lane(None), {"z": (now - 1) * 1000})
    await r.sadd(k.lanes, "ta", "-", "gone")  # an emptied lane stays in the set until a claim drops it
    q = await read_queue(r, k.queue, now=now, keys=k)
    assert (q.due, q.scheduled, q.lanes) == (4, 1, {"-": 1, "ta": 2})
    assert q.oldest_due_age_s == 60.0  # the oldest line waiting in a lane
    text = render_fleet(FleetState(q, [], worker_slots=10)).decode()
    assert 'fusebox_lane_jobs{tenant="ta"} 2.0' in text and 'fusebox_queue_jobs{state="due"} 4.0' in text


def test_process_metrics_follow_prometheus_conventions() -> None:
    metrics.record_call("openai", "gpt-4o-mini", 200, None, 0.12)
    metrics.record_call("openai", "gpt-4o-mini", 503, "transient", 1.5)
    metrics.record_call("openai", "gpt-4o-mini", None, "transient", 30.0)
    metrics.record_usage("openai", "gpt-4o-mini", 100, 20, 0, 0.0005)
    s = _samples(metrics.render_process())
    ok = (
        "fusebox_provider_requests_total",
        (("error_class", ""), ("model", "gpt-4o-mini"), ("provider", "openai"), ("status_class", "2xx")),
    )
    assert s[ok] >= 1
    bad = (
        "fusebox_provider_requests_total",
        (
            ("error_class", "transient"),
            ("model", "gpt-4o-mini"),
            ("provider", "openai"),
            ("status_class", "5xx"),
        ),
    )
    assert s[bad] >= 1
    none = (
        "fusebox_provider_requests_total",
        (
            ("error_class", "transient"),
            ("model", "gpt-4o-mini"),
            ("provider", "openai"),
            ("status_class", "none"),
        ),
    )
    assert s[none] >= 1
    assert (
        s[("fusebox_tokens_total", (("model", "gpt-4o-mini"), ("provider", "openai"), ("type", "prompt")))]
        >= 100
    )
    assert s[("fusebox_cost_usd_total", (("model", "gpt-4o-mini"), ("provider", "openai")))] > 0
    count = s[
        (
            "fusebox_provider_request_duration_seconds_count",
            (("model", "gpt-4o-mini"), ("provider", "openai")),
        )
    ]
    assert count >= 3
    for fam in text_string_to_metric_families(metrics.render_process().decode()):
        assert fam.name.startswith("fusebox_")
        for sample in fam.samples:
            assert not {"job_id", "batch_id", "id", "custom_id"} & set(sample.labels)
