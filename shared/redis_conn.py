"""One way to open Redis: an arq pool with Fusebox's msgpack codec and queue name.

Besides redis://, rediss:// and unix:// URLs, ``redis+sentinel://host:port,host:port/MASTER[/DB]``
connects through Redis Sentinel (``Settings`` builds it from ``REDIS_SENTINELS`` and
``REDIS_SENTINEL_MASTER``): the pool asks the sentinels where the primary is, and a command that
meets a dead or demoted primary reconnects to the promoted one and runs again.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit, urlunsplit

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

from shared import codec
from shared.config import ConfigError
from shared.keys import Keys

SENTINEL_SCHEME = "redis+sentinel"
# A failover takes down-after-milliseconds plus an election (seconds); retrying for up to ~30 s
# lets every command ride it out. ReadOnlyError: the old primary came back as a replica.
FAILOVER_RETRIES = 60
FAILOVER_BACKOFF = ExponentialBackoff(cap=0.5, base=0.02)


def connect(url: str, keys: Keys) -> ArqRedis:
    """``url`` may be redis://, rediss://, unix:// (the embedded server) or redis+sentinel://."""
    if url.startswith(SENTINEL_SCHEME + "://"):
        pool: ConnectionPool = sentinel_pool(url)
    else:
        pool = ConnectionPool.from_url(url, health_check_interval=30)
    return ArqRedis(
        connection_pool=pool,
        job_serializer=codec.arq_serializer,
        job_deserializer=codec.arq_deserializer,
        default_queue_name=keys.queue,
    )


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """-> (sentinel addresses, master name, db, password of the data nodes from the URL)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    password = unquote(parts.password) if parts.password else None
    hosts: list[tuple[str, int]] = []
    if not netloc:
        raise ConfigError("REDIS_SENTINELS is not set: give the sentinels as host:port,host:port")
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"REDIS_SENTINELS: {item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError("REDIS_SENTINEL_MASTER is not set: name the master the sentinels monitor")
    db = int(path[1]) if len(path) > 1 else 0
    return hosts, unquote(path[0]), db, password


def sentinel_pool(url: str) -> SentinelConnectionPool:
    """A pool whose connections find the primary through the sentinels, retried across a failover.

    Passwords come from the environment, never from a logged URL: ``REDIS_PASSWORD`` for the
    primary and replicas (or the URL's own), ``REDIS_SENTINEL_PASSWORD`` for the sentinels.
    """
    hosts, master, db, url_password = parse_sentinel_url(url)
    password = url_password or os.environ.get("REDIS_PASSWORD") or None
    sentinel_kwargs: dict[str, object] = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0}
    if os.environ.get("REDIS_SENTINEL_PASSWORD"):
        sentinel_kwargs["password"] = os.environ["REDIS_SENTINEL_PASSWORD"]
    manager = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)
    return SentinelConnectionPool(
        master,
        manager,
        db=db,
        password=password,
        socket_connect_timeout=2.0,
        # Bounds a call to a primary that vanished without closing its sockets (network cut).
        socket_timeout=15.0,
        health_check_interval=30,
        retry=Retry(FAILOVER_BACKOFF, FAILOVER_RETRIES),
        retry_on_error=[ConnectionError, TimeoutError, ReadOnlyError],
    )


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
