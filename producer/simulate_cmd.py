"""``fusebox simulate``: serve simulated provider APIs on loopback (demos, tests, outage rehearsals)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings

DESCRIPTION = (
    "Serve simulated provider APIs with deterministic replies and configurable latency, "
    "error mix, outages and hidden capacity. Admin: GET /_sim/stats, POST /_sim/reset, "
    "POST /_sim/config."
)


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    # The simulator's options live with it (shared/simulator/cli.py) and are parsed only when it
    # runs, so that 'fusebox --help' does not import the simulator's server.
    from shared.simulator.cli import add_arguments, run

    p = argparse.ArgumentParser(prog="fusebox simulate", description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(args.sim_args))


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        add_help=False,
        usage="fusebox simulate [--help] [simulator options]",
        help="serve the OpenAI, Anthropic, Gemini, Ollama and Cohere APIs on loopback, with chaos",
        description=DESCRIPTION,
    )
    p.add_argument("sim_args", nargs=argparse.REMAINDER, help="see 'fusebox simulate --help'")
    p.set_defaults(fn=_cmd_simulate)
