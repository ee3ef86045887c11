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
    job_timeout: float = Field(600.0, gt=0)
    max_tries: int = Field(50, ge=1)


class SimulatedConfig(_Section):
    """The in-process ``simulated`` provider: deterministic replies, tunable latency and failures."""

    latency_ms: float = Field(0.0, ge=0)
    latency_jitter_ms: float = Field(0.0, ge=0)
    failure_rate: float = Field(0.0, ge=0, le=1)
    embedding_dimensions: int = Field(64, ge=1, le=8192)


class RetryConfig(_Section):
    max_attempts: int = Field(3, ge=1)
    backoff_base: float = Field(0.05, ge=0)
    backoff_max: float = Field(2.0, ge=0)


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


class RouteConfig(_Section):
    candidates: list[str]
    strategy: Literal["priority", "weighted", "least-busy", "lowest-latency", "lowest-cost"] = "priority"
    weights: list[float] | None = None


class FileConfig(_Section):
    """The contents of ``fusebox.toml``."""

    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    simulated: SimulatedConfig = Field(default_factory=SimulatedConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    default_model: str | None = None


class Settings(BaseSettings):
    """Process settings from the environment."""

    model_config = SettingsConfigDict(env_prefix="FUSEBOX_", extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "FUSEBOX_REDIS_URL"))
    config: Path | None = None
    data_dir: Path = Path(".fusebox")
    namespace: str = "fusebox"
    sentry_dsn: str | None = Field(None, validation_alias=AliasChoices("SENTRY_DSN", "FUSEBOX_SENTRY_DSN"))

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
