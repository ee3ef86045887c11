"""A real deployment on loopback for benchmarks and proofs: Redis, the simulator, worker processes.

    with Stack(sim_routes={...}, providers={...}, workers=4) as stack:
        sub = stack.submit(lines)
        counts = stack.wait(sub.batch_id)
        stack.sim.stats()

Everything runs on this machine: the bundled Valkey (or REDIS_URL), the
simulator in its own process, and ``fusebox worker`` processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.client import FuseboxClient, Submission  # noqa: E402
from shared.config import FileConfig, Settings  # noqa: E402
from shared.embedded import EmbeddedValkey, free_port  # noqa: E402
from shared.gate import Gate  # noqa: E402
from shared.jobs.store import BatchCounts  # noqa: E402
from shared.redis_conn import connect  # noqa: E402
from shared.schema import JobResult  # noqa: E402
from shared.simulator.config import SimConfig  # noqa: E402
from shared.simulator.runner import SimulatorProcess  # noqa: E402

SIM_KEY_ENV = "FUSEBOX_SIM_KEY"


def chat_lines(n: int, model: str, prefix: str = "c") -> list[str]:
    return [
        json.dumps(
            {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"question {prefix}{i}"}]},
            }
        )
        for i in range(n)
    ]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def to_toml(cfg: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for fusebox.toml: scalars, lists and nested tables."""
    scalars = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in cfg.items() if isinstance(v, dict)}
    out = [f"{k} = {_toml(v)}" for k, v in scalars.items()]
    for k, v in tables.items():
        name = f"{prefix}.{k}" if prefix else k
        out.append(f"\n[{name}]")
        out.append(to_toml(v, name))
    return "\n".join(out)


class Stack:
    def __init__(
        self,
        *,
        sim_routes: dict[str, dict[str, Any]],
        providers: dict[str, dict[str, Any]],
        workers: int = 2,
        extra_config: dict[str, Any] | None = None,
        redis_url: str | None = None,
        seed: int = 7,
    ) -> None:
        self.sim_cfg = SimConfig.model_validate({"seed": seed, "routes": sim_routes})
        self.provider_cfg = providers
        self.extra = extra_config or {}
        self.n_workers = workers
        self.redis_url = redis_url or os.environ.get("FUSEBOX_TEST_REDIS_URL")
        self.tmp = Path(tempfile.mkdtemp(prefix="fusebox-stack-"))
        self.namespace = "fbstack-" + uuid.uuid4().hex[:8]
        self.server: EmbeddedValkey | None = None
        self.sim: SimulatorProcess | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.client: FuseboxClient | None = None
        self._gate: Gate | None = None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> Stack:
        if not self.redis_url:
            self.server = EmbeddedValkey(self.tmp / "valkey", tcp_port=free_port(), persist=False)
            self.redis_url = self.server.start()
        self.sim = SimulatorProcess(self.sim_cfg)
        self.sim.__enter__()
        providers = {}
        for name, p in self.provider_cfg.items():
            p = dict(p)
            route = p.pop("route", name)
            p.setdefault("type", "openai")
            p["base_url"] = self.sim.url_for(route)
            p["api_key_env"] = SIM_KEY_ENV
            providers[name] = p
        cfg = {"worker": {"max_jobs": 200, "poll_delay": 0.01}, **self.extra, "providers": providers}
        self.config_path = self.tmp / "fusebox.toml"
        self.config_path.write_text(to_toml(cfg) + "\n")
        self.file_config = FileConfig.model_validate(cfg)
        self.settings = Settings(redis_url=self.redis_url, namespace=self.namespace).with_file(
            self.file_config
        )
        self.client = FuseboxClient(connect(self.redis_url, self.settings.keys), self.settings)
        for _ in range(self.n_workers):
            self.start_worker()
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url or "",
            FUSEBOX_NAMESPACE=self.namespace,
            FUSEBOX_CONFIG=str(self.config_path),
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env[SIM_KEY_ENV] = "sk-sim-" + "x" * 16
        os.environ[SIM_KEY_ENV] = env[SIM_KEY_ENV]
        return env

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")  # open while the worker lives
        p = subprocess.Popen(
            [sys.executable, "-m", "producer.cli", "worker"], env=self.env(), stdout=log, stderr=log
        )
        self.procs.append(p)
        return p

    def kill_worker(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(10)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.client is not None:
            self.run(self.client.aclose())
        if self.sim is not None:
            self.sim.__exit__(None, None, None)
        if self.server is not None:
            self.server.wipe()
        self.loop.close()

    # -- driving -------------------------------------------------------------
    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def submit(self, lines: Iterable[str], **kwargs: Any) -> Submission:
        assert self.client is not None
        return self.run(self.client.submit_batch(lines, **kwargs))

    def wait(self, batch_id: str, timeout: float = 600) -> BatchCounts:
        assert self.client is not None
        return self.run(self.client.wait_batch(batch_id, timeout=timeout, poll=0.05))

    def timed_batch(self, lines: list[str], timeout: float = 600) -> tuple[BatchCounts, float, str]:
        """Submit and wait; returns (counts, seconds from submit to the last result, batch id)."""
        t0 = time.perf_counter()
        sub = self.submit(lines)
        counts = self.wait(sub.batch_id, timeout)
        return counts, time.perf_counter() - t0, sub.batch_id

    @property
    def gate(self) -> Gate:
        """The gate as the workers see it (same Redis, namespace and config), for ops and inspection."""
        if self._gate is None:
            assert self.client is not None
            self._gate = Gate(self.client.redis, self.settings.keys, self.file_config)
        return self._gate

    def gate_snapshot(self, provider: str) -> dict[str, Any]:
        return self.run(self.gate.snapshot(provider))

    def transitions(self, scope: str, count: int = 200) -> list[dict[str, Any]]:
        """Breaker transitions of ``scope``, oldest first."""
        return list(reversed(self.run(self.gate.transitions(count, scope))))

    def probes_since(self, scope: str, gen: int, per_half_open: int) -> int:
        """Upper bound on the probe calls ``scope`` admitted after generation ``gen``: each half-open
        admits at most ``per_half_open``. Read after the simulator's counts, it covers every probe that
        could be in them (on a slow machine an open wait may end before the counts are read)."""
        evs = self.transitions(scope)
        return per_half_open * sum(1 for ev in evs if ev["to"] == "half_open" and int(ev["gen"]) > gen)

    def results(self, batch_id: str) -> list[JobResult | None]:
        """Every line's result in input order (None for a line without one)."""
        assert self.client is not None

        async def collect() -> list[JobResult | None]:
            assert self.client is not None
            return [r async for r in self.client.results(batch_id)]

        return self.run(collect())
