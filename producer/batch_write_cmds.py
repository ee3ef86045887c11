"""The batch commands that change a deployment's batches: submit, retry and cancel."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from producer.cli_errors import EXIT_LINES_FAILED, EXIT_UNAVAILABLE, CliError
from producer.cli_runtime import check_input, check_writable, print_json

if TYPE_CHECKING:
    from producer.client import FuseboxClient
    from shared.config import Settings
    from shared.jobs.store import BatchCounts


def local_config_present(settings: Settings) -> bool:
    return settings.config is not None or Path("fusebox.toml").exists()


async def wait_with_progress(client: FuseboxClient, batch_id: str) -> BatchCounts:
    """Wait for the batch to end, drawing its progress on stderr."""
    from producer.progress import Progress

    progress = Progress()
    try:
        counts = await client.wait_batch(
            batch_id, on_progress=lambda c: progress.update(c.done, c.failed, c.total), poll=0.2
        )
        progress.update(counts.done, counts.failed, counts.total, force=True)
    finally:
        progress.close()
    return counts


async def cmd_submit(client: FuseboxClient, args: argparse.Namespace) -> int:
    from producer.batch_input import prompt_options
    from producer.output import write_results
    from shared.routing_table import NO_TABLE

    check_input(args.input)
    if args.output:
        if not args.wait:
            raise CliError("-o/--output needs --wait (or use 'fusebox results ID -o FILE' later)")
        check_writable(args.output, args.errors)
    settings = client.settings
    prompts = prompt_options(args.input, args.model, args.system, settings.file.default_model)
    if not await client.fleet_known() and not local_config_present(settings):
        raise CliError(NO_TABLE.format(ns=settings.namespace), EXIT_UNAVAILABLE)
    with open(args.input, "rb") as f:
        sub = await client.submit_batch(
            f,
            batch_id=args.batch_id,
            prompts=prompts,
            metadata=dict(args.metadata or []) or None,
            webhook=args.webhook,
            tenant=args.tenant,
            completion_window_s=args.completion_window,
            input_name=Path(args.input).name,
        )
    summary = {"id": sub.batch_id, "status": sub.status, "total": sub.total, "queued": sub.queued,
               "rejected": sub.rejected, "skipped": sub.skipped}  # fmt: skip
    if not args.wait:
        if args.json:
            print_json(summary)
        else:
            print(
                f"{sub.batch_id}: {sub.total} lines, {sub.queued} queued, "
                f"{sub.rejected} rejected ({sub.status})"
            )
        if sub.rejected:
            print(f"{sub.rejected} lines were rejected: 'fusebox results {sub.batch_id}'", file=sys.stderr)
        return EXIT_LINES_FAILED if sub.rejected else 0
    await wait_with_progress(client, sub.batch_id)
    if args.output:
        await write_results(
            client, sub.batch_id, Path(args.output), Path(args.errors) if args.errors else None
        )
    obj = await client.batch(sub.batch_id)
    rc = obj["request_counts"]
    if args.json:
        print_json(obj)
    else:
        print(
            f"{sub.batch_id}: {obj['status']}, {rc['completed']} ok, {rc['failed']} failed of {rc['total']}"
        )
    return EXIT_LINES_FAILED if rc["failed"] or obj["status"] != "completed" else 0


async def cmd_retry(client: FuseboxClient, args: argparse.Namespace) -> int:
    import dataclasses

    from producer.batch_input import prompt_options
    from producer.client import BatchBusy
    from producer.output import write_results

    info = await client.batch(args.id)  # KeyError for an unknown id
    path = args.input or info.get("input")
    if not path or not os.path.isfile(path):  # noqa: ASYNC240 - one stat, before any I/O starts
        where = f" (it was {info['input']!r}, not found here)" if info.get("input") else ""
        raise CliError(f"give the input file of batch {args.id}{where}")
    check_input(path)
    if args.output:
        check_writable(args.output, args.errors)
    prompts = prompt_options(path, args.model, args.system, client.settings.file.default_model)
    try:
        with open(path, "rb") as f:
            out = await client.retry_batch(args.id, f, prompts=prompts)
    except BatchBusy as e:
        raise CliError(str(e)) from None  # a usage error: wait for the batch to end
    except ValueError as e:  # not this batch's input file
        raise CliError(str(e)) from None
    if args.json:
        print_json(dataclasses.asdict(out))
    elif out.failed == 0 and out.requeued == 0:
        print(f"{args.id} has no failed lines; nothing to retry ({out.status})")
        return 0
    else:
        extra = f", {out.not_retried} not retried (input line still invalid)" if out.not_retried else ""
        print(f"{args.id}: {out.requeued} of {out.failed} failed lines queued again{extra} ({out.status})")
    if not args.wait or out.requeued == 0:
        return EXIT_LINES_FAILED if out.not_retried else 0
    counts = await wait_with_progress(client, args.id)
    if args.output:
        await write_results(client, args.id, Path(args.output), Path(args.errors) if args.errors else None)
    print(f"{args.id}: {counts.status}, {counts.completed} ok, {counts.failed} failed of {counts.total}")
    return EXIT_LINES_FAILED if counts.failed or counts.status != "completed" else 0


async def cmd_cancel(client: FuseboxClient, args: argparse.Namespace) -> int:
    removed, status = await client.cancel(args.id)
    if args.json:
        print_json({"id": args.id, "status": status, "cancelled_lines": max(removed, 0)})
    elif removed < 0:
        print(f"{args.id} had already ended ({status})")
    else:
        print(f"{args.id}: {status}; {removed} queued lines will not run, running ones finish")
    return 0
