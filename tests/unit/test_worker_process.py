"""What a worker process of its own (``fusebox worker``) sets up for itself, and what an in-process
worker must leave alone: the host's event loop and garbage collector."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from fakeredis.aioredis import FakeRedis

from shared.config import Settings
from worker.settings import GC_YOUNG_THRESHOLD, build_worker

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, gc, json
from shared.config import Settings
from worker.settings import build_worker
before = gc.get_threshold()
build_worker(Settings(redis_url="redis://127.0.0.1:1/0"))  # connects lazily: no server needed
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "loop": type(asyncio.get_event_loop()).__module__}))
"""


def test_an_own_process_worker_freezes_its_imports_and_collects_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"][0] == 700  # CPython's default, so the change below is ours
    assert got["after"] == [GC_YOUNG_THRESHOLD, got["before"][1], got["before"][2]]
    assert got["frozen"] > 10_000  # the imports' objects: never scanned again
    assert got["loop"] == "uvloop"


async def test_an_in_process_worker_leaves_the_hosts_collector_alone() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    build_worker(Settings(redis_url="redis://127.0.0.1:1/0"), FakeRedis(), handle_signals=False)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
