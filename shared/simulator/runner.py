"""Run the simulator beside synchronous code: in a background thread or in a subprocess.

Both handles offer the same surface: ``base_url``, ``port``, ``url_for(route)``, ``stats()``,
``reset()``, ``configure(patch, replace=False)``, ``stop()``, and use as a context manager::

    with SimulatorThread(SimulatorServer(cfg)).start() as sim:  # shares this process (and its GIL)
        ...
    with SimulatorProcess(cfg) as sim:                          # own process: multi-process benchmarks
        httpx.post(sim.url_for("openai") + "/chat/completions", json=...)
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from shared.simulator.config import SimConfig, effective_routes, public_dump
from shared.simulator.paths import route_base_url
from shared.simulator.server import SimulatorServer

T = TypeVar("T")
READY_PREFIX = "SIMULATOR_READY "
_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the ``shared`` package


class SimulatorThread:
    """A :class:`SimulatorServer` on its own event loop in a daemon thread."""

    def __init__(self, server: SimulatorServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host, self.port = host, port
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        self._thread = threading.Thread(target=self._run, name="fusebox-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator thread did not start in time")
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self.base_url = loop.run_until_complete(self.server.start(self.host, self.port))
            self.port = self.server.port
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the server's loop (server state is not thread-safe) and return its result."""
        assert self._loop is not None, "not started"

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def url_for(self, route: str) -> str:
        return self.server.url_for(route)

    def stats(self) -> dict[str, Any]:
        return self.call(self.server.stats)

    def reset(self) -> None:
        self.call(self.server.reset)

    def configure(self, patch: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Patch (or replace) the running config; returns it as JSON data (keys masked)."""
        return self.call(lambda: public_dump(self.server.configure(patch, replace=replace)))

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _config_json(cfg: SimConfig) -> str:
    """The config for a child process, keys included (only ever written to a private temp file)."""

    def reveal(o: Any) -> Any:
        if isinstance(o, SecretStr):
            return o.get_secret_value()
        raise TypeError(type(o).__name__)

    return json.dumps(cfg.model_dump(exclude_unset=True), default=reveal)


class SimulatorProcess:
    """The simulator in a child process (``python -m shared.simulator``), so it has its own GIL."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.host, self.port = host, port
        self.base_url = ""
        self.proc: subprocess.Popen[str] | None = None
        self._formats = {name: fmt for name, (fmt, _, _) in effective_routes(self.config).items()}
        self._urls: dict[str, str] = {}
        self._http: httpx.Client | None = None

    def start(self, timeout: float = 30.0) -> SimulatorProcess:
        fd, path = tempfile.mkstemp(prefix="fusebox-sim-", suffix=".json")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_config_json(self.config))
            env = dict(os.environ)
            env["PYTHONPATH"] = str(_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [sys.executable, "-m", "shared.simulator", "--ready", "--host", self.host]
            cmd += ["--port", str(self.port), "--config", path]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
            self.base_url = self._await_ready(timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            os.unlink(path)  # the child has read it once it is ready (or it is gone)
        self.port = int(self.base_url.rsplit(":", 1)[1])
        self._urls = {n: route_base_url(self.base_url, n, f) for n, f in self._formats.items()}
        self._http = httpx.Client(base_url=self.base_url, timeout=10.0)
        return self

    def _await_ready(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("simulator process did not become ready in time")
            readable, _, _ = select.select([self.proc.stdout], [], [], left)
            if readable:
                line = self.proc.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
                if not line:
                    code = self.proc.wait()
                    raise RuntimeError(f"simulator process exited with status {code} before it was ready")

    def url_for(self, route: str) -> str:
        return self._urls[route]

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None, "not started"
        resp = self._http.request(method, path, json=body)
        if resp.status_code >= 400:
            raise ValueError(resp.json().get("error", resp.text))
        return resp.json()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self._admin("GET", "/_sim/stats")
        return out

    def reset(self) -> None:
        self._admin("POST", "/_sim/reset")

    def configure(self, patch: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Returns the new config as JSON data (keys masked)."""
        out: dict[str, Any] = self._admin("POST", "/_sim/config", {**patch, "replace": replace})
        self._urls = out["urls"]
        return out

    def stop(self, timeout: float = 10.0) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
