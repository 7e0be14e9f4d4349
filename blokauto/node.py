"""The composition root of one node: storage, ledger, contracts, orderer and the committer.

Submissions arrive from any thread (API workers, the CLI) or in bulk (``submit_many``, whose
stateless checks run in worker processes). They are checked statelessly (size, canonical form,
schema, chain id, signatures), then against the committed state and the not-yet-committed queue
(nonce; role and revocation for single submissions) — a refusal there writes nothing — and handed
to the orderer. One committer thread cuts blocks from the order, executes and commits them, and
resolves each submitter's future with its receipt; what it refuses before execution (stale nonce,
no right to send) resolves with an error and is never logged.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from blokauto import metrics
from blokauto.contracts import governance
from blokauto.contracts.registry import convert_payload, load_all
from blokauto.crypto import canonical
from blokauto.crypto.keys import b64, unb64
from blokauto.crypto.note import verifier_key
from blokauto.errors import BlokError, InputError, Rejected, StorageError
from blokauto.ledger.chain import (
    STATE_CACHE_ENTRIES,
    TREE_CACHE_NODES,
    BlockResult,
    CheckpointSigner,
    Ledger,
    parse_block_extension,
)
from blokauto.ledger.state import nonce_key
from blokauto.ledger.store import DB_FILE, Store, connect
from blokauto.ledger.tx import MAX_TX_BYTES, SignedTx, decode_batch, encode_batch, parse_tx, verify_tx_signatures
from blokauto.offchain.store import BlobStore
from blokauto.ordering.base import Batch
from blokauto.ordering.solo import SoloOrderer

log = logging.getLogger("blokauto.node")

NODE_KEY_FILE = "node.key"
_MISS: Any = object()


@dataclass(frozen=True)
class NodeConfig:
    max_block_txs: int = 4000
    idle_wait_s: float = 0.05
    synchronous: str = "NORMAL"
    network: Any = None          # a blokauto.network.config.NetworkConfig: order through JetStream, cosign
    final_wait_s: float = 2.0    # how long a proof waits for its checkpoint to be cosigned by a quorum
    state_cache_entries: int = STATE_CACHE_ENTRIES   # the committer's caches: bounded, so memory stays flat
    tree_cache_nodes: int = TREE_CACHE_NODES
    prewarm: bool = True         # read the log's node table into the OS page cache at start (proofs read it)
    prewarm_leaf_hashes: bool = True   # ... and the leaf-hash index (~45 bytes a leaf; off if that is too much)


def write_node_key(data_dir: Path, org_id: str, name: str, key: SigningKey) -> None:
    """The node's checkpoint key: read at start without a password, so kept 0600 like a TLS key."""
    path = data_dir / NODE_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(canonical.encode({"org": org_id, "name": name, "seed": b64(bytes(key))}).decode() + "\n")


def read_node_key(data_dir: Path) -> tuple[str, CheckpointSigner]:
    path = data_dir / NODE_KEY_FILE
    try:
        doc = canonical.decode(path.read_bytes().strip())
        return str(doc["org"]), CheckpointSigner(str(doc["name"]), SigningKey(unb64(doc["seed"], size=32)))
    except FileNotFoundError:
        raise StorageError(f"no node key at {path}", code="no_node_key") from None
    except (KeyError, ValueError, InputError) as exc:
        raise StorageError(f"node key {path} is unreadable: {exc}", code="bad_node_key") from None


def _node_key_name(data_dir: Path, genesis: dict[str, Any], org_id: str, node_key: SigningKey,
                   joining: bool) -> str:
    """The checkpoint key name of ``org_id``'s node, after checking the genesis names this key and
    that ``data_dir`` holds no ledger yet."""
    parsed = governance.parse_genesis(genesis)
    org = next((o for o in parsed.orgs if o.id == org_id), None)
    if org is None and not joining:
        raise InputError(f"organisation {org_id} is not in the genesis (a new member: --joining)",
                         code="bad_genesis")
    if org is not None and (org.node is None or org.node.public_key != b64(bytes(node_key.verify_key))):
        raise InputError(f"the genesis does not name this node key for {org_id}", code="bad_genesis")
    if (data_dir / NODE_KEY_FILE).exists() or (data_dir / DB_FILE).exists():
        raise StorageError(f"{data_dir} already holds a ledger", code="ledger_exists")
    return org.node.name if org is not None and org.node is not None else f"{parsed.chain}/{org_id}"


def init_ledger(data_dir: Path, genesis: dict[str, Any], org_id: str, node_key: SigningKey,
                synchronous: str = "NORMAL", *, joining: bool = False) -> None:
    """Create a new data directory holding block 0 of ``genesis``, run by ``org_id``'s node.

    ``joining``: the organisation is not a founder; the consortium admits it (with this node key)
    by a governance transaction, which the node will replay like every other block."""
    data_dir = Path(data_dir)
    key_name = _node_key_name(data_dir, genesis, org_id, node_key, joining)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_node_key(data_dir, org_id, key_name, node_key)
    store = Store(data_dir, create=True, synchronous=synchronous)
    try:
        Ledger.create(store, load_all(), genesis, governance.apply_genesis,
                      CheckpointSigner(key_name, node_key))
    finally:
        store.close()
    (data_dir / "genesis.json").write_bytes(canonical.encode(genesis) + b"\n")


def write_snapshot(data_dir: Path, out: Path) -> dict[str, int]:
    """Copy a node's database to ``out`` with SQLite's online backup: a consistent copy at a block
    boundary, taken while the node runs. Returns the copy's height and log size."""
    out = Path(out)
    if out.exists():
        raise InputError(f"{out} exists: give a new file", code="snapshot_exists")
    source = Store(data_dir)
    partial = out.with_name(out.name + ".partial")
    try:
        partial.unlink(missing_ok=True)
        target = sqlite3.connect(partial)
        try:
            source.reader().backup(target)
        finally:
            target.close()
        partial.rename(out)
    except (OSError, sqlite3.Error) as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(f"cannot write the snapshot {out}: {exc}", code="snapshot_unwritable") from None
    finally:
        source.close()
    return _snapshot_head(out)


def _snapshot_head(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise InputError(f"no snapshot file {path}", code="no_snapshot")
    try:
        conn = connect(path, readonly=True)
        try:
            row = conn.execute("SELECT height, header FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
            seq = conn.execute("SELECT v FROM meta WHERE k = 'stream_seq'").fetchone()
        finally:
            conn.close()
        if row is None:
            raise StorageError(f"{path} holds no blocks", code="bad_snapshot")
        return {"height": int(row[0]), "log_size": int(canonical.decode(bytes(row[1]))["log_size"]),
                "stream_seq": int(seq[0]) if seq else 0}
    except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{path} is not a ledger snapshot: {exc}", code="bad_snapshot") from None


def init_from_snapshot(data_dir: Path, snapshot: Path, genesis: dict[str, Any], org_id: str,
                       node_key: SigningKey, *, joining: bool = False,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Create ``org_id``'s data directory from another node's snapshot instead of from block 0.

    Nothing in the snapshot is trusted: its genesis must be ``genesis`` byte for byte, and the full
    audit replays every block from genesis and compares every stored byte before this node may use
    it; a snapshot that fails leaves no ledger behind. The node then continues from the snapshot's
    position in the ordering stream (a network node), checking every later block like any other; a
    snapshot whose history the consortium did not sign shows as a conflicting checkpoint at the
    next block. Off-chain data (``offchain/``) is not in the snapshot: it arrives again from the
    BLOBS stream, or copy that directory too."""
    from blokauto.ledger.audit import audit

    data_dir = Path(data_dir)
    key_name = _node_key_name(data_dir, genesis, org_id, node_key, joining)
    head = _snapshot_head(Path(snapshot))
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / DB_FILE
    try:
        source = connect(Path(snapshot), readonly=True)
        target = sqlite3.connect(db)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        store = Store(data_dir, random_access=False)   # the audit reads the whole file
        try:
            report = audit(store, load_all(), governance.apply_genesis, genesis_known_keys(genesis),
                           genesis=genesis, progress=progress, keys_in_state=state_node_keys)
        finally:
            store.close()
        if not report.ok:
            raise StorageError(f"the snapshot fails the audit from height {report.first_bad_height}: "
                               f"{report.problems[0] if report.problems else 'see blokauto verify'}",
                               code="bad_snapshot")
    except BaseException:
        for leftover in data_dir.glob(DB_FILE + "*"):
            leftover.unlink()
        raise
    write_node_key(data_dir, org_id, key_name, node_key)
    (data_dir / "genesis.json").write_bytes(canonical.encode(genesis) + b"\n")
    return head


class TicketBatch:
    """The one Condition the tickets of one bulk submission share."""

    __slots__ = ("cond",)

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class Ticket:
    """One transaction's outcome in :meth:`Node.submit_many`; ``result()`` behaves like a Future's.

    A Future brings its own Condition (~3 us to create, more to resolve) and that work lands on
    threads sharing the GIL with the committer; tickets share their batch's Condition, and the
    committer wakes each batch once per block instead of once per transaction.
    """

    __slots__ = ("_batch", "_done", "_error", "_value")

    def __init__(self, batch: TicketBatch) -> None:
        self._batch = batch
        self._done = False
        self._value: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def settle(self, value: dict[str, Any] | None, error: BaseException | None) -> TicketBatch:
        """Record the outcome; the caller then wakes the returned batch (once for many tickets)."""
        self._value, self._error = value, error
        self._done = True
        return self._batch

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if not self._done:
            with self._batch.cond:
                if not self._batch.cond.wait_for(self.done, timeout):
                    raise TimeoutError("the transaction is not committed yet")
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


Waiter = Future[dict[str, Any]] | Ticket


class Node:
    """A running node: accept, order, execute, commit, answer."""

    def __init__(self, data_dir: Path, config: NodeConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config or NodeConfig()
        self.org_id, signer = read_node_key(self.data_dir)
        self.store = Store(self.data_dir, synchronous=self.config.synchronous)
        self.store.start_checkpointer()
        self.registry = load_all()
        self.ledger = Ledger(self.store, self.registry, signer, state_cache_entries=self.config.state_cache_entries,
                             tree_cache_nodes=self.config.tree_cache_nodes)
        self.ledger.prechecked = True   # every path into the committer runs check_stateless/check_message
        self.chain = self.ledger.chain
        self.cosigner: Any = None
        self.replicator: Any = None
        self.blobs = BlobStore(self.data_dir / "offchain")
        self.orderer: Any = SoloOrderer()
        if self.config.network is not None:
            try:
                self._start_network(self.config.network)
            except BaseException:   # what started before the failure stops with it
                for part in (self.orderer, self.replicator, self.cosigner):
                    if part is not None:
                        part.close()
                self.store.close()
                raise
        self._lock = threading.Lock()
        self._waiting: dict[bytes, Waiter] = {}
        self._pending_nonce: dict[str, int] = {}
        self._committer: threading.Thread | None = None
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._procs: ProcessPoolExecutor | None = None
        self.commit_listeners: list[Any] = []
        self.prewarmed = threading.Event()   # set when the start-up prewarm ended (or was not asked for)
        self.prewarm_result: tuple[int, float] | None = None   # (bytes read, seconds)
        metrics.HEIGHT.set(self.ledger.head.height)
        metrics.LOG_SIZE.set(self.ledger.head.log_size)

    # -- lifecycle -----------------------------------------------------------------------------

    def _start_network(self, net: Any) -> None:
        """Order through the consortium's JetStream stream and cosign checkpoints (ADR 0006)."""
        from blokauto.network.config import connect_options
        from blokauto.network.cosign import Cosigner
        from blokauto.ordering.jetstream import JetStreamOrderer

        if net.chain != self.chain or net.org != self.org_id:
            raise InputError(f"the network file is for {net.org} on {net.chain}, this node is {self.org_id} on "
                             f"{self.chain}", code="bad_network_config")
        max_block_txs = governance.parse_genesis(self.ledger.genesis).ordering.max_block_txs
        if net.max_block_txs is not None and net.max_block_txs != max_block_txs:
            raise InputError(f"the network file says max_block_txs {net.max_block_txs}, but this chain's genesis "
                             f"fixes {max_block_txs} for every node (drop the field)", code="bad_network_config")
        options = connect_options(net)
        position = int(self.store.get_meta("stream_seq") or b"0")
        self.cosigner = Cosigner(net.servers, self.chain, self.org_id, self.data_dir, keys=self.checkpoint_keys,
                                 quorum=self.checkpoint_quorum, connect_options=options,
                                 replicas=net.replicas).start()
        # blocks committed but never handed to the cosigner (a crash between the two) get signed now
        for height in range((self.cosigner.last_own_height() or 0) + 1, self.ledger.head.height + 1):
            block = self.store.get_block(height)
            if block is not None:
                self.cosigner.publish(height, block[3])
        from blokauto.network.blobs import BlobReplicator

        self.replicator = BlobReplicator(net.servers, self.chain, self.org_id, self.data_dir, self._accept_offchain,
                                         replicas=net.replicas, connect_options=options).start()
        self.orderer = JetStreamOrderer(
            net.servers, self.chain, self.org_id, start_after=position, start_time_ms=self.ledger.head.time_ms,
            max_block_txs=max_block_txs, cut_interval_s=net.cut_interval_ms / 1000, replicas=net.replicas,
            connect_options=options).start()

    # -- off-chain data --------------------------------------------------------------------------

    def store_offchain(self, kind: str, name: str, data: bytes) -> bool:
        """Keep an item the caller checked against its commitment, and share it with the other
        members' nodes (which check it against their own ledgers). False if it was already here."""
        stored = self.blobs.put(kind, name, data)
        if stored and self.replicator is not None:
            self.replicator.publish(kind, name, data)
        return stored

    def _accept_offchain(self, kind: str, name: str, data: bytes) -> str:
        """An item another node shared: stored only if it matches this ledger's commitment ("wait"
        while that commitment has not been committed here yet)."""
        from blokauto.offchain.checks import check_crash_record, check_samples

        if self.blobs.get(kind, name) is not None:
            return ""
        if kind == "crash":
            deposit = self.read_state(f"crash/{name}")
            if deposit is None:
                return "wait"
            refusal = check_crash_record(deposit, data)
        elif kind == "telematics":
            where = self.store.get_index_many("troot", [name]).get(name)
            if where is None:
                return "wait"
            vin, _, seq = where.rpartition("|")
            header = self.read_state(f"tbatch/{vin}/{seq}")
            refusal = "no header" if header is None else check_samples(header, data)
        else:
            return f"unknown kind {kind[:20]!r}"
        if refusal is not None:
            return refusal if isinstance(refusal, str) else refusal[0]
        self.blobs.put(kind, name, data)
        return ""

    def final_checkpoint(self, note: str, timeout_s: float | None = None) -> tuple[str, bool]:
        """The quorum-signed version of one of our checkpoint notes (same text), waiting briefly for
        the other organisations' signatures; ``(note, False)`` if it is not final in time."""
        if self.cosigner is None:
            return note, True
        from blokauto.crypto.note import Checkpoint, parse_note

        text, _ = parse_note(note)
        block = parse_block_extension(Checkpoint.from_text(text).extensions)
        if block is None:
            return note, False
        final = self.cosigner.wait_final(block[0], self.config.final_wait_s if timeout_s is None else timeout_s)
        return (final, True) if final else (note, False)

    def finalize(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``obj`` (a proof, a state proof, a report bundle) with every copy of our checkpoint note
        replaced by its quorum-signed version: same text, so every proof in it still holds."""
        note = str(obj["checkpoint"] if "checkpoint" in obj else obj["state"]["checkpoint"])
        final, is_final = self.final_checkpoint(note)
        if final == note:
            return obj, is_final

        def swap(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: swap(v) for k, v in value.items()}
            if isinstance(value, list):
                return [swap(v) for v in value]
            return final if value == note else value

        swapped: dict[str, Any] = swap(obj)
        return swapped, is_final

    def latest_note(self) -> str:
        """The checkpoint to show as 'the' latest: the latest final one on a network."""
        if self.cosigner is not None:
            latest = self.cosigner.latest_final()
            if latest is not None:
                return str(latest[1])
        return self.ledger.head_checkpoint

    def network_status(self) -> dict[str, Any]:
        head = self.ledger.head
        if self.cosigner is None:
            return {"mode": "solo", "org": self.org_id, "height": head.height,
                    "final": {"height": head.height, "signers": []}, "conflicts": [], "diverged": None}
        latest = self.cosigner.latest_final()
        final = None
        if latest is not None:
            final = {"height": latest[0], "signers": self.cosigner.signers(latest[0])}
        return {"mode": "network", "org": self.org_id, "height": head.height, "final": final,
                "stream_seq": int(self.store.get_meta("stream_seq") or b"0"),
                "conflicts": self.cosigner.conflicts(), "quorum": self.checkpoint_quorum(),
                "diverged": self.cosigner.outvoted,
                "offchain": None if self.replicator is None else self.replicator.status()}

    def start(self) -> Node:
        if self._committer is None:
            self._committer = threading.Thread(target=self._run, name="committer", daemon=True)
            self._committer.start()
            if self.config.prewarm:
                threading.Thread(target=self._prewarm, name="prewarm", daemon=True).start()
            else:
                self.prewarmed.set()
        return self

    def _prewarm(self) -> None:
        started = time.perf_counter()
        try:
            read = self.store.prewarm(leaf_hashes=self.config.prewarm_leaf_hashes)
            self.prewarm_result = (read, time.perf_counter() - started)
            log.info("prewarmed the log's nodes and leaf hashes", extra={"bytes": read,
                                                               "seconds": round(self.prewarm_result[1], 3)})
        except sqlite3.Error as exc:   # only a speed-up: a node that cannot prewarm still serves
            log.warning("prewarm failed: %s", exc)
        finally:
            self.prewarmed.set()

    def close(self) -> None:
        self._stop.set()
        self.orderer.close()
        if self._committer is not None:
            self._committer.join(timeout=30)
            self._committer = None
        if self.replicator is not None:
            self.replicator.close()
        if self.cosigner is not None:
            self.cosigner.close()
        if self._procs is not None:
            self._procs.shutdown(wait=True)
        self._fail_waiting(StorageError("node stopped", code="node_stopped"))
        self.store.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def healthy(self) -> bool:
        return self._fatal is None and self._committer is not None and self._committer.is_alive()

    # -- submission ------------------------------------------------------------------------------

    def check(self, raw: bytes) -> SignedTx:
        """Stateless then stateful checks; raises a :class:`BlokError` and writes nothing on refusal."""
        try:
            big = len(raw) > MAX_TX_BYTES
            tx = self._check_stateless_in_worker(raw) if big else check_stateless(raw, self.chain)
            self._check_auth(tx)
        except BlokError as exc:
            metrics.REJECTIONS.labels(code=exc.code, stage="submit").inc()
            raise
        return tx

    def state_reader(self) -> _ReaderState:
        """Committed state with the interface contracts' read rules take (``get``)."""
        return _ReaderState(self)

    def read_state(self, key: str) -> Any | None:
        """Latest committed value: the committer's cache when it holds the key, else SQLite."""
        encoded = self.ledger.committed_cache.get(key, _MISS)
        if encoded is _MISS:
            encoded = self.store.get_state(key)
        return None if encoded is None else canonical.decode_trusted(encoded)

    def active_member(self, did: str) -> dict[str, Any] | None:
        """The member record of an active key of an active organisation, else None."""
        record = self.read_state(f"id/key/{did}")
        if record is None or record.get("status") != "active":
            return None
        org = self.read_state(f"id/org/{record['org']}")
        return dict(record) if org is not None and org.get("status") == "active" else None

    def _check_auth(self, tx: SignedTx) -> None:
        _, code, message = self.ledger.check_auth(self.state_reader(), tx, self.registry[tx.type])
        if code:
            raise Rejected(message, code=code, http_status=403)

    def enqueue(self, tx: SignedTx) -> Future[dict[str, Any]]:
        """Reserve the nonce and hand the transaction to the orderer."""
        future = self._enqueue(tx)
        metrics.QUEUE_DEPTH.set(self.orderer.depth())
        assert isinstance(future, Future)
        return future

    def _enqueue(self, tx: SignedTx, future: Waiter | None = None) -> Waiter:
        """:meth:`enqueue` without the queue-depth gauge (bulk callers set it once per batch)."""
        if self._fatal is not None:
            raise StorageError("the node has stopped committing; see its log", code="node_failed")
        if future is None:
            future = Future()
        with self._lock:
            if tx.hash in self._waiting:
                metrics.REJECTIONS.labels(code="duplicate", stage="submit").inc()
                raise Rejected("this transaction is already waiting to be committed", code="duplicate",
                               http_status=409)
            committed = self.read_state(nonce_key(tx.signer)) or 0
            floor = max(committed, self._pending_nonce.get(tx.signer, 0))
            if tx.nonce <= floor:
                metrics.REJECTIONS.labels(code="stale_nonce", stage="submit").inc()
                raise Rejected(f"nonce {tx.nonce} is not above {floor} (replayed or out of order)",
                               code="stale_nonce", http_status=409)
            self._pending_nonce[tx.signer] = tx.nonce
            self._waiting[tx.hash] = future
        try:
            self.orderer.submit(tx)
        except BaseException:
            with self._lock:
                self._waiting.pop(tx.hash, None)
                if self._pending_nonce.get(tx.signer) == tx.nonce:
                    del self._pending_nonce[tx.signer]
            raise
        return future

    def submit(self, raw: bytes) -> Future[dict[str, Any]]:
        return self.enqueue(self.check(raw))

    def submit_many(self, raws: Sequence[bytes], chunk: int = 500) -> list[Ticket]:
        """Bulk submission: stateless checks (parse, schema, Ed25519) in worker processes, so they
        run beside the committer without sharing its GIL; nonce reservation and ordering here, in order.
        One :class:`Ticket` per transaction; refused ones (here or at execution) raise their error
        from ``result()``; none is logged."""
        tickets: list[Ticket] = []
        chunks = [list(raws[i : i + chunk]) for i in range(0, len(raws), chunk)]
        pool = self._check_pool()
        for encoded, refusals in pool.map(check_stateless_batch, chunks, [self.chain] * len(chunks)):
            batch = TicketBatch()
            checked = decode_batch(encoded)
            passed = iter(checked)
            refused = {position: (code, message, status) for position, code, message, status in refusals}
            for position in range(len(checked) + len(refused)):
                ticket = Ticket(batch)
                tickets.append(ticket)
                error = refused.get(position)
                if error is None:
                    # role and revocation are checked by the committer, which drops (never logs) refusals
                    try:
                        self._enqueue(next(passed), ticket)
                    except BlokError as exc:  # enqueue counts its own refusals
                        ticket.settle(None, exc)
                else:
                    code, message, status = error
                    ticket.settle(None, BlokError(message, code=code, http_status=status))
                    metrics.REJECTIONS.labels(code=code, stage="submit").inc()
            metrics.QUEUE_DEPTH.set(self.orderer.depth())
        return tickets

    def _check_stateless_in_worker(self, raw: bytes) -> SignedTx:
        """A bulk transaction's stateless checks (a 20,000-part batch hashes 40,000 times) in a worker
        process: on an API thread they would hold the GIL the committer needs."""
        encoded, refusals = self._check_pool().submit(check_stateless_batch, [raw], self.chain).result()
        if refusals:
            _, code, message, status = refusals[0]
            raise BlokError(message, code=code, http_status=status)
        return decode_batch(encoded)[0]

    def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a pure, importable function on the node's worker processes and wait for its result:
        CPU-heavy checks (a day of telematics samples) then run beside the committer, not on its GIL."""
        return self._check_pool().submit(fn, *args).result()

    def _check_pool(self) -> ProcessPoolExecutor:
        if self._procs is None:
            context = multiprocessing.get_context("spawn")
            self._procs = ProcessPoolExecutor(max_workers=os.cpu_count() or 2, mp_context=context,
                                              initializer=_init_check_worker)
        return self._procs

    # -- the committer ---------------------------------------------------------------------------

    def _run(self) -> None:
        cfg = self.config
        while not self._stop.is_set():
            if self.cosigner is not None and self.cosigner.outvoted is not None:
                out = self.cosigner.outvoted
                error = StorageError(f"a quorum of organisations ({', '.join(out['signers'])}) signed another "
                                     f"checkpoint than this node's at height {out['height']}: this node's state "
                                     "diverged, so it stops committing (see GET /v1/network)", code="diverged")
                log.critical(error.message)
                self._fatal = error
                self._fail_waiting(error)
                return
            try:
                batch = self.orderer.next_batch(cfg.max_block_txs, cfg.idle_wait_s)
            except BlokError as exc:   # the order is gone under our position: never guess, stop committing
                log.exception("the ordering service failed; the node stops committing")
                self._fatal = exc
                self._fail_waiting(exc)
                return
            metrics.QUEUE_DEPTH.set(self.orderer.depth())
            if not batch:
                continue
            time_ms, meta = int(time.time() * 1000), None
            if isinstance(batch, Batch):
                for ref, code in batch.dropped:
                    metrics.REJECTIONS.labels(code=code, stage="order").inc()
                    log.warning("dropped from the order", extra={"ref": ref, "code": code})
                if batch.time_ms is not None:
                    # on restart the orderer resumes with the head's (clamped) time: the same blocks,
                    # because the executor's clamp is max(previous, t)
                    time_ms = batch.time_ms
                if batch.position is not None:
                    meta = {"stream_seq": str(batch.position).encode()}
                txs: Any = batch.txs
                if not txs:
                    continue
            else:
                txs = batch
            started = time.perf_counter()
            try:
                result = self.ledger.apply_block(txs, time_ms, meta)
            except BaseException as exc:  # storage failure: stop committing, keep what is committed
                log.exception("block commit failed; the node stops committing")
                self._fatal = exc
                self._fail_waiting(StorageError(f"commit failed: {exc}", code="commit_failed"))
                return
            metrics.BLOCK_SECONDS.observe(time.perf_counter() - started)
            if self.cosigner is not None and result.header.height > 0 and result.outcomes \
                    and any(o.receipt is not None for o in result.outcomes):
                self.cosigner.publish(result.header.height, result.checkpoint)
            self._resolve(result)

    def _resolve(self, result: BlockResult) -> None:
        ok = rejected = 0
        wake: set[TicketBatch] = set()
        with self._lock:
            for outcome in result.outcomes:
                tx = outcome.tx
                waiter = self._waiting.pop(tx.hash, None)
                if self._pending_nonce.get(tx.signer) == tx.nonce:
                    del self._pending_nonce[tx.signer]
                receipt, error = outcome.receipt, None
                if receipt is None:
                    error = outcome.error or Rejected("dropped", code="dropped")
                    metrics.REJECTIONS.labels(code=error.code, stage="execute").inc()
                elif receipt["status"] == "ok":
                    ok += 1
                else:
                    rejected += 1
                    metrics.REJECTIONS.labels(code=receipt["code"], stage="execute").inc()
                if waiter is not None:
                    _settle(waiter, receipt, error, wake)
        for batch in wake:
            batch.wake()
        if result.outcomes:
            metrics.BLOCKS.inc()
            metrics.COMMITTED.labels(status="ok").inc(ok)
            metrics.COMMITTED.labels(status="rejected").inc(rejected)
            metrics.HEIGHT.set(result.header.height)
            metrics.LOG_SIZE.set(result.header.log_size)
            log.info("block committed", extra={"height": result.header.height, "txs": len(result.outcomes),
                                               "log_size": result.header.log_size})
        for listener in self.commit_listeners:
            listener(result)

    def _fail_waiting(self, error: BlokError) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            self._pending_nonce.clear()
        wake: set[TicketBatch] = set()
        for waiter in waiting.values():
            if not waiter.done():
                _settle(waiter, None, error, wake)
        for batch in wake:
            batch.wake()

    # -- reads --------------------------------------------------------------------------------

    def is_pending(self, tx_hash: bytes) -> bool:
        with self._lock:
            return tx_hash in self._waiting

    def pending_nonce(self, did: str) -> int:
        with self._lock:
            return self._pending_nonce.get(did, 0)

    def checkpoint_keys(self) -> list[str]:
        """Verifier keys (signed-note form) of every organisation's node."""
        return state_node_keys(self.store)

    def checkpoint_quorum(self) -> int:
        return int(self.read_state("policy/checkpoint.quorum") or 1)


def _settle(waiter: Waiter, receipt: dict[str, Any] | None, error: BaseException | None,
            wake: set[TicketBatch]) -> None:
    """Resolve a Future now, or a Ticket whose batch the caller wakes afterwards (once)."""
    if isinstance(waiter, Ticket):
        wake.add(waiter.settle(receipt, error))
    elif receipt is None:
        waiter.set_exception(error)
    else:
        waiter.set_result(receipt)


def _init_check_worker() -> None:
    """Checkers run at lower priority: the committer (the one serial stage) must never wait for CPU;
    checkers use what it leaves."""
    os.nice(10)
    load_all()


def check_stateless(raw: bytes, chain: str) -> SignedTx:
    """Everything that needs no ledger state: size, canonical form, schema, type, payload, signatures."""
    tx = parse_tx(raw, chain)
    registry = load_all()
    tx_type = registry.get(tx.type)
    if tx_type is None:
        raise InputError(f"unknown transaction type {tx.type}", code="unknown_type")
    convert_payload(tx_type, tx.payload)
    verify_tx_signatures(tx)
    return tx


def check_stateless_batch(raws: list[bytes], chain: str) -> tuple[bytes, list[tuple[int, str, str, int]]]:
    """:func:`check_stateless` over a batch, in a worker process: the transactions that passed, as
    msgpack (:func:`encode_batch`), and the refusals as (position in ``raws``, code, message, status)."""
    passed: list[SignedTx] = []
    refusals: list[tuple[int, str, str, int]] = []
    for position, raw in enumerate(raws):
        try:
            passed.append(check_stateless(raw, chain))
        except BlokError as exc:
            refusals.append((position, exc.code, exc.message, exc.http_status))
    return encode_batch(passed), refusals


class _ReaderState:
    """Committed state read through this thread's own connection (for submission checks)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def get(self, key: str) -> Any | None:
        return self.node.read_state(key)

    get_shared = get


def state_node_keys(store: Store) -> list[str]:
    """Verifier keys (signed-note form) of the node keys the state registers now (``id/node/*``)."""
    keys = []
    for _, encoded in store.iter_state("id/node/"):
        node = canonical.decode(encoded)
        keys.append(verifier_key(node["name"], unb64(node["public_key"])))
    return sorted(keys)


def genesis_known_keys(genesis: dict[str, Any]) -> list[str]:
    keys = []
    for org in genesis.get("orgs", []):
        node = org.get("node")
        if node:
            keys.append(verifier_key(node["name"], unb64(node["public_key"])))
    return sorted(keys)

