"""Streams and validates batch input: OpenAI Batch JSONL, or a plain file of prompts.

Every non-blank input line becomes exactly one of: an accepted JobSpec, or a
rejected JobResult carrying a per-line error (line number, code, message).
Nothing is silently dropped, and the file is never held whole in memory.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared import codec
from shared.byok.entries import NONE, OwnEntries
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
BOM = b"\xef\xbb\xbf"
_json = msgspec.json.Decoder()
log = logging.getLogger("fusebox.input")


def _unexpected(e: Exception) -> RequestError:
    """A line that broke validation in a way it did not foresee is still only that line's error."""
    if isinstance(e, RecursionError):
        return RequestError("invalid_json", "JSON is nested too deeply")
    if isinstance(e, OverflowError):
        return RequestError("invalid_value", "a number is out of range (integers must fit in 64 bits)")
    log.debug("unexpected error validating a line", exc_info=e)
    return RequestError("invalid_line", f"line could not be read ({type(e).__name__})")


@dataclass
class Validator:
    """Validates lines one by one; remembers custom_ids to refuse duplicates by line number."""

    batch_id: str
    router: Router | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    tenant: str | None = None
    seen: dict[str, int] = field(default_factory=dict)
    own: OwnEntries = NONE  # the tenant's own provider entries: they serve the models they list

    def check_model(self, model: str) -> None:
        if self.router is not None:
            try:
                self.router.resolve(model)  # validation must not advance round-robin state
            except RequestError:
                if not self.own.serves(model):
                    raise

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
            if given is not None and not isinstance(given, str):
                got = f"{type(given).__name__} {given!r:.40}"
                raise RequestError("invalid_custom_id", f"custom_id must be a string, got {got}")
            if not given:
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
            assert cid is not None
            return self.accept(index, cid, req)
        except RequestError as e:
            # A duplicate keeps no custom_id: the id belongs to the earlier line's result.
            return self.reject(index, lineno, e, custom_id=None if e.code == "duplicate_custom_id" else cid)
        except Exception as e:
            return self.reject(index, lineno, _unexpected(e), custom_id=cid)

    def parse_prompt(
        self,
        raw: bytes | str,
        lineno: int,
        index: int,
        model: str,
        system: str | None,
        extra: dict[str, Any],
    ) -> JobSpec | JobResult:
        """One line of a plain prompts file -> a chat JobSpec with custom_id 'line-N'."""
        cid = f"line-{lineno}"
        try:
            size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
            if size > self.max_line_bytes:
                raise RequestError("line_too_large", f"prompt is longer than {self.max_line_bytes} bytes")
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode()
                except UnicodeDecodeError as e:
                    msg = f"line is not valid UTF-8 (byte {e.start + 1})"
                    raise RequestError("invalid_utf8", msg) from None
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": raw})
            req = ChatRequest.from_body({**extra, "model": model, "messages": messages})
            self.check_model(req.model)
            return self.accept(index, cid, req)
        except RequestError as e:
            return self.reject(index, lineno, e, custom_id=cid)
        except Exception as e:
            return self.reject(index, lineno, _unexpected(e), custom_id=cid)

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
        # What cannot be stored (an integer beyond 64 bits) is this line's error, found before queueing.
        codec.encode_spec(spec)
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
        if lineno == 1:  # a UTF-8 byte order mark (Windows editors) is not part of the first line
            raw = raw.removeprefix(BOM) if isinstance(raw, bytes) else raw.removeprefix("\ufeff")
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
    Raises RequestError for an empty, binary or non-UTF-8 file before anything is submitted.
    """
    first = sniff(path)
    looks_jsonl = first.startswith(b"{")
    if model:
        if looks_jsonl and b'"custom_id"' in first:
            raise RequestError(
                "jsonl_as_prompts",
                f"{path} looks like OpenAI Batch JSONL (its first line is a JSON object with a custom_id), "
                "but --model reads it as one prompt per line: drop --model",
            )
        return {"model": model, "system": system}
    if looks_jsonl:
        return None
    if default_model:
        return {"model": default_model, "system": system}
    raise RequestError(
        "missing_model",
        f"{path} looks like a prompts file (its first line is not a JSON object): "
        "pass --model MODEL, or set default_model in fusebox.toml",
    )


def sniff(path: str) -> bytes:
    """The first non-blank line (BOM and blanks stripped); RequestError if no line can come from it."""
    with open(path, "rb") as f:
        head = f.read(8192)
        first = b""
        f.seek(0)
        for i, line in enumerate(f):
            if i == 0:
                line = line.removeprefix(BOM)
            if line.strip():
                first = line.strip()
                break
    if b"\0" in head:
        raise RequestError("binary_input", f"{path} is a binary file, not JSONL or text: check the path")
    if not first:
        raise RequestError("empty_input", f"empty input: {path} has no lines to submit")
    try:
        first[:4096].decode()
    except UnicodeDecodeError as e:
        if e.start < 4090:  # not just a character cut at the 4 KiB mark
            raise RequestError(
                "invalid_utf8", f"{path} is not UTF-8 text (line 1, byte {e.start + 1}): save it as UTF-8"
            ) from None
    return first
