"""The vehicle history report bundle: every event with its proof, checkable offline by anyone.

A bundle holds, all against one signed checkpoint:

- ``state``: the state proof of ``vehicle/<VIN>`` (the record: owner key, status, head event);
- ``events``: a record proof (the same object ``GET /v1/tx`` returns) for every accepted event,
  oldest first. Each leaf's ``vehicle.event`` names the previous event's transaction hash and a
  sequence number, so the chain from registration to the record's ``head`` proves that no
  accepted event was left out or reordered;
- ``evidence``: record proofs of refused attempts on the vehicle (an odometer rollback), which
  prove that the attempt was made and refused; these are not claimed complete.

:func:`verify_bundle` checks all of it with no node and names the first item that fails.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blokauto.crypto import canonical
from blokauto.crypto.merkle import leaf_hash, verify_inclusion
from blokauto.crypto.note import Checkpoint, KnownKeys, known_keys, open_checkpoint
from blokauto.errors import BlokError, NotFound, VerificationError
from blokauto.ledger import proofs
from blokauto.ledger.log import inclusion_proof
from blokauto.ledger.store import Store
from blokauto.ledger.tx import tx_hash

FORMAT = "blokauto/vehicle-report/v1"
MAX_EVENTS = 5_000


def vehicle_state_key(vin: str) -> str:
    return f"vehicle/{vin}"


def vehicle_event(leaf: dict[str, Any], vin: str) -> dict[str, Any] | None:
    result = leaf.get("result")
    if not isinstance(result, dict) or result.get("status") != "ok":
        return None
    for event in result.get("events", []):
        if isinstance(event, dict) and event.get("type") == "vehicle.event" and event.get("vin") == vin:
            return event
    return None


def leaf_tx_hash(leaf: dict[str, Any]) -> str:
    return tx_hash(canonical.encode(leaf["tx"]["body"])).hex()


# -- building (node side) ------------------------------------------------------------------------


def build_bundle(store: Store, vin: str, keys: list[str], quorum: int,
                 conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """The bundle for ``vin`` at the latest checkpoint, read in one snapshot."""
    conn = conn or store.reader()
    with proofs.read_snapshot(conn):
        return _build(store, vin, keys, quorum, conn)


def _build(store: Store, vin: str, keys: list[str], quorum: int, conn: sqlite3.Connection) -> dict[str, Any]:
    size = proofs.latest_checkpoint(store, conn)[1].log_size
    indexes = [i for i in store.subject_leaves(f"vin:{vin}", conn, limit=MAX_EVENTS * 4) if i < size]
    # On a ledger larger than memory each leaf is a disk read or two: they go first, on the
    # store's reader threads, and come back while the state proof and the log nodes are built
    # here (the proof nodes of every leaf naming the VIN: a superset of what the bundle proves).
    leaves_read = store.read_committed_leaves(indexes)
    state = proofs._build_state_proof(store, vehicle_state_key(vin), conn)
    record = state["value"]
    if record is None:
        leaves_read()
        raise NotFound(f"no vehicle {vin} is registered", code="unknown_vehicle")
    checkpoint = state["checkpoint"]
    nodes = _log_nodes_for(store, indexes, size, conn)
    rows = leaves_read()
    chain: dict[str, tuple[int, dict[str, Any], bytes]] = {}     # tx hash -> (index, event, leaf bytes)
    evidence: list[int] = []
    for index in indexes:
        _, txhash, leaf_bytes = rows[index]
        leaf = canonical.decode_trusted(leaf_bytes)
        event = vehicle_event(leaf, vin)
        if event is not None:
            chain[txhash.hex()] = (index, event, leaf_bytes)
        elif leaf["result"].get("status") == "rejected":
            evidence.append(index)
    ordered: list[int] = []
    cursor = record["head"]
    while cursor is not None:
        if cursor not in chain:   # an event whose payload does not name the VIN: follow the link itself
            found = store.find_leaf(bytes.fromhex(cursor), conn)
            if found is None:
                raise VerificationError(f"event {cursor} of {vin} is missing from the log", code="corrupt_store")
            leaf = canonical.decode_trusted(found[2])
            event = vehicle_event(leaf, vin)
            if event is None:
                raise VerificationError(f"leaf {found[0]} is not an event of {vin}", code="corrupt_store")
            chain[cursor] = (found[0], event, found[2])
        index, event, _ = chain[cursor]
        ordered.append(index)
        cursor = event["prev"]
        if len(ordered) > MAX_EVENTS:
            raise VerificationError(f"{vin} has more than {MAX_EVENTS} events", code="too_many_events")
    ordered.reverse()
    leaf_bytes_of = {index: leaf for index, _, leaf in chain.values()}
    for index in evidence:
        leaf_bytes_of[index] = rows[index][2]
    unindexed = sorted(set(ordered) - set(indexes))   # leaves found by their hash above
    if unindexed:
        nodes.update(_log_nodes_for(store, unindexed, size, conn))

    def proof_of(index: int) -> dict[str, Any]:
        path = inclusion_proof(lambda ids: nodes, index, size)
        return {"leaf_index": index, "tree_size": size, "leaf": proofs.b64(leaf_bytes_of[index]),
                "inclusion_proof": [proofs.b64(h) for h in path], "checkpoint": checkpoint}

    return {
        "format": FORMAT,
        "vin": vin,
        "chain": state["header"]["chain"],
        "state": state,
        "events": [proof_of(i) for i in ordered],
        "evidence": [proof_of(i) for i in evidence],
        "keys": keys,
        "quorum": quorum,
    }


def _log_nodes_for(store: Store, indexes: Iterable[int], size: int, conn: sqlite3.Connection) -> dict[int, bytes]:
    """Every log node the inclusion proofs of ``indexes`` at ``size`` need, in one batched read
    (the node ids come from a dry run of the proofs)."""
    wanted: set[int] = set()

    def record(ids: list[int]) -> dict[int, bytes]:
        wanted.update(ids)
        return dict.fromkeys(ids, bytes(32))

    for index in indexes:
        inclusion_proof(record, index, size)
    return store.get_log_nodes(sorted(wanted), conn)


def bundle_hash(bundle: dict[str, Any]) -> str:
    """SHA-256 of the bundle's canonical bytes: what the report's QR code names."""
    return hashlib.sha256(canonical.encode(bundle)).hexdigest()


# -- checking (pure, offline) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedReport:
    vin: str
    record: dict[str, Any]
    events: list[dict[str, Any]]        # decoded leaves {height, result, tx}, oldest first
    chain: list[tuple[dict[str, Any], str]]   # per event: its verified vehicle.event and transaction hash
    evidence: list[dict[str, Any]]      # decoded refused leaves
    checkpoint_text: str
    origin: str
    checkpoint_size: int
    height: int
    signers: list[str]                  # key names on the checkpoint that verified
    report_hash: str


class ReportError(VerificationError):
    """A bundle item failed; ``item`` names it (``events[3]``, ``state``...)."""

    def __init__(self, item: str, message: str, code: str = "bad_report") -> None:
        super().__init__(f"{item}: {message}", code=code)
        self.item = item


def verify_bundle(bundle: Any, known: KnownKeys | Iterable[str], quorum: int = 1,
                  origin: str | None = None) -> VerifiedReport:
    """Check a report bundle end to end; raises :class:`ReportError` naming the first bad item."""
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise ReportError("format", f"not a {FORMAT} bundle")
    vin = bundle.get("vin")
    if not isinstance(vin, str):
        raise ReportError("vin", "missing")
    chain_id = origin or bundle.get("chain")
    if not isinstance(known, Mapping):
        known = known_keys(*known)
    try:
        key, record = proofs.verify_state_proof_object(bundle.get("state"), known, quorum, chain_id)
    except VerificationError as exc:
        raise ReportError("state", exc.message, exc.code) from None
    if key != vehicle_state_key(vin) or not isinstance(record, dict) or record.get("vin") != vin:
        raise ReportError("state", f"the state proof is not about vehicle {vin} or proves it absent")
    checkpoint_text = bundle["state"]["checkpoint"]
    checkpoint, signers = open_checkpoint(checkpoint_text, known, quorum, origin=chain_id)
    size = checkpoint.size
    height = int(bundle["state"]["height"])
    events = bundle.get("events")
    if not isinstance(events, list) or not events:
        raise ReportError("events", "a registered vehicle has at least its registration event")
    decoded: list[dict[str, Any]] = []
    chain: list[tuple[dict[str, Any], str]] = []
    prev: str | None = None
    for n, proof in enumerate(events):
        item = f"events[{n}]"
        leaf = _verified_leaf(item, proof, checkpoint_text, checkpoint)
        event = vehicle_event(leaf, vin)
        if event is None:
            raise ReportError(item, f"not an accepted event of {vin}")
        if event.get("seq") != n + 1 or event.get("prev") != prev:
            raise ReportError(item, f"breaks the event chain (expected seq {n + 1} after {prev}, "
                              f"found seq {event.get('seq')} after {event.get('prev')})", "broken_chain")
        prev = leaf_tx_hash(leaf)
        decoded.append(leaf)
        chain.append((event, prev))
    if prev != record.get("head") or len(decoded) != record.get("events"):
        raise ReportError("events", f"the chain ends at {prev} after {len(decoded)} events but the proven record's "
                          f"head is {record.get('head')} after {record.get('events')}: events are missing",
                          "incomplete")
    evidence: list[dict[str, Any]] = []
    raw_evidence = bundle.get("evidence", [])
    if not isinstance(raw_evidence, list):
        raise ReportError("evidence", "must be a list")
    for n, proof in enumerate(raw_evidence):
        item = f"evidence[{n}]"
        leaf = _verified_leaf(item, proof, checkpoint_text, checkpoint)
        payload = leaf["tx"]["body"].get("payload", {})
        if leaf["result"].get("status") != "rejected" or payload.get("vin") != vin:
            raise ReportError(item, f"not a refused attempt on {vin}")
        evidence.append(leaf)
    return VerifiedReport(vin=vin, record=record, events=decoded, chain=chain, evidence=evidence,
                          checkpoint_text=checkpoint_text, origin=checkpoint.origin, checkpoint_size=size,
                          height=height, signers=signers, report_hash=bundle_hash(bundle))


def _verified_leaf(item: str, proof: Any, checkpoint_text: str, checkpoint: Checkpoint) -> dict[str, Any]:
    """One record proof against the report's checkpoint, whose signatures were checked once already."""
    if not isinstance(proof, dict) or proof.get("checkpoint") != checkpoint_text \
            or proof.get("tree_size") != checkpoint.size:
        raise ReportError(item, "is not proven against the report's checkpoint")
    index = proof.get("leaf_index")
    if type(index) is not int or not 0 <= index < checkpoint.size:
        raise ReportError(item, "leaf_index is not an index of the checkpoint's tree")
    try:
        leaf_bytes = base64.b64decode(proof.get("leaf", ""), validate=True)
        path = proofs._b64list(proof.get("inclusion_proof"), "inclusion proof hash")
        verify_inclusion(index, checkpoint.size, leaf_hash(leaf_bytes), path, checkpoint.root)
        leaf: dict[str, Any] = canonical.decode(leaf_bytes)
        if not isinstance(leaf.get("tx"), dict) or not isinstance(leaf.get("result"), dict):
            raise VerificationError("not a log leaf", code="bad_leaf")
    except (ValueError, TypeError):
        raise ReportError(item, "leaf is not base64", "bad_proof") from None
    except BlokError as exc:
        raise ReportError(item, exc.message, exc.code) from None
    return leaf
