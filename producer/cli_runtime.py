"""What the batch commands share: a connected client, checks on their files, JSON output.

``fusebox run`` makes the same file checks. Heavy imports (the client) happen when a command
runs, never at registration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.cli_errors import CliError, check_redis_url

if TYPE_CHECKING:
    from producer.client import FuseboxClient
    from shared.config import Settings


def check_writable(*paths: str | Path | None) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    for raw in paths:
        if raw is None:
            continue
        p = Path(raw)
        if p.is_dir():
            raise CliError(f"cannot write {p}: it is a directory")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise CliError(f"cannot write {p}: directory {parent} does not exist")
        if (p.exists() and not os.access(p, os.W_OK)) or not os.access(parent, os.W_OK):
            raise CliError(f"cannot write {p}: permission denied")


def check_input(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise CliError(f"input file {path} does not exist")
    if p.is_dir():
        raise CliError(f"input {path} is a directory, not a file")


def with_client(fn: Callable[[FuseboxClient, argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        if not settings.redis_url:
            raise CliError("REDIS_URL is not set (these commands talk to a running deployment)")
        check_redis_url(settings.redis_url)
        from producer.client import FuseboxClient

        async def main() -> int:
            client = FuseboxClient.connect(settings)
            try:
                return await fn(client, args)
            except KeyError as e:
                raise CliError(str(e.args[0])) from None
            finally:
                try:
                    await client.aclose()
                except Exception:  # closing a pool to an unreachable server: nothing to tell
                    pass

        return asyncio.run(main())

    return run


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
