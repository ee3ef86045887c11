"""Configuration: environment variables (pydantic-settings) plus one ``fusebox.toml``.

Environment wins for deployment facts (where Redis is, which config file);
the TOML file describes providers, routes, limits and worker tuning. API keys
are never read from the TOML file itself: a provider names the environment
variable (``api_key_env``) or secret file (``api_key_file``) that holds its key.
"""

from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.keys import Keys


class ConfigError(ValueError):
    """The configuration is invalid; the message says what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerConfig(_Section):
    # arq's defaults (poll_delay 0.5 s, max_jobs 10) cap a worker near 200 jobs/s.
    max_jobs: int = Field(200, ge=1)
    poll_delay: float = Field(0.01, gt=0)
    # The longest a job may run (arq cancels it then); a dead worker's jobs do not wait for it.
    job_timeout: float = Field(300.0, gt=0)
    # Jobs of one worker that may wait in it for a saturated provider (the rest are deferred
    # through arq); bounded so one provider's backlog never takes every slot. Default max_jobs / 4.
    local_waiters: int | None = Field(None, ge=0)
    # Jobs a worker claims beyond those in a provider call: claiming only what can run soon keeps jobs
    # in the queue for other workers and saves the Redis work of jobs turned away by a full provider.
    claim_ahead: int = Field(16, ge=1)
    # Batch lines one tenant may have claimed from its lane and held by a worker (running, or waiting
    # there for a provider; a line deferred back to the queue no longer counts), per unit of its
    # weight. Behind a saturated provider tenants then share its slots at their weights, and one
    # tenant's stuck lines (budget, open breaker) never block others.
    # Raise it if one tenant alone should keep more calls than this in flight.
    lane_window: int = Field(1000, ge=1)
    # Fill workers one at a time: a worker with no jobs takes none while a busier one uses less than this
    # share of a CPU core and has job slots free. Fewer, busier event loops cost less CPU per job (their
    # calls and round trips share wake-ups, and a small provider limit is not split into shares too
    # small to fill). 0: every worker claims alike (worker/fill.py).
    fill_cpu: float = Field(0.5, ge=0, le=1)
    # arq counts every deferral (saturated provider, long Retry-After) as a try.
    max_tries: int = Field(1000, ge=2)
    # A running job's in-progress lease: renewed by its worker's heartbeat every third of it, so a
    # worker killed with -9 gives its jobs back after this long (not after job_timeout).
    lease_seconds: float = Field(10.0, ge=1)
    # SIGTERM/SIGINT: running jobs get this long to finish (a call in flight is not wasted); the rest
    # are re-queued and their leases released at once. A second signal stops at once.
    shutdown_grace_seconds: float = Field(5.0, ge=0)
    # How often (fleet-wide, one worker at a time) batches are checked for lines whose job was lost.
    reconcile_seconds: float = Field(30.0, gt=0)


class SimulatedConfig(_Section):
    """The in-process ``simulated`` provider: deterministic replies, tunable latency and failures."""

    latency_ms: float = Field(0.0, ge=0)
    latency_jitter_ms: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    embedding_dimensions: int = Field(64, ge=1, le=8192)


class BatchConfig(_Section):
    results_ttl_s: int = Field(7 * 24 * 3600, ge=60)  # how long results stay in Redis after a batch ends
    completion_window_s: float | None = Field(None, gt=0)  # unfinished lines past it are expired
    max_line_bytes: int = Field(1_000_000, ge=1024)


class ApiConfig(_Section):
    """The HTTP API (``fusebox api``): upload limits like OpenAI's, how long files live, sync waits."""

    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_file_lines: int = Field(100_000, ge=1)
    file_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    chunk_bytes: int = Field(1024 * 1024, ge=4096)  # Redis list element size for uploaded files
    sync_timeout_s: float = Field(600.0, gt=0)  # how long /v1/chat/completions waits for its job
    # Hosts/CIDRs a tenant's own provider entry (base_url) may point at despite the SSRF guard,
    # e.g. "10.0.0.0/8" for in-cluster vLLM servers.
    provider_allow_hosts: list[str] = Field(default_factory=list)


class BreakerConfig(_Section):
    """Circuit breaker of one provider (or provider+model), in the spirit of resilience4j, tuned for
    LLM APIs: calls are few and slow, so the window is time-based and the minimum is small."""

    failure_rate_threshold: float = Field(0.5, gt=0, le=1)
    slow_call_rate_threshold: float = Field(1.0, gt=0, le=1)
    slow_call_ms: float = Field(60_000.0, gt=0)
    minimum_calls: int = Field(10, ge=1)
    window_seconds: float = Field(60.0, gt=0)
    wait_open_seconds: float = Field(15.0, gt=0)
    wait_open_growth: float = Field(2.0, ge=1)
    wait_open_max_seconds: float = Field(300.0, gt=0)
    wait_open_jitter: float = Field(0.2, ge=0, lt=1)
    half_open_probes: int = Field(2, ge=1)
    probe_lease_seconds: float = Field(60.0, gt=0)
    # A 429 is back-pressure, which adaptive concurrency handles; count it only if asked.
    count_rate_limited_as_failure: bool = False
    # Trip after this many failures in a row, whatever the window holds: a provider that just went
    # hard down is cut off at once even when earlier successes keep its failure rate low.
    consecutive_failures: int = Field(5, ge=1)


class LimitsConfig(_Section):
    """Fleet-wide concurrency leases and adaptive concurrency (AIMD on 429s)."""

    # A worker that dies frees its slots after this long; long calls renew their lease.
    lease_seconds: float = Field(30.0, gt=0)
    adaptive: bool = True
    decrease_factor: float = Field(0.7, gt=0, lt=1)
    increase_step: float = Field(1.0, gt=0)
    success_window: int = Field(10, ge=1)


class ModelLimitsConfig(_Section):
    """A model with its own breaker and limits (an own scope); unset fields inherit the provider's."""

    max_concurrency: int | None = Field(None, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    breaker: BreakerConfig | None = None
    limits: LimitsConfig | None = None


class RetryConfig(_Section):
    max_attempts: int = Field(3, ge=1)
    backoff_base: float = Field(0.05, ge=0)
    backoff_max: float = Field(2.0, ge=0)
    defer_threshold_s: float = Field(2.0, ge=0)  # longer waits re-defer the job via arq
    # A batch line whose candidates all failed transiently waits (deferred, growing backoff) for
    # another round instead of failing, until it has made this many failed provider attempts...
    line_max_attempts: int = Field(30, ge=1)
    # ...or this long has passed since it was submitted (None: only the batch's completion window).
    line_max_seconds: float | None = Field(None, gt=0)


class ProviderConfig(_Section):
    type: str
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    models: list[str] = Field(default_factory=list)
    max_concurrency: int = Field(16, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    timeout: float = Field(120.0, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    # Unset fields of these inherit the file's [breaker] / [limits] sections.
    breaker: BreakerConfig | None = None
    limits: LimitsConfig | None = None
    per_model: dict[str, ModelLimitsConfig] = Field(default_factory=dict)


class RouteConfig(_Section):
    candidates: list[str]
    strategy: Literal["priority", "weighted", "least-busy", "lowest-latency", "lowest-cost"] = "priority"
    weights: list[float] | None = None


class WebhookConfig(_Section):
    """Signed webhooks (shared/webhooks/): secret, SSRF allow-list, timeout, retry schedule."""

    # The signing secret ('whsec_' + base64) comes from the environment or a file, never from this file.
    secret_env: str | None = "FUSEBOX_WEBHOOK_SECRET"
    secret_file: str | None = None
    # Named secrets a webhook may use (enqueue_webhook(secret_name=...)): name -> environment variable.
    secrets: dict[str, str] = Field(default_factory=dict)
    # Hostnames or addresses/CIDRs the SSRF guard lets through: "127.0.0.1", "10.0.0.0/8", "hooks.internal".
    allow_hosts: list[str] = Field(default_factory=list)
    timeout: float = Field(15.0, gt=0)
    # Delay before each attempt, seconds: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; then dead letter.
    schedule: list[float] = Field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1
    )
    jitter: float = Field(0.1, ge=0, le=1)
    max_log: int = Field(50, ge=1)

    def model_post_init(self, _ctx: Any) -> None:
        from shared.ssrf import AllowList

        if any(d < 0 for d in self.schedule):
            raise ValueError("[webhooks] schedule delays must be >= 0")
        AllowList.parse(self.allow_hosts)  # a bad entry fails at load, not at the first delivery


class RedisConfig(_Section):
    """How a submission is acknowledged (README, Operations: Redis settings)."""

    # Return from a submission only once Redis has fsynced it to its AOF (WAITAOF: Redis >= 7.2,
    # Valkey >= 8, appendonly yes), so an acknowledged line survives a Redis crash.
    durable: bool = False
    durable_replicas: int = Field(0, ge=0)  # also wait for this many replicas' AOF
    durable_timeout_ms: int = Field(2000, ge=1)


class FileConfig(_Section):
    """The contents of ``fusebox.toml``."""

    redis: RedisConfig = Field(default_factory=RedisConfig)
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    simulated: SimulatedConfig = Field(default_factory=SimulatedConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    batches: BatchConfig = Field(default_factory=BatchConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    default_model: str | None = None
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)  # USD per 1M tokens


class Settings(BaseSettings):
    """Process settings from the environment."""

    model_config = SettingsConfigDict(env_prefix="FUSEBOX_", extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "FUSEBOX_REDIS_URL"))
    config: Path | None = None
    data_dir: Path = Path(".fusebox")
    namespace: str = "fusebox"
    sentry_dsn: str | None = Field(None, validation_alias=AliasChoices("SENTRY_DSN", "FUSEBOX_SENTRY_DSN"))
    # Redis Sentinel: connect through the sentinels instead of REDIS_URL (see shared/redis_conn.py,
    # which also reads REDIS_PASSWORD / REDIS_SENTINEL_PASSWORD).
    redis_sentinels: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_SENTINELS", "redis_sentinels")
    )
    redis_sentinel_master: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_SENTINEL_MASTER", "redis_sentinel_master")
    )

    def model_post_init(self, _ctx: Any) -> None:
        if self.redis_sentinels or self.redis_sentinel_master:
            # Built even when half set, so connecting says which variable is missing.
            hosts, master = self.redis_sentinels or "", self.redis_sentinel_master or ""
            self.redis_url = f"redis+sentinel://{hosts}/{master}"

    @cached_property
    def file(self) -> FileConfig:
        return load_file_config(self.config)

    def with_file(self, cfg: FileConfig) -> Settings:
        """A copy that uses ``cfg`` instead of reading fusebox.toml (tests, embedding apps)."""
        s = self.model_copy()
        s.__dict__.pop("keys", None)
        s.__dict__["file"] = cfg
        return s

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.namespace)


def load_file_config(path: Path | None) -> FileConfig:
    if path is None:
        default = Path("fusebox.toml")
        if not default.exists():
            return FileConfig()
        path = default
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} (FUSEBOX_CONFIG) does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    try:
        return FileConfig.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"config file {path}: {e}") from None
