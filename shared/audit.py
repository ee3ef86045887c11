"""The audit trail: an append-only Redis stream of admin actions (who, when, what, on what).

Entries are only ever added (XADD, capped at about ``MAX_ENTRIES`` so a busy deployment cannot fill
Redis) and read; nothing edits or deletes one. Details are passed through ``redact`` before they are
stored, and callers never put a secret in them: a key change records the provider and the masked
value, never the key.
"""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

from redis.asyncio import Redis

from shared.keys import Keys
from shared.redact import redact

MAX_ENTRIES = 100_000
MAX_DETAILS = 2000


def cli_actor() -> str:
    """Who runs a CLI command: the OS user (the CLI talks to Redis directly, with no API key)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry in a container
        return "cli:unknown"


async def record(
    redis: Redis,
    keys: Keys,
    *,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
) -> str:
    """Append one entry; returns its stream id."""
    fields = {
        "actor": actor,
        "at": f"{time.time():.3f}",
        "action": action,
        "target": target,
        "details": redact(json.dumps(details or {}, sort_keys=True, default=str), limit=MAX_DETAILS),
    }
    entry_id = await redis.xadd(keys.audit, fields, maxlen=MAX_ENTRIES, approximate=True)  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def read(redis: Redis, keys: Keys, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first."""
    rows = await redis.xrevrange(keys.audit, count=max(1, limit))
    out = []
    for entry_id, fields in rows:
        f = {_s(k): _s(v) for k, v in fields.items()}
        try:
            details = json.loads(f.get("details", "{}"))
        except ValueError:  # cut by redact's length limit
            details = {"text": f.get("details", "")}
        out.append(
            {
                "id": _s(entry_id),
                "at": float(f.get("at", 0)),
                "actor": f.get("actor", ""),
                "action": f.get("action", ""),
                "target": f.get("target", ""),
                "details": details,
            }
        )
    return out
