"""The simulator HTTP server (aiohttp): provider wire formats on loopback plus ``/_sim`` admin.

Every format is served at its real paths under ``/<route>/`` (e.g. ``/openai/v1/chat/completions``,
``/groq/v1/chat/completions`` for an extra OpenAI-format route) and, for the built-in routes, at
the bare paths too (``/v1/chat/completions``, ``/v1/messages``, ``/v1beta/models/M:generateContent``,
``/api/chat``, ``/v2/chat``). Bare ``GET /v1/models`` is Anthropic's when the request carries
``anthropic-version``, else OpenAI's; Cohere's model list is at ``/cohere/v1/models``.

Per request, in order: outage -> auth -> request validation -> unknown model -> context window
-> injected fast error (429/503/529) -> hidden capacity (429, not counted in flight) -> admitted
(in flight): latency, then injected 500 / timeout / malformed body, or the reply.
The hot path does no logging and no per-request allocation beyond the reply itself.
"""

from __future__ import annotations

import asyncio
import itertools
import math
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
from shared.simulator.wire import ChatCall, EmbedCall, SimError, WireError, chat_reply, embedding_dims, vector

_decode = msgspec.json.decode
_encode = msgspec.json.encode

# (method, path) -> {format: operation}; gemini's model-in-path routes are handled separately.
_PATHS: dict[tuple[str, str], dict[Format, str]] = {
    ("POST", "/v1/chat/completions"): {"openai": "chat"},
    ("POST", "/v1/embeddings"): {"openai": "embed"},
    ("GET", "/v1/models"): {"openai": "models", "anthropic": "models", "cohere": "models"},
    ("POST", "/v1/messages"): {"anthropic": "chat"},
    ("GET", "/v1beta/models"): {"gemini": "models"},
    ("POST", "/api/chat"): {"ollama": "chat"},
    ("POST", "/api/embed"): {"ollama": "embed"},
    ("GET", "/api/tags"): {"ollama": "models"},
    ("POST", "/v2/chat"): {"cohere": "chat"},
    ("POST", "/v2/embed"): {"cohere": "embed"},
}
_VERSION_SUFFIX: dict[str, str] = {"openai": "/v1", "gemini": "/v1beta"}
_GEMINI_OPS = {"generateContent": "chat", "embedContent": "embed", "batchEmbedContents": "batch_embed"}


def route_base_url(base: str, route: str, fmt: Format) -> str:
    """The ``base_url`` a provider of this format should use to reach ``route``.

    As Fusebox's adapters (and the vendors' docs) write them: OpenAI's and Gemini's include the
    API version (``.../v1``, ``.../v1beta``); Anthropic, Ollama and Cohere clients append theirs
    (``/v1/messages``, ``/api/chat``, ``/v2/chat``).
    """
    return f"{base}/{route}{_VERSION_SUFFIX.get(fmt, '')}"


def _json_response(status: int, data: Any) -> web.Response:
    return web.Response(status=status, body=_encode(data), headers={"Content-Type": "application/json"})


class SimulatorServer:
    """Serve simulated provider APIs; see the module docstring for paths and request handling."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.routes: dict[str, Route] = compile_routes(self.config)
        self.host = "127.0.0.1"
        self.port = 0
        self._t0 = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._ids = itertools.count(1)
        self.app = self._build_app()

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url_for(self, route: str) -> str:
        """The provider ``base_url`` for ``route`` (see :func:`route_base_url`)."""
        return route_base_url(self.base_url, route, self.routes[route].format.name)

    def elapsed(self) -> float:
        """Seconds since start (outage windows are relative to it)."""
        return time.monotonic() - self._t0

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
        for (method, path), ops in _PATHS.items():
            add(method, path, self._bare_handler(ops))
        add("POST", "/v1beta/models/{tail}", self._gemini_bare)
        add("POST", "/v1/models/{tail}", self._gemini_bare)  # Gemini's v1 API
        for (method, path), ops in _PATHS.items():
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
        op = _GEMINI_OPS.get(method)
        if not model or op is None:
            err = SimError("not_found", f"Method {method!r} is not served by the simulator.")
            return self._render_error(route, err, "")
        return await self._handle(request, route, op, model)

    # ---- the request path ------------------------------------------------------------------

    def _render_error(self, r: Route, err: SimError, rid: str) -> web.Response:
        fmt = r.format
        err.request_id = rid
        status, headers, body = fmt.render_error(err)
        headers["Content-Type"] = "application/json"
        if rid:
            headers[fmt.request_id_header] = rid  # type: ignore[index]
        if status == 429 and r.retry_after_header:
            headers["Retry-After"] = str(math.ceil(r.retry_after_s))
        return web.Response(status=status, body=body, headers=headers)

    def _reject(self, r: Route, err: SimError, rid: str) -> web.Response:
        resp = self._render_error(r, err, rid)
        r.stats.record(resp.status)
        return resp

    async def _handle(
        self, request: web.Request, route: Route, op: str, path_model: str | None
    ) -> web.StreamResponse:
        fmt = route.format
        rid = f"req_sim{next(self._ids):018x}" if fmt.request_id_header else ""
        if op == "models":
            return await self._models(request, route, rid)
        raw = await request.read()
        call: ChatCall | EmbedCall | None = None
        err: SimError | None = None
        try:
            fmt.check_headers(request.headers)
            body = _decode(raw)
            if op == "chat":
                call = fmt.parse_chat(body, path_model)
            else:
                call = fmt.parse_embed(body, path_model, op == "batch_embed")
        except WireError as e:
            err = e.error
        except msgspec.DecodeError:
            err = SimError("invalid_json")
        r = route.per_model.get(call.model, route) if (call is not None and route.per_model) else route
        st = r.stats
        st.requests += 1
        st.record_key(fmt.api_key(request.headers, request.query))
        if r.windows or r.down:
            if r.in_outage(self.elapsed()):
                st.outage_rejections += 1
                if r.disconnect:
                    return await self._disconnect(request)
                return self._reject(r, SimError("outage"), rid)
        if route.api_key is not None and fmt.api_key(request.headers, request.query) != route.api_key:
            return self._reject(r, SimError("unauthorized"), rid)
        if err is not None or call is None:
            return self._reject(r, err or SimError("bad_request", "invalid request"), rid)
        model = call.model
        if route.served is not None and not route.serves(model):
            return self._reject(r, SimError("model_not_found", model=model), rid)
        if (
            r.context_window is not None
            and isinstance(call, ChatCall)
            and call.prompt_tokens > r.context_window
        ):
            return self._reject(
                r, SimError("context_length", tokens=call.prompt_tokens, limit=r.context_window), rid
            )
        kind = r.draw_error() if r.error_cum else None
        if kind is not None and kind in ("rate_limit", "unavailable", "overloaded"):
            # Fast rejections: the real APIs answer these before doing any work.
            st.injected[kind] = st.injected.get(kind, 0) + 1
            err = SimError(kind, model=model, retry_after_s=r.retry_after_s, capacity=r.capacity)
            return self._reject(r, err, rid)
        if r.capacity is not None and st.in_flight >= r.capacity:
            st.capacity_rejections += 1
            err = SimError("rate_limit", model=model, retry_after_s=r.retry_after_s, capacity=r.capacity)
            return self._reject(r, err, rid)
        st.in_flight += 1
        if st.in_flight > st.max_in_flight:
            st.max_in_flight = st.in_flight
        status = 499  # recorded if the client goes away first (nginx's "client closed request")
        try:
            if kind is not None:
                st.injected[kind] = st.injected.get(kind, 0) + 1
            if kind == "timeout":
                if await self._hold(r.hold_s):
                    status = 0  # server stopping: the connection is dropped, nothing was answered
                    return await self._disconnect(request)
                status = 504
                return self._render_error(r, SimError("timeout"), rid)
            resp = await self._work(r, call, rid, kind)
            live = self._live(r)  # an outage set meanwhile recompiled the routes
            if live is not None and (live.windows or live.down) and live.in_outage(self.elapsed()):
                # A host that goes down answers nothing it was still working on either.
                st.outage_rejections += 1
                if live.disconnect:
                    status = 0
                    return await self._disconnect(request)
                resp = self._render_error(live, SimError("outage"), rid)
            status = resp.status
            return resp
        finally:
            st.in_flight -= 1
            if status:
                st.record(status)

    def _live(self, r: Route) -> Route | None:
        name, _, model = r.key.partition("/")
        cur = self.routes.get(name)
        return cur.per_model.get(model) if (cur is not None and model) else cur

    async def _work(self, r: Route, call: ChatCall | EmbedCall, rid: str, kind: str | None) -> web.Response:
        fmt = r.format
        started = time.monotonic()
        if isinstance(call, ChatCall):
            replies = [chat_reply(call, i) for i in range(call.n)]
            delay = r.sample_latency() if r.sample_latency is not None else 0.0
            if r.per_token_s:
                delay += r.per_token_s * sum(x.completion_tokens for x in replies)
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == "server_error":
                return self._render_error(r, SimError("server_error"), rid)
            body, ctype = fmt.render_chat(call, replies, time.monotonic() - started)
        else:
            delay = r.sample_latency() if r.sample_latency is not None else 0.0
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == "server_error":
                return self._render_error(r, SimError("server_error"), rid)
            dims = embedding_dims(call.model, call.dims, r.embedding_dims)
            vectors = [vector(call.model, t, dims) for t in call.texts]
            body, ctype = fmt.render_embed(call, vectors), "application/json"
        if kind == "malformed":
            body = body[: max(1, len(body) // 2)]
        headers = {"Content-Type": ctype}
        if rid:
            headers[fmt.request_id_header] = rid  # type: ignore[index]
        return web.Response(status=200, body=body, headers=headers)

    async def _hold(self, seconds: float) -> bool:
        """Sit on a request; True if the server started stopping meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _disconnect(self, request: web.Request) -> web.StreamResponse:
        """Drop the connection without an answer (what a client sees when a host goes away)."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError

    async def _models(self, request: web.Request, route: Route, rid: str) -> web.StreamResponse:
        # Model listings (health checks) are counted apart from the requests that do work.
        route.stats.model_list_requests += 1
        if route.in_outage(self.elapsed()):
            if route.disconnect:
                return await self._disconnect(request)
            return self._render_error(route, SimError("outage"), rid)
        if (
            route.api_key is not None
            and route.format.api_key(request.headers, request.query) != route.api_key
        ):
            return self._render_error(route, SimError("unauthorized"), rid)
        models = list(route.models)
        models += [m for m in route.per_model if m not in models]
        headers = {"Content-Type": "application/json"}
        if rid:
            headers[route.format.request_id_header] = rid  # type: ignore[index]
        return web.Response(status=200, body=route.format.render_models(models), headers=headers)

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
