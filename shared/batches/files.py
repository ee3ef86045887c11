"""Uploaded batch input files in Redis (the files API takes purpose "batch" only): a metadata hash
plus the content as a list of ~1 MB chunks, with a TTL.

Every API replica reads the same bytes, and neither writing nor reading ever holds more than
a chunk or two in memory. Chunks split anywhere; ``iter_lines`` re-joins lines across them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from redis.asyncio import Redis

from shared.config import ApiConfig
from shared.keys import Keys


class FileError(ValueError):
    """An upload the limits refuse; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class FileStore:
    def __init__(self, redis: Redis, keys: Keys, cfg: ApiConfig | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.cfg = cfg or ApiConfig()

    async def create(
        self, tenant: str, filename: str, purpose: str, source: AsyncIterable[bytes]
    ) -> dict[str, Any]:
        """Copy ``source`` into Redis chunk by chunk; refuse it (and keep nothing) past the limits."""
        file_id = "file-" + uuid.uuid4().hex[:24]
        meta_key, chunks_key = self.keys.file(file_id), self.keys.file_chunks(file_id)
        ttl, size, lines, last = self.cfg.file_ttl_s, 0, 0, b"\n"
        buf = bytearray()
        try:
            async for block in source:
                size += len(block)
                lines += block.count(b"\n")
                if block:
                    last = block[-1:]
                if size > self.cfg.max_file_bytes:
                    raise FileError(
                        413, "file_too_large", f"file is larger than {self.cfg.max_file_bytes} bytes"
                    )
                if lines > self.cfg.max_file_lines:
                    raise FileError(
                        400, "too_many_lines", f"file has more than {self.cfg.max_file_lines} lines"
                    )
                buf += block
                while len(buf) >= self.cfg.chunk_bytes:
                    await self._push(chunks_key, bytes(buf[: self.cfg.chunk_bytes]), ttl)
                    del buf[: self.cfg.chunk_bytes]
            if buf:
                await self._push(chunks_key, bytes(buf), ttl)
            if last != b"\n":
                lines += 1
            if lines > self.cfg.max_file_lines:
                raise FileError(400, "too_many_lines", f"file has more than {self.cfg.max_file_lines} lines")
        except BaseException:
            await self.redis.delete(chunks_key)
            raise
        now = int(time.time())
        meta = {
            "tenant": tenant,
            "filename": filename,
            "purpose": purpose,
            "bytes": size,
            "lines": lines,
            "created_at": now,
            "expires_at": now + ttl,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(meta_key, mapping=meta)
            pipe.expire(meta_key, ttl)
            pipe.zadd(self.keys.tenant_files(tenant), {file_id: time.time()})
            await pipe.execute()
        return {"id": file_id, **meta}

    async def _push(self, key: str, chunk: bytes, ttl: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, chunk)
            pipe.expire(key, ttl)
            await pipe.execute()

    async def get(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        """The file's metadata, or None if it does not exist or belongs to another tenant."""
        raw = await self.redis.hgetall(self.keys.file(file_id))
        if not raw:
            return None
        meta: dict[str, Any] = {_s(k): _s(v) for k, v in raw.items()}
        if meta.get("tenant") != tenant:
            return None
        for k in ("bytes", "lines", "created_at", "expires_at"):
            meta[k] = int(meta.get(k) or 0)
        return {"id": file_id, **meta}

    async def list(
        self, tenant: str, limit: int = 10000, after: str | None = None, newest_first: bool = True
    ) -> tuple[list[dict[str, Any]], bool]:
        """(files, has_more) of one tenant, paged by the id after which to start."""
        key = self.keys.tenant_files(tenant)
        start = 0
        if after:
            rank = await (self.redis.zrevrank(key, after) if newest_first else self.redis.zrank(key, after))
            start = rank + 1 if rank is not None else 0
        rng = self.redis.zrevrange if newest_first else self.redis.zrange
        ids = [_s(i) for i in await rng(key, start, start + limit)]
        out = []
        for fid in ids[:limit]:
            meta = await self.get(tenant, fid)
            if meta is None:  # expired: drop it from the index too
                await self.redis.zrem(key, fid)
            else:
                out.append(meta)
        return out, len(ids) > limit

    async def delete(self, tenant: str, file_id: str) -> bool:
        if await self.get(tenant, file_id) is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.file(file_id), self.keys.file_chunks(file_id))
            pipe.zrem(self.keys.tenant_files(tenant), file_id)
            await pipe.execute()
        return True

    async def iter_content(self, file_id: str) -> AsyncIterator[bytes]:
        key = self.keys.file_chunks(file_id)
        i = 0
        while True:
            got = await self.redis.lrange(key, i, i)
            if not got:
                return
            yield got[0]
            i += 1

    async def iter_lines(self, file_id: str) -> AsyncIterator[bytes]:
        """Every physical line (without its newline), blank ones included, so line numbers hold."""
        rest = b""
        async for chunk in self.iter_content(file_id):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for p in parts:
                yield p
        if rest:
            yield rest
