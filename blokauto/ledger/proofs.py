"""Proof objects: how a record or a state value is proven, and how anybody checks it offline.

A record proof is ``{"leaf_index", "tree_size", "leaf" (base64 leaf bytes), "inclusion_proof"
(base64 hashes, RFC 9162 order), "checkpoint" (signed note)}``. A state proof adds the block
header the checkpoint names, whose ``state_root`` the sparse-Merkle proof reaches. The verify
functions here do no I/O: they need only the proof and the consortium's checkpoint keys.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from blokauto.crypto import canonical
from blokauto.crypto.keys import b64, unb64
from blokauto.crypto.merkle import leaf_hash, verify_consistency, verify_inclusion
from blokauto.crypto.note import Checkpoint, KnownKeys, open_checkpoint
from blokauto.errors import InputError, NotFound, VerificationError
from blokauto.ledger.chain import Header, parse_block_extension, state_key_hash, state_value_hash
from blokauto.ledger.log import consistency_proof, inclusion_proof
from blokauto.ledger.smt import SparseMerkleTree, StateProof, verify_state_proof
from blokauto.ledger.store import Store

# -- building (needs the store) ------------------------------------------------------------


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Read everything a proof needs from one committed block, even if another commits meanwhile."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def latest_checkpoint(store: Store, conn: sqlite3.Connection | None = None) -> tuple[int, Header, str]:
    height = store.head_height(conn)
    block = store.get_block(height, conn)
    if block is None:
        raise NotFound("the ledger has no blocks", code="no_blocks")
    return height, Header.decode(block[1]), block[3]


def build_record_proof(store: Store, leaf_index: int, conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """Inclusion proof of one leaf against the latest checkpoint."""
    conn = conn or store.reader()
    with read_snapshot(conn):
        return _build_record_proof(store, leaf_index, conn)


def _build_record_proof(store: Store, leaf_index: int, conn: sqlite3.Connection) -> dict[str, Any]:
    _, header, checkpoint = latest_checkpoint(store, conn)
    rows = list(store.iter_leaves(leaf_index, leaf_index + 1, conn))
    if not rows or leaf_index >= header.log_size:
        raise NotFound(f"no leaf {leaf_index} in the log", code="unknown_leaf")
    path = inclusion_proof(lambda ids: store.get_log_nodes(ids, conn), leaf_index, header.log_size)
    return {
        "leaf_index": leaf_index,
        "tree_size": header.log_size,
        "leaf": b64(rows[0][2]),
        "inclusion_proof": [b64(h) for h in path],
        "checkpoint": checkpoint,
    }


def build_consistency_proof(store: Store, size1: int, size2: int,
                            conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    conn = conn or store.reader()
    _, header, _ = latest_checkpoint(store, conn)
    if not 0 <= size1 <= size2 <= header.log_size:
        raise InputError(f"need 0 <= from <= to <= {header.log_size}", code="bad_range")
    proof = consistency_proof(lambda ids: store.get_log_nodes(ids, conn), size1, size2)
    return {"from": size1, "to": size2, "proof": [b64(h) for h in proof]}


def build_state_proof(store: Store, key: str, conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """A key's value (or absence) at the latest checkpointed block, with its proof."""
    conn = conn or store.reader()
    with read_snapshot(conn):
        return _build_state_proof(store, key, conn)


def _build_state_proof(store: Store, key: str, conn: sqlite3.Connection) -> dict[str, Any]:
    height = store.head_height(conn)
    block = store.get_block(height, conn)
    if block is None:
        raise NotFound("the ledger has no blocks", code="no_blocks")
    _, header_bytes, root_id, checkpoint = block
    tree = SparseMerkleTree(lambda i: store.get_smt_node(i, conn), cache_size=256)
    proof = tree.prove(root_id, state_key_hash(key))
    encoded = store.get_state(key, conn)
    return {
        "key": key,
        "value": None if encoded is None else canonical.decode(encoded),
        "height": height,
        "header": canonical.decode(header_bytes),
        "proof": proof.to_json(),
        "checkpoint": checkpoint,
    }


# -- checking (pure) -----------------------------------------------------------------------


def _b64list(items: Any, what: str) -> list[bytes]:
    if not isinstance(items, list):
        raise VerificationError(f"{what} must be a list")
    try:
        return [unb64(x, size=32, what=what) for x in items]
    except InputError as exc:
        raise VerificationError(exc.message, code="bad_proof") from None


def _int(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int or value < 0:
        raise VerificationError(f"proof field {name!r} must be a non-negative integer", code="bad_proof")
    return value


def open_signed_checkpoint(note: Any, known: KnownKeys | Iterable[str], quorum: int,
                           origin: str | None = None) -> Checkpoint:
    if not isinstance(note, str):
        raise VerificationError("checkpoint must be signed-note text", code="bad_proof")
    try:
        checkpoint, _ = open_checkpoint(note, known, quorum, origin=origin)
    except InputError as exc:
        raise VerificationError(exc.message, code=exc.code) from None
    return checkpoint


def verify_record_proof(obj: Any, known: KnownKeys | Iterable[str], quorum: int = 1,
                        origin: str | None = None) -> dict[str, Any]:
    """Check a record proof end to end; returns the decoded leaf ``{height, result, tx}``."""
    if not isinstance(obj, dict):
        raise VerificationError("proof must be an object", code="bad_proof")
    checkpoint = open_signed_checkpoint(obj.get("checkpoint"), known, quorum, origin)
    index, size = _int(obj, "leaf_index"), _int(obj, "tree_size")
    if size != checkpoint.size:
        raise VerificationError(f"proof is for tree size {size}, checkpoint has {checkpoint.size}",
                                code="bad_proof")
    try:
        leaf = base64.b64decode(obj.get("leaf", ""), validate=True)
    except (ValueError, TypeError):
        raise VerificationError("leaf is not base64", code="bad_proof") from None
    path = _b64list(obj.get("inclusion_proof"), "inclusion proof hash")
    verify_inclusion(index, size, leaf_hash(leaf), path, checkpoint.root)
    try:
        decoded: dict[str, Any] = canonical.decode(leaf)
    except InputError as exc:
        raise VerificationError(f"leaf is not canonical JSON: {exc.message}", code="bad_leaf") from None
    return decoded


def verify_state_proof_object(obj: Any, known: KnownKeys | Iterable[str], quorum: int = 1,
                              origin: str | None = None) -> tuple[str, Any]:
    """Check a state proof; returns ``(key, value)`` where value None means proven absent."""
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
        raise VerificationError("state proof must be an object with a key", code="bad_proof")
    checkpoint = open_signed_checkpoint(obj.get("checkpoint"), known, quorum, origin)
    block = parse_block_extension(checkpoint.extensions)
    if block is None:
        raise VerificationError("checkpoint does not name a block", code="bad_proof")
    height, block_hash = block
    try:
        header_bytes = canonical.encode(obj.get("header"))
        header = Header.decode(header_bytes)
    except (InputError, KeyError) as exc:
        raise VerificationError(f"bad header: {exc}", code="bad_proof") from None
    # the header exactly as given must be the one the checkpoint names: no coercion, no extra fields
    if hashlib.sha256(header_bytes).digest() != block_hash or header.encode() != header_bytes \
            or header.height != height or obj.get("height") != height:
        raise VerificationError("header does not match the checkpoint's block", code="bad_proof")
    if header.log_size != checkpoint.size or header.log_root != checkpoint.root:
        raise VerificationError("header log does not match the checkpoint", code="bad_proof")
    value = obj.get("value")
    value_hash = None if value is None else state_value_hash(canonical.encode(value))
    verify_state_proof(header.state_root, state_key_hash(obj["key"]), value_hash,
                       StateProof.from_json(obj.get("proof")))
    return obj["key"], value


def verify_consistency_object(obj: Any, old: Checkpoint, new: Checkpoint) -> None:
    if not isinstance(obj, dict):
        raise VerificationError("consistency proof must be an object", code="bad_proof")
    if _int(obj, "from") != old.size or _int(obj, "to") != new.size:
        raise VerificationError("consistency proof sizes do not match the checkpoints", code="bad_proof")
    verify_consistency(old.size, new.size, _b64list(obj.get("proof"), "consistency hash"), old.root, new.root)
