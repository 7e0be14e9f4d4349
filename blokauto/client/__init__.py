"""Python SDK for a Blok Auto node."""

from blokauto.client.client import Client

__all__ = ["Client"]
