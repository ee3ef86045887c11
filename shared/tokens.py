"""Cheap token estimates (no tokenizer download): ~4 characters per token, as OpenAI suggests."""

from __future__ import annotations

from typing import Any


def estimate_text(text: str) -> int:
    return max(1, (len(text) + 3) // 4) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_messages(messages: list[dict[str, Any]]) -> int:
    # ~4 tokens of framing per message, like OpenAI's chat format.
    return sum(4 + estimate_text(_content_text(m.get("content"))) for m in messages) + 2
