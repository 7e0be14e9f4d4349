"""The block executor: order in, deterministic execution, one atomic commit, a signed checkpoint.

Every node that runs :meth:`Ledger.apply_block` on the same ordered transactions with the same
block time reaches the same leaves, log root, state root and header hash: nothing here reads a
clock, draws randomness or depends on dict order of anything but canonical data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nacl.signing import SigningKey

from blokauto.crypto import canonical
from blokauto.crypto.keys import b64, unb64
from blokauto.crypto.merkle import EMPTY_ROOT, leaf_hash
from blokauto.crypto.note import Checkpoint, sign_checkpoint
from blokauto.errors import BlokError, InputError, Rejected, StorageError
from blokauto.ledger.log import LogAppender
from blokauto.ledger.smt import SparseMerkleTree
from blokauto.ledger.state import (
    ADMIN,
    ANYONE,
    MEMBER,
    Context,
    TxType,
    key_record,
    nonce_key,
    overlay_get_many,
    overlay_scan,
)
from blokauto.ledger.store import LOG_MIN_LEVEL, BlockWrite, Store
from blokauto.ledger.tx import SignedTx

log = logging.getLogger("blokauto.ledger")

STATE_CACHE_ENTRIES = 50_000    # committed values the committer keeps (encoded, ~0.1-1 KB each)
TREE_CACHE_NODES = 100_000      # decoded state-tree nodes (~350 bytes each)
# Payload fields that name what a transaction is about; every leaf (accepted or rejected) whose
# payload has one is indexed as "<field>:<value>", so a vehicle's or a part's whole record,
# refused attempts included, is found without scanning the log.
SUBJECT_FIELDS = ("vin", "serial", "campaign")
MAX_SUBJECT_CHARS = 128
# A ``serials`` list (a shipment, an installation) indexes each serial; a bulk registration of
# thousands is found through its parts' batch instead, not through one row per serial.
MAX_LISTED_SUBJECTS = 1_000
_MISS: Any = object()
_decode_value = msgspec.json.Decoder().decode


def state_key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def state_value_hash(encoded: bytes) -> bytes:
    return hashlib.sha256(encoded).digest()


HEADER_FIELDS = frozenset({"chain", "height", "prev", "time_ms", "log_size", "log_root", "state_root", "tx_count"})
HEADER_INTS = ("height", "time_ms", "log_size", "tx_count")


@dataclass(frozen=True, slots=True)
class Header:
    """A block header: commits to the previous header, the log, the state and the time."""

    chain: str
    height: int
    prev: bytes
    time_ms: int
    log_size: int
    log_root: bytes
    state_root: bytes
    tx_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain, "height": self.height, "prev": b64(self.prev), "time_ms": self.time_ms,
            "log_size": self.log_size, "log_root": b64(self.log_root), "state_root": b64(self.state_root),
            "tx_count": self.tx_count,
        }

    def encode(self) -> bytes:
        return canonical.encode(self.to_json())

    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def from_json(cls, obj: Any) -> Header:
        try:
            if set(obj) != HEADER_FIELDS or not all(type(obj[k]) is int for k in HEADER_INTS):
                raise ValueError("fields or types differ from a block header")
            return cls(
                chain=str(obj["chain"]), height=obj["height"], prev=unb64(obj["prev"], size=32),
                time_ms=obj["time_ms"], log_size=obj["log_size"],
                log_root=unb64(obj["log_root"], size=32), state_root=unb64(obj["state_root"], size=32),
                tx_count=obj["tx_count"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed block header: {exc}", code="bad_header") from None

    @classmethod
    def decode(cls, data: bytes) -> Header:
        return cls.from_json(canonical.decode(data))


def block_extension(height: int, block_hash: bytes) -> str:
    """The checkpoint extension line that ties a log size to a block header (and its state root)."""
    return f"block {height} {b64(block_hash)}"


def parse_block_extension(extensions: Sequence[str]) -> tuple[int, bytes] | None:
    for line in extensions:
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "block" and parts[1].isdigit():
            return int(parts[1]), unb64(parts[2], size=32, what="block hash")
    return None


@dataclass(frozen=True, slots=True)
class CheckpointSigner:
    """The key a node signs checkpoints with, under its signed-note key name."""

    name: str
    key: SigningKey

    def sign(self, checkpoint: Checkpoint) -> str:
        return sign_checkpoint(checkpoint, self.name, self.key)


@dataclass(slots=True)
class TxOutcome:
    tx: SignedTx
    receipt: dict[str, Any] | None       # None when dropped (never became a leaf)
    error: BlokError | None = None


@dataclass(slots=True)
class BlockResult:
    header: Header
    block_hash: bytes
    checkpoint: str
    outcomes: list[TxOutcome] = field(default_factory=list)  # one per transaction, dropped ones too


class _BlockState:
    """Reads through the block's pending writes (encoded values; None = deleted) to the committed state."""

    __slots__ = ("cache", "index_pending", "ledger", "pending", "shared")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.cache = ledger._cache
        self.pending: dict[str, bytes | None] = {}
        self.shared: dict[str, tuple[bytes, Any]] = {}
        self.index_pending: dict[str, dict[str, str | None]] = {}   # space -> key -> value (None: deleted)

    def index_get_many(self, space: str, keys: Sequence[str]) -> dict[str, str]:
        """The consensus index as of this point in the block (earlier transactions' writes first)."""
        store = self.ledger.store
        return overlay_get_many(self.index_pending.get(space), keys,
                                lambda missing: store.get_index_many(space, missing, store.writer))

    def index_scan(self, space: str, prefix: str) -> list[tuple[str, str]]:
        store = self.ledger.store
        return overlay_scan(self.index_pending.get(space), prefix, store.scan_index(space, prefix, store.writer))

    def _encoded(self, key: str) -> bytes | None:
        pending = self.pending
        if key in pending:
            return pending[key]
        encoded = self.cache.get(key, _MISS)
        if encoded is _MISS:
            return self.ledger._load_committed(key)
        return encoded  # type: ignore[no-any-return]

    def get(self, key: str) -> Any | None:
        """A fresh decoded value: the caller (a contract) may change it freely."""
        encoded = self._encoded(key)
        return None if encoded is None else _decode_value(encoded)

    def get_shared(self, key: str) -> Any | None:
        """A decoded value shared with later calls while its bytes are unchanged: read-only use
        (authorisation reads the same member and organisation records for many transactions)."""
        encoded = self._encoded(key)
        if encoded is None:
            return None
        hit = self.shared.get(key)
        if hit is not None and hit[0] is encoded:
            return hit[1]
        value = _decode_value(encoded)
        self.shared[key] = (encoded, value)
        return value


def _result_json(status: str, events: list[dict[str, Any]] | None = None, code: str = "",
                 message: str = "", subject: str = "") -> dict[str, Any]:
    if status == "ok":
        return {"status": "ok", "events": events or []}
    result = {"status": "rejected", "code": code, "message": message[:300]}
    if subject:
        result["subject"] = subject[:128]
    return result


class Ledger:
    """One node's ledger: committed state, log appender, state tree and the executor."""

    def __init__(self, store: Store, registry: Mapping[str, TxType], signer: CheckpointSigner | None = None,
                 *, state_cache_entries: int = STATE_CACHE_ENTRIES, tree_cache_nodes: int = TREE_CACHE_NODES) -> None:
        self.store = store
        self.registry = registry
        self.signer = signer
        # Both caches are bounded, so memory stays flat however large the ledger grows; a node
        # whose working set (vehicles touched per hour, say) exceeds them reads SQLite instead.
        self.state_cache_entries = max(16, state_cache_entries)
        self.tree_cache_nodes = max(16, tree_cache_nodes)
        genesis = store.get_meta("genesis")
        if genesis is None:
            raise StorageError("ledger has no genesis", code="no_ledger")
        self.genesis: dict[str, Any] = canonical.decode(genesis)
        self.chain: str = self.genesis["chain"]
        self._cache: dict[str, bytes | None] = {}
        # Set by a node whose every transaction passed the stateless checks before ordering
        # (submission or network intake run ``Payload.validate()``): execution then skips them,
        # which for a 20,000-part batch is the Merkle root, 40% of its cost. A replay (the audit)
        # leaves it False and checks everything again.
        self.prechecked = False
        self._reload()

    # -- set-up ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: Store,
        registry: Mapping[str, TxType],
        genesis: dict[str, Any],
        apply_genesis: Callable[[Context, dict[str, Any]], None],
        signer: CheckpointSigner | None = None,
    ) -> Ledger:
        """Write block 0: the genesis document's state, signed like any other checkpoint."""
        if store.get_meta("genesis") is not None:
            raise StorageError("this data directory already holds a ledger", code="ledger_exists")
        genesis_bytes = canonical.encode(genesis)
        ctx = Context(reader=_EmptyReader(), tx_hash="genesis", signer="", cosigners=(), height=0,
                      time_ms=int(genesis["time_ms"]), chain=str(genesis["chain"]), member=None)
        apply_genesis(ctx, genesis)
        writes = {k: canonical.encode(v) for k, v in ctx.writes.items() if v is not None}
        smt = SparseMerkleTree(lambda i: store.get_smt_node(i, store.writer), next_id=1)
        changes = {state_key_hash(k): state_value_hash(v) for k, v in writes.items()}
        root_id, state_root, nodes = smt.update(None, changes)
        header = Header(chain=str(genesis["chain"]), height=0, prev=hashlib.sha256(genesis_bytes).digest(),
                        time_ms=int(genesis["time_ms"]), log_size=0, log_root=EMPTY_ROOT,
                        state_root=state_root, tx_count=0)
        block_hash = header.hash()
        checkpoint = cls._sign(signer, header, block_hash)
        store.commit_block(BlockWrite(
            height=0, block_hash=block_hash, header=header.encode(), state_root_id=root_id, checkpoint=checkpoint,
            leaves=[], subjects=[], log_nodes=[], smt_nodes=nodes, state_puts=sorted(writes.items()), state_deletes=[],
            meta={"genesis": genesis_bytes},
        ))
        return cls(store, registry, signer)

    def _reload(self) -> None:
        """(Re)build the in-memory view from what is committed: after start or a failed commit."""
        store = self.store
        height = store.head_height(store.writer)
        block = store.get_block(height, store.writer)
        if block is None:
            raise StorageError("ledger has no blocks", code="corrupt_store")
        self.head_hash, header_bytes, self.state_root_id, self.head_checkpoint = block
        self.head = Header.decode(header_bytes)
        self.appender = LogAppender(self.head.log_size, lambda ids: store.get_log_nodes(ids, store.writer),
                                    min_level=LOG_MIN_LEVEL)
        self.smt = SparseMerkleTree(lambda i: store.get_smt_node(i, store.writer), next_id=store.max_smt_id() + 1,
                                    cache_size=self.tree_cache_nodes)
        self._cache.clear()

    @staticmethod
    def _sign(signer: CheckpointSigner | None, header: Header, block_hash: bytes) -> str:
        checkpoint = Checkpoint(origin=header.chain, size=header.log_size, root=header.log_root,
                                extensions=(block_extension(header.height, block_hash),))
        if signer is None:
            return checkpoint.to_text()
        return signer.sign(checkpoint)

    # -- state -------------------------------------------------------------------------------

    @property
    def committed_cache(self) -> Mapping[str, bytes | None]:
        """Encoded committed values the committer has seen; other threads may read it (dict reads
        are atomic), never write it. A value here is never older than what SQLite returns."""
        return self._cache

    def get_committed(self, key: str) -> Any | None:
        encoded = self._cache.get(key, _MISS)
        if encoded is _MISS:
            encoded = self._load_committed(key)
        return None if encoded is None else _decode_value(encoded)

    def _load_committed(self, key: str) -> bytes | None:
        """Cache miss: read SQLite and remember the answer (absence too)."""
        encoded = self.store.get_state(key, self.store.writer)
        if len(self._cache) >= self.state_cache_entries:
            self._cache.clear()
        self._cache[key] = encoded
        return encoded

    # -- execution ---------------------------------------------------------------------------

    def check_auth(self, state: Any, tx: SignedTx, tx_type: TxType) -> tuple[dict[str, Any] | None, str, str]:
        """Who is signing and may they send this type? Returns (member, error code, message)."""
        member = state.get(key_record(tx.signer))
        if member is not None:
            if member.get("status") != "active":
                return None, "key_revoked", "the signing key has been revoked"
            org = state.get_shared(f"id/org/{member['org']}")
            if org is None or org.get("status") != "active":
                return None, "org_suspended", "the signer's organisation is not active"
        for did in tx.cosigners:
            cosigner = state.get_shared(key_record(did))
            if cosigner is not None and cosigner.get("status") != "active":
                return None, "key_revoked", f"cosigning key {did} has been revoked"
        roles = tx_type.roles
        if ANYONE in roles:
            if member is None and tx_type.admit is not None:
                reason = tx_type.admit(state, tx.signer, tx.payload)
                if reason:
                    return None, "forbidden", reason
            return member, "", ""
        if member is None:
            return None, "forbidden", f"{tx.type} needs a member key of the consortium"
        if MEMBER in roles or (ADMIN in roles and member.get("admin")) or not roles.isdisjoint(member["roles"]):
            return member, "", ""
        needed = ", ".join(sorted(roles))
        return None, "forbidden", f"{tx.type} needs one of the roles: {needed}"

    def _execute(self, state: _BlockState, tx: SignedTx, tx_type: TxType, member: dict[str, Any] | None,
                 height: int, time_ms: int) -> dict[str, Any]:
        try:
            payload = msgspec.convert(tx.payload, tx_type.payload_type, strict=True)
            validate = None if self.prechecked else getattr(payload, "validate", None)
            if validate is not None:
                validate()
        except msgspec.ValidationError as exc:
            return _result_json("rejected", code="bad_payload", message=str(exc))
        except InputError as exc:
            return _result_json("rejected", code=exc.code, message=exc.message)
        ctx = Context(reader=state, tx_hash=tx.hash_hex, signer=tx.signer, cosigners=tx.cosigners,
                      height=height, time_ms=time_ms, chain=self.chain, member=member)
        try:
            tx_type.handler(ctx, payload)
            encoded = [(k, None if v is None else canonical.encode(v)) for k, v in ctx.writes.items()]
        except Rejected as exc:
            return _result_json("rejected", code=exc.code, message=exc.message, subject=getattr(exc, "subject", ""))
        except InputError as exc:
            return _result_json("rejected", code=exc.code, message=exc.message)
        except Exception as exc:  # a contract bug: deterministic on every node, so it is recorded, not fatal
            log.exception("contract %s failed on %s", tx.type, tx.hash_hex)
            return _result_json("rejected", code="contract_error", message=type(exc).__name__)
        state.pending.update(encoded)
        for space, writes in ctx.index_writes.items():
            state.index_pending.setdefault(space, {}).update(writes)
        return _result_json("ok", events=ctx.events)

    def apply_block(self, txs: Sequence[SignedTx], time_ms: int,
                    meta: dict[str, bytes] | None = None) -> BlockResult:
        """Execute ``txs`` in order as the next block and commit it atomically (with ``meta``, such as
        the ordering service's position, in the same transaction)."""
        self.store.begin_block()
        try:
            return self._apply_block(txs, time_ms, meta)
        except BaseException:
            self.store.abort_block()
            self._reload()
            raise

    def _apply_block(self, txs: Sequence[SignedTx], time_ms: int, meta: dict[str, bytes] | None) -> BlockResult:
        head = self.head
        height = head.height + 1
        time_ms = max(time_ms, head.time_ms)
        state = _BlockState(self)
        pending = state.pending
        outcomes: list[TxOutcome] = []
        leaves: list[tuple[int, int, bytes, bytes]] = []
        leaf_hashes: list[bytes] = []
        subjects: list[tuple[str, int]] = []
        index = head.log_size
        for tx in txs:
            nkey = nonce_key(tx.signer)
            last = state.get(nkey) or 0
            if tx.nonce <= last:
                outcomes.append(TxOutcome(tx, None, Rejected(
                    f"nonce {tx.nonce} is not above {last}", code="stale_nonce", http_status=409)))
                continue
            # Who may not send this (unknown type, unknown or revoked key, missing role) is refused
            # here like a stale nonce: never a leaf, so an outsider cannot write into the log.
            tx_type = self.registry.get(tx.type)
            if tx_type is None:
                outcomes.append(TxOutcome(tx, None, InputError(
                    f"unknown transaction type {tx.type}", code="unknown_type")))
                continue
            member, code, message = self.check_auth(state, tx, tx_type)
            if code:
                outcomes.append(TxOutcome(tx, None, Rejected(message, code=code, http_status=403)))
                continue
            result = self._execute(state, tx, tx_type, member, height, time_ms)
            pending[nkey] = b"%d" % tx.nonce
            result_bytes = canonical.encode(result)
            leaf = b'{"height":%d,"result":%s,"tx":%s}' % (height, result_bytes, tx.raw)
            leaves.append((index, height, tx.hash, leaf))
            payload = tx.payload
            for name in SUBJECT_FIELDS:
                value = payload.get(name)
                if type(value) is str and 0 < len(value) <= MAX_SUBJECT_CHARS:
                    subjects.append((f"{name}:{value}", index))
            many = payload.get("serials")
            if type(many) is list and len(many) <= MAX_LISTED_SUBJECTS:
                subjects.extend((f"serial:{value}", index) for value in sorted(set(many))
                                if type(value) is str and 0 < len(value) <= MAX_SUBJECT_CHARS)
            leaf_hashes.append(leaf_hash(leaf))
            receipt = {"tx": tx.hash_hex, "height": height, "leaf_index": index, **result}
            outcomes.append(TxOutcome(tx, receipt))
            index += 1
        if not leaves:
            self.store.abort_block()
            return BlockResult(header=head, block_hash=self.head_hash, checkpoint=self.head_checkpoint,
                               outcomes=outcomes)
        return self._commit(height, time_ms, pending, leaves, leaf_hashes, subjects, outcomes, meta,
                            state.index_pending)

    def _commit(self, height: int, time_ms: int, pending: dict[str, bytes | None],
                leaves: list[tuple[int, int, bytes, bytes]], leaf_hashes: list[bytes],
                subjects: list[tuple[str, int]], outcomes: list[TxOutcome],
                meta: dict[str, bytes] | None = None,
                index: Mapping[str, Mapping[str, str | None]] | None = None) -> BlockResult:
        # (a failure anywhere here is rolled back and the view reloaded by apply_block)
        changes = {state_key_hash(k): None if enc is None else state_value_hash(enc)
                   for k, enc in pending.items()}
        root_id, state_root, smt_nodes = self.smt.update(self.state_root_id, changes)
        log_nodes = self.appender.append(leaf_hashes)
        header = Header(chain=self.chain, height=height, prev=self.head_hash, time_ms=time_ms,
                        log_size=self.appender.size, log_root=self.appender.root(),
                        state_root=state_root, tx_count=len(leaves))
        block_hash = header.hash()
        checkpoint = self._sign(self.signer, header, block_hash)
        puts = [(k, enc) for k, enc in pending.items() if enc is not None]
        deletes = [(k,) for k, enc in pending.items() if enc is None]
        self.store.commit_block(BlockWrite(
            height=height, block_hash=block_hash, header=header.encode(), state_root_id=root_id,
            checkpoint=checkpoint, leaves=leaves, subjects=subjects, log_nodes=log_nodes, smt_nodes=smt_nodes,
            state_puts=puts, state_deletes=deletes, meta=meta or {}, leaf_hashes=leaf_hashes,
            index_puts=[(f"{sp}/{k}", v) for sp, writes in (index or {}).items() for k, v in writes.items()
                        if v is not None],
            index_deletes=[(f"{sp}/{k}",) for sp, writes in (index or {}).items() for k, v in writes.items()
                           if v is None],
        ))
        cache = self._cache
        if len(cache) + len(pending) >= self.state_cache_entries:
            cache.clear()
        cache.update(pending)
        self.head, self.head_hash, self.state_root_id, self.head_checkpoint = header, block_hash, root_id, checkpoint
        return BlockResult(header=header, block_hash=block_hash, checkpoint=checkpoint, outcomes=outcomes)


class _EmptyReader:
    def get(self, key: str) -> Any | None:
        return None
