"""Loads the Lua scripts that sit beside the modules running them, and runs them.

``load(redis, "admit", __file__)`` reads ``admit.lua`` from the calling module's directory. A line
``--#include NAME.lua`` is replaced by that file from the including script's own directory, or, for
a path with a slash (``--#include shared/jobs/_finish.lua``), from the project root (the directory
holding ``shared/``), so scripts can share small Lua helpers without copying them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.pipelined import send_commands

_ROOT = Path(__file__).resolve().parent.parent  # holds shared/ and worker/, in a checkout or installed


@cache
def source(name: str, beside: str) -> str:
    """The text of ``NAME.lua`` in the directory of the module file ``beside`` (its ``__file__``),
    its includes inlined."""
    path = Path(beside).parent / f"{name}.lua"
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("--#include "):
            include = line.split(maxsplit=1)[1].strip()
            lines.append((_ROOT / include if "/" in include else path.parent / include).read_text())
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class Script(AsyncScript):
    """Runs by EVALSHA; a server that lacks the script (restarted, or a failover that moved us to a
    replica: the script cache is not replicated) gets it by EVAL, which always runs and caches it.
    redis-py's own SCRIPT LOAD + EVALSHA retry can meet a second server in between and fail again."""

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        client = client or self.registered_client
        keys, args = tuple(keys), tuple(args)
        if not isinstance(client, Pipeline):  # a round trip of its own: packed in C (shared/pipelined.py)
            return (await run_pipelined(client, [ScriptCall(self, list(keys), list(args))]))[0]
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.script, len(keys), *keys, *args)


def load(redis: Redis, name: str, beside: str) -> AsyncScript:
    """``NAME.lua`` from beside the module file ``beside`` (pass ``__file__``), as a script object
    that runs by EVALSHA and falls back to EVAL where the server lacks it."""
    return Script(redis, source(name, beside))


class ScriptCall(NamedTuple):
    script: AsyncScript
    keys: list[str]
    args: list[Any]


async def run_pipelined(
    redis: Redis, calls: Sequence[ScriptCall], *, raise_on_error: bool = True
) -> list[Any]:
    """Several script calls in ONE round trip (EVALSHA each, in order, not atomic together).

    redis-py's own pipelined scripts check SCRIPT EXISTS on every execute, an extra
    round trip; here only the calls refused for a script the server lacks (it restarted,
    or a failover moved us) run again, by EVAL (see ``Script``). With
    ``raise_on_error=False`` a call's error (a script error) is returned in its place, so
    the others' results still count.
    """
    results = await _evalsha_all(redis, calls)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        again = await _evalsha_all(redis, [calls[i] for i in missing], by_body=True)
        for i, r in zip(missing, again, strict=True):
            results[i] = r
    if raise_on_error:
        for r in results:
            if isinstance(r, Exception):
                raise r
    return results


async def _evalsha_all(redis: Redis, calls: Sequence[ScriptCall], *, by_body: bool = False) -> list[Any]:
    if by_body:
        cmds = [("EVAL", c.script.script, len(c.keys), *c.keys, *c.args) for c in calls]
    else:
        cmds = [("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls]
    return await send_commands(redis, cmds)
