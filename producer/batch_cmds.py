"""CLI commands against a running deployment: submit, status, results, cancel, retry, batches, usage.

This module registers them and parses their arguments; the commands are in
:mod:`producer.batch_write_cmds` and :mod:`producer.batch_read_cmds`. Heavy imports (the client,
arq, msgspec) happen when a command runs, never at registration.
"""

from __future__ import annotations

import argparse
import re

from producer.batch_read_cmds import cmd_batches, cmd_results, cmd_status, cmd_usage
from producer.batch_write_cmds import cmd_cancel, cmd_retry, cmd_submit
from producer.cli_runtime import with_client

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
    p.set_defaults(fn=with_client(cmd_submit))

    p = sub.add_parser("status", help="a batch's status, counts, usage, cost and webhook message id")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=with_client(cmd_status))

    p = sub.add_parser("results", help="a batch's results (OpenAI batch output format, JSONL)")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="write to this file (default: stdout)")
    p.add_argument("--errors", help="with -o: write failed lines here")
    p.add_argument("--completion-order", action="store_true", help="as they completed, not input order")
    p.add_argument("--json", action="store_true", help="accepted for symmetry: results are always JSONL")
    p.set_defaults(fn=with_client(cmd_results))

    p = sub.add_parser("cancel", help="cancel a batch: no new dispatch, running calls finish")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=with_client(cmd_cancel))

    p = sub.add_parser("retry", help="run an ended batch's failed lines again, into the same batch")
    p.add_argument("id")
    p.add_argument("input", nargs="?", help="the batch's input file (default: its recorded name, if here)")
    p.add_argument("--model", help="as given at submission, for a prompts file")
    p.add_argument("--system", help="as given at submission, for a prompts file")
    p.add_argument("--wait", action="store_true", help="show progress until the batch ends again")
    p.add_argument("-o", "--output", help="with --wait: write all results here")
    p.add_argument("--errors", help="with --wait -o: write failed lines here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=with_client(cmd_retry))

    p = sub.add_parser("batches", help="list recent batches")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=with_client(cmd_batches))

    p = sub.add_parser("usage", help="requests, tokens and cost per provider/model/tenant/batch")
    p.add_argument("--batch", help="only this batch")
    p.add_argument("--since", type=parse_duration, default=3600.0, metavar="DURATION", help="default 1h")
    p.add_argument("--by", type=_grouping, default="provider,model",
                   help="group by these, comma-separated: provider, model, tenant, batch "
                        "(default provider,model)")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=with_client(cmd_usage))


def _grouping(text: str) -> str:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in parts if t not in ("provider", "model", "tenant", "batch")]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--by takes provider, model, tenant, batch (got {text!r})")
    return ",".join(parts)
