"""``fusebox providers``: every provider, its models, key (masked), limits and a live health check."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.providers.base import Health, Provider


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "providers",
        help="list providers with models, key (masked), limits and a live health check",
        description="Providers from fusebox.toml and the environment; exits 1 if a health check fails.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-health", action="store_true", help="skip the live health checks")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import msgspec

    from shared.providers.registry import build_providers

    providers = build_providers(settings.file)
    rows = asyncio.run(collect(providers, health=not args.no_health))
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode({"providers": rows})).decode() + "\n")
    elif sys.stdout.isatty():
        from producer.tables import print_table

        print_table(HEADER, table_rows(rows))
    else:
        sys.stdout.write(render_table(rows))
    return 1 if any(r["health"] is not None and not r["health"]["ok"] for r in rows) else 0


async def collect(providers: dict[str, Provider], *, health: bool = True) -> list[dict[str, Any]]:
    """One row per provider; health checks run concurrently and never raise."""
    try:
        checks: list[Health | None] = (
            list(await asyncio.gather(*(_check(p) for p in providers.values())))
            if health
            else [None] * len(providers)
        )
    finally:
        for p in providers.values():
            await p.aclose()
    return [describe(p, h) for p, h in zip(providers.values(), checks, strict=True)]


async def _check(p: Provider) -> Health:
    from shared.providers.base import Health

    try:
        return await p.health()
    except Exception as e:  # a broken adapter must not hide the others
        return Health(ok=False, detail=f"health check failed: {type(e).__name__}")


def describe(p: Provider, health: Health | None) -> dict[str, Any]:
    import msgspec

    cfg = p.config
    key_info = getattr(p, "key_info", None)
    key = (
        key_info()
        if callable(key_info)
        else {"required": False, "set": False, "source": None, "masked": None}
    )
    return {
        "name": p.name,
        "type": p.type,
        "base_url": getattr(p, "base_url", None),
        "models": list(cfg.models),
        "key": key,
        "limits": {"max_concurrency": cfg.max_concurrency, "rpm": cfg.rpm, "tpm": cfg.tpm},
        "health": msgspec.to_builtins(health) if health is not None else None,
    }


def _key_text(key: dict[str, Any]) -> str:
    if key["set"]:
        return f"{key['source']} {key['masked']}"
    if key["required"]:
        return f"MISSING (set {key['source']})"
    return "-"


def _health_text(h: dict[str, Any] | None) -> str:
    if h is None:
        return "(skipped)"
    state = "ok" if h["ok"] else "FAIL"
    latency = f" {h['latency_ms']:.0f}ms" if h["latency_ms"] else ""
    detail = f" {h['detail']}" if h["detail"] else ""
    text = f"{state}{latency}{detail}"
    return text if len(text) <= 90 else text[:89] + "…"


HEADER = ("NAME", "TYPE", "BASE URL", "MODELS", "KEY", "LIMITS", "HEALTH")


def render_table(rows: list[dict[str, Any]]) -> str:
    header = HEADER
    lines = [header, *table_rows(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)] + [line[-1]]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    lines = []
    for r in rows:
        lim = r["limits"]
        limits = f"conc {lim['max_concurrency']}, rpm {lim['rpm'] or '-'}, tpm {lim['tpm'] or '-'}"
        models = ", ".join(r["models"]) or ("simulated/<any>" if r["type"] == "simulated" else "-")
        base = r["base_url"] or ("(in-process)" if r["type"] == "simulated" else "-")
        lines.append(
            (r["name"], r["type"], base, models, _key_text(r["key"]), limits, _health_text(r["health"]))
        )
    return lines
