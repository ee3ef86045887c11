"""Regenerates examples/batch.jsonl: ~1,000 chat and embedding lines on simulated models."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = [
    "rivers",
    "compilers",
    "bread",
    "orbits",
    "jazz",
    "volcanoes",
    "databases",
    "bees",
    "glaciers",
    "chess",
]
ASKS = [
    "Explain {t} to a child.",
    "Give three facts about {t}.",
    "Write a haiku about {t}.",
    "Summarize the history of {t} in two sentences.",
    "What is surprising about {t}?",
]


def main(n: int = 1000, seed: int = 7) -> None:
    rng = random.Random(seed)
    out = Path(__file__).with_name("batch.jsonl")
    with out.open("w") as f:
        for i in range(n):
            topic = rng.choice(TOPICS)
            if i % 4 == 3:
                line = {
                    "custom_id": f"emb-{i:04d}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "simulated/embed-small", "input": f"A note about {topic} #{i}"},
                }
            else:
                body = {
                    "model": "simulated/chat-fast",
                    "max_tokens": 64,
                    "messages": [
                        {"role": "system", "content": "You are concise."},
                        {"role": "user", "content": rng.choice(ASKS).format(t=topic)},
                    ],
                }
                line = {
                    "custom_id": f"chat-{i:04d}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
