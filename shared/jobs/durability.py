"""``[redis] durable = true``: a submission is acknowledged only once Redis has it on disk.

WAITAOF waits for the AOF fsync of the calling connection's last write. Connections come from a
pool, so the wait is sent in one pipeline right after a small write of its own: the replication
offset only grows, so that write's fsync covers every earlier write of the submission.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.config import ConfigError, RedisConfig
from shared.keys import Keys


class NotDurable(RuntimeError):
    """Redis did not confirm the fsync in time: the submission may be lost if Redis crashes now."""


async def check_server(redis: Redis, cfg: RedisConfig) -> None:
    """ConfigError unless this server can honour ``durable = true`` (WAITAOF and AOF on)."""
    info = await redis.info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    version = info.get("valkey_version") or info.get("redis_version", "?")
    try:
        await redis.execute_command("WAITAOF", 0, 0, 0)  # waits for nothing; only asks if it exists
    except ResponseError as e:
        raise ConfigError(
            f"[redis] durable = true needs WAITAOF (Redis >= 7.2 or Valkey >= 8), but the server is "
            f"{name} {version} ({e}): upgrade it, or set durable = false (acknowledged lines may then "
            "be lost if Redis crashes within a second of a submission)"
        ) from None
    if int((await redis.info("persistence")).get("aof_enabled", 0)) != 1:
        raise ConfigError(
            "[redis] durable = true needs the server's append-only file: set 'appendonly yes' and "
            "'appendfsync everysec' in its configuration (fusebox redis does)"
        )
    if cfg.durable_replicas:
        replicas = int((await redis.info("replication")).get("connected_slaves", 0))
        if replicas < cfg.durable_replicas:
            raise ConfigError(
                f"[redis] durable_replicas = {cfg.durable_replicas}, but the primary has {replicas} "
                "connected replicas"
            )


async def wait_on_disk(redis: Redis, keys: Keys, cfg: RedisConfig) -> None:
    """Return once every write made so far is fsynced (locally, and on ``durable_replicas``)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.durable_mark, repr(time.time()))
        pipe.execute_command("WAITAOF", 1, cfg.durable_replicas, cfg.durable_timeout_ms)
        try:
            _, (local, replicas) = await pipe.execute()
        except ResponseError as e:  # e.g. AOF switched off at runtime
            raise NotDurable(f"WAITAOF failed: {e}") from None
    if int(local) < 1 or int(replicas) < cfg.durable_replicas:
        raise NotDurable(
            f"Redis did not confirm the submission on disk within {cfg.durable_timeout_ms} ms "
            f"(local fsync: {local}, replicas: {replicas}/{cfg.durable_replicas}); submit it again "
            "(a batch resumes by its id)"
        )
