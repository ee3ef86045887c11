"""The error table, case by case, against each provider's real error bodies and headers."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import aiohttp
import httpx
import pytest

from shared.errors import ErrorClass
from shared.providers.answer_fields import parse_duration
from shared.providers.classify import classify_exception, classify_response, malformed, redact
from shared.providers.retry_after import retry_after_seconds

NOW = 1_749_997_600.0  # 2025-06-15T14:26:40Z: a fixed clock for date-based waits

R, T, C, F = ErrorClass.RATE_LIMITED, ErrorClass.TRANSIENT, ErrorClass.CONTEXT, ErrorClass.FINAL


def openai_err(message: str, type_: str | None, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_err(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": type_, "message": message, **extra},
        "request_id": "req_011CSHoEeqs5",
    }


def gemini_err(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return {"error": err}


GEMINI_429_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                "quotaValue": "15",
            }
        ],
    },
    {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }
        ],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"},
]

# (id, dialect, status, body, headers, class, code, retry_after)
CASES: list[tuple[str, str, int, Any, dict[str, str], ErrorClass, str, float | None]] = [
    # ---- OpenAI
    (
        "openai-429-tpm",
        "openai",
        429,
        openai_err(
            "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, "
            "Used 29522, Requested 1200. Please try again in 1.444s. Visit https://platform.openai.com/account/"
            "rate-limits to learn more.",
            "tokens",
            "rate_limit_exceeded",
        ),
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "1.444s",
        },
        R,
        "rate_limited",
        1.444,
    ),
    (
        "openai-429-rpm-minutes",
        "openai",
        429,
        openai_err("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-remaining-tokens": "100",
            "x-ratelimit-reset-tokens": "20ms",
        },
        R,
        "rate_limited",
        360.0,
    ),
    (
        "openai-429-retry-after-ms-wins",
        "openai",
        429,
        openai_err("Rate limit reached", "requests", "rate_limit_exceeded"),
        {"retry-after-ms": "2500", "retry-after": "3", "x-ratelimit-reset-requests": "1s"},
        R,
        "rate_limited",
        2.5,
    ),
    (
        "openai-429-message-only",
        "openai",
        429,
        openai_err(
            "Rate limit reached for gpt-4o-mini. Please try again in 20ms.", "tokens", "rate_limit_exceeded"
        ),
        {},
        R,
        "rate_limited",
        0.02,
    ),
    (
        "openai-insufficient-quota",
        "openai",
        429,
        openai_err(
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information "
            "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        {"retry-after": "20"},
        F,
        "insufficient_quota",
        None,
    ),
    # A spend cap or exhausted credit is final whatever ``type`` the 429 carries.
    (
        "openai-429-credit-balance-exhausted",
        "openai",
        429,
        openai_err(
            "Your credit balance is exhausted. Add credits to continue.", "tokens", "credit_balance_exhausted"
        ),
        {"retry-after": "20", "x-ratelimit-reset-requests": "1s"},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "openai-429-organization-usage-limit",
        "openai",
        429,
        openai_err(
            "Your organization has reached its monthly usage limit.",
            "requests",
            "organization_usage_limit_exceeded",
        ),
        {"retry-after": "5"},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "openai-429-insufficient-quota-any-type",
        "openai",
        429,
        openai_err("Quota reached.", "requests", "insufficient_quota"),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "openai-429-credit-code-without-type",
        "openai",
        429,
        openai_err("Rate limited.", None, "credit_balance_exhausted"),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    # One request above the whole TPM limit never fits: the next candidate, not a retry.
    (
        "openai-429-request-too-large-tpm",
        "openai",
        429,
        openai_err(
            "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, "
            "Requested 45128. The input or output tokens must be reduced in order to run successfully. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "tokens",
            "rate_limit_exceeded",
        ),
        {"x-ratelimit-remaining-tokens": "30000", "x-ratelimit-reset-tokens": "0s"},
        C,
        "request_exceeds_tpm",
        None,
    ),
    (
        "groq-429-request-too-large-tpm",
        "openai",
        429,
        {
            "error": {
                "message": "Request too large for model `llama-3.3-70b-versatile` in organization `org_01` "
                "service tier `on_demand` on tokens per minute (TPM): Limit 12000, Requested 19877, please "
                "reduce your message size and try again.",
                "type": "tokens",
                "code": "rate_limit_exceeded",
            }
        },
        {"retry-after": "38"},
        C,
        "request_exceeds_tpm",
        None,
    ),
    (
        "openai-429-tpm-requested-above-limit",
        "openai",
        429,
        openai_err(
            "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 10000, Used 0, Requested 12000.",
            "tokens",
            "rate_limit_exceeded",
        ),
        {},
        C,
        "request_exceeds_tpm",
        None,
    ),
    (
        "openai-context",
        "openai",
        400,
        openai_err(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 "
            "tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "openai-400",
        "openai",
        400,
        openai_err(
            "Invalid value for 'temperature': must be between 0 and 2.",
            "invalid_request_error",
            None,
            "temperature",
        ),
        {},
        F,
        "bad_request",
        None,
    ),
    (
        "openai-401",
        "openai",
        401,
        openai_err(
            "Incorrect API key provided: sk-proj-********************WXYZ. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        {},
        F,
        "authentication_error",
        None,
    ),
    (
        "openai-403-region",
        "openai",
        403,
        openai_err(
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        ),
        {},
        F,
        "permission_denied",
        None,
    ),
    (
        "openai-404-model",
        "openai",
        404,
        openai_err(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        {},
        F,
        "model_not_found",
        None,
    ),
    (
        "openai-413",
        "openai",
        413,
        "<html><head><title>413 Request Entity Too Large</title></head><body>nginx</body></html>",
        {},
        F,
        "request_too_large",
        None,
    ),
    (
        "openai-500",
        "openai",
        500,
        openai_err(
            "The server had an error while processing your request. Sorry about that!", "server_error", None
        ),
        {},
        T,
        "server_error",
        None,
    ),
    (
        "openai-503-retry-after",
        "openai",
        503,
        openai_err("The engine is currently overloaded, please try again later.", "server_error", None),
        {"retry-after": "7"},
        T,
        "overloaded",
        7.0,
    ),
    (
        "openai-502-html",
        "openai",
        502,
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>cloudflare</body></html>",
        {},
        T,
        "server_error",
        None,
    ),
    (
        "openai-409-conflict",
        "openai",
        409,
        openai_err("Request conflicts with another request", "invalid_request_error", None),
        {},
        T,
        "server_error",
        None,
    ),
    # ---- Azure OpenAI
    (
        "azure-429",
        "openai",
        429,
        {
            "error": {
                "code": "429",
                "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                "version 2024-10-21 "
                "have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 "
                "seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to "
                "further increase "
                "the default rate limit.",
            }
        },
        {"retry-after": "6", "retry-after-ms": "6000"},
        R,
        "rate_limited",
        6.0,
    ),
    (
        "azure-429-message-wait",
        "openai",
        429,
        {"error": {"code": "429", "message": "Rate limit is exceeded. Please retry after 13 seconds."}},
        {},
        R,
        "rate_limited",
        13.0,
    ),
    (
        "azure-content-filter",
        "openai",
        400,
        {
            "error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                "content management "
                "policy. Please modify your prompt and retry.",
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
            }
        },
        {},
        F,
        "content_filter",
        None,
    ),
    # ---- Groq / Mistral / DeepSeek / OpenRouter / Together / vLLM
    (
        "groq-429",
        "openai",
        429,
        openai_err(
            "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01` service tier "
            "`on_demand` on tokens per minute (TPM): Limit 6000, Used 5735, Requested 1218. Please "
            "try again in "
            "9.53s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
            "tokens",
            "rate_limit_exceeded",
        ),
        {"retry-after": "10", "x-ratelimit-reset-tokens": "9.53s", "x-ratelimit-remaining-tokens": "0"},
        R,
        "rate_limited",
        10.0,
    ),
    (
        "groq-context",
        "openai",
        400,
        openai_err(
            "Please reduce the length of the messages or completion.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "mistral-context",
        "openai",
        400,
        {
            "object": "error",
            "message": "Prompt contains 40127 tokens and 0 draft tokens, too large for model with "
            "32768 maximum "
            "context length",
            "type": "invalid_request_message_error",
            "param": None,
            "code": None,
        },
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "mistral-422-extra-field",
        "openai",
        422,
        {
            "object": "error",
            "message": {
                "detail": [
                    {
                        "type": "extra_forbidden",
                        "loc": ["body", "logit_bias"],
                        "msg": "Extra inputs are not permitted",
                    }
                ]
            },
            "type": "invalid_request_message_error",
            "param": None,
            "code": None,
        },
        {},
        F,
        "bad_request",
        None,
    ),
    (
        "mistral-429",
        "openai",
        429,
        {"message": "Requests rate limit exceeded"},
        {},
        R,
        "rate_limited",
        None,
    ),
    (
        "deepseek-402",
        "openai",
        402,
        {
            "error": {
                "message": "Insufficient Balance",
                "type": "unknown_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "openrouter-402",
        "openai",
        402,
        {
            "error": {
                "code": 402,
                "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
            }
        },
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "openrouter-429-free-daily",
        "openai",
        429,
        {
            "error": {
                "message": "Rate limit exceeded: free-models-per-min. ",
                "code": 429,
                "metadata": {"headers": {"X-RateLimit-Limit": "20"}},
            }
        },
        {},
        R,
        "rate_limited",
        None,
    ),
    (
        "together-context",
        "openai",
        400,
        {
            "id": "nrFCEVD-2j9zxn-8bd4a1d3e9c1a1ab",
            "error": {
                "message": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                "8193. Given: 8000 "
                "`inputs` tokens and 512 `max_new_tokens`",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": None,
            },
        },
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "vllm-context",
        "openai",
        400,
        {
            "object": "error",
            "message": "This model's maximum context length is 4096 tokens. However, you requested "
            "5120 tokens (4096 "
            "in the messages, 1024 in the completion). Please reduce the length of the messages or "
            "completion.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "groq-498-flex",
        "openai",
        498,
        openai_err("Flex tier capacity exceeded. Please try again later.", "capacity_exceeded", None),
        {},
        R,
        "rate_limited",
        None,
    ),
    # ---- Anthropic
    (
        "anthropic-429",
        "anthropic",
        429,
        anthropic_err(
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute.",
        ),
        {
            "retry-after": "21",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2025-06-15T14:33:40Z",
        },
        R,
        "rate_limited",
        21.0,
    ),
    (
        "anthropic-429-reset-header",
        "anthropic",
        429,
        anthropic_err("rate_limit_error", "Number of input tokens has exceeded your per-minute rate limit"),
        {
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-06-15T14:26:41Z",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": "2025-06-15T14:27:10Z",
        },
        R,
        "rate_limited",
        30.0,  # NOW is 14:26:40Z
    ),
    (
        "anthropic-429-spend-limit",
        "anthropic",
        429,
        anthropic_err(
            "rate_limit_error",
            "You have reached your monthly spend limit.",
            details={"error_code": "enforced_spend_limit_reached"},
        ),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "anthropic-529",
        "anthropic",
        529,
        anthropic_err("overloaded_error", "Overloaded"),
        {},
        T,
        "overloaded",
        None,
    ),
    (
        "anthropic-500",
        "anthropic",
        500,
        anthropic_err("api_error", "Internal server error"),
        {},
        T,
        "server_error",
        None,
    ),
    (
        "anthropic-504",
        "anthropic",
        504,
        anthropic_err("timeout_error", "Request timed out"),
        {},
        T,
        "timeout",
        None,
    ),
    (
        "anthropic-context",
        "anthropic",
        400,
        anthropic_err("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "anthropic-context-with-max-tokens",
        "anthropic",
        400,
        anthropic_err(
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 197827 + 21333 > 200000, decrease "
            "input length "
            "or `max_tokens` and try again",
        ),
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "anthropic-credit-balance",
        "anthropic",
        400,
        anthropic_err(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
            "Billing to upgrade "
            "or purchase credits.",
        ),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "anthropic-workspace-limit",
        "anthropic",
        400,
        anthropic_err(
            "invalid_request_error",
            "You have reached your specified API usage limits. You will regain access on 2025-07-01 "
            "at 00:00 UTC.",
        ),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "anthropic-402",
        "anthropic",
        402,
        anthropic_err("billing_error", "There is an issue with your billing."),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "anthropic-401",
        "anthropic",
        401,
        anthropic_err("authentication_error", "invalid x-api-key"),
        {},
        F,
        "authentication_error",
        None,
    ),
    (
        "anthropic-403",
        "anthropic",
        403,
        anthropic_err(
            "permission_error", "Your API key does not have permission to use the specified resource."
        ),
        {},
        F,
        "permission_denied",
        None,
    ),
    (
        "anthropic-404",
        "anthropic",
        404,
        anthropic_err("not_found_error", "model: claude-9-opus"),
        {},
        F,
        "model_not_found",
        None,
    ),
    (
        "anthropic-413",
        "anthropic",
        413,
        anthropic_err("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        {},
        F,
        "request_too_large",
        None,
    ),
    (
        "anthropic-400",
        "anthropic",
        400,
        anthropic_err(
            "invalid_request_error", 'messages: roles must alternate between "user" and "assistant"'
        ),
        {},
        F,
        "bad_request",
        None,
    ),
    # ---- Gemini
    (
        "gemini-429-retryinfo",
        "gemini",
        429,
        gemini_err(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on "
            "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            GEMINI_429_DETAILS,
        ),
        {},
        R,
        "rate_limited",
        34.0,
    ),
    (
        "gemini-429-message-retry",
        "gemini",
        429,
        gemini_err(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota). Please retry in 13.385s.",
        ),
        {},
        R,
        "rate_limited",
        13.385,
    ),
    (
        "gemini-429-zero-limit",
        "gemini",
        429,
        gemini_err(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details. * Quota "
            "exceeded for "
            "metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: "
            "gemini-2.5-pro",
            GEMINI_429_DETAILS,
        ),
        {},
        F,
        "insufficient_quota",
        None,
    ),
    (
        "gemini-context",
        "gemini",
        400,
        gemini_err(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1196266) exceeds the maximum number of tokens allowed (1048575).",
        ),
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "gemini-bad-key",
        "gemini",
        400,
        gemini_err(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        ),
        {},
        F,
        "authentication_error",
        None,
    ),
    (
        "gemini-location",
        "gemini",
        400,
        gemini_err(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
        {},
        F,
        "bad_request",
        None,
    ),
    (
        "gemini-403",
        "gemini",
        403,
        gemini_err(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        ),
        {},
        F,
        "permission_denied",
        None,
    ),
    (
        "gemini-404",
        "gemini",
        404,
        gemini_err(
            404,
            "NOT_FOUND",
            "models/gemini-9.0-pro is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their "
            "supported methods.",
        ),
        {},
        F,
        "model_not_found",
        None,
    ),
    (
        "gemini-503",
        "gemini",
        503,
        gemini_err(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        {},
        T,
        "overloaded",
        None,
    ),
    (
        "gemini-500",
        "gemini",
        500,
        gemini_err(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        ),
        {},
        T,
        "server_error",
        None,
    ),
    (
        "gemini-504",
        "gemini",
        504,
        gemini_err(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
        {},
        T,
        "timeout",
        None,
    ),
    (
        "vertex-429-list",
        "gemini",
        429,
        [gemini_err(429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later.")],
        {},
        R,
        "rate_limited",
        None,
    ),
    # ---- Cohere
    (
        "cohere-429-trial",
        "cohere",
        429,
        {
            "id": "3ef8d1a5-1b2c-4d6e-9f00-1234567890ab",
            "message": "You are using a Trial key, which is limited to 10 API calls / minute. You "
            "can continue to use "
            "the Trial key for free or upgrade to a Production key with higher rate limits at "
            "'https://dashboard.cohere.com/api-keys'. Contact us on 'https://discord.gg/XW44jPfYJu' "
            "or email us "
            "at support@cohere.com with any questions",
        },
        {},
        R,
        "rate_limited",
        None,
    ),
    (
        "cohere-context",
        "cohere",
        400,
        {
            "id": "b1f3c2d4-0000-4000-8000-000000000001",
            "message": "too many tokens: total number of tokens in the prompt cannot exceed 4081 - "
            "received 4692. Try "
            "using a shorter prompt, or enabling prompt truncating. See "
            "https://docs.cohere.com/reference/generate "
            "for more details.",
        },
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "cohere-401",
        "cohere",
        401,
        {"id": "b1f3c2d4-0000-4000-8000-000000000002", "message": "invalid api token"},
        {},
        F,
        "authentication_error",
        None,
    ),
    (
        "cohere-498",
        "cohere",
        498,
        {"id": "b1f3c2d4-0000-4000-8000-000000000003", "message": "invalid api token"},
        {},
        F,
        "authentication_error",
        None,
    ),
    (
        "cohere-499",
        "cohere",
        499,
        {"id": "b1f3c2d4-0000-4000-8000-000000000004", "message": "request cancelled"},
        {},
        T,
        "server_error",
        None,
    ),
    (
        "cohere-404",
        "cohere",
        404,
        {
            "id": "b1f3c2d4-0000-4000-8000-000000000005",
            "message": (
                "model 'command-z' not found, make sure the correct model ID was used and "
                "that you have access to the model."
            ),
        },
        {},
        F,
        "model_not_found",
        None,
    ),
    # ---- Ollama
    (
        "ollama-404",
        "ollama",
        404,
        {"error": 'model "llama9" not found, try pulling it first'},
        {},
        F,
        "model_not_found",
        None,
    ),
    (
        "ollama-embed-context",
        "ollama",
        400,
        {"error": "the input length exceeds the context length"},
        {},
        C,
        "context_length_exceeded",
        None,
    ),
    (
        "ollama-500-context-deadline",
        "ollama",
        500,
        {"error": "llama runner process has terminated: context deadline exceeded"},
        {},
        T,
        "server_error",
        None,
    ),
    (
        "ollama-400",
        "ollama",
        400,
        {
            "error": (
                "json: cannot unmarshal string into Go struct field ChatRequest.messages of "
                "type []api.Message"
            )
        },
        {},
        F,
        "bad_request",
        None,
    ),
    # ---- statuses no provider documents
    ("bare-529", "anthropic", 529, "", {}, T, "overloaded", None),
    ("unknown-418", "openai", 418, "I'm a teapot", {}, F, "bad_request", None),
    ("unknown-599", "openai", 599, "", {}, T, "server_error", None),
    ("redirect-301", "openai", 301, "", {"location": "https://example.com/"}, F, "unexpected_redirect", None),
    ("timeout-408", "openai", 408, "", {}, T, "timeout", None),
]


@pytest.mark.parametrize(
    ("dialect", "status", "body", "headers", "error_class", "code", "retry_after"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_error_table(
    dialect: str,
    status: int,
    body: Any,
    headers: dict[str, str],
    error_class: ErrorClass,
    code: str,
    retry_after: float | None,
) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    err = classify_response("prov", status, raw, httpx.Headers(headers), dialect=dialect, now=NOW)
    assert (err.error_class, err.code) == (error_class, code)
    assert err.status == status
    if retry_after is None:
        assert err.retry_after is None
    else:
        assert err.retry_after == pytest.approx(retry_after, abs=0.01)
    assert err.message.startswith(f"prov: HTTP {status}")


def test_message_carries_provider_explanation_and_request_id() -> None:
    body = anthropic_err("overloaded_error", "Overloaded")
    err = classify_response(
        "anthropic", 529, json.dumps(body).encode(), {"Request-Id": "req_018EeWyXxfu5"}, dialect="anthropic"
    )
    assert err.message == "anthropic: HTTP 529 overloaded_error: Overloaded"
    assert err.request_id == "req_018EeWyXxfu5"
    # the body's request_id is used when no header carries one
    err = classify_response("anthropic", 529, body, None, dialect="anthropic")
    assert err.request_id == "req_011CSHoEeqs5"


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    err = classify_response("p", 429, b"{}", {"Retry-After": date}, now=NOW)
    assert err.retry_after == pytest.approx(42, abs=1)


def test_retry_after_in_the_past_is_zero_and_garbage_is_ignored() -> None:
    past = email.utils.formatdate(NOW - 100, usegmt=True)
    assert retry_after_seconds({"retry-after": past}, now=NOW) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}, now=NOW) is None
    assert retry_after_seconds({"retry-after-ms": "x", "retry-after": "2"}, now=NOW) == 2.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1m30.951s", 90.951),
        ("2h", 7200.0),
        ("3.5", 3.5),
        ("34s", 34.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "1s junk"])
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


def test_transient_keeps_retry_after_and_final_drops_it() -> None:
    err = classify_response("p", 500, b"{}", {"retry-after": "4"})
    assert (err.error_class, err.retry_after) == (T, 4.0)
    err = classify_response("p", 401, b"{}", {"retry-after": "4"})
    assert (err.error_class, err.retry_after) == (F, None)


# ---- transport failures -------------------------------------------------


def _mapped(exc: Exception, cause: BaseException | None = None) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "error_class", "code"),
    [
        (httpx.ReadTimeout("timed out"), T, "timeout"),
        (httpx.ConnectTimeout("timed out"), T, "timeout"),
        (TimeoutError(), T, "timeout"),
        (TimeoutError(), T, "timeout"),
        (httpx.ConnectError("[Errno 111] Connection refused"), T, "connection_error"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), T, "connection_error"),
        (ConnectionResetError(104, "Connection reset by peer"), T, "connection_error"),
        # httpx-aiohttp maps a dropped connection to ConnectTimeout; the aiohttp cause decides
        (
            _mapped(httpx.ConnectTimeout("Server disconnected"), aiohttp.ServerDisconnectedError()),
            T,
            "connection_error",
        ),
        (
            _mapped(httpx.TimeoutException("Timeout"), aiohttp.ServerTimeoutError("Timeout on reading data")),
            T,
            "timeout",
        ),
        (
            httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol."),
            F,
            "invalid_base_url",
        ),
        # the production caller's own (aiohttp) exceptions, raised directly
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), T, "timeout"),
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), T, "timeout"),
        (aiohttp.ServerDisconnectedError(), T, "connection_error"),
        (aiohttp.ClientPayloadError("Response payload is not completed"), T, "connection_error"),
        (aiohttp.InvalidUrlClientError("example.invalid/v1/chat/completions"), F, "invalid_base_url"),
        (aiohttp.NonHttpUrlClientError("ftp://example.invalid/v1"), F, "invalid_base_url"),
    ],
)
def test_exceptions(exc: BaseException, error_class: ErrorClass, code: str) -> None:
    err = classify_exception("openai", exc)
    assert (err.error_class, err.code, err.status) == (error_class, code, None)
    assert err.message.startswith("openai: ")


def test_malformed_is_transient() -> None:
    err = malformed("openai", "HTTP 200 body is not JSON")
    assert (err.error_class, err.code) == (T, "malformed_response")


# ---- secrets never leak -------------------------------------------------

KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345WXYZ"


def test_configured_key_is_scrubbed_from_error_messages() -> None:
    body = openai_err(f"Incorrect API key provided: {KEY}.", "invalid_request_error", "invalid_api_key")
    err = classify_response("openai", 401, json.dumps(body).encode(), {}, secret=KEY)
    assert KEY not in err.message and KEY not in str(err) and KEY not in repr(err)
    assert "[redacted]" in err.message


@pytest.mark.parametrize(
    "leak",
    [
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "Bearer abcdefghijklmnop.qrstuv",
        "hf_abcdefghijklmnopqrstuvwx",
        "gsk_abcdefghijklmnopqrstuvwx",
    ],
)
def test_key_shaped_strings_are_scrubbed_without_knowing_the_key(leak: str) -> None:
    assert leak not in redact(f"upstream said: {leak} is wrong")
    err = classify_exception("p", httpx.ConnectError(f"failed for {leak}"))
    assert leak not in err.message


def test_long_messages_are_truncated() -> None:
    err = classify_response(
        "p", 400, json.dumps(openai_err("x" * 5000, "invalid_request_error", None)).encode()
    )
    assert len(err.message) <= 500


# ---- a refused connection is named as one, not as a timeout ----------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_refused_connection_over_the_real_transport_is_named_refused() -> None:
    from httpx_aiohttp import AiohttpTransport

    url = f"http://127.0.0.1:{_closed_port()}/v1/chat/completions"
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.HTTPError) as e:
            await client.post(url, content=b"{}")
    err = classify_exception("p", e.value)
    assert (err.error_class, err.code) == (T, "connection_error")
    assert "connection refused" in err.message and "ConnectionRefusedError" in err.message
    assert "Timeout" not in err.message


async def test_refused_webhook_delivery_is_named_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import WebhookConfig
    from shared.keys import Keys
    from shared.webhooks.delivery import WebhookDeliverer
    from shared.webhooks.records import Delivery

    monkeypatch.setenv("FUSEBOX_WEBHOOK_SECRET", "whsec_QUJDREVGR0hJSktMTU5PUA==")
    d = WebhookDeliverer(None, Keys("t"), WebhookConfig(allow_hosts=["127.0.0.0/8"]))  # type: ignore[arg-type]
    try:
        status, error, _, _ = await d._send(
            Delivery(id="m", url=f"http://127.0.0.1:{_closed_port()}/hook", payload=b"{}")
        )
    finally:
        await d.aclose()
    assert status is None and error is not None
    assert error.startswith("ConnectionRefusedError") and "Timeout" not in error
