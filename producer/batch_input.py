"""Streams and validates batch input: OpenAI Batch JSONL, or a plain file of prompts.

Every non-blank input line becomes exactly one of: an accepted JobSpec, or a
rejected JobResult carrying a per-line error (line number, code, message).
Nothing is silently dropped, and the file is never held whole in memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.keys import job_id_for
from shared.router import Router
from shared.schema import (
    URL_KINDS,
    ChatRequest,
    EmbeddingRequest,
    ErrorInfo,
    JobResult,
    JobSpec,
    RequestError,
)

MAX_LINE_BYTES = 1_000_000
_json = msgspec.json.Decoder()


@dataclass
class Validator:
    """Validates lines one by one; remembers custom_ids to refuse duplicates by line number."""

    batch_id: str
    router: Router | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    tenant: str | None = None
    seen: dict[str, int] = field(default_factory=dict)

    def check_model(self, model: str) -> None:
        if self.router is not None:
            self.router.resolve(model)  # validation must not advance round-robin state

    def parse_jsonl(self, raw: bytes | str, lineno: int, index: int) -> JobSpec | JobResult:
        """One OpenAI Batch line -> JobSpec, or a rejected JobResult."""
        data = raw.encode() if isinstance(raw, str) else raw
        cid: str | None = None
        try:
            if len(data) > self.max_line_bytes:
                raise RequestError(
                    "line_too_large", f"line is {len(data)} bytes; the limit is {self.max_line_bytes}"
                )
            try:
                obj = _json.decode(data)
            except msgspec.DecodeError as e:
                raise RequestError("invalid_json", f"invalid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise RequestError("invalid_line", "each line must be a JSON object")
            given = obj.get("custom_id")
            if not isinstance(given, str) or not given:
                raise RequestError("missing_custom_id", "line has no 'custom_id' (a non-empty string)")
            cid = given
            first = self.seen.get(cid)
            if first is not None:
                raise RequestError(
                    "duplicate_custom_id", f"custom_id {cid!r} on line {lineno} duplicates line {first}"
                )
            self.seen[cid] = lineno
            if obj.get("method", "POST") != "POST":
                raise RequestError("invalid_method", f"method must be 'POST', got {obj.get('method')!r}")
            url = obj.get("url")
            kind = URL_KINDS.get(url) if isinstance(url, str) else None
            if kind is None:
                raise RequestError(
                    "unsupported_url",
                    f"url {url!r} is not supported; use one of {', '.join(sorted(URL_KINDS))}",
                )
            body = obj.get("body")
            req = ChatRequest.from_body(body) if kind == "chat" else EmbeddingRequest.from_body(body)
            self.check_model(req.model)
        except RequestError as e:
            # A duplicate keeps no custom_id: the id belongs to the earlier line's result.
            return self.reject(index, lineno, e, custom_id=None if e.code == "duplicate_custom_id" else cid)
        assert cid is not None
        return self.accept(index, cid, req)

    def parse_prompt(
        self, raw: str, lineno: int, index: int, model: str, system: str | None, extra: dict[str, Any]
    ) -> JobSpec | JobResult:
        """One line of a plain prompts file -> a chat JobSpec with custom_id 'line-N'."""
        cid = f"line-{lineno}"
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": raw})
        try:
            if len(raw.encode()) > self.max_line_bytes:
                raise RequestError("line_too_large", f"prompt is longer than {self.max_line_bytes} bytes")
            req = ChatRequest.from_body({**extra, "model": model, "messages": messages})
            self.check_model(req.model)
        except RequestError as e:
            return self.reject(index, lineno, e, custom_id=cid)
        return self.accept(index, cid, req)

    def accept(self, index: int, custom_id: str, req: ChatRequest | EmbeddingRequest) -> JobSpec:
        spec = JobSpec(
            id=job_id_for(self.batch_id, custom_id),
            batch_id=self.batch_id,
            custom_id=custom_id,
            line=index,
            submitted_at=time.time(),
            tenant=self.tenant,
        )
        if isinstance(req, ChatRequest):
            spec.request = req
        else:
            spec.embed = req
        return spec

    def reject(self, index: int, lineno: int, e: RequestError, custom_id: str | None) -> JobResult:
        return JobResult(
            id=f"{self.batch_id}:line-{lineno}",
            status_code=400,
            error=ErrorInfo(code=e.code, message=f"line {lineno}: {e.message}", error_class="final"),
            custom_id=custom_id,
            batch_id=self.batch_id,
            line=index,
            completed_at=time.time(),
        )


def numbered_lines(lines: Iterable[bytes | str]) -> Iterator[tuple[int, int, bytes | str]]:
    """(lineno, index, text) for non-blank lines: lineno counts every physical line, index only kept ones."""
    index = 0
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        yield lineno, index, raw.rstrip(b"\r\n" if isinstance(raw, bytes) else "\r\n")
        index += 1


def file_digest(path: str, *salt: str) -> str:
    """A stable batch id for a file's content (and options): running the same file again resumes it."""
    h = hashlib.sha256("\0".join(salt).encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "batch_" + h.hexdigest()[:24]


def prompt_options(
    path: str, model: str | None, system: str | None, default_model: str | None
) -> dict[str, Any] | None:
    """How to read ``path``: None for OpenAI Batch JSONL, else the prompts-file options.

    ``--model`` forces a prompts file; without it, a file whose first line is not a JSON
    object is a prompts file sent to ``default_model`` (fusebox.toml), or a clear error.
    """
    if model:
        return {"model": model, "system": system}
    with open(path, "rb") as f:
        first = next((line for line in f if line.strip()), b"")
    if first.lstrip().startswith(b"{"):
        return None
    if default_model:
        return {"model": default_model, "system": system}
    raise RequestError(
        "missing_model",
        f"{path} looks like a prompts file (its first line is not a JSON object): "
        "pass --model MODEL, or set default_model in fusebox.toml",
    )
