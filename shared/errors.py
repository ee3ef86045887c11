"""How a failed provider call is classified, which decides what happens next."""

from __future__ import annotations

from enum import StrEnum

from shared.redact import redact, redact_optional


class ErrorClass(StrEnum):
    RATE_LIMITED = "rate_limited"  # 429: retry after the provider's wait
    TRANSIENT = "transient"  # 5xx, 529, timeouts, connection errors: retry, then fall back
    # Too large for this candidate (its context window, or a 429 for a request above its whole
    # tokens-per-minute limit): never retried there, the next candidate may serve it.
    CONTEXT = "context_length"
    FINAL = "final"  # 400/401/403/404/413, quota: fail the job, never retry
    UNAVAILABLE = "unavailable"  # breaker open / provider saturated: next candidate or defer


class ProviderError(Exception):
    """A provider call failed. The message must never contain credentials: whoever builds one, the
    message (often provider text or an exception's) and request id pass through ``redact`` here."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.status = status
        self.code = code or error_class.value
        self.retry_after = retry_after
        self.request_id = redact_optional(request_id, limit=200)

    def __repr__(self) -> str:
        return f"ProviderError({self.error_class.value}, status={self.status}, code={self.code!r})"
