"""Software endpoints: being written (issue 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from blokauto.api.auth import TokenIssuer
from blokauto.node import Node


def add_software_routes(app: FastAPI, node: Node, tokens: TokenIssuer,
                        member_of: Callable[[str | None], dict[str, Any]]) -> None:
    """Register the software routes."""
