"""bench/peers.py's mock provider: an aiohttp server (run in its own process through peers.py's hidden
``--serve-mock``) that answers OpenAI chat completions after a fixed latency and records how many
requests it holds at once, and ``Mock``, the handle the benchmark starts, reads and resets it with."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "bench-model"
# the entry point: its hidden options (--serve-mock, --peer) run the mock and each peer in their own process
PEERS_SCRIPT = str(Path(__file__).with_name("peers.py"))


# -- the mock provider (runs in its own process) ------------------------------------------------------


def serve_mock(port: int, latency_ms: float) -> None:
    from aiohttp import web

    state = {"inflight": 0, "max": 0, "count": 0, "first": 0.0, "t99": 0.0, "last": 0.0}
    ends: list[float] = []  # when each call was answered, for the tail
    # (time, calls held) at each change: the mean held over the middle of the run tells slot gaps
    # between calls (a client slow to send the next) from the ramp at the start and the tail at the end
    held: list[tuple[float, int]] = []
    body = json.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        state["inflight"] += 1
        held.append((time.perf_counter(), state["inflight"]))
        state["count"] += 1
        if not state["first"]:
            state["first"] = time.time()
        state["max"] = max(state["max"], state["inflight"])
        try:
            await asyncio.sleep(latency_ms / 1000)
        finally:
            state["inflight"] -= 1
            held.append((time.perf_counter(), state["inflight"]))
            ends.append(time.time())
        return web.Response(body=body, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        if ends:
            state.update(t99=ends[int(len(ends) * 0.99) - 1 if len(ends) >= 100 else -1], last=ends[-1])
        return web.json_response({**state, "mid_held": _mean_held(held)})

    async def reset(request: web.Request) -> web.Response:
        state.update(max=0, count=0, first=0.0, t99=0.0, last=0.0)
        ends.clear()
        held.clear()
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _mean_held(held: list[tuple[float, int]]) -> float | None:
    """Calls held on average between the 10% and the 90% marks of the changes (time-weighted)."""
    if len(held) < 100:
        return None
    a, b = len(held) // 10, len(held) * 9 // 10
    area = sum(n * (held[i + 1][0] - t) for i, (t, n) in enumerate(held[a:b], a))
    return area / (held[b][0] - held[a][0])


class Mock:
    def __init__(self, latency_ms: float) -> None:
        from shared.embedded import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, PEERS_SCRIPT, "--serve-mock", str(self.port), "--latency-ms", str(latency_ms)]
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _req(self, path: str, method: str = "GET") -> dict[str, Any]:
        import urllib.request

        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._req("/stats")

    def reset(self) -> None:
        self._req("/reset", "POST")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
