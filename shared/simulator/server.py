"""The simulator HTTP server (aiohttp): provider wire formats on loopback plus ``/_sim`` admin.

Every format is served at its real paths under ``/<route>/`` (e.g. ``/openai/v1/chat/completions``,
``/groq/v1/chat/completions`` for an extra OpenAI-format route) and, for the built-in routes, at
the bare paths too (``/v1/chat/completions``, ``/v1/messages``, ``/v1beta/models/M:generateContent``,
``/api/chat``, ``/v2/chat``). Bare ``GET /v1/models`` is Anthropic's when the request carries
``anthropic-version``, else OpenAI's; Cohere's model list is at ``/cohere/v1/models``.

How each request is answered is :mod:`shared.simulator.responder`'s; this module is the server
around it: listening, the URL wiring and the ``/_sim`` admin (stats, reset, runtime config).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from shared.simulator.behaviour import Route, compile_routes
from shared.simulator.config import (
    Format,
    SimConfig,
    SimConfigError,
    patch_config,
    public_dump,
    validate_config,
)
from shared.simulator.formats.openai import azure_version_error
from shared.simulator.paths import GEMINI_OPS, PATHS, route_base_url
from shared.simulator.responder import Responder
from shared.simulator.wire import SimError

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def _json_response(status: int, data: Any) -> web.Response:
    return web.Response(status=status, body=_encode(data), headers={"Content-Type": "application/json"})


class SimulatorServer(Responder):
    """Serve simulated provider APIs; see the module docstring for paths, the responder for requests."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        super().__init__(compile_routes(self.config))
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url_for(self, route: str) -> str:
        """The provider ``base_url`` for ``route`` (see :func:`route_base_url`)."""
        return route_base_url(self.base_url, route, self.routes[route].format.name)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = a free port); returns the base URL."""
        # handler_cancellation: a client that gives up (timeout) frees its in-flight slot at once.
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        self._runner = runner
        self.host, self.port = host, int(runner.addresses[0][1])
        self._stopping = asyncio.Event()
        self._t0 = time.monotonic()
        return self.base_url

    async def stop(self) -> None:
        """Stop listening; held ("timeout") requests are dropped, others get a short grace period."""
        self._stopping.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimulatorServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- admin -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self.elapsed()
        out: dict[str, Any] = {}
        for route in self.routes.values():
            for r in route.all_routes():
                snap = r.stats.snapshot()
                snap.update(format=r.format.name, capacity=r.capacity, down=r.in_outage(now))
                out[r.key] = snap
        return {"elapsed_s": round(now, 3), "routes": out}

    def reset(self) -> None:
        for route in self.routes.values():
            for r in route.all_routes():
                r.stats.reset()

    def configure(self, patch: dict[str, Any], *, replace: bool = False) -> SimConfig:
        """Patch (or replace) the config at runtime; raises :class:`SimConfigError` if invalid.

        Besides the file's fields, a route (or per-model) entry may carry ``down_for_s``:
        an outage starting now for that many seconds.
        """
        patch = self._expand_down_for(dict(patch))
        new = validate_config(patch) if replace else patch_config(self.config, patch)
        self.routes = compile_routes(new, self.routes)
        self.config = new
        return new

    def _expand_down_for(self, patch: dict[str, Any]) -> dict[str, Any]:
        now = self.elapsed()

        def expand(entry: Any, current: Route | None) -> Any:
            if not isinstance(entry, dict) or "down_for_s" not in entry:
                return entry
            entry = dict(entry)
            secs = float(entry.pop("down_for_s"))
            base = entry.get("outages", [list(w) for w in current.windows] if current else [])
            entry["outages"] = [*base, [now, now + secs]]
            return entry

        if isinstance(patch.get("defaults"), dict) and "down_for_s" in patch["defaults"]:
            raise SimConfigError("down_for_s applies to a route: routes.NAME.down_for_s")
        routes = patch.get("routes")
        if isinstance(routes, dict):
            routes = dict(routes)
            for name, entry in routes.items():
                cur = self.routes.get(name)
                entry = expand(entry, cur)
                if isinstance(entry, dict) and isinstance(entry.get("per_model"), dict):
                    pm = {
                        m: expand(e, cur.per_model.get(m) if cur else None)
                        for m, e in entry["per_model"].items()
                    }
                    entry = {**entry, "per_model": pm}
                routes[name] = entry
            patch["routes"] = routes
        return patch

    def urls(self) -> dict[str, str]:
        return {name: self.url_for(name) for name in self.routes}

    # ---- HTTP wiring -----------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        add = app.router.add_route
        add("GET", "/_sim/stats", self._admin_stats)
        add("POST", "/_sim/reset", self._admin_reset)
        add("GET", "/_sim/config", self._admin_get_config)
        add("POST", "/_sim/config", self._admin_config)
        for (method, path), ops in PATHS.items():
            add(method, path, self._bare_handler(ops))
        add("POST", "/v1beta/models/{tail}", self._gemini_bare)
        add("POST", "/v1/models/{tail}", self._gemini_bare)  # Gemini's v1 API
        for (method, path), ops in PATHS.items():
            add(method, "/{route}" + path, self._prefixed_handler(ops))
        add("POST", "/{route}/v1beta/models/{tail}", self._gemini_prefixed)
        add("POST", "/{route}/v1/models/{tail}", self._gemini_prefixed)
        # Azure OpenAI's dated surface (its v1 surface, /openai/v1/..., is the openai route's own)
        add("POST", "/openai/deployments/{deployment}/chat/completions", self._azure_deployment)
        add("POST", "/openai/deployments/{deployment}/embeddings", self._azure_deployment)
        return app

    async def _azure_deployment(self, request: web.Request) -> web.StreamResponse:
        route, deployment = self.routes["openai"], request.match_info["deployment"]
        problem = azure_version_error(deployment, request.query.get("api-version"))
        if problem is not None:
            return self._reject(route, SimError("bad_request", problem, code="BadRequest"), "")
        op = "chat" if request.path.endswith("/chat/completions") else "embed"
        return await self._handle(request, route, op, deployment)

    def _bare_handler(self, ops: dict[Format, str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        formats = list(ops)

        async def handler(request: web.Request) -> web.StreamResponse:
            fmt = formats[0]
            if len(formats) > 1:  # GET /v1/models: Anthropic clients send anthropic-version
                fmt = "anthropic" if "anthropic-version" in request.headers else "openai"
            return await self._handle(request, self.routes[fmt], ops[fmt], None)

        return handler

    def _prefixed_handler(
        self, ops: dict[Format, str]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            route = self.routes.get(request.match_info["route"])
            if route is None or route.format.name not in ops:
                raise web.HTTPNotFound()
            return await self._handle(request, route, ops[route.format.name], None)

        return handler

    async def _gemini_bare(self, request: web.Request) -> web.StreamResponse:
        return await self._gemini(request, self.routes["gemini"])

    async def _gemini_prefixed(self, request: web.Request) -> web.StreamResponse:
        route = self.routes.get(request.match_info["route"])
        if route is None or route.format.name != "gemini":
            raise web.HTTPNotFound()
        return await self._gemini(request, route)

    async def _gemini(self, request: web.Request, route: Route) -> web.StreamResponse:
        model, _, method = request.match_info["tail"].rpartition(":")
        op = GEMINI_OPS.get(method)
        if not model or op is None:
            err = SimError("not_found", f"Method {method!r} is not served by the simulator.")
            return self._render_error(route, err, "")
        return await self._handle(request, route, op, model)

    # ---- admin handlers --------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return _json_response(200, self.stats())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response(200, self.stats())

    async def _admin_get_config(self, request: web.Request) -> web.Response:
        return _json_response(200, {"config": public_dump(self.config), "urls": self.urls()})

    async def _admin_config(self, request: web.Request) -> web.Response:
        try:
            patch = _decode(await request.read())
        except msgspec.DecodeError:
            return _json_response(400, {"error": "body must be a JSON object"})
        if not isinstance(patch, dict):
            return _json_response(400, {"error": "body must be a JSON object"})
        replace = bool(patch.pop("replace", False))
        try:
            cfg = self.configure(patch, replace=replace)
        except (SimConfigError, ValueError, TypeError) as e:
            return _json_response(400, {"error": str(e)})
        return _json_response(200, {"config": public_dump(cfg), "urls": self.urls()})
