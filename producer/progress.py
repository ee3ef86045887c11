"""A one-line progress bar on stderr: done/failed, rate and ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, width: int = 30, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        # Without a terminal, print a plain line every few seconds instead of redrawing.
        self.interval = interval if self.tty else 5.0
        self.t0 = time.monotonic()
        self.base: int | None = None
        self._last = 0.0

    def render(self, done: int, failed: int, total: int | None) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        if self.base is None:
            self.base = done  # work already done by an earlier run is not counted in the rate
        rate = (done - self.base) / elapsed
        if total:
            frac = min(done / total, 1.0)
            filled = int(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            left = total - done
            eta = f"{left / rate:5.1f}s" if rate > 0 and left else "  -  "
            return f"[{bar}] {done}/{total} done, {failed} failed | {rate:7.1f}/s | ETA {eta}"
        return f"[submitting] {done} done, {failed} failed | {rate:7.1f}/s"

    def update(self, done: int, failed: int, total: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = self.render(done, failed, total)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
