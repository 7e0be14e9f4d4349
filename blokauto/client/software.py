"""The SDK's software methods (mixed into :class:`blokauto.client.Client`)."""

from __future__ import annotations


class SoftwareClient:
    """Software releases, vehicles' installed software, TUF export."""
