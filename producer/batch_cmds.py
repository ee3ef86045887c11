"""CLI commands against a running deployment: submit, status, results, cancel, batches, usage."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from producer.batch_input import prompt_options
from producer.client import BatchBusy, FuseboxClient
from producer.output import write_results
from producer.progress import Progress
from shared.config import Settings
from shared.schema import OutputLine, RequestError
from shared.ssrf import UnsafeURLError
from shared.usage import totals

_enc = msgspec.json.Encoder()
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


def _with_client(fn: Callable[[FuseboxClient, argparse.Namespace], Awaitable[int]]) -> Callable[..., int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        if not settings.redis_url:
            print(
                "error: REDIS_URL is not set (these commands talk to a running deployment)", file=sys.stderr
            )
            return 2

        async def main() -> int:
            client = FuseboxClient.connect(settings)
            try:
                return await fn(client, args)
            except KeyError as e:
                print(f"error: {e.args[0]}", file=sys.stderr)
                return 1
            finally:
                await client.aclose()

        return asyncio.run(main())

    return run


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


async def _submit(client: FuseboxClient, args: argparse.Namespace) -> int:
    try:
        prompts = prompt_options(args.input, args.model, args.system, client.settings.file.default_model)
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
    except (UnsafeURLError, RequestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
        return 0
    progress = Progress()
    counts = await client.wait_batch(
        sub.batch_id, on_progress=lambda c: progress.update(c.done, c.failed, c.total), poll=0.2
    )
    progress.update(counts.done, counts.failed, counts.total, force=True)
    progress.close()
    if args.output:
        await write_results(
            client, sub.batch_id, Path(args.output), Path(args.errors) if args.errors else None
        )
    obj = await client.batch(sub.batch_id)
    if args.json:
        _print_json(obj)
    else:
        rc = obj["request_counts"]
        print(
            f"{sub.batch_id}: {obj['status']}, {rc['completed']} ok, {rc['failed']} failed of {rc['total']}"
        )
    return 0


async def _status(client: FuseboxClient, args: argparse.Namespace) -> int:
    obj = await client.batch(args.id)
    if args.json:
        _print_json(obj)
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
    return 0


async def _results(client: FuseboxClient, args: argparse.Namespace) -> int:
    await client.batch(args.id)  # KeyError for an unknown id
    if args.output:
        w = await write_results(
            client, args.id, Path(args.output), Path(args.errors) if args.errors else None,
            ordered=not args.completion_order,
        )  # fmt: skip
        print(f"{w.ok} ok, {w.failed} failed, {w.missing} not done yet", file=sys.stderr)
        return 0
    out = sys.stdout.buffer
    async for r in client.results(args.id, ordered=not args.completion_order):
        if r is not None:
            out.write(_enc.encode(OutputLine.from_result(r)) + b"\n")
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
    info = await client.batch(args.id)  # KeyError for an unknown id
    path = args.input or info.get("input")
    if not path or not os.path.isfile(path):  # noqa: ASYNC240 - one stat, before any I/O starts
        print(
            f"error: give the input file of batch {args.id}"
            + (f" (it was {info['input']!r}, not found here)" if info.get("input") else ""),
            file=sys.stderr,
        )
        return 2
    try:
        prompts = prompt_options(path, args.model, args.system, client.settings.file.default_model)
        with open(path, "rb") as f:
            out = await client.retry_batch(args.id, f, prompts=prompts)
    except BatchBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (RequestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        _print_json(dataclasses.asdict(out))
    elif out.failed == 0 and out.requeued == 0:
        print(f"{args.id} has no failed lines; nothing to retry ({out.status})")
        return 0
    else:
        extra = f", {out.not_retried} not retried (input line still invalid)" if out.not_retried else ""
        print(f"{args.id}: {out.requeued} of {out.failed} failed lines queued again{extra} ({out.status})")
    if not args.wait or out.requeued == 0:
        return 0
    progress = Progress()
    counts = await client.wait_batch(
        args.id, on_progress=lambda c: progress.update(c.done, c.failed, c.total)
    )
    progress.update(counts.done, counts.failed, counts.total, force=True)
    progress.close()
    if args.output:
        await write_results(client, args.id, Path(args.output), Path(args.errors) if args.errors else None)
    print(f"{args.id}: {counts.status}, {counts.completed} ok, {counts.failed} failed of {counts.total}")
    return 0


async def _batches(client: FuseboxClient, args: argparse.Namespace) -> int:
    rows = await client.batches(args.limit)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'id':34} {'status':12} {'done':>8} {'failed':>7} {'total':>7}  input")
    for b in rows:
        rc = b["request_counts"]
        done = rc["completed"] + rc["failed"]
        print(
            f"{b['id']:34} {b['status']:12} {done:>8} {rc['failed']:>7} {rc['total']:>7}  {b['input'] or ''}"
        )
    return 0


async def _usage(client: FuseboxClient, args: argparse.Namespace) -> int:
    rows = await client.usage(since_s=args.since, batch=args.batch)
    if args.json:
        _print_json({"rows": [dataclasses.asdict(r) for r in rows], "totals": totals(rows)})
        return 0
    print(f"{'provider':12} {'model':28} {'tenant':10} {'requests':>9} {'errors':>7} {'in':>10} {'out':>10} "
          f"{'cost $':>10}")  # fmt: skip
    for r in rows:
        print(f"{r.provider:12} {r.model:28} {r.tenant:10} {r.requests:>9} {sum(r.errors.values()):>7} "
              f"{r.input_tokens:>10} {r.output_tokens:>10} {r.cost_usd:>10.4f}")  # fmt: skip
    t = totals(rows)
    print(
        f"{'total':52} {int(t.get('requests', 0)):>9} {int(t.get('errors', 0)):>7} "
        f"{int(t.get('input_tokens', 0)):>10} {int(t.get('output_tokens', 0)):>10} "
        f"{t.get('cost_usd', 0):>10.4f}"
    )
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

    p = sub.add_parser("status", help="a batch's status, counts, usage and cost")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_status))

    p = sub.add_parser("results", help="a batch's results (OpenAI batch output format)")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write to this file (default: stdout)")
    p.add_argument("--errors", help="with -o: write failed lines here")
    p.add_argument("--completion-order", action="store_true", help="as they completed, not input order")
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

    p = sub.add_parser("usage", help="requests, tokens and cost per provider/model/tenant")
    p.add_argument("--batch", help="only this batch")
    p.add_argument("--since", type=parse_duration, default=3600.0, metavar="DURATION", help="default 1h")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_with_client(_usage))
