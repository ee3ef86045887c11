"""Exit codes and user-facing errors of the ``fusebox`` command (no heavy imports here)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_LINES_FAILED = 1  # the batch finished, but some lines failed (validation or provider errors)
EXIT_USAGE = 2  # usage or input error
EXIT_UNAVAILABLE = 3  # Redis unreachable, or no worker has ever published the routing table
EXIT_INTERNAL = 4  # an unexpected error (a bug): run with -v for the traceback
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem the user can fix: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def check_redis_url(url: str) -> None:
    """Refuse a malformed REDIS_URL with a message, before any connection attempt."""
    from urllib.parse import urlsplit

    hint = "expected redis://[:password@]host[:port][/db], rediss://... or unix:///path/to.sock"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric port
    except ValueError as e:
        raise CliError(f"REDIS_URL is malformed ({e}): {hint}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise CliError(f"REDIS_URL {url.split('@')[-1]!r} is not a Redis URL: {hint}")
    if parts.scheme == "unix" and not parts.path:
        raise CliError(f"REDIS_URL has no socket path: {hint}")
    if parts.scheme != "unix" and not parts.hostname:
        raise CliError(f"REDIS_URL has no host: {hint}")
