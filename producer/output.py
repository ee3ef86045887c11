"""Writes results as OpenAI Batch output (and optional error) files, one line per input line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from producer.client import FuseboxClient
from shared.schema import OutputLine

_enc = msgspec.json.Encoder()


@dataclass
class Written:
    ok: int = 0
    failed: int = 0
    missing: int = 0


async def write_results(
    client: FuseboxClient, batch_id: str, output: Path, errors: Path | None = None, ordered: bool = True
) -> Written:
    """Stream results from Redis to disk; failures go to ``errors`` when given, else to ``output``."""
    w = Written()
    out = open(output, "wb")
    err = open(errors, "wb") if errors else None
    try:
        async for r in client.results(batch_id, ordered=ordered):
            if r is None:
                w.missing += 1
                continue
            line = _enc.encode(OutputLine.from_result(r)) + b"\n"
            if r.ok:
                w.ok += 1
                out.write(line)
            else:
                w.failed += 1
                (err or out).write(line)
    finally:
        out.close()
        if err:
            err.close()
    return w
