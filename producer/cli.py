"""The ``fusebox`` command.

Importing this module and parsing arguments stays cheap (``fusebox --help`` loads no arq, redis,
httpx, aiohttp or pydantic): command modules import what they need when their command runs.

Exit codes: 0 every line succeeded (or the command did what it was asked); 1 the batch finished
but some lines failed; 2 usage or input error; 3 a service is unreachable (Redis) or no worker has
ever started; 4 an unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from producer.cli_errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    check_redis_url,
)

if TYPE_CHECKING:
    from shared.config import Settings

COMMAND_MODULES: list[str] = [
    "producer.batch_cmds",
    "producer.breakers_cmd",
    "producer.webhooks_cmd",
    "producer.simulate_cmd",
    "producer.providers_cmd",
    "producer.keys_cmd",
    "producer.api.cmd",
]


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from producer.run import RunOptions, run

    opts = RunOptions(
        input=Path(args.input),
        output=Path(args.output),
        errors=Path(args.errors) if args.errors else None,
        batch_id=args.batch_id,
        fresh=args.fresh,
        model=args.model,
        system=args.system,
        quiet=args.quiet,
    )
    return run(opts, settings)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from shared.observability import init_sentry, setup_logging
    from shared.redis_conn import redact_url
    from worker.settings import build_worker

    if not settings.redis_url:
        raise CliError("REDIS_URL is not set; point it at your Redis (or run 'fusebox redis')")
    check_redis_url(settings.redis_url)
    setup_logging(getattr(args, "verbose", False))
    init_sentry(settings.sentry_dsn, "worker")
    print(f"fusebox worker: queue {settings.keys.queue} on {redact_url(settings.redis_url)}", file=sys.stderr)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from shared.metrics import REGISTRY

        # a thread of its own: scrapes never wait on the job loop
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=REGISTRY)
        print(
            f"fusebox worker: metrics on http://{args.metrics_host}:{args.metrics_port}/metrics",
            file=sys.stderr,
        )
    overrides = {"burst": True} if args.burst else {}
    worker = build_worker(settings, **overrides)
    worker.run()
    return 0


def _cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    from shared.embedded import EmbeddedValkey

    server = EmbeddedValkey(Path(args.dir) if args.dir else settings.data_dir / "valkey", tcp_port=args.port)
    url = server.start()
    print(f"bundled Valkey running; export REDIS_URL={url}", flush=True)
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            if server.proc is None or server.proc.poll() is not None:
                print("valkey-server exited", file=sys.stderr)
                return
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    try:
        asyncio.run(wait())
    finally:
        server.stop()
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusebox",
        description="Run LLM chat and embedding jobs at volume.",
        epilog="exit codes: 0 ok; 1 some lines failed; 2 usage or input error; "
        "3 Redis unreachable or no worker started; 4 internal error; 130 interrupted",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show details (tracebacks) of errors")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a batch file end to end in this process")
    r.add_argument("input", help="OpenAI Batch JSONL file (or a prompts file with --model)")
    r.add_argument("-o", "--output", required=True, help="output JSONL (OpenAI batch output format)")
    r.add_argument("--errors", help="write failed lines here instead of to the output file")
    r.add_argument("--model", help="treat INPUT as one prompt per line, sent to this model")
    r.add_argument("--system", help="system prompt for a prompts file")
    r.add_argument("--batch-id", help="batch id (default: derived from the file, so a re-run resumes)")
    r.add_argument("--fresh", action="store_true", help="start a new batch even if this file ran before")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(fn=_cmd_run)

    w = sub.add_parser("worker", help="run a long-lived worker against REDIS_URL")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics)")
    w.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port (default all)")
    w.set_defaults(fn=_cmd_worker)

    s = sub.add_parser("redis", help="run the bundled Valkey server in the foreground")
    s.add_argument("--dir", help="data directory (default: FUSEBOX_DATA_DIR/valkey)")
    s.add_argument("--port", type=int, help="also listen on this TCP port (default: unix socket only)")
    s.set_defaults(fn=_cmd_redis)

    # Each command module adds its own subcommands: register(subparsers) sets fn(args, settings) -> int.
    # The simulator's options are registered only when it is the command (they import its server).
    simulate = "simulate" in (sys.argv[1:] if argv is None else argv)
    for mod in COMMAND_MODULES:
        m = importlib.import_module(mod)
        if mod == "producer.simulate_cmd" and not simulate:
            m.register_stub(sub)
        else:
            m.register(sub)
    # '-v' after the command too; SUPPRESS keeps a subcommand from resetting 'fusebox -v CMD'.
    for cmd in sub.choices.values():
        try:
            cmd.add_argument(
                "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show error details"
            )
        except argparse.ArgumentError:
            pass
    return p


def describe_error(e: BaseException, redis_url: str | None) -> tuple[int, str]:
    """(exit code, one line) for an exception that reached the top."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from shared.config import ConfigError
    from shared.schema import RequestError

    if isinstance(e, CliError):
        return e.code, str(e)
    if isinstance(e, ConfigError):
        return EXIT_USAGE, str(e)
    if isinstance(e, RequestError):
        return EXIT_USAGE, e.message
    try:
        from shared.gate import RedisUnavailable

        down: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, RedisUnavailable)
    except ImportError:  # pragma: no cover
        down = (RedisConnectionError, RedisTimeoutError)
    if isinstance(e, down) or isinstance(e, ConnectionError):
        from shared.redis_conn import redact_url

        where = redact_url(redis_url) if redis_url else "REDIS_URL"
        return EXIT_UNAVAILABLE, (
            f"cannot reach Redis at {where} ({_first_line(e)}): start it, or point REDIS_URL at it"
        )
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError)):
        return EXIT_USAGE, f"{e.strerror or type(e).__name__}: {e.filename}"
    if isinstance(e, UnicodeDecodeError):
        return EXIT_USAGE, f"input is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8"
    if type(e).__name__ == "ValidationError":  # pydantic: a bad FUSEBOX_* environment variable
        return EXIT_USAGE, f"invalid setting: {_first_line(e)}"
    return EXIT_INTERNAL, f"unexpected {type(e).__name__}: {_first_line(e)} (run with -v for the traceback)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    url: str | None = None
    try:
        from shared.config import Settings

        settings = Settings()
        url = settings.redis_url
        _ = settings.file  # fail fast on a bad fusebox.toml
        return int(args.fn(args, settings))
    except KeyboardInterrupt:
        from producer.progress import close_all

        close_all()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os._exit(1)
    except (Exception, asyncio.CancelledError) as e:
        code, message = describe_error(e, url)
        from producer.progress import close_all

        close_all()
        print(f"error: {message}", file=sys.stderr)
        if verbose:
            traceback.print_exception(e, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
