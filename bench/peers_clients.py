"""bench/peers.py's peers: a plain aiohttp client and LiteLLM Router ``acompletion``, each driving the mock
with a number of tasks. Each runs in its own process (peers.py's hidden ``--peer``), so imports and
threads are its own; LiteLLM from its own venv."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers_mock import MODEL, PEERS_SCRIPT, Mock

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = (
    ROOT / ".venv-litellm"
)  # python3 -m venv .venv-litellm && .venv-litellm/bin/pip install litellm


# -- peers (each in its own process, so imports and threads are its own) ---------------------------


def _payload(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}


async def run_aiohttp(base: str, n: int, conc: int) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        url = base + "/v1/chat/completions"
        headers = {"Authorization": "Bearer sk-peers"}
        todo = iter(range(n))

        async def one_task() -> None:
            for i in todo:
                async with s.post(url, json=_payload(i), headers=headers) as r:
                    await r.json()

        await asyncio.gather(*[one_task() for _ in range(conc)])  # warm-up: connections
        todo = iter(range(n))
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*[one_task() for _ in range(conc)])
        return {"secs": time.perf_counter() - t0, "cpu": time.process_time() - c0}


async def run_litellm(base: str, n: int, conc: int) -> dict[str, Any]:
    import litellm
    from litellm import Router

    litellm.telemetry = False
    router = Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": "openai/" + MODEL,
                    "api_base": base + "/v1",
                    "api_key": "sk-peers",
                },
            }
        ]
    )
    todo = iter(range(n))

    async def one_task() -> None:
        for i in todo:
            await router.acompletion(model=MODEL, messages=_payload(i)["messages"])

    todo = iter(range(conc))
    await asyncio.gather(*[one_task() for _ in range(conc)])
    todo = iter(range(n))
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*[one_task() for _ in range(conc)])
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"secs": secs, "cpu": cpu, "version": "litellm " + package_version("litellm")}


def peer(kind: str, mock: Mock, n: int, conc: int, procs: int = 1) -> dict[str, Any] | None:
    """``procs`` > 1: that many client processes at once, each with its share of the tasks and requests
    (the floor for as many processes as Fusebox has workers: each process's event loop then handles a
    share of the calls, and wakes up for fewer of them at a time)."""
    python = sys.executable
    if kind == "litellm":  # its own venv keeps litellm's pins out of Fusebox's
        python = os.environ.get("PEERS_LITELLM_PYTHON") or str(LITELLM_VENV / "bin" / "python")
        if not Path(python).exists():
            return None
    cmd = [python, PEERS_SCRIPT, "--peer", kind, "--base", mock.base, "-n", str(n // procs)]
    children = [
        subprocess.Popen(
            [*cmd, "--concurrency", str(conc // procs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    outs = [c.communicate(timeout=900) for c in children]
    if any(c.returncode != 0 for c in children):
        print(f"  {kind}: failed: {' '.join(e for _, e in outs).strip()[-400:]}", file=sys.stderr)
        return None
    got = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    return {**got[0], "secs": max(g["secs"] for g in got), "cpu": sum(g["cpu"] for g in got)}


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"
