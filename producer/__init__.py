"""What submits and reads: the Python client and the ``fusebox`` CLI."""

from producer.client import FuseboxClient, Submission

__all__ = ["FuseboxClient", "Submission"]
