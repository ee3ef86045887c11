"""A route family registers with one line and answers errors in its own shape (as Anthropic's will)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter

from producer.api import app as app_module
from producer.api.auth import TenantDep
from tests.integration.api_fixtures import key_a, serve  # noqa: F401

router = APIRouter()
ERROR_PREFIXES = ("/v1/demo",)


def error_body(status: int, message: str, type: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": "authentication_error" if status == 401 else type, "message": message},
    }


@router.get("/v1/demo/whoami")
async def whoami(tenant: TenantDep) -> dict[str, str]:
    return {"tenant": tenant.name}


async def test_family_module_routes_and_error_shape(settings, monkeypatch, key_a):  # noqa: F811
    monkeypatch.setattr(app_module, "ROUTER_MODULES", [*app_module.ROUTER_MODULES, __name__])
    server, task, base = await serve(settings)
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            ok = await c.get(
                "/v1/demo/whoami", headers={"x-api-key": key_a, "anthropic-version": "2023-06-01"}
            )
            assert ok.json() == {"tenant": "tenant-a"}
            bad = await c.get("/v1/demo/whoami", headers={"x-api-key": "nope"})
            assert bad.status_code == 401
            assert bad.json()["type"] == "error" and bad.json()["error"]["type"] == "authentication_error"
            # other families keep OpenAI's shape
            other = await c.get("/v1/models", headers={"x-api-key": "nope"})
            assert other.json()["error"]["code"] == "invalid_api_key"
    finally:
        server.should_exit = True
        await task
