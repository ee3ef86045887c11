"""The one gate provider-derived text passes before it is stored, logged or sent: redact, then truncate.

Providers echo what they were sent (a proxy's error page quoting the request
headers, a 200 with a debug dump instead of JSON), so any error body, exception
text or header value can hold the API key. Every such string goes through
``redact``: first the actual secret values this process knows (each provider's
configured key, webhook secrets), matched down to any 8-character piece so a key
cut short by someone else's truncation is still caught; then generic shapes
(credential headers, Bearer tokens, ``key=`` parameters, well-known key
prefixes); and only then is the text cut to length, so a cut can never leave a
key prefix behind.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import quote

MAX_MESSAGE = 500
MIN_SECRET = 8  # shorter values are placeholders ("ollama", "none"), not keys: redacting them mangles text
FRAGMENT = 8  # no run of this many characters of a known secret survives
# Longer input is cut first: a piece of a key at that cut is still >= FRAGMENT (caught) or harmless.
MAX_SCAN = 64 * 1024
REDACTED = "[redacted]"

# Names of headers and fields whose values are credentials (request headers, Sentry event fields).
SECRET_NAME = re.compile(
    r"authorization|api[-_]?key|x-goog-api-key|secret|token|password|passwd|cookie|subscription-key", re.I
)
# Credential-carrying names followed by their value, as headers, JSON, form or repr text:
#   Authorization: Bearer x   "x-api-key": "x"   'api-key': 'x'   api_key=x
_NAMED = re.compile(
    r"""(?ix)
    (?P<name>\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key|\bx-goog-api-key|\bx-auth-token
       |\baccess[-_]token|\brefresh[-_]token|\bauth[-_]token|\bclient[-_]secret|\bsecret|\bpassword
       |\bcookie|\bset-cookie|\bwebhook-secret|\bocp-apim-subscription-key)
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?:(?:bearer|basic|token|key|apikey)\s+)?
    [^\s"',;&}\])\[]+
    """
)
# Query parameters that carry keys (Gemini's ?key=, signed URLs).
_PARAM = re.compile(
    r"(?i)((?:^|[?&;])(?:key|api[-_]?key|token|access_token|sig|signature|secret|password)=)[^&\s\"'#<>]+"
)
# Free-standing credentials: a Bearer token (Basic only after a header name: it is an English word)
# and the key shapes of the providers Fusebox speaks to.
_SHAPED = re.compile(
    r"\bBearer\s+[A-Za-z0-9._\-~+/]+=*|(?i:\bbearer\s+)[A-Za-z0-9._\-~+/]{8,}=*"
    r"|\b(?:sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{16,}|hf_[A-Za-z0-9]{8,}|gsk_[A-Za-z0-9]{8,}"
    r"|xai-[A-Za-z0-9]{8,}|whsec_[A-Za-z0-9+/=]{8,}|r8_[A-Za-z0-9]{8,}|pplx-[A-Za-z0-9]{8,}"
    r"|ya29\.[A-Za-z0-9_\-.]{8,})"
)

_lock = threading.Lock()
_secrets: dict[str, None] = {}  # insertion-ordered set of known secret values
_pattern: re.Pattern[str] | None = None  # fragments of every known secret, rebuilt on registration


def register_secret(value: str | bytes | None) -> None:
    """Make ``value`` (a configured key or secret) redacted from every message from now on."""
    global _pattern
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = (value or "").strip()
    if len(value) < MIN_SECRET:
        return
    with _lock:
        new = [v for v in {value, quote(value, safe=""), value.replace("/", "\\/")} if v not in _secrets]
        if not new:
            return
        for v in new:
            _secrets[v] = None
        _pattern = _fragments(_secrets)


def forget_secrets() -> None:
    """Tests only: drop every registered secret."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def _fragments(secrets: Iterable[str]) -> re.Pattern[str] | None:
    grams = {s[i : i + FRAGMENT] for s in secrets for i in range(len(s) - FRAGMENT + 1)}
    if not grams:
        return None
    # A lookahead finds every (overlapping) start of a piece; the covered spans are merged below.
    return re.compile("(?=(" + "|".join(re.escape(g) for g in sorted(grams)) + "))")


_TOKEN_CHAR = re.compile(r"[A-Za-z0-9_\-.+/]")


def _mask_known(text: str, pattern: re.Pattern[str] | None, mask: str) -> str:
    """Mask every piece of a known secret together with the rest of the token it sits in: a key's
    prefix ("sk-proj-") left beside the mask would still say what it was and break shape matching."""
    if pattern is None:
        return text
    spans: list[list[int]] = []
    n = len(text)
    for m in pattern.finditer(text):
        start, end = m.start(), m.start() + len(m.group(1))
        while start > 0 and _TOKEN_CHAR.match(text[start - 1]):
            start -= 1
        while end < n and _TOKEN_CHAR.match(text[end]):
            end += 1
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    if not spans:
        return text
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], mask]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact(text: object, *secrets: str | None, limit: int | None = MAX_MESSAGE, mask: str = REDACTED) -> str:
    """``text`` with every known secret (plus ``secrets``) and credential-shaped value replaced by
    ``mask``, then cut to ``limit`` characters (None: no cut)."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > MAX_SCAN:
        s = s[:MAX_SCAN]
    extra = [x for x in secrets if x and len(x) >= MIN_SECRET and x not in _secrets]
    s = _mask_known(s, _fragments(extra) if extra else None, mask)
    s = _mask_known(s, _pattern, mask)
    s = _NAMED.sub(lambda m: f"{m.group('name')}{m.group('sep')}{mask}", s)
    s = _PARAM.sub(lambda m: m.group(1) + mask, s)
    s = _SHAPED.sub(mask, s)
    s = re.sub(f"{re.escape(mask)}(?:\\s*{re.escape(mask)})+", mask, s)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def redact_optional(text: str | None, limit: int | None = MAX_MESSAGE) -> str | None:
    return None if text is None else redact(text, limit=limit)
