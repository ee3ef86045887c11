"""``fusebox breakers`` (every breaker and limiter) and ``fusebox breaker open|close|reset|disable``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from producer.cli_errors import CliError, check_redis_url

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.gate import Gate

FORCE = {"open": "open", "close": "closed", "disable": "disabled"}
ACTIONS = {
    "open": "forced open",
    "close": "forced closed",
    "disable": "disabled",
    "reset": "reset to automatic",
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "breakers",
        help="every provider's breaker state, error rates, in-flight vs limit, rpm/tpm use",
        description="Circuit breaker and limiter state per provider (and per-model scope), from Redis.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    p.set_defaults(fn=run_list)

    b = subparsers.add_parser(
        "breaker",
        help="force a breaker open or closed, disable it, or reset it to automatic",
        description="open/close pin the breaker until 'reset'; disable lets every call through "
        "unrecorded (limits still apply); reset returns it to automatic with an empty window.",
    )
    b.add_argument("action", choices=sorted(ACTIONS))
    b.add_argument("name", help="provider name, or provider/model for a per-model scope")
    b.add_argument("--reason", default="", help="why (kept in the audit trail)")
    b.set_defaults(fn=run_action)


def _with_gate(settings: Settings, body: Callable[[Gate], Awaitable[int]]) -> int:
    if not settings.redis_url:
        raise CliError("REDIS_URL is not set; point it at the Redis your workers use")
    check_redis_url(settings.redis_url)
    from shared.gate import Gate
    from shared.providers.registry import build_providers
    from shared.redis_conn import connect

    async def go() -> int:
        providers = build_providers(settings.file)
        redis = connect(settings.redis_url or "", settings.keys)
        try:
            gate = Gate(redis, settings.keys, settings.file, {n: p.config for n, p in providers.items()})
            return await body(gate)
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()
            for p in providers.values():
                await p.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(go())
    return 130


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    async def body(gate: Gate) -> int:
        while True:
            snaps = await gate.snapshots()
            if args.json:
                out = json.dumps({"breakers": snaps}, indent=None if args.watch else 2)
            elif sys.stdout.isatty() and not args.watch:
                from producer.tables import print_table

                print_table(HEAD, table_rows(snaps))
                return 0
            else:
                out = render_table(snaps)
            if args.watch and not args.json and sys.stdout.isatty():
                out = "\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  fusebox breakers\n") + out
            sys.stdout.write(out if out.endswith("\n") else out + "\n")
            sys.stdout.flush()
            if not args.watch:
                return 0
            await asyncio.sleep(args.interval)

    return _with_gate(settings, body)


def run_action(args: argparse.Namespace, settings: Settings) -> int:
    from shared import audit

    async def body(gate: Gate) -> int:
        known = [p.scope for p in [*gate.scopes(), *await gate.key_scopes()]]
        if args.name not in known:
            hint = ""
            if "/" in args.name:
                prov, _, model = args.name.partition("/")
                hint = (
                    f"; a provider/model breaker exists only for models listed under "
                    f'[providers.{prov}.per_model."{model}"] in fusebox.toml'
                )
            print(f"error: no breaker {args.name!r} (known: {', '.join(known)}){hint}", file=sys.stderr)
            return 2
        actor = audit.cli_actor()
        if args.action == "reset":
            await gate.reset(args.name, actor=actor, why=args.reason)
        else:
            await gate.force(args.name, FORCE[args.action], actor=actor, why=args.reason)
        details = {"action": args.action, "reason": args.reason}
        await audit.record(
            gate.redis, gate.keys, actor=actor, action="breaker.force", target=args.name, details=details
        )
        snap = await gate.snapshot(args.name)
        print(f"{args.name}: {ACTIONS[args.action]} (state {snap['state']})")
        return 0

    return _with_gate(settings, body)


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _use(used: float | None, limit: int | None) -> str:
    return "-" if not limit else f"{used or 0:.0f}/{limit}"


def _when(snap: dict[str, Any]) -> str:
    last = snap["last_transition"]
    if not last:
        return "-"
    ago = max(0.0, snap["now"] - last["at"])
    return f"{last['from']}->{last['to']} ({last['reason']}) {_dur(ago)} ago"


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _next(snap: dict[str, Any]) -> str:
    state = snap["state"]
    if state == "open" and snap["next_change_at"] is not None:
        return f"half-open in {_dur(max(0.0, snap['next_change_at'] - snap['now']))}"
    if state == "half_open":
        return f"probes {snap['probes_in_flight']}/{snap['half_open_probes']}, ok {snap['probe_successes']}"
    if state == "closed" and snap.get("consecutive_failures"):
        return f"{snap['consecutive_failures']}/{snap['consecutive_failures_to_trip']} failures in a row"
    if state == "closed" and snap["calls"] < snap["minimum_calls"]:
        return f"needs {snap['minimum_calls']} calls to trip"
    if state in ("forced_open", "forced_closed", "disabled"):
        return "until 'fusebox breaker reset'"
    return "-"


HEAD = ("PROVIDER", "STATE", "FAIL", "SLOW", "CALLS", "IN-FLIGHT", "RPM", "TPM", "LAST TRANSITION", "NEXT")


def render_table(snaps: list[dict[str, Any]]) -> str:
    rows = [HEAD, *table_rows(snaps)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    return (
        "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"
    )


def table_rows(snaps: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for s in snaps:
        limit = f"{s['in_flight']}/{s['effective_limit']}"
        if s["effective_limit"] != s["max_concurrency"]:
            limit += f" (max {s['max_concurrency']})"
        rows.append(
            (
                s["scope"],
                s["state"],
                _pct(s["failure_rate"]),
                _pct(s["slow_rate"]),
                f"{s['calls']}/{s['window_seconds']:g}s",
                limit,
                _use(s["rpm_used"], s["rpm"]),
                _use(s["tpm_used"], s["tpm"]),
                _when(s),
                _next(s),
            )
        )
    return rows
