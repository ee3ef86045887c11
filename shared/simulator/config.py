"""The simulator's behaviour configuration: a TOML/JSON file, CLI flags and runtime patches.

A *route* is one endpoint family served by the simulator (``openai``, ``anthropic``,
``gemini``, ``ollama``, ``cohere``, or any extra name with a ``format``, e.g. a second
OpenAI-compatible provider called ``groq``). Every field may be set in ``[defaults]``
(applies to all routes), per route, and per model of a route (``[routes.R.per_model."M"]``);
the most specific setting wins. A per-model entry is its own route for stats and capacity.

Cross-field checks (latency parameters, error rates summing to at most 1) run when the
merged config is compiled (``shared.simulator.behaviour``), so a runtime patch may set one
field at a time.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr

Format = Literal["openai", "anthropic", "gemini", "ollama", "cohere"]
FORMATS: tuple[Format, ...] = ("openai", "anthropic", "gemini", "ollama", "cohere")


class SimConfigError(ValueError):
    """The simulator configuration is invalid; the message says what to fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LatencyConfig(_Model):
    """How long an admitted request takes before its reply.

    ``fixed`` uses ``ms``; ``uniform`` draws from [``min_ms``, ``max_ms``]; ``lognormal``
    is fitted to ``mean_ms`` and ``p99_ms`` (p99 must lie between the mean and ~15x it).
    ``per_output_token_ms`` adds time per generated token, like a decoding model.
    """

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    ms: float = Field(0.0, ge=0)
    min_ms: float = Field(0.0, ge=0)
    max_ms: float = Field(0.0, ge=0)
    mean_ms: float = Field(0.0, ge=0)
    p99_ms: float = Field(0.0, ge=0)
    per_output_token_ms: float = Field(0.0, ge=0)


class ErrorMix(_Model):
    """Probabilities (each request draws once) of an injected failure; they sum to at most 1.

    Keys may also be written as status codes: "429", "500", "503", "529".
    """

    rate_limit: float = Field(0.0, ge=0, le=1, validation_alias=AliasChoices("rate_limit", "429"))
    server_error: float = Field(0.0, ge=0, le=1, validation_alias=AliasChoices("server_error", "500"))
    unavailable: float = Field(0.0, ge=0, le=1, validation_alias=AliasChoices("unavailable", "503"))
    # Anthropic answers 529 overloaded_error; the other formats answer their own 503 "overloaded".
    overloaded: float = Field(0.0, ge=0, le=1, validation_alias=AliasChoices("overloaded", "529"))
    # Held for ``timeout_hold_s`` (far past any client timeout), then 504.
    timeout: float = Field(0.0, ge=0, le=1)
    # 200 with a truncated, unparseable JSON body.
    malformed: float = Field(0.0, ge=0, le=1)


ERROR_KINDS: tuple[str, ...] = tuple(ErrorMix.model_fields)
ERROR_KIND_ALIASES: dict[str, str] = {
    "429": "rate_limit",
    "500": "server_error",
    "503": "unavailable",
    "529": "overloaded",
}


class RouteConfig(_Model):
    """Behaviour of one route (or, under ``per_model``, of one model of a route)."""

    # Wire format; defaults to the route's name for the five built-in routes.
    format: Format | None = None
    # Models this route serves (others get the format's 404); empty = any model.
    models: list[str] = Field(default_factory=list)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    errors: ErrorMix = Field(default_factory=ErrorMix)
    # Hidden concurrency limit: a request arriving while this many are in flight gets a 429.
    capacity: int | None = Field(None, ge=1)
    # Outage windows [start_s, end_s) relative to server start; ``down`` is an outage until cleared.
    # Calls still in flight when an outage begins fail with it.
    outages: list[tuple[float, float]] = Field(default_factory=list)
    down: bool = False
    # "status": the format's 503; "disconnect": the connection is dropped without a response.
    outage_mode: Literal["status", "disconnect"] = "status"
    retry_after_s: float = Field(1.0, ge=0)
    # Send a Retry-After header with 429s (real Gemini sends only RetryInfo in the body).
    retry_after_header: bool = True
    timeout_hold_s: float = Field(3600.0, gt=0)
    # Prompt tokens above this get the format's context-length error.
    context_window: int | None = Field(None, ge=1)
    # Embedding size when the request does not ask for one (None: a per-model table, else 256).
    embedding_dimensions: int | None = Field(None, ge=1, le=8192)
    # If set, requests must carry this key in the format's auth header (else 401-style error).
    api_key: SecretStr | None = None
    per_model: dict[str, RouteConfig] = Field(default_factory=dict)


# Fields a per-model entry may not set: they describe the route (URL, auth), not one model.
ROUTE_ONLY_FIELDS = ("format", "models", "api_key", "per_model")


class SimConfig(_Model):
    """The whole simulator configuration (``sim.toml``)."""

    # Seeds each route's random draws (latency, error mix); None = fresh entropy.
    seed: int | None = None
    defaults: RouteConfig = Field(default_factory=RouteConfig)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` over ``base``; nested dicts merge, everything else (lists included) replaces."""
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_fields(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(exclude_unset=True)


def validate_config(data: Any) -> SimConfig:
    try:
        return SimConfig.model_validate(data)
    except ValueError as e:
        raise SimConfigError(str(e)) from None


def patch_config(cfg: SimConfig, patch: dict[str, Any]) -> SimConfig:
    """``cfg`` with ``patch`` (same shape as the file, any subset of fields) merged in."""
    # Validating the patch alone normalizes aliases ("429" -> rate_limit) before merging.
    normalized = _set_fields(validate_config(patch))
    return validate_config(deep_merge(_set_fields(cfg), normalized))


def route_format(name: str, route: RouteConfig) -> Format:
    if route.format is not None:
        return route.format
    if name in FORMATS:
        return name  # type: ignore[return-value]
    raise SimConfigError(f"route {name!r} needs a 'format' (one of {', '.join(FORMATS)})")


def effective_routes(cfg: SimConfig) -> dict[str, tuple[Format, RouteConfig, dict[str, RouteConfig]]]:
    """Route name -> (format, merged behaviour, per-model merged behaviour).

    The five format routes always exist; configured routes are merged over ``defaults``.
    """
    defaults = _set_fields(cfg.defaults)
    for f in ("format", "per_model"):
        if f in defaults:
            raise SimConfigError(f"[defaults] cannot set {f!r}; set it on a route")
    names = list(FORMATS) + [n for n in cfg.routes if n not in FORMATS]
    out: dict[str, tuple[Format, RouteConfig, dict[str, RouteConfig]]] = {}
    for name in names:
        if "/" in name:
            raise SimConfigError(f"route name {name!r} may not contain '/'")
        own = _set_fields(cfg.routes[name]) if name in cfg.routes else {}
        per_model = own.pop("per_model", {})
        merged_dict = deep_merge(defaults, own)
        merged = RouteConfig.model_validate(merged_dict)
        fmt = route_format(name, merged)
        models: dict[str, RouteConfig] = {}
        for model, override in per_model.items():
            bad = [f for f in ROUTE_ONLY_FIELDS if f in override]
            if bad:
                raise SimConfigError(f"routes.{name}.per_model.{model!r} cannot set {', '.join(bad)}")
            models[model] = RouteConfig.model_validate(deep_merge(merged_dict, override))
        out[name] = (fmt, merged, models)
    return out


def load_config(path: str | Path) -> SimConfig:
    """Read a ``.toml`` (or ``.json``) simulator config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SimConfigError(f"simulator config {p} does not exist") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SimConfigError(f"simulator config {p} is not valid: {e}") from None
    try:
        return validate_config(data)
    except SimConfigError as e:
        raise SimConfigError(f"simulator config {p}: {e}") from None


def public_dump(cfg: SimConfig) -> dict[str, Any]:
    """The config as JSON-ready data, keys masked (SecretStr dumps as '**********')."""
    return cfg.model_dump(mode="json", exclude_unset=True)
