"""The batch commands that read a deployment: status, results, batches and usage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.cli_runtime import check_writable, print_json

if TYPE_CHECKING:
    from producer.client import FuseboxClient


async def webhook_line(client: FuseboxClient, obj: dict[str, Any]) -> dict[str, Any] | None:
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


async def cmd_status(client: FuseboxClient, args: argparse.Namespace) -> int:
    obj = await client.batch(args.id)
    hook = await webhook_line(client, obj)
    if args.json:
        print_json({**obj, "webhook_delivery": hook})
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


async def cmd_results(client: FuseboxClient, args: argparse.Namespace) -> int:
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


async def cmd_batches(client: FuseboxClient, args: argparse.Namespace) -> int:
    from producer.tables import print_table

    rows = await client.batches(args.limit)
    if args.json:
        print_json(rows)
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


async def cmd_usage(client: FuseboxClient, args: argparse.Namespace) -> int:
    import dataclasses

    from producer.tables import print_table
    from shared.usage import group_rows, totals

    rows = group_rows(await client.usage(since_s=args.since, batch=args.batch), args.by)
    if args.json:
        print_json({"by": args.by, "rows": [dataclasses.asdict(r) for r in rows], "totals": totals(rows)})
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
