"""What submits and reads: the Python client and the ``fusebox`` CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.client import FuseboxClient, Submission

__all__ = ["FuseboxClient", "Submission"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the CLI (a submodule) starts without the client's dependencies.
    if name in __all__:
        from producer import client

        return getattr(client, name)
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
