"""Every Redis key Fusebox reads or writes, in one place.

All Fusebox keys live under one namespace (``FUSEBOX_NAMESPACE``, default
``fusebox``) so several deployments or test runs can share a server. arq's
own per-job keys are fixed by arq and listed here for completeness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

ARQ_JOB = job_key_prefix
ARQ_IN_PROGRESS = in_progress_key_prefix
ARQ_RESULT = result_key_prefix
ARQ_RETRY = retry_key_prefix
ARQ_ABORT_JOBS = abort_jobs_ss


@dataclass(frozen=True, slots=True)
class Keys:
    ns: str = "fusebox"

    # -- queue -----------------------------------------------------------
    @property
    def queue(self) -> str:
        """The arq queue (sorted set of job ids scored by run-at ms)."""
        return f"{self.ns}:queue"

    @property
    def wake(self) -> str:
        """List of wake-up tokens: every enqueue pushes a few (at most WAKE_TOKENS), an idle worker BLPOPs
        one and polls the queue at once (idle, it may sleep up to half a second between polls)."""
        return f"{self.ns}:wake"

    @property
    def fleet_loads(self) -> str:
        """Hash: worker id -> "jobs:room:ms", its load, whether it can take more (1/0), when noted. Claims
        read it (claim.lua) so the fleet fills one worker at a time."""
        return f"{self.ns}:fleet:loads"

    # -- batch lanes: per-tenant queues of batch lines, claimed by weighted round robin ---------
    @property
    def lane_prefix(self) -> str:
        """Prefix of the lane keys (claim.lua builds ``lane_prefix .. tenant`` for the lanes it picks)."""
        return f"{self.ns}:lane:"

    def lane(self, tenant: str | None) -> str:
        """Sorted set of a tenant's queued batch lines (arq job ids scored by enqueue ms); claim.lua
        moves a line into the arq queue, with its in-progress lease, when the line's turn comes."""
        return f"{self.lane_prefix}{lane_name(tenant)}"

    def lane_out(self, tenant: str | None) -> str:
        """Sorted set: a tenant's lines claimed from its lane and maybe still unfinished (id -> claim ms);
        entries no longer in the arq queue are pruned by claim.lua. Bounds the lines a tenant has out."""
        return f"{self.lane(tenant)}{LANE_OUT_SUFFIX}"

    @property
    def lanes(self) -> str:
        """Set of tenants (lane names) whose lane may hold lines."""
        return f"{self.ns}:lanes"

    @property
    def lane_weights(self) -> str:
        """Hash: tenant -> its weight (1..1000) in the round robin between lanes; missing = 1."""
        return f"{self.ns}:lanes:weights"

    @property
    def lane_turns(self) -> str:
        """Hash: lane -> its current smooth weighted round robin credit (shared by every worker)."""
        return f"{self.ns}:lanes:turns"

    @property
    def durable_mark(self) -> str:
        """String written just before WAITAOF, so the wait covers every earlier write (durable mode)."""
        return f"{self.ns}:durable"

    # -- single jobs -----------------------------------------------------
    def result(self, job_id: str) -> str:
        """Stored JobResult (msgpack) of a job that is not part of a batch."""
        return f"{self.ns}:result:{job_id}"

    def job_notify(self, job_id: str) -> str:
        """List complete.lua pushes to when a single job's result is written; an API waiter BLPOPs it."""
        return f"{self.ns}:result:{job_id}:notify"

    def job_owner(self, job_id: str) -> str:
        """String: the tenant that submitted a single job through the HTTP API (TTL: results TTL)."""
        return f"{self.ns}:job:{job_id}:tenant"

    # -- HTTP API: tenants, keys, files ------------------------------------
    @property
    def api_keys(self) -> str:
        """Hash: sha256(api key) hex -> JSON {tenant, admin, created_at, prefix}; keys are never stored."""
        return f"{self.ns}:apikeys"

    def tenant_files(self, tenant: str) -> str:
        """Sorted set of a tenant's uploaded file ids scored by creation time."""
        return f"{self.ns}:tenant:{tenant}:files"

    def tenant_batches(self, tenant: str) -> str:
        """Sorted set of the batch ids a tenant created through the HTTP API, scored by creation time."""
        return f"{self.ns}:tenant:{tenant}:batches"

    def tenant_message_batches(self, tenant: str) -> str:
        """Sorted set of the Anthropic message batch ids a tenant created, scored by creation time."""
        return f"{self.ns}:tenant:{tenant}:message_batches"

    def file(self, file_id: str) -> str:
        """Hash: an uploaded file's tenant, filename, purpose, bytes, lines, created_at, expires_at."""
        return f"{self.ns}:file:{file_id}"

    def file_chunks(self, file_id: str) -> str:
        """List of an uploaded file's content in order, in chunks of about 1 MB (split anywhere)."""
        return f"{self.ns}:file:{file_id}:chunks"

    def tenant_settings(self, tenant: str) -> str:
        """Hash: a tenant's settings (e.g. allow_fleet_keys -> "1"/"0"); unset fields take defaults."""
        return f"{self.ns}:tenant:{tenant}:settings"

    # -- tenants' own provider keys (BYOK) and the audit trail ------------
    def provider_keys(self, tenant: str) -> str:
        """Hash: provider -> JSON record of the tenant's AES-GCM encrypted key (never plaintext)."""
        return f"{self.ns}:tenant:{tenant}:provider_keys"

    @property
    def provider_key_tenants(self) -> str:
        """Set of tenants that have stored provider keys (master-key rotation and startup checks)."""
        return f"{self.ns}:provider_keys:tenants"

    @property
    def audit(self) -> str:
        """Append-only stream (capped ~100k) of admin actions: actor, at, action, target, details."""
        return f"{self.ns}:audit"

    # -- spend caps ----------------------------------------------------------
    def spend_tenant(self, tenant: str, day: str) -> str:
        """String (float USD): a tenant's spend on ``day`` (UTC, YYYYMMDD), reservations included."""
        return f"{self.ns}:spend:tenant:{tenant}:{day}"

    def spend_batch(self, batch_id: str) -> str:
        """String (float USD): what a batch's calls cost so far, reservations included."""
        return f"{self.ns}:spend:batch:{batch_id}"

    def batch_paused(self, batch_id: str) -> str:
        """String with a short TTL: why a batch's lines are waiting (its budget), renewed while they are."""
        return f"{self.ns}:batch:{batch_id}:paused"

    # -- webhooks --------------------------------------------------------
    def webhook(self, webhook_id: str) -> str:
        """Hash: one webhook's delivery (msgpack), url, type, state, attempts, redeliveries, timestamps."""
        return f"{self.ns}:webhook:{webhook_id}"

    def webhook_log(self, webhook_id: str) -> str:
        """List (capped) of msgpack DeliveryAttempt records, oldest first."""
        return f"{self.ns}:webhook:{webhook_id}:log"

    def webhook_job(self, webhook_id: str, redelivery: int, attempt: int) -> str:
        """arq job id of one delivery attempt (unique per attempt, so a re-run never enqueues twice)."""
        return f"{self.ns}:webhook:{webhook_id}:{redelivery}:{attempt}"

    @property
    def webhooks_dead(self) -> str:
        """Sorted set of dead-lettered webhook ids scored by time."""
        return f"{self.ns}:webhooks:dead"

    @property
    def webhooks_disabled(self) -> str:
        """Hash: endpoint URL -> why and when it was disabled (HTTP 410 Gone)."""
        return f"{self.ns}:webhooks:disabled"

    # -- batches ---------------------------------------------------------
    @property
    def batches(self) -> str:
        """Sorted set of batch ids scored by creation time."""
        return f"{self.ns}:batches"

    @property
    def batch_expiry(self) -> str:
        """Sorted set of unfinished batch ids scored by the end of their completion window."""
        return f"{self.ns}:batches:expiry"

    def batch(self, batch_id: str) -> str:
        """Hash: status, counters (total, completed, failed), timestamps, metadata."""
        return f"{self.ns}:batch:{batch_id}"

    def batch_results(self, batch_id: str) -> str:
        """Hash: input index (0-based, blank lines skipped) -> JobResult msgpack."""
        return f"{self.ns}:batch:{batch_id}:results"

    def batch_submitter(self, batch_id: str) -> str:
        """String with a short TTL, renewed while an API process validates and enqueues the batch's file;
        a batch still 'validating' without it lost its submitter, and the next reader resumes it."""
        return f"{self.ns}:batch:{batch_id}:submitter"

    def batch_ids(self, batch_id: str) -> str:
        """Hash: custom_id -> input index; makes (batch, custom_id) idempotent across re-submissions."""
        return f"{self.ns}:batch:{batch_id}:ids"

    def batch_specs(self, batch_id: str) -> str:
        """Hash: custom_id -> the line's arq job payload, kept until its result is seen, so a line whose
        job was lost (Redis lost writes, a job deleted without a result) can be queued again."""
        return f"{self.ns}:batch:{batch_id}:specs"

    def batch_requeued(self, batch_id: str) -> str:
        """Hash: custom_id -> how often reconciliation queued the line again (bounded)."""
        return f"{self.ns}:batch:{batch_id}:requeued"

    @property
    def batches_active(self) -> str:
        """Set of batch ids that may still have lines to run (reconciliation checks these)."""
        return f"{self.ns}:batches:active"

    @property
    def reconcile_lock(self) -> str:
        """String: the worker doing the current reconciliation pass (expires after one period)."""
        return f"{self.ns}:reconcile:lock"

    def batch_done(self, batch_id: str) -> str:
        """List of input indexes in completion order (iterate results as they complete)."""
        return f"{self.ns}:batch:{batch_id}:done"

    def batch_retry(self, batch_id: str) -> str:
        """Hash: input index -> 1 for failed lines a ``fusebox retry`` is about to run again."""
        return f"{self.ns}:batch:{batch_id}:retry"

    def batch_done_scratch(self, batch_id: str) -> str:
        """List: the done list being rebuilt without retried lines (swapped in by RENAME)."""
        return f"{self.ns}:batch:{batch_id}:done:scratch"

    def usage_minute(self, minute: int) -> str:
        """One minute's usage counters (unix time // 60): 'provider|model|tenant|batch|metric' -> n."""
        return f"{self.ns}:usage:{minute}"

    # -- resilience gate (breaker, leases, rate limits) -------------------
    # A scope is a provider, or "provider/model" for a model with its own [per_model] limits. A
    # scope's keys share the hash tag {scope}; the events stream is one for all scopes.
    def gate_state(self, scope: str) -> str:
        """Hash: breaker state + generation, open-until, trips, probe tallies, adaptive limit, GCRA tats."""
        return f"{self.ns}:gate:{{{scope}}}:state"

    def gate_window(self, scope: str) -> str:
        """Hash: the breaker's sliding window (per-bucket and total calls, failures, slow calls)."""
        return f"{self.ns}:gate:{{{scope}}}:window"

    def gate_leases(self, scope: str) -> str:
        """Sorted set: concurrency lease id -> expiry (Redis server time, ms)."""
        return f"{self.ns}:gate:{{{scope}}}:leases"

    def gate_waiting(self, scope: str) -> str:
        """Sorted set: deferred job id -> when it is told to come back (server ms); a virtual line."""
        return f"{self.ns}:gate:{{{scope}}}:waiting"

    def gate_wanting(self, scope: str) -> str:
        """Hash: gate (worker) prefix -> when its last admission here was refused as saturated (server ms):
        a worker with no slot yet still counts in the others' share (worker/calls.py)."""
        return f"{self.ns}:gate:{{{scope}}}:wanting"

    def gate_probes(self, scope: str) -> str:
        """Sorted set: half-open probe lease id -> expiry (Redis server time, ms)."""
        return f"{self.ns}:gate:{{{scope}}}:probes"

    @property
    def breaker_events(self) -> str:
        """Capped stream of breaker transitions: scope, from, to, reason, gen, at_ms, window figures."""
        return f"{self.ns}:breaker:events"

    # -- fleet configuration -------------------------------------------------
    @property
    def routing_table(self) -> str:
        """String (JSON): the fleet's providers, models, routes and default model, published by workers."""
        return f"{self.ns}:routing"


WAKE_TOKENS = 16  # the wake-up list's bound (enqueue.lua keeps it too)


def wake_workers(pipe: Any, keys: Keys, n: int = 1) -> None:
    """Queue ``n`` wake-up tokens on ``pipe`` (a pipeline): idle workers take the jobs just enqueued now."""
    pipe.lpush(keys.wake, *([1] * min(n, WAKE_TOKENS)))
    pipe.ltrim(keys.wake, 0, WAKE_TOKENS - 1)


DEFAULT_LANE = "-"  # the lane of batch lines without a tenant (tenant names start with a letter/digit)
LANE_OUT_SUFFIX = ":out"


def lane_name(tenant: str | None) -> str:
    return tenant or DEFAULT_LANE


def job_id_for(batch_id: str, custom_id: str) -> str:
    """Deterministic arq job id: re-submitting a batch line never creates a second job."""
    return f"{batch_id}:{custom_id}"
