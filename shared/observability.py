"""Logging and Sentry setup. Secrets never reach either."""

from __future__ import annotations

import logging
import re
from typing import Any

# Header and field names whose values are credentials.
_SECRET_NAMES = re.compile(r"(authorization|api[-_]?key|x-goog-api-key|secret|token|password|cookie)", re.I)
# Values that look like keys even when they sit in free text.
_SECRET_VALUES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}|AIza[0-9A-Za-z_\-]{20,}|Bearer\s+\S+)"
)
FILTERED = "[Filtered]"


def scrub(obj: Any) -> Any:
    """A copy of ``obj`` with secret-named fields and key-shaped strings replaced."""
    if isinstance(obj, dict):
        return {
            k: FILTERED if isinstance(k, str) and _SECRET_NAMES.search(k) else scrub(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(scrub(v) for v in obj)
    if isinstance(obj, str):
        return _SECRET_VALUES.sub(FILTERED, obj)
    return obj


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    return scrub(event)  # type: ignore[no-any-return]


def init_sentry(dsn: str | None, component: str) -> bool:
    """Start Sentry if a DSN is configured; every event is scrubbed of secrets before it leaves."""
    if not dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        send_default_pii=False,
        before_send=_before_send,  # type: ignore[arg-type]
        before_breadcrumb=lambda crumb, hint: scrub(crumb),
        max_request_body_size="never",
        include_local_variables=False,  # locals can hold API keys
    )
    sentry_sdk.set_tag("component", component)
    return True


class ScrubbingFilter(logging.Filter):
    """Redacts key-shaped strings from log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(str(record.msg))
        if record.args:
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)  # type: ignore[union-attr]
        return True


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for h in logging.getLogger().handlers:
        h.addFilter(ScrubbingFilter())
