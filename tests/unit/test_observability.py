"""Secrets are scrubbed from Sentry events and log lines."""

from __future__ import annotations

import logging

from shared.observability import FILTERED, ScrubbingFilter, _before_send, scrub


def test_scrub_removes_secret_fields_and_key_shaped_values():
    event = {
        "request": {
            "headers": {"Authorization": "Bearer sk-abcdefghijklmnop", "x-api-key": "k", "accept": "*/*"}
        },
        "message": "call failed with key sk-proj-1234567890abcdef and whsec_QUJDREVGR0hJSktM",
        "extra": {"api_key": "AIzaSyA1234567890abcdefghijk", "items": ["Bearer abc.def"]},
    }
    out = _before_send(event, {})
    assert out["request"]["headers"] == {"Authorization": FILTERED, "x-api-key": FILTERED, "accept": "*/*"}
    assert "sk-proj" not in out["message"] and "whsec_" not in out["message"] and FILTERED in out["message"]
    assert out["extra"]["api_key"] == FILTERED and out["extra"]["items"] == [FILTERED]
    assert scrub(42) == 42


def test_logging_filter_redacts(caplog):
    log = logging.getLogger("fusebox.test")
    handler = logging.Handler()
    records: list[logging.LogRecord] = []
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(ScrubbingFilter())
    log.addHandler(handler)
    try:
        log.warning("upstream said %s", "invalid key sk-live-abcdefghijklmnopqrst")
    finally:
        log.removeHandler(handler)
    assert records and "sk-live" not in records[0].getMessage()


def test_worker_sentry_uses_the_arq_integration_and_keeps_scrubbing():
    import sentry_sdk

    from shared.observability import init_sentry

    sent: list = []

    class Capture(sentry_sdk.transport.Transport):
        def capture_envelope(self, envelope):  # type: ignore[no-untyped-def]
            sent.append(envelope)

    assert init_sentry("http://public@127.0.0.1:9/1", "worker", transport=Capture())
    try:
        client = sentry_sdk.get_client()
        assert "arq" in client.integrations
        sentry_sdk.capture_message("provider said: Authorization: Bearer zq8Xk2LmN4pR7sT1vW3yB6dF9hJ0cE5g")
        sentry_sdk.flush()
        text = b"".join(item.get_bytes() for env in sent for item in env.items).decode()
        assert "provider said" in text and "zq8Xk2Lm" not in text
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # back to a disabled client
