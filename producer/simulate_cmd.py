"""``fusebox simulate``: serve simulated provider APIs on loopback (demos, tests, outage rehearsals)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings

HELP = "serve the OpenAI, Anthropic, Gemini, Ollama and Cohere APIs on loopback, with chaos"
DESCRIPTION = (
    "Serve simulated provider APIs with deterministic replies and configurable latency, "
    "error mix, outages and hidden capacity. Admin: GET /_sim/stats, POST /_sim/reset, "
    "POST /_sim/config."
)


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.simulator.cli import run

    return run(args)


def register(subparsers: Any) -> None:
    from shared.simulator.cli import add_arguments

    p = subparsers.add_parser("simulate", help=HELP, description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(fn=_cmd_simulate)


def register_stub(subparsers: Any) -> None:
    """Only the name and help line, for listings: the simulator's options import its server."""
    subparsers.add_parser("simulate", help=HELP, description=DESCRIPTION)
