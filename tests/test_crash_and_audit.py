"""The node as an operator sees it: real `blokauto serve` processes killed with SIGKILL while
committing, `blokauto verify` catching any changed byte, the CLI end to end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from blokauto import demo
from blokauto.client import Client
from blokauto.errors import BlokError

BIN = [sys.executable, "-m", "blokauto.cli.main"]
ENV = {**os.environ, "BLOKAUTO_PASSWORD": demo.DEMO_PASSWORD}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*BIN, *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"blokauto {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*BIN, "serve", "--data", str(data), "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.proc.kill()
        raise AssertionError("server did not start")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def demo_data(tmp_path: Path) -> Path:
    data = tmp_path / "node"
    cli("init", "--data", str(data), "--demo", "--fleet", "20")
    return data


def anchor_payload(i: int, tag: str) -> dict[str, str]:
    return {"digest": hashlib.sha256(f"{tag}-{i}".encode()).hexdigest(), "kind": "invoice"}


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_transaction(demo_data: Path) -> None:
    acknowledged: list[str] = []
    lock = threading.Lock()
    for round_no in range(3):
        server = Server(demo_data)
        stop = threading.Event()

        def submitter(org: str, server: Server = server, stop: threading.Event = stop,
                      round_no: int = round_no) -> None:
            client = Client(server.url, demo.demo_admin(org), timeout=10)
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    receipt = client.submit("notary.anchor", anchor_payload(i, f"{org}-{round_no}"))
                except BlokError:
                    return  # the server died under us: this one was never acknowledged
                with lock:
                    acknowledged.append(receipt["tx"])

        threads = [threading.Thread(target=submitter, args=(o["id"],)) for o in demo.DEMO_ORGS[:6]]
        for t in threads:
            t.start()
        target = len(acknowledged) + 60 + 37 * round_no
        deadline = time.monotonic() + 60
        while len(acknowledged) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill9()  # mid-stream: submitters have requests in flight
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acknowledged) >= 150
    conn = sqlite3.connect(demo_data / "ledger.sqlite")
    stored = {bytes(r[0]).hex() for r in conn.execute("SELECT txhash FROM leaves")}
    conn.close()
    missing = [h for h in acknowledged if h not in stored]
    assert not missing, f"{len(missing)} acknowledged transactions lost"
    result = cli("verify", "--data", str(demo_data))
    assert "OK" in result.stdout


def flip_byte(db: Path, table: str, key_col: str, value_col: str, where: str, offset: int) -> None:
    """Flip one bit of one stored value, keeping its SQLite type, as an attacker with file access would."""
    conn = sqlite3.connect(db)
    with conn:
        key, value = conn.execute(f"SELECT {key_col}, {value_col} FROM {table} WHERE {where} LIMIT 1").fetchone()
        raw = bytearray(value.encode() if isinstance(value, str) else value)
        raw[offset % len(raw)] ^= 0x01
        new: bytes | str = raw.decode() if isinstance(value, str) else bytes(raw)
        conn.execute(f"UPDATE {table} SET {value_col} = ? WHERE {key_col} = ?", (new, key))
    conn.close()


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from blokauto.node import Node, init_ledger

    data = tmp_path_factory.mktemp("audit") / "node"
    init_ledger(data, demo.demo_genesis(time_ms=1_700_000_000_000), demo.OPERATOR_ORG,
                demo.demo_node_key(demo.OPERATOR_ORG).signing_key)
    from blokauto.ledger.tx import sign_tx

    with Node(data) as node:
        for block in range(4):
            futures = []
            for k, org in enumerate(("werkstatt-berg", "quickfix", "alpina-insurance")):
                nonce = block * 2 + 1
                for j in range(2):
                    raw = sign_tx(node.chain, "notary.anchor", demo.demo_admin(org), nonce + j,
                                  anchor_payload(block * 10 + k * 3 + j, org))
                    futures.append(node.submit(raw))
            for f in futures:
                f.result(timeout=30)
        # a parts batch: its serials live in the consensus index, which the audit replays too
        from blokauto.contracts.parts import compute_batch_root

        maker = demo.demo_admin("kestrel-parts")
        node.submit(sign_tx(node.chain, "part.define", maker, 1, {
            "part_number": "AUD-1", "description": "audited part", "category": "other"})).result(timeout=30)
        ids = [f"AUD-{i}" for i in range(20)]
        receipt = node.submit(sign_tx(node.chain, "part.register_batch", maker, 2, {
            "part_number": "AUD-1", "lot": "L1", "plant": "P", "produced_ms": 1_700_000_000_000, "serials": ids,
            "root": compute_batch_root("AUD-1", ids, None)})).result(timeout=30)
        assert receipt["status"] == "ok", receipt
    return data


TAMPERS = {
    "block header": ("blocks", "height", "header", "height = 2", 40),
    "leaf byte": ("leaves", "idx", "leaf", "idx = 4", 100),
    "leaf signature": ("leaves", "idx", "leaf", "idx = 5", -20),
    "state row": ("state", "k", "v", "k LIKE 'notary/%'", 10),
    "nonce row": ("state", "k", "v", "k LIKE 'nonce/%'", 0),
    "state-tree node": ("smt_chunks", "chunk", "nodes", "chunk = 0", 2 * 113 + 30),
    "log node": ("log_nodes", "id", "hash", "id = 4 << 48", 0),  # levels below 4 are folded from leaves
    "transaction index": ("leaves", "idx", "txhash", "idx = 7", 3),
    "stored leaf hash": ("leaves", "idx", "lh", "idx = 6", 9),   # what proofs fold the low log levels from
    "checkpoint": ("blocks", "height", "checkpoint", "height = 3", 5),
    "consensus index": ("ix", "k", "v", "k = 'serial/AUD-7'", 3),
}


def test_verify_passes_on_an_untouched_ledger(populated: Path) -> None:
    result = cli("verify", "--data", str(populated))
    assert "OK" in result.stdout and "26 transactions" in result.stdout


@pytest.mark.parametrize("what", sorted(TAMPERS))
def test_verify_finds_any_changed_byte(populated: Path, tmp_path: Path, what: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(populated, copy)
    flip_byte(copy / "ledger.sqlite", *TAMPERS[what])
    result = cli("verify", "--data", str(copy), check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "INCONSISTENT from height" in result.stderr


def test_cli_keys_submit_and_offline_proof(demo_data: Path, tmp_path: Path) -> None:
    keyfile = tmp_path / "me.json"
    created = cli("keys", "new", "--out", str(keyfile), "--strength", "interactive")
    did = created.stdout.strip().splitlines()[-1]
    assert did.startswith("did:key:z")
    info = json.loads(cli("keys", "show", str(keyfile)).stdout)
    assert info["did"] == did and "box" not in info
    again = cli("keys", "new", "--out", str(keyfile), check=False)
    assert again.returncode == 1 and "keystore_exists" in again.stderr

    server = Server(demo_data)
    try:
        admin = str(demo_data / "keys" / "werkstatt-berg-admin.json")
        # a fresh key is nobody: refused with a clear code, exit 1
        refused = cli("submit", "--node", server.url, "--key", str(keyfile), "--type", "notary.anchor",
                      "--payload", json.dumps(anchor_payload(1, "cli")), check=False)
        assert refused.returncode == 1 and "forbidden" in refused.stderr
        # the admin admits it as a member, then it anchors
        added = cli("submit", "--node", server.url, "--key", admin, "--type", "org.add_member",
                    "--payload", json.dumps({"did": did, "roles": ["workshop"], "label": "front desk"}))
        assert json.loads(added.stdout)["status"] == "ok"
        done = json.loads(cli("submit", "--node", server.url, "--key", str(keyfile), "--type", "notary.anchor",
                              "--payload", json.dumps(anchor_payload(1, "cli"))).stdout)
        assert done["status"] == "ok"
        dup = cli("submit", "--node", server.url, "--key", str(keyfile), "--type", "notary.anchor",
                  "--payload", json.dumps(anchor_payload(1, "cli")), check=False)
        assert dup.returncode == 4 and "already_anchored" in dup.stderr
        proof_file = tmp_path / "proof.json"
        cli("tx", done["tx"], "--node", server.url, "--key", str(keyfile), "--out", str(proof_file))
        keys_file = tmp_path / "keys.txt"
        keys_file.write_text(httpx.get(f"{server.url}/v1/checkpoint/keys").text)
        state_file = tmp_path / "state.json"
        state_file.write_text(httpx.get(f"{server.url}/v1/state/id/key/{did}?proof=1").text)
    finally:
        server.stop()
    ok = cli("check-proof", str(proof_file), "--keys", str(keys_file), "--origin", demo.DEMO_CHAIN)
    assert "VALID" in ok.stdout and "notary.anchor" in ok.stdout
    ok = cli("check-proof", str(state_file), "--keys", str(keys_file))
    assert "VALID" in ok.stdout and did in ok.stdout
    proof = json.loads(proof_file.read_text())
    proof["leaf_index"] += 1
    proof_file.write_text(json.dumps(proof))
    bad = cli("check-proof", str(proof_file), "--keys", str(keys_file), check=False)
    assert bad.returncode == 1 and "error" in bad.stderr


def test_verify_beside_a_node_that_is_committing(demo_data: Path) -> None:
    server = Server(demo_data)
    stop = threading.Event()

    def submitter(org: str) -> None:
        client = Client(server.url, demo.demo_admin(org), timeout=10)
        i = 0
        while not stop.is_set():
            i += 1
            client.submit("notary.anchor", anchor_payload(i, f"live-{org}"))

    threads = [threading.Thread(target=submitter, args=(o["id"],)) for o in demo.DEMO_ORGS[:3]]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        for _ in range(2):  # the node commits blocks while each audit runs
            result = cli("verify", "--data", str(demo_data))
            assert "OK" in result.stdout
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.stop()
