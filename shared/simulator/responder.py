"""How the simulator answers one request on a route, in the order a real provider would.

Per request: outage -> auth -> request validation -> unknown model -> context window
-> injected fast error (429/503/529) -> hidden capacity (429, not counted in flight) -> admitted
(in flight): latency, then injected 500 / timeout / malformed body, or the reply.
The hot path does no logging and no per-request allocation beyond the reply itself.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import msgspec
from aiohttp import web

from shared.simulator.behaviour import Route
from shared.simulator.wire import ChatCall, EmbedCall, SimError, WireError, chat_reply, embedding_dims, vector

_decode = msgspec.json.decode


class Responder:
    """Answers requests from compiled routes; :class:`SimulatorServer` adds the HTTP server around it."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self._t0 = time.monotonic()
        self._stopping = asyncio.Event()
        self._ids = itertools.count(1)

    def elapsed(self) -> float:
        """Seconds since start (outage windows are relative to it)."""
        return time.monotonic() - self._t0

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
