"""Full audit: replay the whole ledger from genesis and compare every stored byte.

The replay runs the same executor into a scratch database, then checks, block by block: each
transaction's signatures, each leaf's bytes, the header (and so the previous-header link, the
log root and the state root) and the signed checkpoint; at the end it compares every stored log
node, state-tree node and state row with the replay's. The first difference is reported with
its height, so any changed byte in a block, a transaction or a state row is found.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blokauto.crypto import canonical
from blokauto.crypto.note import open_checkpoint
from blokauto.errors import BlokError
from blokauto.ledger.chain import Header, Ledger, block_extension
from blokauto.ledger.state import Context, TxType
from blokauto.ledger.store import Store
from blokauto.ledger.tx import SignedTx, parse_and_verify


@dataclass
class AuditReport:
    ok: bool = True
    blocks: int = 0
    transactions: int = 0
    first_bad_height: int | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, height: int | None, message: str) -> None:
        self.ok = False
        if self.first_bad_height is None or (height is not None and height < self.first_bad_height):
            self.first_bad_height = height
        if len(self.problems) < 20:
            self.problems.append(f"height {height}: {message}" if height is not None else message)


class _Stop(Exception):
    pass


def audit(
    store: Store,
    registry: Mapping[str, TxType],
    apply_genesis: Callable[[Context, dict[str, Any]], None],
    known_keys: list[str],
    *,
    quorum: int = 1,
    progress: Callable[[int, int], None] | None = None,
    genesis: dict[str, Any] | None = None,
    keys_in_state: Callable[[Store], Iterable[str]] | None = None,
) -> AuditReport:
    """Replay and compare; ``genesis`` (if given) must equal the stored genesis document.

    Each block's stored checkpoint must be signed by a key in ``known_keys`` or, with
    ``keys_in_state``, by a node key the replayed state registered at some height: a node of an
    organisation admitted later signs every block it commits with its own key, the early ones too,
    so a checkpoint no key known at its height verifies is checked again at the end, against every
    key the replay saw (a rotated-away key included)."""
    report = AuditReport()
    scratch = Path(tempfile.mkdtemp(prefix="blokauto-audit-"))
    replay_store = Store(scratch, create=True)
    conn = store.writer
    conn.execute("BEGIN")  # one snapshot: a node committing meanwhile cannot make the audit see a torn state
    try:
        stored_genesis = store.get_meta("genesis", conn)
        if stored_genesis is None:
            report.fail(0, "no genesis document")
            return report
        genesis_doc = canonical.decode(stored_genesis)
        if genesis is not None and canonical.encode(genesis) != stored_genesis:
            report.fail(0, "stored genesis differs from the genesis file given")
            return report
        replay = Ledger.create(replay_store, registry, genesis_doc, apply_genesis, None)
        head = store.head_height(conn)
        keys = sorted(set(known_keys))
        later: list[int] = []      # heights whose checkpoint signer the replay had not registered yet
        for height in range(0, head + 1):
            try:
                if not _check_block(store, replay, height, keys, quorum, report, defer=keys_in_state is not None):
                    later.append(height)
                if keys_in_state is not None:
                    registered = set(keys_in_state(replay_store))
                    if not registered <= set(keys):
                        keys = sorted(registered | set(keys))
            except _Stop:
                return report
            except Exception as exc:  # unreadable rows (wrong types, truncated blobs) are corruption too
                report.fail(height, f"stored data unreadable: {type(exc).__name__}: {exc}")
                return report
            report.blocks += 1
            if progress:
                progress(height, head)
        for height in later:
            block = store.get_block(height, conn)
            assert block is not None    # checked by _check_block
            try:
                _check_checkpoint(height, block[0], Header.decode(block[1]), block[3], keys, quorum, replay.chain,
                                  report, defer=False)
            except _Stop:
                return report
        if report.ok:
            _compare_tables(store, replay_store, head, report)
    finally:
        conn.execute("COMMIT")
        replay_store.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _check_block(store: Store, replay: Ledger, height: int, known_keys: list[str], quorum: int,
                 report: AuditReport, *, defer: bool = False) -> bool:
    """Replay one block and compare it; False if its checkpoint is left for the end (``defer``)."""
    conn = store.writer
    block = store.get_block(height, conn)
    if block is None:
        report.fail(height, "block missing")
        raise _Stop
    block_hash, header_bytes, _, checkpoint = block
    if hashlib.sha256(header_bytes).digest() != block_hash:
        report.fail(height, "block hash does not match the stored header bytes")
        raise _Stop
    try:
        header = Header.decode(header_bytes)
    except BlokError as exc:
        report.fail(height, f"header unreadable: {exc.message}")
        raise _Stop from None
    if height > 0:
        txs: list[SignedTx] = []
        stored_leaves = list(store.iter_leaves(header.log_size - header.tx_count, header.log_size, conn))
        if len(stored_leaves) != header.tx_count or any(h != height for _, h, _ in stored_leaves):
            report.fail(height, "stored leaves do not match the header's transaction count")
            raise _Stop
        for index, _, leaf in stored_leaves:
            try:
                decoded = canonical.decode(leaf)
                txs.append(parse_and_verify(canonical.encode(decoded["tx"]), replay.chain))
            except (BlokError, KeyError, TypeError) as exc:
                report.fail(height, f"leaf {index}: transaction does not verify: {exc}")
                raise _Stop from None
        result = replay.apply_block(txs, header.time_ms)
        replayed = {idx: leaf for idx, _, _, leaf in _leaves_of(replay.store, height)}
        for index, _, leaf in stored_leaves:
            if replayed.get(index) != leaf:
                report.fail(height, f"leaf {index} differs from the replayed execution")
                raise _Stop
        report.transactions += len(txs)
        replay_header = result.header.encode()
    else:
        replay_header = replay.head.encode()
    if replay_header != header_bytes:
        replayed = Header.decode(replay_header)
        diffs = [k for k, v in replayed.to_json().items() if header.to_json().get(k) != v]
        report.fail(height, f"header differs from the replay in: {', '.join(diffs) or 'encoding'}")
        raise _Stop
    return _check_checkpoint(height, block_hash, header, checkpoint, known_keys, quorum, replay.chain, report,
                             defer=defer)


def _check_checkpoint(height: int, block_hash: bytes, header: Header, checkpoint: str, known_keys: list[str],
                      quorum: int, chain: str, report: AuditReport, *, defer: bool) -> bool:
    """The stored checkpoint of block ``height`` is signed by a known key and names this very block
    (whose hash and header were checked before)."""
    try:
        cp, _ = open_checkpoint(checkpoint, known_keys, quorum, origin=chain)
    except BlokError as exc:
        if defer and exc.code == "unverified_note":
            return False
        report.fail(height, f"checkpoint does not verify: {exc.message}")
        raise _Stop from None
    if cp.size != header.log_size or cp.root != header.log_root or \
            block_extension(height, block_hash) not in cp.extensions:
        report.fail(height, "checkpoint does not match the block")
        raise _Stop
    return True


def _leaves_of(store: Store, height: int) -> Iterator[tuple[int, int, bytes, bytes]]:
    rows = store.writer.execute("SELECT idx, height, txhash, leaf FROM leaves WHERE height = ?", (height,))
    for idx, h, txhash, leaf in rows:
        yield int(idx), int(h), bytes(txhash), bytes(leaf)


def _compare_tables(store: Store, replay: Store, head: int, report: AuditReport) -> None:
    for table, key_col, value_col, what in (
        ("log_nodes", "id", "hash", "log node"),
        ("smt_chunks", "chunk", "nodes", "state-tree node chunk"),
        ("state", "k", "v", "state row"),
        ("leaves", "idx", "txhash", "transaction index entry"),
        ("leaves", "idx", "lh", "stored leaf hash"),
        ("subjects", "subject || '#' || printf('%020d', idx)", "idx", "subject index entry"),
        ("ix", "k", "v", "consensus index entry"),
        ("facets", "facet || char(0) || value || char(0) || k", "k", "list-filter index entry"),
        ("blocks", "height", "state_root_id", "block state-tree pointer"),
    ):
        query = f"SELECT {key_col}, {value_col} FROM {table} ORDER BY {key_col}"
        stored = store.writer.execute(query)
        replayed = replay.writer.execute(query)
        while True:
            a, b = stored.fetchone(), replayed.fetchone()
            if a is None and b is None:
                break
            if a is None or b is None or a[0] != b[0] or _raw(a[1]) != _raw(b[1]):
                key = (a or b)[0]
                kind = "missing" if a is None or (b is not None and a[0] > b[0]) else (
                    "unexpected" if b is None or a[0] < b[0] else "changed")
                report.fail(head, f"{what} {key!r} {kind} (differs from the replay)")
                break


def _raw(value: object) -> object:
    return bytes(value) if isinstance(value, (bytes, memoryview)) else value
