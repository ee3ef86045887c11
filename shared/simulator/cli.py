"""Command-line front end shared by ``fusebox simulate`` and ``python -m shared.simulator``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from shared.simulator.config import (
    ERROR_KIND_ALIASES,
    ERROR_KINDS,
    SimConfig,
    SimConfigError,
    load_config,
    patch_config,
)
from shared.simulator.server import SimulatorServer

DEFAULT_PORT = 8800


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)"
    )
    p.add_argument(
        "--config", metavar="FILE", help="simulator config (TOML, or JSON); flags below override it"
    )
    p.add_argument("--latency-ms", type=float, help="latency of every route (fixed, or lognormal mean)")
    p.add_argument("--latency-p99-ms", type=float, help="with --latency-ms: lognormal latency with this p99")
    p.add_argument(
        "--error-rate", type=float, help="probability of an injected error, split over --error-kinds"
    )
    p.add_argument(
        "--error-kinds",
        default="429,500,503",
        help="kinds for --error-rate, comma-separated: 429,500,503,529,timeout,malformed",
    )
    p.add_argument("--capacity", type=int, help="hidden concurrency limit per route (beyond it: 429)")
    p.add_argument("--retry-after", type=float, help="seconds the 429s ask clients to wait (default 1)")
    p.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="[ROUTE=]START:END",
        help="an outage window in seconds after start, for one route or all (repeatable)",
    )
    p.add_argument("--seed", type=int, help="seed the random draws (latency, error mix) for repeatable runs")


def _error_kinds(text: str) -> list[str]:
    kinds = []
    for k in filter(None, (x.strip() for x in text.split(","))):
        kind = ERROR_KIND_ALIASES.get(k, k)
        if kind not in ERROR_KINDS:
            raise SimConfigError(f"unknown error kind {k!r} (use 429,500,503,529,timeout,malformed)")
        kinds.append(kind)
    if not kinds:
        raise SimConfigError("--error-kinds is empty")
    return kinds


def config_from_args(args: argparse.Namespace) -> SimConfig:
    cfg = load_config(args.config) if args.config else SimConfig()
    defaults: dict[str, Any] = {}
    if args.latency_ms is not None:
        if args.latency_p99_ms is not None:
            defaults["latency"] = {
                "kind": "lognormal",
                "mean_ms": args.latency_ms,
                "p99_ms": args.latency_p99_ms,
            }
        else:
            defaults["latency"] = {"kind": "fixed", "ms": args.latency_ms}
    elif args.latency_p99_ms is not None:
        raise SimConfigError("--latency-p99-ms needs --latency-ms (the mean)")
    if args.error_rate is not None:
        kinds = _error_kinds(args.error_kinds)
        defaults["errors"] = {k: args.error_rate / len(kinds) for k in kinds}
    if args.capacity is not None:
        defaults["capacity"] = args.capacity
    if args.retry_after is not None:
        defaults["retry_after_s"] = args.retry_after
    patch: dict[str, Any] = {"defaults": defaults} if defaults else {}
    for spec in args.outage:
        route, _, window = spec.rpartition("=")
        try:
            start, end = (float(x) for x in window.split(":"))
        except ValueError:
            raise SimConfigError(f"--outage {spec!r}: expected [ROUTE=]START:END in seconds") from None
        target = (
            patch.setdefault("routes", {}).setdefault(route, {})
            if route
            else patch.setdefault("defaults", {})
        )
        existing = target.get("outages", [])
        target["outages"] = [*existing, [start, end]]
    if args.seed is not None:
        patch["seed"] = args.seed
    return patch_config(cfg, patch) if patch else cfg


def banner(server: SimulatorServer) -> str:
    lines = [f"fusebox simulator listening on {server.base_url}", "base URLs per route (provider base_url):"]
    width = max(len(n) for n in server.routes)
    for name, route in server.routes.items():
        lines.append(f"  {name:<{width}}  {route.format.name:<9}  {server.url_for(name)}")
    lines += [
        "bare paths also work for the built-in routes: /v1/chat/completions, /v1/embeddings, /v1/messages,",
        "  /v1beta/models/MODEL:generateContent, /api/chat, /api/embed, /v2/chat, /v2/embed",
        f"admin: GET {server.base_url}/_sim/stats  POST /_sim/reset  GET|POST /_sim/config",
    ]
    return "\n".join(lines)


async def serve(config: SimConfig, host: str, port: int, ready: bool) -> None:
    server = SimulatorServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start(host, port)
    print(f"SIMULATOR_READY {url}" if ready else banner(server), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(args: argparse.Namespace, ready: bool = False) -> int:
    try:
        config = config_from_args(args)
        SimulatorServer(config)  # compile now: report config errors before binding the port
    except SimConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args.host, args.port, ready))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.simulator", description="Fusebox provider simulator")
    add_arguments(p)
    p.add_argument(
        "--ready", action="store_true", help="print one 'SIMULATOR_READY <url>' line when listening"
    )
    args = p.parse_args(argv)
    return run(args, ready=args.ready)
