"""The ``fusebox`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path

from shared.config import ConfigError, Settings

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
        print("error: REDIS_URL is not set; point it at your Redis (or run 'fusebox redis')", file=sys.stderr)
        return 2
    setup_logging(args.verbose)
    init_sentry(settings.sentry_dsn, "worker")
    print(f"fusebox worker: queue {settings.keys.queue} on {redact_url(settings.redis_url)}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusebox", description="Run LLM chat and embedding jobs at volume.")
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
    w.add_argument("-v", "--verbose", action="store_true")
    w.set_defaults(fn=_cmd_worker)

    s = sub.add_parser("redis", help="run the bundled Valkey server in the foreground")
    s.add_argument("--dir", help="data directory (default: FUSEBOX_DATA_DIR/valkey)")
    s.add_argument("--port", type=int, help="also listen on this TCP port (default: unix socket only)")
    s.set_defaults(fn=_cmd_redis)

    # Each command module adds its own subcommands: register(subparsers) sets fn(args, settings) -> int.
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        _ = settings.file  # fail fast on a bad fusebox.toml
        return int(args.fn(args, settings))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
