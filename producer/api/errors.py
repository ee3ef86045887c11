"""API errors and their shapes: each route family answers errors in its own vendor's shape.

OpenAI's shape is the default; a family module that needs another (Anthropic's) sets
``ERROR_PREFIXES`` and ``error_body`` and app.py routes its paths' errors to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

ErrorBody = Callable[[int, str, str, str | None, str | None], dict[str, Any]]

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"No {what} found with id '{ident}'.", code="not_found")


def openai_error_body(status: int, message: str, type: str, code: str | None, param: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape."""

    error: OpenAIErrorDetail


ERROR_STATUSES = (
    (400, "Invalid request"),
    (401, "Missing or wrong API key"),
    (403, "Not allowed for this key"),
    (404, "Not found"),
    (413, "Too large"),
)


def documented_errors(model: type[BaseModel], *extra: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route family's error statuses, in that family's error shape."""
    return {s: {"model": model, "description": d} for s, d in (*ERROR_STATUSES, *extra)}


OPENAI_ERRORS = documented_errors(OpenAIError)
