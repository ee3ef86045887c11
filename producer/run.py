"""``fusebox run``: the all-in-one batch — Redis (embedded if needed), an in-process worker, output file."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.batch_input import file_digest, prompt_options
from producer.cli_errors import EXIT_INTERRUPTED, EXIT_LINES_FAILED, check_redis_url
from producer.cli_runtime import check_input, check_writable
from producer.client import FuseboxClient, Submission
from producer.output import write_results
from producer.progress import Progress
from shared.config import Settings
from shared.embedded import EmbeddedValkey
from shared.redis_conn import connect, redact_url
from worker.settings import build_worker


@dataclass
class RunOptions:
    input: Path
    output: Path
    errors: Path | None = None
    batch_id: str | None = None
    fresh: bool = False
    model: str | None = None  # set for a plain prompts file
    system: str | None = None
    quiet: bool = False


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run(opts: RunOptions, settings: Settings | None = None) -> int:
    """Exit code: 0 every line succeeded, 1 some failed; input, output and Redis problems raise
    (the ``fusebox`` command turns them into one line and exit 2 or 3)."""
    settings = settings or Settings()
    # Everything a user can get wrong is checked before Redis starts or a line is submitted.
    check_input(str(opts.input))
    check_writable(opts.output, opts.errors)
    prompts = prompt_options(str(opts.input), opts.model, opts.system, settings.file.default_model)
    server: EmbeddedValkey | None = None
    url = settings.redis_url
    if not url:
        server = EmbeddedValkey(settings.data_dir / "valkey")
        url = server.start()
        _say(
            f"using the bundled Valkey server in {server.data_dir} (set REDIS_URL to use your own)",
            opts.quiet,
        )
    else:
        check_redis_url(url)
        _say(f"using Redis at {redact_url(url)}", opts.quiet)
    try:
        return asyncio.run(_run(opts, settings, url, prompts))
    except KeyboardInterrupt:
        _say("interrupted: progress is kept in Redis; run the same command again to resume")
        return EXIT_INTERRUPTED
    finally:
        if server is not None:
            server.stop()


class _Interrupt:
    """Ctrl-C, noted beside asyncio.run's own handler (which cancels the main task). If the cancel is
    lost (seen once: the bar kept redrawing for a minute after Ctrl-C), the next progress callback
    ends the run instead, so Ctrl-C always works."""

    GRACE_S = 1.0

    def __init__(self) -> None:
        self.at: float | None = None
        self._prev = signal.getsignal(signal.SIGINT)
        if callable(self._prev):
            signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        if self.at is None:
            self.at = time.monotonic()
        assert callable(self._prev)
        self._prev(signum, frame)

    def restore(self) -> None:
        if callable(self._prev):
            signal.signal(signal.SIGINT, self._prev)

    def check(self) -> None:
        if self.at is not None and time.monotonic() - self.at > self.GRACE_S:
            raise KeyboardInterrupt


async def _run(opts: RunOptions, settings: Settings, url: str, prompts: dict[str, Any] | None) -> int:
    interrupt = _Interrupt()
    redis = connect(url, settings.keys)
    # The in-process worker is the whole fleet: check models against this process's config.
    client = FuseboxClient(redis, settings, routing="local")
    batch_id = opts.batch_id
    if batch_id is None and not opts.fresh:
        batch_id = file_digest(str(opts.input), (prompts or {}).get("model") or "", opts.system or "")
    await redis.ping()  # an unreachable Redis fails here, before a worker or a batch exists
    # One worker in this event loop: more would share the same core and only add polling.
    worker = build_worker(settings, redis, handle_signals=False)
    worker.ctx.setdefault("redis", redis)  # its shutdown hooks need it even if it never started
    task = asyncio.create_task(worker.async_run())
    progress = Progress()
    t0 = time.monotonic()
    try:

        def on_submit(sub: Submission) -> None:
            interrupt.check()
            if not opts.quiet:
                progress.update(sub.skipped + sub.rejected, sub.rejected, None)

        with open(opts.input, "rb") as f:
            sub = await client.submit_batch(
                f,
                batch_id=batch_id,
                prompts=prompts,
                input_name=opts.input.name,
                on_progress=on_submit,
            )
        if sub.resumed:
            progress.close()
            _say(
                f"resuming batch {sub.batch_id}: {sub.skipped} of {sub.total} lines already queued or done",
                opts.quiet,
            )
            progress = Progress()

        def on_progress(c: Any) -> None:
            interrupt.check()
            if not opts.quiet:
                progress.update(c.done, c.failed, c.total)

        counts = await client.wait_batch(sub.batch_id, on_progress=on_progress, poll=0.1)
        if not opts.quiet:
            progress.update(counts.done, counts.failed, counts.total, force=True)
        progress.close()
        written = await write_results(client, sub.batch_id, opts.output, opts.errors)
    finally:
        interrupt.restore()
        progress.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Redis may be what failed (the first error is the one to tell), and a job the worker was still
        # running (a periodic check) is cancelled with it: neither changes the batch's outcome.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await worker.close()  # also closes the shared pool (unless a cancelled job cut it short)
        with contextlib.suppress(Exception):
            await redis.aclose()
    secs = time.monotonic() - t0
    dest = f"{opts.output}" + (f" (errors: {opts.errors})" if opts.errors else "")
    _say(
        f"batch {sub.batch_id}: {counts.total} lines, {counts.completed} ok, {counts.failed} failed "
        f"in {secs:.1f}s -> {dest}",
        opts.quiet,
    )
    if written.missing:
        _say(f"error: {written.missing} lines have no result", opts.quiet)
        return EXIT_LINES_FAILED
    if counts.failed or counts.status != "completed":
        where = opts.errors or opts.output
        _say(f"{counts.failed} lines failed: see the error lines in {where}", opts.quiet)
        return EXIT_LINES_FAILED
    return 0
