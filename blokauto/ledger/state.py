"""What a contract may touch while it runs: a write buffer over the block's state.

Contracts see a :class:`Context`; every write lands in a per-transaction buffer that is merged
into the block only if the handler returns. A :class:`Rejection` (raised by :func:`require`)
discards the buffer, so a rejected transaction changes nothing but its signer's nonce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from blokauto.errors import Rejected

_ABSENT: Any = object()
ADMIN = "admin"      # an organisation admin key
MEMBER = "member"    # any active member key of any organisation
ANYONE = "anyone"    # any valid signature (a person's own key, a vehicle's device key)


class Rejection(Rejected):
    """A contract refused a transaction; ``code`` is stable and goes into the log.

    ``subject`` names the one item refused when a transaction carries many (the serial of a
    counterfeit part among thirty installed), so the refusal counts against that item only."""

    def __init__(self, message: str, *, code: str, subject: str = "") -> None:
        super().__init__(message, code=code)
        self.subject = subject


def require(condition: object, code: str, message: str, subject: str = "") -> None:
    """Explicit check that survives ``python -O`` (unlike ``assert``)."""
    if not condition:
        raise Rejection(message, code=code, subject=subject)


class StateReader(Protocol):
    def get(self, key: str) -> Any | None: ...


class IndexReader(Protocol):
    def index_get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]: ...
    def index_scan(self, space: str, prefix: str) -> list[tuple[str, str]]: ...


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
    index_writes: dict[str, dict[str, str | None]] = field(default_factory=dict)   # space -> key -> value

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

    # -- the consensus index ----------------------------------------------------------------
    # A plain key -> text table that every node maintains identically because only contracts
    # write it, inside blocks, like state. Unlike state it is not in the Merkle tree: it holds
    # what would be too many leaves to commit one by one (every serial of a 10,000-part batch)
    # and is proven another way (a part's inclusion in its batch's committed root). The full
    # audit replays it; it is also what read-side queries (recall lists) scan.

    def index_get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]:
        """Values for the keys present (this transaction's writes first, then the block's)."""
        return overlay_get_many(self.index_writes.get(space), keys,
                                lambda missing: self.reader.index_get_many(space, missing))  # type: ignore[attr-defined]

    def index_get(self, space: str, key: str) -> str | None:
        return self.index_get_many(space, (key,)).get(key)

    def index_scan(self, space: str, prefix: str) -> list[tuple[str, str]]:
        """Entries of ``space`` whose key starts with ``prefix``, in key order (small ranges only:
        a vehicle's fitted parts, never a whole space)."""
        return overlay_scan(self.index_writes.get(space), prefix,
                            self.reader.index_scan(space, prefix))  # type: ignore[attr-defined]

    def index_put(self, space: str, key: str, value: str) -> None:
        self.index_writes.setdefault(space, {})[key] = value

    def index_put_many(self, space: str, items: Iterable[tuple[str, str]]) -> None:
        self.index_writes.setdefault(space, {}).update(items)

    def index_delete(self, space: str, key: str) -> None:
        self.index_writes.setdefault(space, {})[key] = None

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


def overlay_get_many(writes: dict[str, str | None] | None, keys: Sequence[str],
                     fetch: Callable[[list[str]], dict[str, str]]) -> dict[str, str]:
    """Index values as seen through uncommitted ``writes`` (None: deleted) over ``fetch``'s rows."""
    if not writes:
        return fetch(list(keys))
    found: dict[str, str] = {}
    missing: list[str] = []
    for key in keys:
        hit = writes.get(key, _ABSENT)
        if hit is _ABSENT:
            missing.append(key)
        elif hit is not None:
            found[key] = hit
    if missing:
        found.update(fetch(missing))
    return found


def overlay_scan(writes: dict[str, str | None] | None, prefix: str,
                 rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A prefix range of index rows with uncommitted ``writes`` applied, in key order."""
    merged = dict(rows)
    for key, value in (writes or {}).items():
        if key.startswith(prefix):
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
    return sorted(merged.items())


def key_record(did: str) -> str:
    return f"id/key/{did}"


def nonce_key(did: str) -> str:
    return f"nonce/{did}"
