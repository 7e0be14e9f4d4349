"""What every ``blokauto`` command shares: consoles, common options, keystore loading."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from blokauto.crypto.keys import Signer
from blokauto.crypto.keystore import read_keystore
from blokauto.errors import BlokError, InputError, VerificationError

out = Console(soft_wrap=True, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)

DEFAULT_NODE = "http://127.0.0.1:8080"
NodeOpt = Annotated[str, typer.Option("--node", envvar="BLOKAUTO_NODE", help="URL of a node's API.")]
DataOpt = Annotated[Path, typer.Option("--data", help="The node's data directory.")]
PasswordEnv = Annotated[str, typer.Option(help="Environment variable holding the keystore password.")]


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def password_from(env_name: str, *, confirm: bool = False) -> str:
    password = os.environ.get(env_name)
    if password:
        return password
    if sys.stdin.isatty():
        return str(typer.prompt("Keystore password", hide_input=True, confirmation_prompt=confirm))
    raise InputError(f"no password: set {env_name} or run in a terminal", code="no_password")


def load_signer(path: Path, password_env: str) -> Signer:
    return Signer(read_keystore(path, password_from(password_env)))


@contextmanager
def verifying(*errors: type[BlokError]) -> Iterator[None]:
    """A failed check becomes the CLI's answer to it: ``INVALID [code] message`` on stderr, exit 3."""
    caught = errors or (VerificationError,)
    try:
        yield
    except caught as exc:
        err.print(f"[red]INVALID[/] {escape(f'[{exc.code}] {exc.message}')}")
        raise typer.Exit(3) from None
