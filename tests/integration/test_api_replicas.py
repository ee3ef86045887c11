"""Several `fusebox api` processes behind one Redis behave as one: nothing lives in a process."""

from __future__ import annotations

import asyncio
import json
import subprocess

from openai import AsyncOpenAI

from shared.embedded import free_port
from shared.tenants import create_key
from tests.conftest import PYTHON, subprocess_env
from tests.integration.test_api_fuzz import _wait_ready


async def test_two_api_processes_share_files_batches_and_waits(settings, redis, tmp_path):
    env = subprocess_env(settings)
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "producer.cli", "api", "--port", str(p), "--log-level", "warning"],
            env=env,
            cwd=tmp_path,
        )
        for p in ports
    ]
    procs.append(
        subprocess.Popen(
            [PYTHON, "-m", "producer.cli", "worker"], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL
        )
    )
    try:
        for p, proc in zip(ports, procs, strict=False):
            await asyncio.to_thread(_wait_ready, f"http://127.0.0.1:{p}", proc)
        key = await create_key(redis, settings.keys, "shared")
        a, b = (AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=key, max_retries=0) for p in ports)
        rows = [
            {
                "custom_id": f"x{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "simulated/chat", "messages": [{"role": "user", "content": str(i)}]},
            }
            for i in range(20)
        ]
        data = "\n".join(json.dumps(r) for r in rows).encode()
        f = await a.files.create(file=("x.jsonl", data), purpose="batch")
        assert (await b.files.content(f.id)).content == data
        batch = await b.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(600):
            got = await a.batches.retrieve(batch.id)
            if got.status == "completed":
                break
            await asyncio.sleep(0.1)
        assert (got.status, got.request_counts.completed) == ("completed", 20)
        out = (await b.files.content(got.output_file_id)).text.splitlines()
        assert len(out) == 20
        # synchronous requests on both replicas, concurrently: each waiter is woken through Redis
        replies = await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="simulated/chat", messages=[{"role": "user", "content": f"q{i}"}]
                )
                for i, c in enumerate([a, b] * 10)
            )
        )
        assert len({r.id for r in replies}) == 20 and all(r.choices[0].message.content for r in replies)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
