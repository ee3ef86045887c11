"""How long a provider asks us to wait, from the most precise source it sent.

In order: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date), the per-limit reset
headers (OpenAI's ``x-ratelimit-reset-*``, Anthropic's ``anthropic-ratelimit-*-reset``), then
the error body (Gemini's RetryInfo, "try again in 1.2s" in the message).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.providers.answer_fields import ParsedError, lower_headers, parse_duration

_RETRY_IN = re.compile(
    r"(?:try again|retry) (?:in|after) ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+|\d+(?:\.\d+)? ?sec(?:ond)?s?)\b",
    re.IGNORECASE,
)


def retry_after_seconds(
    headers: Mapping[str, str] | None, parsed: ParsedError | None = None, *, now: float | None = None
) -> float | None:
    """The provider's requested wait, from the most precise source it sent."""
    h = lower_headers(headers)
    now = time.time() if now is None else now
    for parse in (_retry_after_ms, _retry_after, _openai_reset, _anthropic_reset):
        wait = parse(h, now)
        if wait is not None:
            return round(max(0.0, wait), 3)
    if parsed is not None:
        if parsed.retry_delay is not None:
            return round(max(0.0, parsed.retry_delay), 3)
        m = _RETRY_IN.search(parsed.message)
        if m:  # "Please try again in 1.2s" (OpenAI, Groq), "Please retry after 6 seconds" (Azure)
            raw = m.group(1)
            wait = float(raw.split("sec")[0]) if "sec" in raw else parse_duration(raw)
            if wait is not None:
                return round(wait, 3)
    return None


def _retry_after_ms(h: Mapping[str, str], now: float) -> float | None:
    v = h.get("retry-after-ms")
    try:
        return float(v) / 1000 if v else None
    except ValueError:
        return None


def _retry_after(h: Mapping[str, str], now: float) -> float | None:
    v = h.get("retry-after")
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(v).timestamp() - now
    except (TypeError, ValueError, IndexError):
        return None


def _openai_reset(h: Mapping[str, str], now: float) -> float | None:
    return _pick_reset(
        h, "x-ratelimit-reset-", "x-ratelimit-remaining-", ("requests", "tokens"), parse_duration
    )


def _anthropic_reset(h: Mapping[str, str], now: float) -> float | None:
    def until(v: str) -> float | None:
        try:
            return datetime.fromisoformat(v).timestamp() - now
        except ValueError:
            return None

    kinds = ("requests", "tokens", "input-tokens", "output-tokens")
    return _pick_reset(h, "anthropic-ratelimit-", "anthropic-ratelimit-", kinds, until, suffix=True)


def _pick_reset(
    h: Mapping[str, str],
    reset_prefix: str,
    remaining_prefix: str,
    kinds: tuple[str, ...],
    parse: Any,
    *,
    suffix: bool = False,
) -> float | None:
    """The reset time of the exhausted limit; all of them (the longest wait) if none says it is exhausted."""
    resets: dict[str, float] = {}
    exhausted: list[str] = []
    for kind in kinds:
        reset_key = f"{reset_prefix}{kind}-reset" if suffix else f"{reset_prefix}{kind}"
        remaining_key = f"{remaining_prefix}{kind}-remaining" if suffix else f"{remaining_prefix}{kind}"
        raw = h.get(reset_key)
        value = parse(raw) if raw else None
        if value is None:
            continue
        resets[kind] = value
        if h.get(remaining_key, "").strip() == "0":
            exhausted.append(kind)
    if not resets:
        return None
    return max(resets[k] for k in exhausted) if exhausted else max(resets.values())
