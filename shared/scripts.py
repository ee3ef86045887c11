"""Loads the Lua scripts that sit beside this module (shared/lua/*.lua)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


@cache
def source(name: str) -> str:
    return (Path(__file__).parent / "lua" / f"{name}.lua").read_text()


def load(redis: Redis, name: str) -> AsyncScript:
    """A script object that runs by EVALSHA and reloads itself after a server restart."""
    return redis.register_script(source(name))
