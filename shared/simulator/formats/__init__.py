"""One module per simulated wire format; ``WIRE_FORMATS`` maps a format name to its instance."""

from __future__ import annotations

from shared.simulator.config import Format
from shared.simulator.formats.anthropic import AnthropicFormat
from shared.simulator.formats.base import WireFormat
from shared.simulator.formats.cohere import CohereFormat
from shared.simulator.formats.gemini import GeminiFormat
from shared.simulator.formats.ollama import OllamaFormat
from shared.simulator.formats.openai import OpenAIFormat

WIRE_FORMATS: dict[Format, WireFormat] = {
    f.name: f for f in (OpenAIFormat(), AnthropicFormat(), GeminiFormat(), OllamaFormat(), CohereFormat())
}

__all__ = ["WIRE_FORMATS", "WireFormat"]
