"""Software commands: being written (issue 6)."""

from __future__ import annotations

import typer


def register_commands(app: typer.Typer) -> None:
    """Add the ``software`` command group."""
