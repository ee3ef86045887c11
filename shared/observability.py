"""Logging and Sentry setup. Secrets never reach either."""

from __future__ import annotations

import logging
from typing import Any

from shared.redact import SECRET_NAME, redact

FILTERED = "[Filtered]"


def scrub(obj: Any) -> Any:
    """A copy of ``obj`` with secret-named fields, every known secret and key-shaped strings replaced
    (shared/redact.py: the same rules as error messages, nothing cut)."""
    if isinstance(obj, dict):
        return {
            k: FILTERED if isinstance(k, str) and SECRET_NAME.search(k) else scrub(v) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(scrub(v) for v in obj)
    if isinstance(obj, str):
        return redact(obj, limit=None, mask=FILTERED)
    if isinstance(obj, bytes):
        return redact(obj.decode("utf-8", "replace"), limit=None, mask=FILTERED)
    return obj


def _before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    return scrub(event)  # type: ignore[no-any-return]


def init_sentry(dsn: str | None, component: str, *, transport: Any = None) -> bool:
    """Start Sentry if a DSN is configured; every event is scrubbed of secrets before it leaves.
    ``transport`` replaces the network sender (tests capture events in memory)."""
    if not dsn:
        return False
    import sentry_sdk

    extra: dict[str, Any] = {"transport": transport} if transport is not None else {}
    if component == "worker":
        # arq's integration names each job's transaction and tags its function and try
        from sentry_sdk.integrations.arq import ArqIntegration

        extra["integrations"] = [ArqIntegration()]
    sentry_sdk.init(
        dsn=dsn,
        **extra,
        send_default_pii=False,
        before_send=_before_send,  # type: ignore[arg-type]
        before_breadcrumb=lambda crumb, hint: scrub(crumb),
        max_request_body_size="never",
        include_local_variables=False,  # locals can hold API keys
    )
    sentry_sdk.set_tag("component", component)
    return True


class ScrubbingFilter(logging.Filter):
    """Redacts secrets from log records: the formatted message (any argument's str() can hold a key,
    an exception's above all) and the traceback text."""

    _fmt = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what there is
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message, limit=None), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._fmt.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, limit=None)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, limit=None)
        return True


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for h in logging.getLogger().handlers:
        h.addFilter(ScrubbingFilter())
