"""``fusebox webhooks log|dead|redeliver|enable``: inspect and repair webhook delivery."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from producer.cli_errors import CliError, check_redis_url

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from shared.config import Settings
    from shared.webhooks.records import WebhookInfo


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("webhooks", help="webhook delivery log, dead letters, redelivery")
    sub = p.add_subparsers(dest="webhooks_command", required=True)

    lg = sub.add_parser("log", help="one webhook's state and every delivery attempt")
    lg.add_argument("id", help="webhook id (the webhook-id header)")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=_cmd_log)

    dead = sub.add_parser("dead", help="webhooks that were not delivered (newest first)")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(fn=_cmd_dead)

    rd = sub.add_parser("redeliver", help="send a webhook again with the same webhook-id")
    rd.add_argument("id")
    rd.set_defaults(fn=_cmd_redeliver)

    en = sub.add_parser("enable", help="re-enable an endpoint disabled by HTTP 410 (no URL: list them)")
    en.add_argument("url", nargs="?")
    en.set_defaults(fn=_cmd_enable)


def _with_redis(settings: Settings, body: Callable[[ArqRedis], Awaitable[int]]) -> int:
    if not settings.redis_url:
        raise CliError("REDIS_URL is not set; point it at the Redis your workers use")
    check_redis_url(settings.redis_url)
    from shared.redis_conn import connect

    async def go() -> int:
        redis = connect(settings.redis_url or "", settings.keys)
        try:
            return await body(redis)
        finally:
            await redis.aclose(close_connection_pool=True)

    return asyncio.run(go())


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _print_json(obj: Any) -> None:
    import msgspec

    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")


def _cmd_log(args: argparse.Namespace, settings: Settings) -> int:
    from shared.webhooks.records import delivery_log

    async def body(redis: ArqRedis) -> int:
        info = await delivery_log(redis, settings.keys, args.id)
        if info is None:
            print(f"error: no webhook {args.id!r}", file=sys.stderr)
            return 1
        if args.json:
            _print_json(info)
            return 0
        print(f"{info.id}  {info.type}  {info.state}  {info.url}")
        print(f"attempts {info.attempts}, redeliveries {info.redeliveries}, created {_ts(info.created_at)}")
        for a in info.log:
            status = str(a.status) if a.status is not None else "-"
            nxt = f"  next in {a.next_in:.1f}s" if a.next_in is not None else ""
            err = f"  {a.error}" if a.error else ""
            print(
                f"  {_ts(a.at)}  #{a.redelivery}.{a.attempt}  {a.outcome:<9} {status:>3}"
                f"  {a.latency_ms:8.1f} ms{nxt}{err}"
            )
        return 0

    return _with_redis(settings, body)


def _cmd_dead(args: argparse.Namespace, settings: Settings) -> int:
    from shared.webhooks.records import dead_letters

    async def body(redis: ArqRedis) -> int:
        items: list[WebhookInfo] = await dead_letters(redis, settings.keys, args.limit)
        if args.json:
            _print_json(items)
            return 0
        if not items:
            print("no dead letters")
        for i in items:
            print(f"{_ts(i.updated_at)}  {i.id}  {i.type}  {i.state}  {i.url}  {i.last_error or ''}")
        return 0

    return _with_redis(settings, body)


def _cmd_redeliver(args: argparse.Namespace, settings: Settings) -> int:
    from shared.webhooks.records import UnknownWebhookError, redeliver

    async def body(redis: ArqRedis) -> int:
        try:
            n = await redeliver(redis, settings.keys, args.id)
        except UnknownWebhookError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"re-enqueued webhook {args.id} (redelivery {n})")
        return 0

    return _with_redis(settings, body)


def _cmd_enable(args: argparse.Namespace, settings: Settings) -> int:
    from shared.webhooks.records import disabled_endpoints, enable_endpoint

    async def body(redis: ArqRedis) -> int:
        if args.url is None:
            for url, why in (await disabled_endpoints(redis, settings.keys)).items():
                print(f"{url}  {why}")
            return 0
        n = await enable_endpoint(redis, settings.keys, args.url)
        if n:
            print(f"enabled {args.url}" + (f" ({n} URLs)" if n > 1 else ""))
            return 0
        print(f"error: {args.url} is not disabled", file=sys.stderr)
        return 1

    return _with_redis(settings, body)
