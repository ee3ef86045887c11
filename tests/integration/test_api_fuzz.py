"""Schemathesis against the served OpenAPI document: no 5xx, no response outside the schema.

The API and a worker run as real processes (`fusebox api`, `fusebox worker`) on the test's Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis import checks

from shared.embedded import free_port
from shared.redis_conn import connect
from shared.tenants import create_key
from tests.conftest import PYTHON, subprocess_env

# Semantic refusals of schema-valid input (an unknown model, an id that does not exist) are correct
# answers, so positive_data_acceptance is not among the checks; the brief is 0 5xx and 0 schema violations.
CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.status_code_conformance,
    checks.content_type_conformance,
]
EXAMPLES = 40  # per operation: bounded so the whole fuzz run stays well under a minute


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"fusebox api exited with {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("fusebox api did not become ready")


@pytest.fixture
def served(settings, tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = subprocess_env(settings)
    api = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "api", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=tmp_path,
    )
    worker = subprocess.Popen(
        [PYTHON, "-m", "producer.cli", "worker"], env=env, cwd=tmp_path, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, api)
        yield base
    finally:
        for p in (api, worker):
            p.terminate()
        for p in (api, worker):
            p.wait(10)


@pytest.mark.one_server
def test_fuzz_openapi(served, settings):  # type: ignore[no-untyped-def]
    async def make_key() -> str:
        r = connect(settings.redis_url or "", settings.keys)
        try:
            return await create_key(r, settings.keys, "fuzz")
        finally:
            await r.aclose()

    key = asyncio.run(make_key())
    schema = schemathesis.openapi.from_url(served + "/openapi.json")
    auth = {"Authorization": f"Bearer {key}"}
    ops = 0
    for result in schema.get_all_operations():
        op = result.ok()
        ops += 1

        @given(case=op.as_strategy())
        @hsettings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(base_url=served, headers=auth, checks=CHECKS, timeout=30)

        run()
    assert ops >= 15
