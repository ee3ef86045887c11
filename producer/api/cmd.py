"""``fusebox api``: serve the HTTP API with uvicorn (FastAPI is imported only when it runs)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import Settings


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from shared.redis_conn import redact_url

    if not settings.redis_url:
        print("error: REDIS_URL is not set; point it at your Redis (or run 'fusebox redis')", file=sys.stderr)
        return 2
    print(
        f"fusebox api on http://{args.host}:{args.port} (Redis {redact_url(settings.redis_url)})",
        file=sys.stderr,
    )
    # Every worker process builds its own app from the environment (no state is shared in-process).
    uvicorn.run(
        "producer.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("api", help="serve the HTTP API (OpenAI-compatible files, batches, chat, embeddings)")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8000)
    a.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    a.add_argument("--log-level", default="info")
    a.add_argument("--access-log", action="store_true", help="log every request")
    a.set_defaults(fn=_cmd_api)
