"""Many commands in one round trip, packed in C: the hot path's pipelines without redis-py's per-command
Python work.

A group-commit flush (worker/group_commit.py) sends a few dozen EVALSHA calls of 20-40 arguments each;
redis-py's ``Pipeline`` packs every argument in Python (Encoder.encode, then the RESP framing) and keeps
a command stack with per-command options, about a tenth of a worker's CPU at full speed. Here hiredis
(already the reply parser) packs each command, and the replies are read off the same connection.

Semantics are redis-py's non-transactional pipeline: replies in order, a command's error in its place,
and a connection error retried as the client's own retry policy says (the connection is dropped first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError


async def send_commands(redis: Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Each command's raw reply (no response callbacks) or its ``ResponseError``, in order."""
    if not commands:
        return []
    packed = [hiredis.pack_command(tuple(c)) for c in commands]
    pool = redis.connection_pool
    conn: Connection = await pool.get_connection()
    try:
        return await conn.retry.call_with_retry(
            lambda: _send(conn, packed), lambda error: _disconnect_raise(conn, error)
        )
    finally:
        await pool.release(conn)


async def _send(conn: Connection, packed: list[bytes]) -> list[Any]:
    await conn.send_packed_command(packed)
    replies: list[Any] = []
    for _ in packed:
        try:
            replies.append(await conn.read_response())
        except ResponseError as e:
            replies.append(e)
    return replies


async def _disconnect_raise(conn: Connection, error: Exception) -> None:
    """As redis-py's pipeline: drop the connection (its replies are out of step now); raise unless the
    client retries this kind of error."""
    await conn.disconnect()
    if conn.retry_on_error is None or not isinstance(error, tuple(conn.retry_on_error)):
        raise error
