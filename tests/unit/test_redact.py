"""Provider-derived text is redacted (every known key, to any 8-character piece) before it is cut.

The keys here are random and prefix-free: nothing about their shape gives them away, so only
knowing the configured value can catch them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared import redact as redact_mod
from shared.config import ProviderConfig
from shared.errors import ErrorClass, ProviderError
from shared.observability import FILTERED, ScrubbingFilter, scrub
from shared.providers import classify
from shared.providers.anthropic import AnthropicProvider
from shared.providers.gemini import GeminiProvider
from shared.providers.openai import OpenAIProvider
from shared.redact import FRAGMENT, redact, register_secret
from shared.schema import ChatRequest
from tests.unit.wire import Wire

ALPHABET = string.ascii_letters + string.digits


def random_key(n: int = 40) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def pieces(key: str, n: int = FRAGMENT) -> list[str]:
    return [key[i : i + n] for i in range(len(key) - n + 1)]


def leaked(key: str, text: str) -> list[str]:
    return [p for p in pieces(key) if p in text]


@pytest.fixture
def key() -> Iterator[str]:
    k = random_key()
    yield k
    redact_mod.forget_secrets()


def chat() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def echo_headers(request: httpx.Request) -> str:
    return "\n".join(f"{k}: {v}" for k, v in request.headers.items())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the function itself ----------------------------------------------------


def test_registered_key_is_removed_whole_and_in_pieces(key: str) -> None:
    register_secret(key)
    text = f"a {key} b {key[:12]} c {key[-9:]} d {key[5:30]}"
    out = redact(text)
    assert leaked(key, out) == []
    assert out.count("[redacted]") == 4


def test_an_unregistered_key_is_caught_when_passed_explicitly(key: str) -> None:
    assert leaked(key, redact(f"x{key}y", key)) == []
    assert key in redact(f"x {key} y")  # nothing about its shape gives it away


def test_redaction_happens_before_the_cut(key: str) -> None:
    register_secret(key)
    for offset in range(470, 500):  # the key straddles the 500-character cut
        out = redact("x" * offset + key)
        assert leaked(key, out) == [], offset
        assert len(out) <= redact_mod.MAX_MESSAGE


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer {k}",
        "authorization: Basic {k}",
        '{{"authorization": "Bearer {k}"}}',
        "{{'x-api-key': '{k}'}}",
        "api-key: {k}",
        "x-goog-api-key={k}",
        "GET /v1beta/models?key={k}&alt=sse",
        "proxy-authorization: {k}",
        "ocp-apim-subscription-key: {k}",
    ],
)
def test_credential_echoes_are_removed_without_knowing_the_key(text: str) -> None:
    k = random_key()
    assert leaked(k, redact(text.format(k=k))) == []


def test_ordinary_error_text_is_left_alone() -> None:
    for text in (
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens",
        "openai: no API key (set OPENAI_API_KEY)",
        "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 50000.",
        "ollama: HTTP 404: model 'llama3' not found",
        "a basic example of the basic functionality",
    ):
        assert redact(text) == text


def test_short_placeholder_keys_do_not_mangle_messages() -> None:
    register_secret("ollama")  # local servers take any key; shorter than a real one
    try:
        assert redact("ollama: HTTP 500") == "ollama: HTTP 500"
    finally:
        redact_mod.forget_secrets()


def test_provider_error_redacts_whatever_built_it(key: str) -> None:
    register_secret(key)
    err = ProviderError(ErrorClass.TRANSIENT, f"OSError: failed for {key}", request_id=f"req {key}")
    assert leaked(key, err.message) == [] and leaked(key, str(err)) == []
    assert leaked(key, err.request_id or "") == []


# -- every classify path ----------------------------------------------------


def test_non_json_2xx_echo_of_the_request_is_redacted(key: str) -> None:
    register_secret(key)
    err = classify.malformed("p", f"HTTP 200 body is not JSON: Authorization: Bearer {key}")
    assert leaked(key, err.message) == []


def test_long_non_json_error_body_is_redacted_before_it_is_cut(key: str) -> None:
    register_secret(key)
    # The old code cut a non-JSON body to 200 characters, then replaced only the whole key.
    for offset in (150, 160, 170, 180, 186, 400, 470, 480, 490):
        body = ("<html>" + "x" * offset + key + "</html>" + "y" * 300).encode()
        err = classify.classify_response("p", 502, body, {}, secret=key)
        assert leaked(key, err.message) == [], offset


def test_exception_text_is_redacted(key: str) -> None:
    register_secret(key)
    err = classify.classify_exception("p", httpx.ConnectError(f"proxy said no to {key}"))
    assert leaked(key, err.message) == []


# -- the adapters, with the key loaded from their config ----------------------


@pytest.mark.parametrize("offset", [0, 20, 40, 50, 55, 100, 180])
def test_openai_200_non_json_echoing_authorization(offset: int) -> None:
    # The old code quoted the body's first 80 bytes unredacted: the key, whole or cut.
    redact_mod.forget_secrets()
    k = random_key()

    def handler(request: httpx.Request) -> httpx.Response:
        echo = f"Authorization: {request.headers['authorization']}\n{echo_headers(request)}"
        return httpx.Response(200, content=("z" * offset + echo).encode())

    p = OpenAIProvider(
        "openai",
        ProviderConfig(type="openai", api_key_env="K"),
        env={"K": k},
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(ProviderError) as e:
        run(p.chat(chat(), "gpt-4o"))
    assert e.value.code == "malformed_response"
    assert leaked(k, e.value.message) == [] and leaked(k, repr(e.value)) == []
    redact_mod.forget_secrets()


@pytest.mark.parametrize("status", [400, 401, 500, 503])
def test_anthropic_error_echoing_x_api_key(status: int) -> None:
    redact_mod.forget_secrets()
    k = random_key()

    def handler(request: httpx.Request) -> httpx.Response:
        body = {"type": "error", "error": {"type": "api_error", "message": "q" * 150 + echo_headers(request)}}
        return httpx.Response(status, json=body)

    p = AnthropicProvider(
        "anthropic",
        ProviderConfig(type="anthropic", api_key_env="K", models=["c"]),
        env={"K": k},
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(ProviderError) as e:
        run(p.chat(chat(), "c"))
    assert leaked(k, e.value.message) == []
    redact_mod.forget_secrets()


def test_gemini_error_echoing_the_key_header() -> None:
    redact_mod.forget_secrets()
    k = random_key(39)
    wire = Wire((500, b"", {}))

    def handler(request: httpx.Request) -> httpx.Response:
        wire.requests.append(request)
        return httpx.Response(500, content=f"upstream: {request.url} {echo_headers(request)}".encode())

    p = GeminiProvider(
        "gemini",
        ProviderConfig(type="gemini", api_key_env="K"),
        env={"K": k},
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(ProviderError) as e:
        run(p.chat(chat(), "gemini-2.5-flash"))
    assert k in echo_headers(wire.requests[0])  # the echo really carried it
    assert leaked(k, e.value.message) == []
    redact_mod.forget_secrets()


def test_custom_secret_headers_are_registered_too() -> None:
    redact_mod.forget_secrets()
    gateway_key = random_key()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=echo_headers(request).replace(": ", " = ").encode())

    p = OpenAIProvider(
        "gw",
        ProviderConfig(
            type="openai", api_key_env="K", options={"headers": {"X-Portkey-Api-Key": gateway_key}}
        ),
        env={"K": random_key()},
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(ProviderError) as e:
        run(p.chat(chat(), "gpt-4o"))
    assert leaked(gateway_key, e.value.message) == []
    redact_mod.forget_secrets()


# -- logs and Sentry ----------------------------------------------------------


def test_sentry_scrub_removes_a_known_prefix_free_key(key: str) -> None:
    register_secret(key)
    event = {"exception": {"values": [{"value": f"boom {key}"}]}, "extra": {"note": [f"k={key[3:20]}"]}}
    out = scrub(event)
    assert leaked(key, repr(out)) == [] and FILTERED in repr(out)


def test_log_filter_redacts_arguments_and_tracebacks(key: str) -> None:
    register_secret(key)
    records: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit = lambda r: records.append(handler.format(r))  # type: ignore[method-assign]
    handler.addFilter(ScrubbingFilter())
    log = logging.getLogger("fusebox.test.redact")
    log.addHandler(handler)
    try:
        log.warning("failed: %s", RuntimeError(f"echo {key}"))  # not a str argument
        log.warning("dict %(x)s", {"x": key})
        try:
            raise ValueError(f"inner {key}")
        except ValueError:
            log.exception("call failed")
    finally:
        log.removeHandler(handler)
    assert len(records) == 3
    assert all(leaked(key, r) == [] for r in records), records
    assert "ValueError" in records[2]  # the traceback is kept, only the key is gone


def test_a_known_secret_takes_the_rest_of_its_token_with_it():
    # a registered key inside a longer token: the prefix left beside the mask would say what it was
    key = "Qw7Zt4Lp9Xr2Mv6Kb1Nc"
    register_secret(key)
    try:
        out = redact(f"call failed with key sk-proj-{key}XYZ and url ?key={key}&x=1")
        assert "sk-proj" not in out and "XYZ" not in out and "Qw7Zt4Lp" not in out
        assert "?key=" in out and "&x=1" in out
    finally:
        redact_mod.forget_secrets()
