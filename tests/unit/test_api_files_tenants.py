"""Uploaded files re-join lines across chunk boundaries; keys are stored hashed and map to tenants."""

from __future__ import annotations

import fakeredis
import pytest

from shared.batches.files import FileError, FileStore
from shared.config import ApiConfig
from shared.keys import Keys
from shared.tenants import authenticate, create_key, hash_key, list_keys, revoke


async def _blocks(data: bytes, size: int):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def r():  # type: ignore[no-untyped-def]
    return fakeredis.FakeAsyncRedis()


@pytest.mark.parametrize("block", [1, 3, 7, 4096])
async def test_lines_survive_any_chunking(r, block: int) -> None:  # type: ignore[no-untyped-def]
    fs = FileStore(r, Keys("t"), ApiConfig(chunk_bytes=4096))
    fs.cfg.chunk_bytes = 5  # below the config minimum on purpose: lines span many chunks
    data = b'{"a": 1}\n\n{"b": "xyz"}\r\nlast-without-newline'
    meta = await fs.create("ten", "f.jsonl", "batch", _blocks(data, block))
    assert (meta["bytes"], meta["lines"]) == (len(data), 4)
    assert b"".join([c async for c in fs.iter_content(meta["id"])]) == data
    assert [x async for x in fs.iter_lines(meta["id"])] == [
        b'{"a": 1}',
        b"",
        b'{"b": "xyz"}\r',
        b"last-without-newline",
    ]
    assert await fs.get("other", meta["id"]) is None
    assert not await fs.delete("other", meta["id"])
    assert await fs.delete("ten", meta["id"]) and await fs.get("ten", meta["id"]) is None


async def test_limits_refuse_and_keep_nothing(r) -> None:  # type: ignore[no-untyped-def]
    fs = FileStore(r, Keys("t"), ApiConfig(max_file_lines=2, max_file_bytes=2048, chunk_bytes=4096))
    with pytest.raises(FileError) as e:
        await fs.create("ten", "f", "batch", _blocks(b"a\nb\nc", 1))
    assert (e.value.status, e.value.code) == (400, "too_many_lines")
    with pytest.raises(FileError) as e:
        await fs.create("ten", "f", "batch", _blocks(b"x" * 3000, 1000))
    assert (e.value.status, e.value.code) == (413, "file_too_large")
    assert await r.keys("*") == []


async def test_keys_hashed_and_revocable(r) -> None:  # type: ignore[no-untyped-def]
    k = Keys("t")
    key = await create_key(r, k, "acme", admin=True)
    stored = await r.hgetall(k.api_keys)
    assert list(stored) == [hash_key(key).encode()] and key.encode() not in b"".join(stored.values())
    t = await authenticate(r, k, key)
    assert t is not None and (t.name, t.admin) == ("acme", True)
    assert await authenticate(r, k, key + "x") is None and await authenticate(r, k, "") is None
    (info,) = await list_keys(r, k)
    assert await revoke(r, k, info.key_id[:3]) == []  # too short to name a key
    assert [i.tenant for i in await revoke(r, k, info.key_id)] == ["acme"]
    assert await authenticate(r, k, key) is None
