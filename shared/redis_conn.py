"""One way to open Redis: an arq pool with Fusebox's msgpack codec and queue name."""

from __future__ import annotations

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from shared import codec
from shared.keys import Keys


def connect(url: str, keys: Keys) -> ArqRedis:
    """``url`` may be redis://, rediss:// or unix:// (the embedded server uses a unix socket)."""
    pool = ConnectionPool.from_url(url, health_check_interval=30)
    return ArqRedis(
        connection_pool=pool,
        job_serializer=codec.arq_serializer,
        job_deserializer=codec.arq_deserializer,
        default_queue_name=keys.queue,
    )


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
