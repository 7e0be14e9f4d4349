"""The visible table from transaction type to handler, and the decorator that fills it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from blokauto.errors import InputError
from blokauto.ledger.state import Context, StateReader, TxType
from blokauto.ledger.tx import BULK_TYPES

REGISTRY: dict[str, TxType] = {}

P = TypeVar("P")


def contract(
    name: str, *, payload: type[P], roles: Iterable[str], public: bool = False,
    admit: Callable[[StateReader, str, dict[str, Any]], str] | None = None, bulk: bool = False,
) -> Callable[[Callable[[Context, P], None]], Callable[[Context, P], None]]:
    """Register a handler for ``name`` callable by keys holding any of ``roles``.

    ``public`` transactions (identity, governance, anchors) are readable without credentials;
    the rest need a member token or the owner's consent. ``bulk`` types may be up to 960 KiB.
    """

    def register(handler: Callable[[Context, P], None]) -> Callable[[Context, P], None]:
        if name in REGISTRY:
            raise RuntimeError(f"transaction type {name} registered twice")
        if bulk:
            BULK_TYPES.add(name)
        REGISTRY[name] = TxType(
            name=name,
            handler=handler,
            payload_type=payload,
            roles=frozenset(roles),
            public=public,
            doc=(handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else "",
            admit=admit,
        )
        return handler

    return register


def convert_payload(tx_type: TxType, payload: dict[str, Any]) -> Any:
    """Typed payload for a handler; schema errors are the caller's fault (400)."""
    try:
        converted = msgspec.convert(payload, tx_type.payload_type, strict=True)
    except msgspec.ValidationError as exc:
        raise InputError(f"payload of {tx_type.name}: {exc}", code="bad_payload") from None
    validate = getattr(converted, "validate", None)
    if validate is not None:
        validate()
    return converted


class Payload(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every payload schema: unknown fields are refused."""

    def validate(self) -> None:
        """Checks beyond the schema that need no state (a VIN's check digit, a batch's Merkle root);
        raise InputError with a specific code. Runs before a transaction is ordered (submission,
        network intake: a failure is a refusal, never a leaf) and again when the audit replays."""


def load_all() -> dict[str, TxType]:
    """Import every domain module so its handlers register; returns the table."""
    from blokauto.contracts import (  # noqa: F401
        governance,
        notary,
        parts,
        recalls,
        software,
        vehicle,
        vehicledata,
    )

    return REGISTRY
