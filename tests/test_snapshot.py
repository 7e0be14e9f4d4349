"""A node started from another node's snapshot: taken while the source runs, audited in full before
use, refused (leaving nothing behind) when any byte or the genesis is not what it claims."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blokauto import demo
from blokauto.crypto.keystore import write_keystore
from blokauto.errors import BlokError
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node, init_from_snapshot, init_ledger, write_snapshot

GENESIS = demo.demo_genesis(time_ms=1_700_000_000_000)
SOURCE_ORG, OTHER_ORG = demo.OPERATOR_ORG, "quickfix"
BIN = [sys.executable, "-m", "blokauto.cli.main"]
ENV = {**os.environ, "BLOKAUTO_PASSWORD": demo.DEMO_PASSWORD}


def anchor(node: Node, org: str, nonce: int, label: str) -> dict[str, Any]:
    digest = hashlib.sha256(label.encode()).hexdigest()
    raw = sign_tx(node.chain, "notary.anchor", demo.demo_admin(org), nonce, {"digest": digest, "kind": "snapshot"})
    receipt: dict[str, Any] = node.submit(raw).result(timeout=30)
    return receipt


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Path]:
    """A running node with some history, and a snapshot taken while it runs."""
    data = tmp_path / "source"
    init_ledger(data, GENESIS, SOURCE_ORG, demo.demo_node_key(SOURCE_ORG).signing_key)
    snap = tmp_path / "snap.sqlite"
    with Node(data) as node:
        for i in range(12):
            assert anchor(node, "werkstatt-berg", i + 1, f"before {i}")["status"] == "ok"
        head = write_snapshot(data, snap)
        assert (head["height"], head["log_size"]) == (node.ledger.head.height, node.ledger.head.log_size)
        assert anchor(node, "werkstatt-berg", 13, "after the snapshot")["status"] == "ok"
    return data, snap


def test_a_node_starts_from_a_snapshot_and_goes_on(source: tuple[Path, Path], tmp_path: Path) -> None:
    _, snap = source
    data = tmp_path / "other"
    head = init_from_snapshot(data, snap, GENESIS, OTHER_ORG, demo.demo_node_key(OTHER_ORG).signing_key)
    with Node(data) as node:
        assert node.ledger.head.height == head["height"] and node.ledger.head.log_size == head["log_size"]
        assert node.org_id == OTHER_ORG
        # the copy holds the source's history up to the snapshot, not what the source did after it
        receipt = anchor(node, "werkstatt-berg", 13, "on the new node")
        assert receipt["status"] == "ok" and receipt["height"] == head["height"] + 1
        assert node.checkpoint_keys() and receipt["leaf_index"] == head["log_size"]
    result = subprocess.run([*BIN, "verify", "--data", str(data)], capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def tamper(snap: Path, sql: str) -> None:
    conn = sqlite3.connect(snap)
    with conn:
        assert conn.execute(sql).rowcount == 1
    conn.close()


@pytest.mark.parametrize("sql", [
    "UPDATE leaves SET leaf = CAST(replace(CAST(leaf AS TEXT), '\"kind\":\"snapshot\"', '\"kind\":\"Snapshot\"') "
    "AS BLOB) WHERE idx = 5",
    "UPDATE leaves SET lh = zeroblob(32) WHERE idx = 3",
    "UPDATE state SET v = CAST('{}' AS BLOB) WHERE k = (SELECT min(k) FROM state WHERE k LIKE 'notary/%')",
])
def test_a_tampered_snapshot_is_refused_and_leaves_no_ledger(source: tuple[Path, Path], tmp_path: Path,
                                                             sql: str) -> None:
    _, snap = source
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(snap.read_bytes())
    tamper(bad, sql)
    data = tmp_path / "other"
    with pytest.raises(BlokError) as refused:
        init_from_snapshot(data, bad, GENESIS, OTHER_ORG, demo.demo_node_key(OTHER_ORG).signing_key)
    assert refused.value.code == "bad_snapshot" and "audit" in refused.value.message
    assert not list(data.glob("ledger.sqlite*")) and not (data / "node.key").exists()
    # the good snapshot still works in the same directory
    init_from_snapshot(data, snap, GENESIS, OTHER_ORG, demo.demo_node_key(OTHER_ORG).signing_key)


def test_a_snapshot_of_another_chain_or_no_snapshot_is_refused(source: tuple[Path, Path], tmp_path: Path) -> None:
    _, snap = source
    other_genesis = demo.demo_genesis(time_ms=1_700_000_000_001)      # another consortium's block 0
    key = demo.demo_node_key(OTHER_ORG).signing_key
    with pytest.raises(BlokError) as wrong_chain:
        init_from_snapshot(tmp_path / "a", snap, other_genesis, OTHER_ORG, key)
    assert wrong_chain.value.code == "bad_snapshot" and "genesis" in wrong_chain.value.message
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(BlokError) as not_a_snapshot:
        init_from_snapshot(tmp_path / "b", junk, GENESIS, OTHER_ORG, key)
    assert not_a_snapshot.value.code == "bad_snapshot"
    with pytest.raises(BlokError) as missing:
        init_from_snapshot(tmp_path / "c", tmp_path / "none.sqlite", GENESIS, OTHER_ORG, key)
    assert missing.value.code == "no_snapshot"
    with pytest.raises(BlokError) as taken:
        init_from_snapshot(source[0], snap, GENESIS, SOURCE_ORG, demo.demo_node_key(SOURCE_ORG).signing_key)
    assert taken.value.code == "ledger_exists"


def test_snapshot_and_start_from_it_on_the_command_line(source: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = source
    snap, genesis, key = tmp_path / "cli.sqlite", tmp_path / "genesis.json", tmp_path / "node-key.json"
    genesis.write_text(json.dumps(GENESIS))
    write_keystore(key, demo.demo_node_key(OTHER_ORG).signing_key, demo.DEMO_PASSWORD, strength="interactive")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BIN, *args], capture_output=True, text=True, env=ENV, timeout=300)

    made = cli("snapshot", "--data", str(data), "--out", str(snap))
    assert made.returncode == 0 and "snapshot written" in made.stdout, made.stderr
    again = cli("snapshot", "--data", str(data), "--out", str(snap))
    assert again.returncode != 0 and "snapshot_exists" in again.stderr
    nowhere = cli("snapshot", "--data", str(data), "--out", str(tmp_path / "no such dir" / "x.sqlite"))
    assert nowhere.returncode == 1 and "snapshot_unwritable" in nowhere.stderr and "Traceback" not in nowhere.stderr
    started = cli("init", "--data", str(tmp_path / "other"), "--genesis", str(genesis), "--org", OTHER_ORG,
                  "--node-key", str(key), "--from-snapshot", str(snap))
    assert started.returncode == 0 and "every block re-executed" in started.stdout, started.stderr
    refused = cli("init", "--data", str(tmp_path / "third"), "--genesis", str(genesis), "--org", OTHER_ORG,
                  "--node-key", str(key), "--from-snapshot", str(tmp_path / "missing.sqlite"))
    assert refused.returncode != 0 and "no_snapshot" in refused.stderr


def test_a_joined_organisations_ledger_passes_the_audit(tmp_path: Path) -> None:
    """A node of an organisation admitted after genesis signs every block it commits with its own key,
    the ones before its admission too: the audit accepts a checkpoint signed by a node key the replay
    registered at any height (and, on the command line, the node's own key), and still refuses one
    signed by nobody it knows, or tampered with."""
    from nacl.signing import SigningKey

    from blokauto.contracts import governance
    from blokauto.contracts.registry import load_all
    from blokauto.crypto.keys import Signer, b64
    from blokauto.ledger.audit import audit
    from blokauto.ledger.store import Store
    from blokauto.node import genesis_known_keys, state_node_keys

    data, newcomer = tmp_path / "newcomer", SigningKey(hashlib.sha256(b"tests/newcomer-node").digest())
    name = f"{GENESIS['chain']}/newcomer"
    init_ledger(data, GENESIS, "newcomer", newcomer, joining=True)
    with Node(data) as node:
        assert anchor(node, "werkstatt-berg", 1, "before the admission")["status"] == "ok"
        proposer = demo.demo_admin("nordwerk")
        admin = Signer.deterministic("tests/newcomer-admin")
        org = {"id": "newcomer", "name": "Newcomer GmbH", "roles": ["workshop"], "admins": [admin.did],
               "node": {"name": name, "public_key": b64(bytes(newcomer.verify_key))}}
        proposal = node.submit(sign_tx(node.chain, "gov.propose", proposer, 1,
                                       {"action": {"kind": "admit_org", "org": org}})).result(timeout=30)
        assert proposal["status"] == "ok", proposal
        for voter in ("quickfix", "kba-registry", "hanse-bank", "alpina-insurance"):
            vote = node.submit(sign_tx(node.chain, "gov.vote", demo.demo_admin(voter), 1,
                                       {"proposal": proposal["tx"]})).result(timeout=30)
            assert vote["status"] == "ok", vote
        assert any(key.startswith(name + "+") for key in node.checkpoint_keys()), "not admitted"
        assert anchor(node, "werkstatt-berg", 2, "after the admission")["status"] == "ok"

    def run_audit(**kwargs: Any) -> Any:
        store = Store(data, random_access=False)
        try:
            return audit(store, load_all(), governance.apply_genesis, genesis_known_keys(GENESIS), **kwargs)
        finally:
            store.close()

    assert run_audit(keys_in_state=state_node_keys).ok
    unknown = run_audit()                     # the genesis keys alone: block 0 already fails
    assert not unknown.ok and unknown.first_bad_height == 0
    verified = subprocess.run([*BIN, "verify", "--data", str(data)], capture_output=True, text=True, env=ENV,
                              timeout=300)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
    tamper(data / "ledger.sqlite", "UPDATE blocks SET checkpoint = substr(checkpoint, 1, length(checkpoint) - 6) "
                                   "|| 'AAAA=' || char(10) WHERE height = 1")   # its signature's last bytes
    tampered = run_audit(keys_in_state=state_node_keys)
    assert not tampered.ok and tampered.first_bad_height == 1


def test_a_data_directory_whose_name_has_uri_characters(tmp_path: Path) -> None:
    """Readers open the database by URI: a '?', '#' or '%' in the directory name must not cut the path
    short (a reader then opened an empty database elsewhere, and a snapshot copied nothing)."""
    odd = tmp_path / "fleet ?#%20 data"
    init_ledger(odd / "node", GENESIS, SOURCE_ORG, demo.demo_node_key(SOURCE_ORG).signing_key)
    with Node(odd / "node") as node:
        assert anchor(node, "werkstatt-berg", 1, "odd directory")["status"] == "ok"
        assert node.store.reader().execute("SELECT count(*) FROM leaves").fetchone() == (1,)
        head = write_snapshot(odd / "node", odd / "snap #1.sqlite")
    assert head["log_size"] == 1
    assert init_from_snapshot(odd / "copy", odd / "snap #1.sqlite", GENESIS, OTHER_ORG,
                              demo.demo_node_key(OTHER_ORG).signing_key) == head
