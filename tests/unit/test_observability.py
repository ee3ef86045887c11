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
