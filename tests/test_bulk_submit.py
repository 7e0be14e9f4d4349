"""Bulk submission (``Node.submit_many``) and the committer's block transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blokauto.contracts.registry import load_all
from blokauto.demo import OPERATOR_ORG, demo_genesis, demo_node_key
from blokauto.errors import BlokError
from blokauto.ledger.chain import Ledger
from blokauto.ledger.store import BlockWrite, Store
from blokauto.ledger.tx import parse_and_verify, sign_tx
from blokauto.node import init_ledger, read_node_key
from tests.conftest import GENESIS_TIME_MS, Env, demo_admin, digest

ADMIN = demo_admin("quickfix")


def test_tickets_resolve_in_order_with_receipts_and_refusals(env: Env) -> None:
    good = [env.sign("notary.anchor", ADMIN, n, {"digest": digest(f"bulk {n}"), "kind": "invoice"})
            for n in (1, 2, 3)]
    stale = env.sign("notary.anchor", ADMIN, 2, {"digest": digest("again"), "kind": "invoice"})
    broken = good[0][:-5] + b'AAAA"]}'  # signature no longer canonical / valid
    tickets = env.node.submit_many([good[0], broken, good[1], stale, good[2]], chunk=2)
    assert len(tickets) == 5
    receipts = [tickets[i].result(timeout=30) for i in (0, 2, 4)]
    assert [r["status"] for r in receipts] == ["ok", "ok", "ok"]
    assert [r["leaf_index"] for r in receipts] == sorted(r["leaf_index"] for r in receipts)
    for i, code in ((1, "bad_signature"), (3, "stale_nonce")):
        assert tickets[i].done()
        with pytest.raises(BlokError) as raised:
            tickets[i].result(timeout=1)
        assert raised.value.code == code


def test_failed_commit_rolls_back_and_the_next_block_commits(tmp_path: Path) -> None:
    """Reads of a block run inside its write transaction; a failure must roll it back and leave
    the ledger exactly at the last committed block, ready for the next one."""
    data = tmp_path / "node"
    init_ledger(data, demo_genesis(time_ms=GENESIS_TIME_MS), OPERATOR_ORG, demo_node_key(OPERATOR_ORG).signing_key)
    _, signer = read_node_key(data)
    store = Store(data)
    try:
        ledger = Ledger(store, load_all(), signer)
        head = ledger.head
        tx = parse_and_verify(sign_tx(ledger.chain, "notary.anchor", ADMIN, 1,
                                      {"digest": digest("rollback"), "kind": "invoice"}), ledger.chain)
        real_commit = store.commit_block

        def failing(write: BlockWrite) -> None:
            raise sqlite3.OperationalError("disk I/O error (simulated)")

        store.commit_block = failing  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):
            ledger.apply_block([tx], GENESIS_TIME_MS + 1)
        assert not store.writer.in_transaction
        assert ledger.head == head and store.head_height(store.writer) == head.height
        store.commit_block = real_commit  # type: ignore[method-assign]
        result = ledger.apply_block([tx], GENESIS_TIME_MS + 1)
        assert result.outcomes[0].receipt is not None and result.outcomes[0].receipt["status"] == "ok"
        assert store.head_height(store.writer) == head.height + 1 and not store.writer.in_transaction
    finally:
        store.close()
