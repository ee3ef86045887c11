"""Loads the Lua scripts that sit beside this module (shared/lua/*.lua).

A line ``--#include NAME.lua`` is replaced by that file, so scripts can share
small Lua helpers without copying them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_DIR = Path(__file__).parent / "lua"


@cache
def source(name: str) -> str:
    lines = []
    for line in (_DIR / f"{name}.lua").read_text().splitlines():
        if line.startswith("--#include "):
            lines.append((_DIR / line.split(maxsplit=1)[1].strip()).read_text())
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def load(redis: Redis, name: str) -> AsyncScript:
    """A script object that runs by EVALSHA and reloads itself after a server restart."""
    return redis.register_script(source(name))
