"""``fusebox keys create|list|revoke``: API keys of the HTTP API's tenants."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import Settings


def _redis(settings: Settings):  # type: ignore[no-untyped-def]
    from shared.redis_conn import connect

    if not settings.redis_url:
        print("error: REDIS_URL is not set", file=sys.stderr)
        return None
    return connect(settings.redis_url, settings.keys)


def _cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from shared import audit, tenants

    try:
        tenants.check_tenant(args.tenant)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = _redis(settings)
    if r is None:
        return 2

    async def go() -> str:
        try:
            return await tenants.create_key(
                r, settings.keys, args.tenant, admin=args.admin, actor=audit.cli_actor()
            )
        finally:
            await r.aclose()

    key = asyncio.run(go())
    kind = "admin key" if args.admin else "key"
    print(f"new {kind} for tenant {args.tenant} (shown once; store it now):")
    print(key)
    return 0


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared import tenants

    r = _redis(settings)
    if r is None:
        return 2

    async def go() -> list[tenants.KeyInfo]:
        try:
            return await tenants.list_keys(r, settings.keys)
        finally:
            await r.aclose()

    rows = asyncio.run(go())
    print(f"{'ID':<14}{'TENANT':<24}{'ADMIN':<7}{'PREFIX':<13}CREATED")
    for k in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(k.created_at))
        print(f"{k.key_id:<14}{k.tenant:<24}{'yes' if k.admin else 'no':<7}{k.prefix + '…':<13}{created}")
    return 0


def _cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from shared import audit, tenants

    r = _redis(settings)
    if r is None:
        return 2

    async def go() -> list[tenants.KeyInfo]:
        try:
            return await tenants.revoke(r, settings.keys, args.key, actor=audit.cli_actor())
        finally:
            await r.aclose()

    gone = asyncio.run(go())
    if not gone:
        print("error: no such key (give the key itself or its ID from 'fusebox keys list')", file=sys.stderr)
        return 1
    print(f"revoked key {gone[0].key_id} of tenant {gone[0].tenant}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="API keys of the HTTP API's tenants")
    ks = k.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a key for TENANT (printed alone on the last line)")
    c.add_argument("tenant")
    c.add_argument("--admin", action="store_true", help="may read every tenant's usage and ops endpoints")
    c.set_defaults(fn=_cmd_create)
    ls = ks.add_parser("list", help="list keys (ids, tenants; never the keys)")
    ls.set_defaults(fn=_cmd_list)
    rv = ks.add_parser("revoke", help="revoke a key, given the key or its ID")
    rv.add_argument("key")
    rv.set_defaults(fn=_cmd_revoke)
    from producer import provider_keys_cmd

    provider_keys_cmd.register(ks)
    provider_keys_cmd.register_audit(sub)
