"""Batch progress on stderr: a rich progress bar on a terminal, a plain line every few seconds otherwise.

The bar fits the terminal's width (rich measures it), redraws in place, and is closed before any
other message so that message starts on its own line.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

_open: list[Progress] = []
REDRAW_S = 0.2  # the bar is redrawn at most this often


def close_all() -> None:
    """Close any live progress display, so a message printed next starts on a line of its own."""
    for p in list(_open):
        p.close()


class Progress:
    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval  # between plain lines when not on a terminal
        self.t0 = time.monotonic()
        self.base: int | None = None
        self._last = self.t0  # the first plain line after one interval: none saying "0 lines" at the start
        self._drawn = 0.0
        self._bar: Any = None
        self._task: Any = None

    # -- plain -------------------------------------------------------------
    def render(self, done: int, failed: int, total: int | None) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        if self.base is None:
            self.base = done  # work already done by an earlier run is not counted in the rate
        rate = (done - self.base) / elapsed
        if total:
            left = total - done
            eta = f"{left / rate:.0f}s" if rate > 0 and left else "-"
            return f"{done}/{total} done, {failed} failed, {rate:.1f}/s, ETA {eta}"
        return f"submitting: {done} lines, {failed} rejected, {rate:.1f}/s"

    # -- rich --------------------------------------------------------------
    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        console = Console(file=self.stream)
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            expand=False,
            # Redrawn by update(), in this thread: rich's refresh thread and its lock could leave the
            # bar's stop() waiting forever when Ctrl-C lands mid-redraw (seen under load).
            auto_refresh=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("submitting", total=None, failed=0)
        _open.append(self)

    def update(self, done: int, failed: int, total: int | None, force: bool = False) -> None:
        if self.base is None:
            # the rate counts from the first update, written or not: a batch done within the first
            # interval has its only line at the end, which must not say "0.0/s"
            self.base = done
        if self.tty:
            if self._bar is None:
                self._start()
            desc = "running" if total else "submitting"
            self._bar.update(self._task, completed=done, total=total, failed=failed, description=desc)
            now = time.monotonic()
            if force or now - self._drawn >= REDRAW_S:
                self._drawn = now
                self._bar.refresh()
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write(self.render(done, failed, total) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self in _open:
            _open.remove(self)
