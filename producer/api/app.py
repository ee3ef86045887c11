"""The FastAPI application: one router module per API family, shared Redis handles, error shapes.

Adding a family is one line in ``ROUTER_MODULES``: the module defines ``router`` (an APIRouter)
and, if its errors are not in OpenAI's shape, ``ERROR_PREFIXES`` (path prefixes) and
``error_body(status, message, type, code, param) -> dict``.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from producer.api.auth import ApiContext, Ctx
from producer.api.errors import ApiError, ErrorBody, openai_error_body
from shared.batches.files import FileStore
from shared.byok.crypto import KeyRing
from shared.byok.store import check_startup
from shared.config import Settings
from shared.jobs.store import Store
from shared.providers.registry import build_providers
from shared.redis_conn import connect
from shared.router import Router

ROUTER_MODULES: list[str] = [
    "producer.api.openai",
    "producer.api.native",
    "producer.api.ops",
    "producer.api.anthropic",
    "producer.api.provider_keys",
    "producer.api.budgets",
]


def _families() -> tuple[list[Any], list[tuple[str, ErrorBody]]]:
    mods = [importlib.import_module(m) for m in ROUTER_MODULES]
    shapes = [(p, m.error_body) for m in mods for p in getattr(m, "ERROR_PREFIXES", ())]
    return mods, sorted(shapes, key=lambda s: -len(s[0]))


def create_app(settings: Settings | None = None) -> FastAPI:
    """``settings`` defaults to the environment (uvicorn's ``--factory`` calls this with none)."""
    settings = settings or Settings()
    mods, shapes = _families()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set")
        cfg = settings.file
        keyring = KeyRing.from_env()
        redis = connect(settings.redis_url, settings.keys)
        try:
            # Stored tenant keys with no (or the wrong) master key: refuse to start, saying what to set.
            await check_startup(redis, settings.keys, keyring)
        except BaseException:
            await redis.aclose()
            raise
        app.state.ctx = ApiContext(
            settings=settings,
            redis=redis,
            store=Store(redis, settings.keys, cfg.batches),
            files=FileStore(redis, settings.keys, cfg.api),
            router=Router(build_providers(cfg), cfg),
            keyring=keyring,
        )
        try:
            yield
        finally:
            # providers' HTTP sessions (opened by health checks) close with the app, not at exit
            for p in app.state.ctx.router.providers.values():
                await p.aclose()
            await redis.aclose()

    app = FastAPI(
        title="Fusebox",
        version="0.1.0",
        description="OpenAI-compatible Files, Batches, chat completions and embeddings over Fusebox's "
        "queue, router, limits and breakers; plus Fusebox's own jobs API.",
        lifespan=lifespan,
    )

    def render(
        request: Request,
        status: int,
        message: str,
        type: str,
        code: str | None,
        param: str | None,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        path = request.url.path
        body_fn = next((fn for prefix, fn in shapes if path.startswith(prefix)), openai_error_body)
        return JSONResponse(body_fn(status, message, type, code, param), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return render(request, e.status, e.message, e.type, e.code, e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path", "header")]
        msg = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid request')}"
        return render(request, 400, msg, "invalid_request_error", "invalid_request", ".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return render(request, e.status_code, str(e.detail), kind, code, None, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        # Never echo the exception: it may carry request data; the log has it.
        return render(request, 500, "internal error", "server_error", "internal_error", None)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "Redis is unreachable"}})
    async def readyz(ctx: Ctx) -> JSONResponse:
        """Redis answers."""
        try:
            await ctx.redis.ping()
        except Exception as e:
            return JSONResponse({"status": "unavailable", "redis": type(e).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    for m in mods:
        app.include_router(m.router)
    app.add_middleware(UploadLimit, limit=settings.file.api.max_file_bytes)
    return app


class UploadLimit:
    """Refuses an upload whose Content-Length is over the limit without parsing it (the form parser
    would otherwise spool it all to disk first); uploads without one are counted as they stream."""

    SLACK = 64 * 1024  # multipart boundaries and headers around the file

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/files":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit + self.SLACK:
                msg = f"file is larger than {self.limit} bytes"
                body = openai_error_body(413, msg, "invalid_request_error", "file_too_large", "file")
                # Read and drop the body (no disk, no memory) so the client gets the answer, not a reset.
                while (await receive()).get("more_body"):
                    pass
                await JSONResponse(body, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)
