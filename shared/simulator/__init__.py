"""Provider simulator: the OpenAI, Anthropic, Gemini, Ollama and Cohere wire formats on loopback.

Deterministic replies, configurable latency, error mix, outages and a hidden capacity per route,
for tests, benchmarks, demos and outage rehearsals (``fusebox simulate``).

    async with SimulatorServer(SimConfig()) as sim:                 # in this event loop
        base = sim.url_for("openai")                                # http://127.0.0.1:PORT/openai/v1
    with SimulatorThread(SimulatorServer(cfg)).start() as sim: ...  # from sync code
    with SimulatorProcess(cfg) as sim: ...                          # own process (benchmarks)
"""

from shared.simulator.config import (
    ErrorMix,
    LatencyConfig,
    RouteConfig,
    SimConfig,
    SimConfigError,
    load_config,
)
from shared.simulator.paths import route_base_url
from shared.simulator.runner import SimulatorProcess, SimulatorThread
from shared.simulator.server import SimulatorServer

__all__ = [
    "ErrorMix",
    "LatencyConfig",
    "RouteConfig",
    "SimConfig",
    "SimConfigError",
    "SimulatorProcess",
    "SimulatorServer",
    "SimulatorThread",
    "load_config",
    "route_base_url",
]
