"""Standard Webhooks signing: known vector, interoperability with the `standardwebhooks` package, payloads."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import msgspec
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as SWVerificationError

from shared.schema import Attempt, ErrorInfo, JobResult, Usage
from shared.webhooks import (
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
    secret_bytes,
    sign,
    signed_headers,
    verify,
)

# The reference test vector used by the Standard Webhooks / Svix libraries.
VEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VEC_TS = 1614265330
VEC_BODY = '{"test": 2432232314}'
VEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_reference_vector():
    assert sign(VEC_SECRET, VEC_ID, VEC_TS, VEC_BODY) == VEC_SIG
    assert sign(VEC_SECRET, VEC_ID, VEC_TS, VEC_BODY.encode()) == VEC_SIG
    # The raw key and the unprefixed base64 form are the same secret.
    assert sign(secret_bytes(VEC_SECRET), VEC_ID, VEC_TS, VEC_BODY) == VEC_SIG
    assert sign(VEC_SECRET.removeprefix("whsec_"), VEC_ID, VEC_TS, VEC_BODY) == VEC_SIG


def test_generate_secret_is_whsec_base64_and_unique():
    a, b = generate_secret(), generate_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32
    Webhook(a)  # the reference library accepts it


def test_our_signature_verifies_with_standardwebhooks():
    secret = generate_secret()
    body = encode_event(batch_event("b1", "completed", RequestCounts(total=3, completed=2, failed=1)))
    ts = int(time.time())
    headers = signed_headers(secret, "msg_abc", ts, body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(secret).verify(body, headers)["data"]["batch_id"] == "b1"
    with pytest.raises(SWVerificationError):
        Webhook(generate_secret()).verify(body, headers)


def test_standardwebhooks_signature_verifies_with_ours():
    secret = generate_secret()
    body = '{"type":"job.completed","id":"msg_x","data":{"status":"completed"}}'
    ts = int(time.time())
    sig = Webhook(secret).sign("msg_x", datetime.fromtimestamp(ts, tz=UTC), body)
    headers = {"Webhook-Id": "msg_x", "Webhook-Timestamp": str(ts), "Webhook-Signature": sig}
    assert verify(secret, headers, body) == json.loads(body)
    assert verify(secret, headers, body.encode())["id"] == "msg_x"


def test_verify_rejects_tampering_wrong_secret_and_bad_headers():
    secret = generate_secret()
    body = b'{"a":1}'
    ts = int(time.time())
    headers = signed_headers(secret, "msg_1", ts, body)
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify(secret, headers, b'{"a":2}')
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify(generate_secret(), headers, body)
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify(secret, {**headers, "webhook-id": "msg_2"}, body)
    with pytest.raises(WebhookVerificationError, match=r"missing header.*webhook-signature"):
        verify(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body)
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(secret, {**headers, "webhook-timestamp": "soon"}, body)


def test_verify_enforces_timestamp_tolerance():
    secret = generate_secret()
    body = b"{}"
    old = int(time.time()) - 301
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(secret, signed_headers(secret, "m", old, body), body)
    future = int(time.time()) + 400
    with pytest.raises(WebhookVerificationError, match="too new"):
        verify(secret, signed_headers(secret, "m", future, body), body)
    # A wider tolerance, or a receiver-supplied clock, accepts it.
    assert verify(secret, signed_headers(secret, "m", old, body), body, tolerance=600) == {}
    assert verify(secret, signed_headers(secret, "m", old, body), body, now=old + 10) == {}


def test_verify_accepts_any_of_several_signatures_for_rotation():
    old_secret, new_secret = generate_secret(), generate_secret()
    body, ts = b'{"k":true}', int(time.time())
    both = f"{sign(old_secret, 'm', ts, body)} v2,ignored {sign(new_secret, 'm', ts, body)}"
    headers = {"webhook-id": "m", "webhook-timestamp": str(ts), "webhook-signature": both}
    assert verify(new_secret, headers, body) == {"k": True}
    assert verify(old_secret, headers, body) == {"k": True}


def test_bad_secret_is_a_clear_error_without_the_secret():
    bogus = "whsec_not*base64!"
    with pytest.raises(WebhookSecretError) as e:
        sign(bogus, "m", 1, b"")
    assert "not*base64" not in str(e.value)
    with pytest.raises(WebhookSecretError, match="empty"):
        secret_bytes("whsec_")


def test_event_json_is_compact_and_round_trips():
    ev = batch_event(
        "b42",
        "completed",
        RequestCounts(total=10, completed=9, failed=1),
        usage=Usage(prompt_tokens=100, completion_tokens=50, total_tokens=150),
        cost_usd=0.0125,
        metadata={"team": "data"},
    )
    body = encode_event(ev)
    assert b", " not in body and b": " not in body  # compact separators
    d = json.loads(body)
    assert list(d) == ["type", "id", "created_at", "data"]
    assert d["type"] == "batch.completed"
    assert d["id"] == event_id("batch.completed", "b42") and d["id"].startswith("msg_")
    assert d["data"] == {
        "status": "completed",
        "batch_id": "b42",
        "request_counts": {"total": 10, "completed": 9, "failed": 1},
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        "cost_usd": 0.0125,
        "results": "fusebox results b42",
        "metadata": {"team": "data"},
    }
    assert abs(d["created_at"] - time.time()) < 60
    assert decode_event(body) == ev


def test_event_ids_are_deterministic_per_subject_and_random_by_default():
    assert event_id("batch.completed", "b1") == event_id("batch.completed", "b1")
    assert event_id("batch.completed", "b1") != event_id("batch.cancelled", "b1")
    a = WebhookEvent(type="job.completed", data=WebhookData(status="completed"))
    b = WebhookEvent(type="job.completed", data=WebhookData(status="completed"))
    assert a.id != b.id


def test_batch_event_refuses_unknown_status():
    with pytest.raises(ValueError, match="no webhook event"):
        batch_event("b", "in_progress", RequestCounts(total=1, completed=0, failed=0))


def test_job_event_summarises_without_the_response_body():
    ok = JobResult(
        id="j1",
        status_code=200,
        body={"choices": [{"message": {"content": "SECRET ANSWER"}}]},
        provider="simulated",
        model="m",
        attempts=[Attempt(provider="simulated", model="m", latency_ms=1.0)],
        usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        cost_usd=0.5,
    )
    ev = job_event(ok)
    body = encode_event(ev)
    assert b"SECRET ANSWER" not in body
    d = msgspec.json.decode(body)
    assert d["type"] == "job.completed" and d["id"] == event_id("job.completed", "j1")
    assert d["data"]["job_id"] == "j1" and d["data"]["usage"]["total_tokens"] == 7
    assert d["data"]["cost_usd"] == 0.5 and d["data"]["provider"] == "simulated"

    bad = JobResult(
        id="j2",
        status_code=400,
        batch_id="b",
        custom_id="c",
        error=ErrorInfo(code="bad_request", message="nope", error_class="final", status=400),
    )
    d = msgspec.json.decode(encode_event(job_event(bad, results="/v1/jobs/j2")))
    assert d["type"] == "job.failed"
    assert d["data"]["status"] == "failed" and d["data"]["custom_id"] == "c"
    assert d["data"]["error"] == {"code": "bad_request", "message": "nope"}
    assert d["data"]["results"] == "/v1/jobs/j2"


def test_each_retry_of_a_batch_gets_its_own_completion_webhook_id():
    from shared.webhooks import RequestCounts, batch_event

    counts = RequestCounts(total=2, completed=2, failed=0)
    first = batch_event("b1", "completed", counts)
    again = batch_event("b1", "completed", counts)
    retried = batch_event("b1", "completed", counts, retries=1)
    assert first.id == again.id  # a finalization that runs twice still sends one webhook
    assert retried.id != first.id and retried.id != batch_event("b1", "completed", counts, retries=2).id
