"""``fusebox run``: the all-in-one batch — Redis (embedded if needed), an in-process worker, output file."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.batch_input import file_digest, prompt_options
from producer.client import FuseboxClient, Submission
from producer.output import write_results
from producer.progress import Progress
from shared.config import Settings
from shared.embedded import EmbeddedValkey
from shared.redis_conn import connect, redact_url
from shared.schema import RequestError
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
    settings = settings or Settings()
    if not opts.input.exists():
        _say(f"error: input file {opts.input} does not exist")
        return 2
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
        _say(f"using Redis at {redact_url(url)}", opts.quiet)
    try:
        return asyncio.run(_run(opts, settings, url))
    except RequestError as e:
        _say(f"error: {e.message}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted: progress is kept in Redis; run the same command again to resume")
        return 130
    finally:
        if server is not None:
            server.stop()


async def _run(opts: RunOptions, settings: Settings, url: str) -> int:
    redis = connect(url, settings.keys)
    client = FuseboxClient(redis, settings)
    prompts = prompt_options(str(opts.input), opts.model, opts.system, settings.file.default_model)
    batch_id = opts.batch_id
    if batch_id is None and not opts.fresh:
        batch_id = file_digest(str(opts.input), (prompts or {}).get("model") or "", opts.system or "")
    # One worker in this event loop: more would share the same core and only add polling.
    worker = build_worker(settings, redis, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    progress = Progress()
    t0 = time.monotonic()
    try:

        def on_submit(sub: Submission) -> None:
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
            _say(
                f"\nresuming batch {sub.batch_id}: {sub.skipped} of {sub.total} lines already queued or done",
                opts.quiet,
            )

        def on_progress(c: Any) -> None:
            if not opts.quiet:
                progress.update(c.done, c.failed, c.total)

        counts = await client.wait_batch(sub.batch_id, on_progress=on_progress, poll=0.1)
        if not opts.quiet:
            progress.update(counts.done, counts.failed, counts.total, force=True)
            progress.close()
        written = await write_results(client, sub.batch_id, opts.output, opts.errors)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()  # also closes the shared pool
    secs = time.monotonic() - t0
    dest = f"{opts.output}" + (f" (errors: {opts.errors})" if opts.errors else "")
    _say(
        f"batch {sub.batch_id}: {counts.total} lines, {counts.completed} ok, {counts.failed} failed "
        f"in {secs:.1f}s -> {dest}",
        opts.quiet,
    )
    if written.missing:
        _say(f"error: {written.missing} lines have no result", opts.quiet)
        return 1
    return 0
