"""``fusebox keys provider set|list|delete``, ``fusebox keys rotate-master``, ``fusebox keys settings``
and ``fusebox audit``: tenants' own provider keys, their settings, and the audit trail.

``set`` reads the key from stdin (never argv: argv is visible to every user in ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from shared import audit, tenants
from shared.byok import store
from shared.byok.crypto import KeyRing, MasterKeyError
from shared.config import Settings
from shared.redis_conn import connect
from shared.schema import ProviderEntry
from shared.ssrf import check_url


def _run(settings: Settings, body: Callable[[Redis], Awaitable[int]]) -> int:
    if not settings.redis_url:
        print("error: REDIS_URL is not set", file=sys.stderr)
        return 2

    async def go() -> int:
        r = connect(settings.redis_url or "", settings.keys)
        try:
            return await body(r)
        except MasterKeyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            await r.aclose()

    return asyncio.run(go())


def _read_key() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("provider key (input hidden): ").strip()
    return sys.stdin.readline().strip()


def _cmd_set(args: argparse.Namespace, settings: Settings) -> int:
    try:
        tenants.check_tenant(args.tenant)
        ring = KeyRing.from_env()
        store.require_ring(ring)
    except (ValueError, MasterKeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key = _read_key()
    if not key:
        print(
            'error: no key on stdin (pipe it in: printf %s "$KEY" | fusebox keys provider set ...)',
            file=sys.stderr,
        )
        return 2
    entry = None
    if args.type or args.base_url:
        if not args.type:
            print("error: --base-url needs --type", file=sys.stderr)
            return 2
        entry = ProviderEntry(type=args.type, base_url=args.base_url, models=args.model or [])

    async def body(r: Redis) -> int:
        if entry is not None and entry.base_url:
            try:
                await check_url(entry.base_url, settings.file.api.provider_allow_hosts)
            except (ValueError, OSError) as e:
                print(f"error: base URL refused: {e}", file=sys.stderr)
                return 2
        rec = await store.put(
            r, settings.keys, ring, args.tenant, args.provider, key, entry, actor=audit.cli_actor()
        )
        print(f"stored {args.provider} key {rec.masked} for tenant {args.tenant} (master key {rec.mk})")
        return 0

    return _run(settings, body)


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async def body(r: Redis) -> int:
        recs = await store.records(r, settings.keys, args.tenant)
        allow = (await tenants.get_settings(r, settings.keys, args.tenant))["allow_fleet_keys"]
        rows = [store.view(p, rec) for p, rec in sorted(recs.items())]
        if args.json:
            print(json.dumps({"tenant": args.tenant, "allow_fleet_keys": allow, "data": rows}, indent=2))
            return 0
        print(f"tenant {args.tenant}: fleet keys {'allowed' if allow else 'NOT allowed'}")
        print(f"{'PROVIDER':<20}{'KEY':<14}{'MASTER KEY':<14}{'UPDATED':<21}ENTRY")
        for v in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v["updated_at"]))
            ent = v.get("entry") or {}
            desc = f"{ent.get('type')} {ent.get('base_url') or ''}".strip() if ent else "-"
            print(f"{v['provider']:<20}{v['key']:<14}{v['master_key_id']:<14}{when:<21}{desc}")
        return 0

    return _run(settings, body)


def _cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    async def body(r: Redis) -> int:
        if not await store.delete(r, settings.keys, args.tenant, args.provider, actor=audit.cli_actor()):
            print(f"error: tenant {args.tenant} has no key for {args.provider}", file=sys.stderr)
            return 1
        print(f"deleted the {args.provider} key of tenant {args.tenant}")
        return 0

    return _run(settings, body)


def _cmd_rotate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        ring = KeyRing.from_env()
    except MasterKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ring is None or ring.new is None:
        print(
            "error: set FUSEBOX_MASTER_KEY (the current key) and FUSEBOX_MASTER_KEY_NEW (or _NEW_FILE) "
            "to the new key, on every worker and API process too, then run this again",
            file=sys.stderr,
        )
        return 2

    async def body(r: Redis) -> int:
        done, current = await store.rotate(r, settings.keys, ring, actor=audit.cli_actor())
        print(f"re-wrapped {done} key(s) under master key {ring.write_id} ({current} already were)")
        print("now set FUSEBOX_MASTER_KEY to the new key and unset FUSEBOX_MASTER_KEY_NEW everywhere")
        return 0

    return _run(settings, body)


def _cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    async def body(r: Redis) -> int:
        changes: dict[str, bool | int] = {}
        if args.allow_fleet_keys is not None:
            changes["allow_fleet_keys"] = args.allow_fleet_keys == "yes"
        if args.weight is not None:
            changes["weight"] = args.weight
        out = await tenants.update_settings(r, settings.keys, args.tenant, changes, actor=audit.cli_actor())
        print(json.dumps({"tenant": args.tenant, **out}))
        return 0

    try:
        tenants.check_tenant(args.tenant)
        if args.weight is not None:
            tenants.check_weight(args.weight)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _run(settings, body)


def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    async def body(r: Redis) -> int:
        rows = await audit.read(r, settings.keys, max(1, args.limit))
        if args.json:
            print(json.dumps({"data": rows}, indent=2))
            return 0
        print(f"{'TIME (UTC)':<21}{'ACTOR':<22}{'ACTION':<22}{'TARGET':<20}DETAILS")
        for e in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["at"]))
            det = json.dumps(e["details"], separators=(",", ":"))
            print(f"{when:<21}{e['actor'][:21]:<22}{e['action']:<22}{e['target'][:19]:<20}{det}")
        return 0

    return _run(settings, body)


def _cmd_budget(args: argparse.Namespace, settings: Settings) -> int:
    from shared import budget

    usd = None if args.usd == "none" else float(args.usd)
    target = {"tenant": args.id} if args.kind == "tenant" else {"batch_id": args.id}

    async def body(r: Redis) -> int:
        try:
            await budget.set_cap(r, settings.keys, usd=usd, actor=audit.cli_actor(), **target)  # type: ignore[arg-type]
        except (LookupError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        spent = await budget.spent(r, settings.keys, **target)  # type: ignore[arg-type]
        what = "per UTC day" if args.kind == "tenant" else "for the batch"
        cap = "no cap" if usd is None else f"${usd:.4f} {what}"
        print(
            f"{args.kind} {args.id}: {cap}; spent ${spent:.4f}" + (" today" if args.kind == "tenant" else "")
        )
        return 0

    return _run(settings, body)
