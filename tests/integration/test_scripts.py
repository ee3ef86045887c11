"""Lua scripts run where the server lacks them: after a restart, and after a failover that moved the
connection between the SCRIPT LOAD and the retry (the script cache is not replicated)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared import scripts
from shared.scripts import ScriptCall, run_pipelined
from worker import lease


@pytest.fixture
def forgetful(redis: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server that never keeps a script loaded by SCRIPT LOAD: what a client sees when the load
    reached one server and its retry another."""

    async def load_elsewhere(script: str) -> str:
        return scripts.Script(redis, script).sha

    monkeypatch.setattr(redis, "script_load", load_elsewhere)
    return redis


def _unseen_release(redis: Any) -> scripts.Script:
    """Our lease release script under a body (so a sha) this server has never seen: no SCRIPT FLUSH,
    which would touch a server the suite may not own."""
    assert isinstance(scripts.load(redis, "release", lease.__file__), scripts.Script)
    return scripts.Script(redis, scripts.source("release", lease.__file__) + f"-- {uuid.uuid4().hex}\n")


async def test_a_script_call_runs_on_a_server_that_lacks_the_script(forgetful: Any) -> None:
    key = f"fbtest-scripts:{uuid.uuid4().hex}"
    release = _unseen_release(forgetful)  # drops the leases a worker holds
    await forgetful.set(key + "job", "me", px=60_000)
    assert (await forgetful.script_exists(release.sha)) == [False]
    assert await release(keys=[key + "q"], args=["me", key, "", "job", ""]) == 1
    assert await forgetful.exists(key + "job") == 0
    # EVAL cached it: the next call runs by EVALSHA
    assert (await forgetful.script_exists(release.sha)) == [True]


async def test_pipelined_calls_run_on_a_server_that_lacks_the_script(forgetful: Any) -> None:
    key = f"fbtest-scripts:{uuid.uuid4().hex}"
    release = _unseen_release(forgetful)
    for i in range(3):
        await forgetful.set(f"{key}job{i}", "me", px=60_000)
    calls = [ScriptCall(release, [key + "q"], ["me", key, "", f"job{i}", ""]) for i in range(3)]
    assert await run_pipelined(forgetful, calls) == [1, 1, 1]
    assert await forgetful.exists(*(f"{key}job{i}" for i in range(3))) == 0
