"""What a contract may touch while it runs: a write buffer over the block's state.

Contracts see a :class:`Context`; every write lands in a per-transaction buffer that is merged
into the block only if the handler returns. A :class:`Rejection` (raised by :func:`require`)
discards the buffer, so a rejected transaction changes nothing but its signer's nonce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from blokauto.errors import Rejected

ADMIN = "admin"      # an organisation admin key
MEMBER = "member"    # any active member key of any organisation
ANYONE = "anyone"    # any valid signature (a person's own key, a vehicle's device key)


class Rejection(Rejected):
    """A contract refused a transaction; ``code`` is stable and goes into the log."""


def require(condition: object, code: str, message: str) -> None:
    """Explicit check that survives ``python -O`` (unlike ``assert``)."""
    if not condition:
        raise Rejection(message, code=code)


class StateReader(Protocol):
    def get(self, key: str) -> Any | None: ...


@dataclass(frozen=True, slots=True)
class TxType:
    """One entry of the table from transaction type to handler."""

    name: str
    handler: Callable[[Context, Any], None]
    payload_type: type
    roles: frozenset[str]
    public: bool
    doc: str
    # For ``anyone`` types: who, beyond member keys, may send this (the vehicle's owner, its device
    # key...). Returns why the sender may not, or "" to admit. Reads state only; a refusal is a
    # drop like an unknown key's, never a leaf, so outsiders cannot write into the log.
    admit: Callable[[StateReader, str, dict[str, Any]], str] | None = None


@dataclass(slots=True)
class Context:
    """The view one transaction has of the ledger while its handler runs."""

    reader: StateReader
    tx_hash: str
    signer: str
    cosigners: tuple[str, ...]
    height: int
    time_ms: int
    chain: str
    member: dict[str, Any] | None
    writes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any | None:
        if key in self.writes:
            return self.writes[key]
        return self.reader.get(key)

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def put(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("use delete() to remove a key")
        self.writes[key] = value

    def delete(self, key: str) -> None:
        self.writes[key] = None

    def emit(self, event_type: str, **data: Any) -> None:
        self.events.append({"type": event_type, **data})

    @property
    def org(self) -> str | None:
        return None if self.member is None else str(self.member["org"])

    def member_of(self, did: str) -> dict[str, Any] | None:
        record = self.get(key_record(did))
        if record is None or record.get("status") != "active":
            return None
        return dict(record)

    def all_signers(self) -> Iterable[str]:
        return (self.signer, *self.cosigners)


def key_record(did: str) -> str:
    return f"id/key/{did}"


def nonce_key(did: str) -> str:
    return f"nonce/{did}"
