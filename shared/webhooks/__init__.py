"""Signed webhooks: signing and payloads (``signing``), delivery records and the producer side
(``records``), sending (``delivery``). Receivers need only this package's top level::

    from shared.webhooks import verify, WebhookVerificationError
"""

from shared.webhooks.signing import (
    DEFAULT_TOLERANCE_S,
    SECRET_PREFIX,
    RequestCounts,
    WebhookData,
    WebhookEvent,
    WebhookSecretError,
    WebhookVerificationError,
    batch_event,
    decode_event,
    encode_event,
    event_id,
    generate_secret,
    job_event,
    new_event_id,
    secret_bytes,
    sign,
    signed_headers,
    verify,
)

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SECRET_PREFIX",
    "RequestCounts",
    "WebhookData",
    "WebhookEvent",
    "WebhookSecretError",
    "WebhookVerificationError",
    "batch_event",
    "decode_event",
    "encode_event",
    "event_id",
    "generate_secret",
    "job_event",
    "new_event_id",
    "secret_bytes",
    "sign",
    "signed_headers",
    "verify",
]
