"""CLI commands against a running deployment: submit, status, results, cancel, batches, usage.

Heavy imports (the client, arq, msgspec) happen when a command runs, never at registration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.cli_errors import EXIT_LINES_FAILED, EXIT_UNAVAILABLE, CliError, check_redis_url

if TYPE_CHECKING:
    from producer.client import FuseboxClient
    from shared.config import Settings
    from shared.jobs.store import BatchCounts

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str) -> float:
    """'90' / '90s' / '15m' / '1h' / '7d' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 15m, 1h, 7d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _kv(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return k, v


def check_writable(*paths: str | Path | None) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    import os

    for raw in paths:
        if raw is None:
            continue
        p = Path(raw)
        if p.is_dir():
            raise CliError(f"cannot write {p}: it is a directory")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise CliError(f"cannot write {p}: directory {parent} does not exist")
        if (p.exists() and not os.access(p, os.W_OK)) or not os.access(parent, os.W_OK):
            raise CliError(f"cannot write {p}: permission denied")


def check_input(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise CliError(f"input file {path} does not exist")
    if p.is_dir():
        raise CliError(f"input {path} is a directory, not a file")


def _with_client(fn: Callable[[FuseboxClient, argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        if not settings.redis_url:
            raise CliError("REDIS_URL is not set (these commands talk to a running deployment)")
        check_redis_url(settings.redis_url)
        from producer.client import FuseboxClient

        async def main() -> int:
            client = FuseboxClient.connect(settings)
            try:
                return await fn(client, args)
            except KeyError as e:
                raise CliError(str(e.args[0])) from None
            finally:
                try:
                    await client.aclose()
                except Exception:  # closing a pool to an unreachable server: nothing to tell
                    pass

        return asyncio.run(main())

    return run


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def local_config_present(settings: Settings) -> bool:
    return settings.config is not None or Path("fusebox.toml").exists()


async def _wait_with_progress(client: FuseboxClient, batch_id: str) -> BatchCounts:
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


async def _submit(client: FuseboxClient, args: argparse.Namespace) -> int:
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
            _print_json(summary)
        else:
            print(
                f"{sub.batch_id}: {sub.total} lines, {sub.queued} queued, "
                f"{sub.rejected} rejected ({sub.status})"
            )
        if sub.rejected:
            print(f"{sub.rejected} lines were rejected: 'fusebox results {sub.batch_id}'", file=sys.stderr)
        return EXIT_LINES_FAILED if sub.rejected else 0
    await _wait_with_progress(client, sub.batch_id)
    if args.output:
        await write_results(
            client, sub.batch_id, Path(args.output), Path(args.errors) if args.errors else None
        )
    obj = await client.batch(sub.batch_id)
    rc = obj["request_counts"]
    if args.json:
        _print_json(obj)
    else:
        print(
            f"{sub.batch_id}: {obj['status']}, {rc['completed']} ok, {rc['failed']} failed of {rc['total']}"
        )
    return EXIT_LINES_FAILED if rc["failed"] or obj["status"] != "completed" else 0


async def _webhook_line(client: FuseboxClient, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The batch webhook's message id (its webhook-id header) and delivery state, once it is queued."""
    if not obj.get("webhook"):
        return None
    from shared.webhooks import event_id
    from shared.webhooks.records import delivery_log

    msg_id = event_id(f"batch.{obj['status']}", obj["id"])
    info = await delivery_log(client.redis, client.settings.keys, msg_id)
    if info is None:
        return {"url": obj["webhook"], "id": None, "state": "not sent yet (sent when the batch ends)"}
    return {"url": obj["webhook"], "id": msg_id, "state": info.state, "attempts": info.attempts}


async def _status(client: FuseboxClient, args: argparse.Namespace) -> int:
    obj = await client.batch(args.id)
    hook = await _webhook_line(client, obj)
    if args.json:
        _print_json({**obj, "webhook_delivery": hook})
        return 0
    rc, u = obj["request_counts"], obj["usage"]
    print(f"{obj['id']}  {obj['status']}")
    print(f"  requests: {rc['completed']} completed, {rc['failed']} failed, {rc['total']} total")
    print(f"  tokens:   {u['prompt_tokens']} in, {u['completion_tokens']} out, {u['cached_tokens']} cached")
    print(
        f"  cost:     ${u['cost_usd']:.6f}"
        + (f" (budget ${obj['budget_usd']:.6f})" if obj.get("budget_usd") is not None else "")
    )
    if obj.get("paused"):
        print(f"  paused:   {obj['paused']}")
    if obj.get("failure_reason"):
        print(f"  reason:   {obj['failure_reason']}")
    if hook is not None:
        if hook["id"]:
            print(f"  webhook:  {hook['id']} {hook['state']} ({hook['attempts']} attempts) -> {hook['url']}")
            print(f"            details: fusebox webhooks log {hook['id']}")
        else:
            print(f"  webhook:  {hook['state']} -> {hook['url']}")
    return 0


async def _results(client: FuseboxClient, args: argparse.Namespace) -> int:
    import msgspec

    from producer.output import write_results
    from shared.schema import OutputLine

    if args.output:
        check_writable(args.output, args.errors)
    await client.batch(args.id)  # KeyError for an unknown id
    if args.output:
        w = await write_results(
            client, args.id, Path(args.output), Path(args.errors) if args.errors else None,
            ordered=not args.completion_order,
        )  # fmt: skip
        print(f"{w.ok} ok, {w.failed} failed, {w.missing} not done yet", file=sys.stderr)
        return 0
    enc = msgspec.json.Encoder()
    out = sys.stdout.buffer
    async for r in client.results(args.id, ordered=not args.completion_order):
        if r is not None:
            out.write(enc.encode(OutputLine.from_result(r)) + b"\n")
    out.flush()
    return 0


async def _cancel(client: FuseboxClient, args: argparse.Namespace) -> int:
    removed, status = await client.cancel(args.id)
    if args.json:
        _print_json({"id": args.id, "status": status, "cancelled_lines": max(removed, 0)})
    elif removed < 0:
        print(f"{args.id} had already ended ({status})")
    else:
        print(f"{args.id}: {status}; {removed} queued lines will not run, running ones finish")
    return 0


async def _retry(client: FuseboxClient, args: argparse.Namespace) -> int:
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
        _print_json(dataclasses.asdict(out))
    elif out.failed == 0 and out.requeued == 0:
        print(f"{args.id} has no failed lines; nothing to retry ({out.status})")
        return 0
    else:
        extra = f", {out.not_retried} not retried (input line still invalid)" if out.not_retried else ""
        print(f"{args.id}: {out.requeued} of {out.failed} failed lines queued again{extra} ({out.status})")
    if not args.wait or out.requeued == 0:
        return EXIT_LINES_FAILED if out.not_retried else 0
    counts = await _wait_with_progress(client, args.id)
    if args.output:
        await write_results(client, args.id, Path(args.output), Path(args.errors) if args.errors else None)
    print(f"{args.id}: {counts.status}, {counts.completed} ok, {counts.failed} failed of {counts.total}")
    return EXIT_LINES_FAILED if counts.failed or counts.status != "completed" else 0


async def _batches(client: FuseboxClient, args: argparse.Namespace) -> int:
    from producer.tables import print_table

    rows = await client.batches(args.limit)
    if args.json:
        _print_json(rows)
        return 0
    table = []
    for b in rows:
        rc = b["request_counts"]
        table.append(
            [
                b["id"],
                b["status"],
                rc["completed"] + rc["failed"],
                rc["failed"],
                rc["total"],
                b["input"] or "",
            ]
        )
    print_table(["id", "status", "done", "failed", "total", "input"], table, numeric={2, 3, 4})
    return 0


async def _usage(client: FuseboxClient, args: argparse.Namespace) -> int:
    import dataclasses

    from producer.tables import print_table
    from shared.usage import group_rows, totals

    rows = group_rows(await client.usage(since_s=args.since, batch=args.batch), args.by)
    if args.json:
        _print_json({"by": args.by, "rows": [dataclasses.asdict(r) for r in rows], "totals": totals(rows)})
        return 0
    keys = [k for k in ("provider", "model", "tenant", "batch") if k in args.by.split(",")]
    table = [
        [*(getattr(r, k) for k in keys), r.requests, sum(r.errors.values()), r.input_tokens,
         r.output_tokens, f"{r.cost_usd:.4f}"]
        for r in rows
    ]  # fmt: skip
    t = totals(rows)
    table.append(
        ["total", *[""] * (len(keys) - 1), int(t.get("requests", 0)), int(t.get("errors", 0)),
         int(t.get("input_tokens", 0)), int(t.get("output_tokens", 0)), f"{t.get('cost_usd', 0):.4f}"]
    )  # fmt: skip
    n = len(keys)
    print_table([*keys, "requests", "errors", "in", "out", "cost $"], table, numeric=set(range(n, n + 5)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a batch to a running deployment (REDIS_URL)")
    p.add_argument("input", help="OpenAI Batch JSONL, or a prompts file with --model")
    p.add_argument("--model", help="treat INPUT as one prompt per line, sent to this model")
    p.add_argument("--system", help="system prompt for a prompts file")
    p.add_argument("--webhook", help="URL that gets a signed summary when the batch ends")
    p.add_argument("--batch-id")
    p.add_argument("--tenant", help="tag for usage accounting")
    p.add_argument("--metadata", type=_kv, action="append", metavar="KEY=VALUE")
    p.add_argument("--completion-window", type=parse_duration, metavar="DURATION",
                   help="expire lines not run within this time (e.g. 24h)")  # fmt: skip
    p.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    p.add_argument("-o", "--output", help="with --wait: write results here")
    p.add_argument("--errors", help="with --wait -o: write failed lines here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_submit))

    p = sub.add_parser("status", help="a batch's status, counts, usage, cost and webhook message id")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_status))

    p = sub.add_parser("results", help="a batch's results (OpenAI batch output format, JSONL)")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write to this file (default: stdout)")
    p.add_argument("--errors", help="with -o: write failed lines here")
    p.add_argument("--completion-order", action="store_true", help="as they completed, not input order")
    p.add_argument("--json", action="store_true", help="accepted for symmetry: results are always JSONL")
    p.set_defaults(fn=_with_client(_results))

    p = sub.add_parser("cancel", help="cancel a batch: no new dispatch, running calls finish")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_cancel))

    p = sub.add_parser("retry", help="run an ended batch's failed lines again, into the same batch")
    p.add_argument("id")
    p.add_argument("input", nargs="?", help="the batch's input file (default: its recorded name, if here)")
    p.add_argument("--model", help="as given at submission, for a prompts file")
    p.add_argument("--system", help="as given at submission, for a prompts file")
    p.add_argument("--wait", action="store_true", help="show progress until the batch ends again")
    p.add_argument("-o", "--output", help="with --wait: write all results here")
    p.add_argument("--errors", help="with --wait -o: write failed lines here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_retry))

    p = sub.add_parser("batches", help="list recent batches")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_batches))

    p = sub.add_parser("usage", help="requests, tokens and cost per provider/model/tenant/batch")
    p.add_argument("--batch", help="only this batch")
    p.add_argument("--since", type=parse_duration, default=3600.0, metavar="DURATION", help="default 1h")
    p.add_argument("--by", type=_grouping, default="provider,model",
                   help="group by these, comma-separated: provider, model, tenant, batch "
                        "(default provider,model)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_usage))


def _grouping(text: str) -> str:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in parts if t not in ("provider", "model", "tenant", "batch")]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--by takes provider, model, tenant, batch (got {text!r})")
    return ",".join(parts)
