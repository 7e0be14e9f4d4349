"""Proofs fetched over HTTP verify offline, and any tampering makes them fail."""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
from itertools import combinations_with_replacement
from typing import Any

import pytest

from blokauto.crypto.keys import Signer, b64, unb64
from blokauto.crypto.merkle import EMPTY_ROOT, verify_consistency
from blokauto.crypto.note import Checkpoint, open_checkpoint
from blokauto.errors import VerificationError
from blokauto.ledger.chain import Header, parse_block_extension
from blokauto.ledger.proofs import verify_consistency_object, verify_record_proof, verify_state_proof_object
from tests.conftest import Env, demo_admin, digest, envelope, sign_body

ADMIN = demo_admin("quickfix")


def keys_of(env: Env) -> list[str]:
    r = env.tc.get("/v1/checkpoint/keys")
    assert r.status_code == 200, r.text
    assert r.headers["x-checkpoint-quorum"] == "1"
    return [line for line in r.text.splitlines() if line]


def anchor(env: Env, label: str, nonce: int) -> dict[str, Any]:
    r = env.post(env.sign("notary.anchor", ADMIN, nonce, {"digest": digest(label), "kind": "invoice"}))
    assert r.status_code == 200, r.text
    receipt: dict[str, Any] = r.json()
    assert receipt["status"] == "ok"
    return receipt


def fails(fn: Any, *args: Any, **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as raised:
        fn(*args, **kwargs)
    return raised.value


def char_tampered(text: str) -> list[str]:
    """Every variant of ``text`` with exactly one character replaced by a different one."""
    out = []
    for i, ch in enumerate(text):
        new = "B" if ch == "A" else ("1" if ch == "0" else ("A" if ch.isalnum() else "x" if ch != "x" else "y"))
        out.append(text[:i] + new + text[i + 1:])
    return out


@pytest.fixture
def records(env: Env) -> dict[str, Any]:
    """Five anchored records, their full HTTP answers (with a member token) and the keys."""
    receipts = [anchor(env, f"doc {i}", i + 1) for i in range(5)]
    token = env.token(ADMIN)
    fetched = {}
    for receipt in receipts:
        r = env.tc.get(f"/v1/tx/{receipt['tx']}", headers=token)
        assert r.status_code == 200, r.text
        fetched[receipt["tx"]] = r.json()
    return {"receipts": receipts, "records": fetched, "keys": keys_of(env), "token": token}


# -- record proofs --------------------------------------------------------------------------------------


def test_record_proofs_verify_offline(env: Env, records: dict[str, Any]) -> None:
    keys = records["keys"]
    for receipt in records["receipts"]:
        record = records["records"][receipt["tx"]]
        proof = record["proof"]
        assert proof["tree_size"] == 5 and proof["leaf_index"] == receipt["leaf_index"]
        leaf = verify_record_proof(proof, keys, quorum=1, origin=env.chain)
        assert leaf == {"height": receipt["height"], "result": {"events": receipt["events"], "status": "ok"},
                        "tx": record["transaction"]}
        assert record["receipt"] == receipt
    fails(verify_record_proof, records["records"][records["receipts"][0]["tx"]]["proof"], keys,
          origin="blokauto.example/other")


def test_tampered_leaf_fails(records: dict[str, Any]) -> None:
    proof = records["records"][records["receipts"][2]["tx"]]["proof"]
    leaf = base64.b64decode(proof["leaf"])
    for i in range(len(leaf)):
        for flip in (0x01, 0x80):
            bad = bytearray(leaf)
            bad[i] ^= flip
            fails(verify_record_proof, {**proof, "leaf": b64(bytes(bad))}, records["keys"])
    for bad_leaf in ("", "!!!", proof["leaf"][:-4], b64(leaf + b" "), b64(leaf[:-1]), None, 5):
        fails(verify_record_proof, {**proof, "leaf": bad_leaf}, records["keys"])


def test_tampered_inclusion_hashes_fail(records: dict[str, Any]) -> None:
    keys = records["keys"]
    for record in records["records"].values():
        proof = record["proof"]
        path = proof["inclusion_proof"]
        assert path, "a tree of 5 leaves has a non-empty path for every leaf"
        for n, item in enumerate(path):
            raw = base64.b64decode(item)
            for i in range(len(raw)):
                bad = bytearray(raw)
                bad[i] ^= 0x04
                tampered = [*path[:n], b64(bytes(bad)), *path[n + 1:]]
                fails(verify_record_proof, {**proof, "inclusion_proof": tampered}, keys)
            # a different spelling of the same hash is refused too (canonical base64 only)
            respelled = item[:-2] + chr(ord(item[-2]) + 1) + "="
            fails(verify_record_proof, {**proof, "inclusion_proof": [*path[:n], respelled, *path[n + 1:]]}, keys)
        for tampered_path in (path[:-1], [*path, path[0]], list(reversed(path)) if len(path) > 1 else [],
                              [b64(bytes(32))] * len(path), None, "x"):
            fails(verify_record_proof, {**proof, "inclusion_proof": tampered_path}, keys)


def test_tampered_index_and_size_fail(records: dict[str, Any]) -> None:
    proof = records["records"][records["receipts"][1]["tx"]]["proof"]
    for field, values in {"leaf_index": [0, 2, 4, 5, -1, "1", None], "tree_size": [4, 6, 0, -5, "5"]}.items():
        for value in values:
            fails(verify_record_proof, {**proof, field: value}, records["keys"])


def test_tampered_checkpoint_text_or_signature_fails(env: Env, records: dict[str, Any]) -> None:
    proof = records["records"][records["receipts"][0]["tx"]]["proof"]
    note = proof["checkpoint"]
    variants = char_tampered(note)
    assert len(variants) > 150
    for bad_note in variants:
        fails(verify_record_proof, {**proof, "checkpoint": bad_note}, records["keys"], origin=env.chain)
    text, _, sig_block = note.partition("\n\n")
    for bad_note in (text + "\n", text + "\n\n", note + note, note.replace("\n\n", "\n"), "", None,
                     text + "\n\n" + sig_block.replace("— ", "- ")):
        fails(verify_record_proof, {**proof, "checkpoint": bad_note}, records["keys"])


def test_checkpoint_signed_by_an_outsider_fails(env: Env, records: dict[str, Any]) -> None:
    """A key under the operator's name but not in the consortium's list signs a forged tree head."""
    from blokauto.crypto.note import sign_checkpoint

    proof = records["records"][records["receipts"][0]["tx"]]["proof"]
    leaf = base64.b64decode(proof["leaf"])
    from blokauto.crypto.merkle import leaf_hash

    forged = Checkpoint(origin=env.chain, size=1, root=leaf_hash(leaf))
    note = sign_checkpoint(forged, f"{env.chain}/nordwerk", Signer.deterministic("tests/mallory").signing_key)
    forged_proof = {**proof, "leaf_index": 0, "tree_size": 1, "inclusion_proof": [], "checkpoint": note}
    assert fails(verify_record_proof, forged_proof, records["keys"]).code == "unverified_note"


# -- checkpoints ------------------------------------------------------------------------------------------


def test_checkpoint_note_opens_with_the_published_keys(env: Env, records: dict[str, Any]) -> None:
    note = env.tc.get("/v1/checkpoint").text
    keys = records["keys"]
    checkpoint, signers = open_checkpoint(note, keys, quorum=1, origin=env.chain)
    assert signers == [f"{env.chain}/nordwerk"]
    status = env.status()
    assert checkpoint.size == status["log_size"] == 5
    assert b64(checkpoint.root) == status["log_root"]
    height, block_hash = parse_block_extension(checkpoint.extensions) or (None, None)
    block = env.tc.get(f"/v1/blocks/{height}").json()
    assert height == status["height"] and b64(block_hash) == block["hash"] and block["checkpoint"] == note
    assert Header.from_json(block["header"]).hash() == block_hash

    assert fails(open_checkpoint, note, keys, quorum=1, origin="blokauto.example/other").code == "wrong_origin"
    assert fails(open_checkpoint, note, keys, quorum=2, origin=env.chain).code == "quorum_not_met"
    others = [k for k in keys if not k.startswith(f"{env.chain}/nordwerk+")]
    assert len(others) == len(keys) - 1
    assert fails(open_checkpoint, note, others, quorum=1).code == "unverified_note"


def test_consistency_between_every_pair_of_checkpoints(env: Env) -> None:
    keys = keys_of(env)
    notes = [env.tc.get("/v1/checkpoint").text]
    for i in range(20):
        anchor(env, f"consistency {i}", i + 1)
        notes.append(env.tc.get("/v1/checkpoint").text)
    checkpoints = [open_checkpoint(n, keys, quorum=1, origin=env.chain)[0] for n in notes]
    assert [c.size for c in checkpoints] == list(range(21))
    assert checkpoints[0].root == EMPTY_ROOT

    for old, new in combinations_with_replacement(checkpoints, 2):
        r = env.tc.get("/v1/proof/consistency", params={"from": old.size, "to": new.size})
        assert r.status_code == 200, r.text
        obj = r.json()
        assert (obj["from"], obj["to"]) == (old.size, new.size)
        path = [unb64(h, size=32) for h in obj["proof"]]
        verify_consistency(old.size, new.size, path, old.root, new.root)
        verify_consistency_object(obj, old, new)
        if path:
            for n in range(len(path)):
                bad = [*path]
                bad[n] = bytes(32)
                fails(verify_consistency, old.size, new.size, bad, old.root, new.root)
            fails(verify_consistency, old.size, new.size, path[:-1], old.root, new.root)
        if 0 < old.size < new.size:
            fails(verify_consistency, old.size, new.size, path, new.root, old.root)
            fails(verify_consistency_object, {**obj, "from": old.size - 1}, old, new)


# -- state proofs -----------------------------------------------------------------------------------------


def state_proof(env: Env, key: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = env.tc.get(f"/v1/state/{key}", params={"proof": "1"}, headers=headers or {})
    assert r.status_code == 200, r.text
    obj: dict[str, Any] = r.json()
    return obj


@pytest.mark.parametrize(("key", "expected"), [
    ("policy/checkpoint.quorum", 1),
    ("policy/title.registry_cosign", False),
    ("id/orgs", None),                    # checked below: the nine demo organisations
    (f"id/key/{ADMIN.did}", None),
])
def test_state_proofs_verify_offline(env: Env, records: dict[str, Any], key: str, expected: Any) -> None:
    obj = state_proof(env, key)
    proven_key, value = verify_state_proof_object(obj, records["keys"], 1, origin=env.chain)
    assert proven_key == key and value == obj["value"] and value is not None
    if expected is not None:
        assert value == expected
    assert obj["height"] == obj["header"]["height"] == env.status()["height"]


def test_state_proof_tampering_fails(env: Env, records: dict[str, Any]) -> None:
    keys = records["keys"]
    obj = state_proof(env, f"id/key/{ADMIN.did}")
    verify_state_proof_object(obj, keys, origin=env.chain)

    def tampered(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
        bad = copy.deepcopy(obj)
        target = bad
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return bad

    record = obj["value"]
    cases: list[tuple[tuple[Any, ...], Any]] = [
        (("value",), None),
        (("value",), {**record, "status": "revoked"}),
        (("value",), {**record, "roles": ["workshop", "insurer"]}),
        (("value",), {**record, "admin": False}),
        (("value",), {**record, "extra": 1}),
        (("value",), [record]),
        (("key",), f"id/key/{demo_admin('nordwerk').did}"),
        (("key",), 5),
        (("proof", "leaf"), None),
        (("proof", "siblings"), []),
        (("proof",), {}),
        (("checkpoint",), env.tc.get("/v1/blocks/0").json()["checkpoint"]),
        (("header",), env.tc.get("/v1/blocks/0").json()["header"]),
        (("header",), {}),
    ]
    for field, value in obj["header"].items():
        if isinstance(value, int):
            cases += [(("header", field), value + 1), (("header", field), value - 1)]
        else:
            cases.append((("header", field), value[:-4] + ("AAA=" if not value.endswith("AAA=") else "BBB=")))
    for sibling in range(len(obj["proof"]["siblings"])):
        raw = base64.b64decode(obj["proof"]["siblings"][sibling])
        cases.append((("proof", "siblings", sibling), b64(bytes([raw[0] ^ 1]) + raw[1:])))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for sibling, text in enumerate(obj["proof"]["siblings"]):
        # the same 32 bytes spelled differently (padding bits set), or with a line break: not canonical
        respelled = text[:-2] + alphabet[alphabet.index(text[-2]) ^ 1] + "="
        assert base64.b64decode(respelled) == base64.b64decode(text)
        cases += [(("proof", "siblings", sibling), respelled),
                  (("proof", "siblings", sibling), text[:20] + "\n" + text[20:])]
    for part in ("key_hash", "value_hash"):
        raw = base64.b64decode(obj["proof"]["leaf"][part])
        cases.append((("proof", "leaf", part), b64(raw[:-1] + bytes([raw[-1] ^ 1]))))
    for path, value in cases:
        fails(verify_state_proof_object, tampered(path, value), keys, origin=env.chain)
    for bad_note in char_tampered(obj["checkpoint"]):
        fails(verify_state_proof_object, tampered(("checkpoint",), bad_note), keys, origin=env.chain)


def test_state_proof_header_bytes_tampering_fails(env: Env, records: dict[str, Any]) -> None:
    obj = state_proof(env, "policy/checkpoint.quorum")
    encoded = json.dumps(obj["header"], sort_keys=True, separators=(",", ":")).encode()
    tried = 0
    for i in range(len(encoded)):
        bad = bytearray(encoded)
        bad[i] ^= 0x01
        try:
            header = json.loads(bytes(bad))
        except ValueError:
            continue
        if header == obj["header"]:
            continue
        tried += 1
        fails(verify_state_proof_object, {**obj, "header": header}, records["keys"], origin=env.chain)
    assert tried > 50


@pytest.mark.parametrize("change", ["extra_header_field", "height_as_string", "height_field"])
def test_state_proof_must_carry_the_committed_header(env: Env, records: dict[str, Any], change: str) -> None:
    obj = state_proof(env, "policy/checkpoint.quorum")
    bad = copy.deepcopy(obj)
    if change == "extra_header_field":
        bad["header"]["note"] = "signed by nobody"
    elif change == "height_as_string":
        bad["header"]["height"] = str(bad["header"]["height"])
    else:
        bad["height"] = obj["height"] + 100
    fails(verify_state_proof_object, bad, records["keys"], origin=env.chain)


def test_absent_key_is_proven_absent(env: Env, records: dict[str, Any]) -> None:
    for key in (f"id/key/{Signer.deterministic('tests/nobody').did}", "gov/proposal/" + "00" * 32, "policy/none"):
        obj = state_proof(env, key)
        assert obj["value"] is None
        assert verify_state_proof_object(obj, records["keys"], origin=env.chain) == (key, None)
        fails(verify_state_proof_object, {**obj, "value": 1}, records["keys"], origin=env.chain)
        fails(verify_state_proof_object, {**obj, "value": {"org": "quickfix"}}, records["keys"], origin=env.chain)
    # the state proof of a present key cannot be passed off as an absence proof of it
    present = state_proof(env, "policy/checkpoint.quorum")
    fails(verify_state_proof_object, {**present, "value": None}, records["keys"], origin=env.chain)


def test_absence_in_the_empty_tree_region(env: Env) -> None:
    """A fresh ledger (genesis only) proves absence too."""
    keys = keys_of(env)
    obj = state_proof(env, "nonce/" + ADMIN.did)
    assert obj["height"] == 0 and obj["value"] is None
    assert verify_state_proof_object(obj, keys, origin=env.chain) == ("nonce/" + ADMIN.did, None)


def test_member_only_state_proofs_need_a_token(env: Env, records: dict[str, Any]) -> None:
    key = f"notary/{digest('doc 3')}"
    r = env.tc.get(f"/v1/state/{key}", params={"proof": "1"})
    assert r.status_code == 401 and r.json()["code"] == "token_required"
    r = env.tc.get(f"/v1/state/{key}", params={"proof": "1"}, headers={"Authorization": "Bearer x.y"})
    assert r.status_code == 401 and r.json()["code"] == "bad_token"
    obj = state_proof(env, key, records["token"])
    proven_key, value = verify_state_proof_object(obj, records["keys"], origin=env.chain)
    assert proven_key == key and value["by"] == ADMIN.did and value["height"] == 4
    fails(verify_state_proof_object, {**obj, "value": {**value, "by": demo_admin("nordwerk").did}},
          records["keys"], origin=env.chain)
    absent = state_proof(env, f"notary/{digest('never anchored')}", records["token"])
    assert verify_state_proof_object(absent, records["keys"], origin=env.chain)[1] is None


def test_nonce_state_matches_the_log(env: Env, records: dict[str, Any]) -> None:
    obj = state_proof(env, f"nonce/{ADMIN.did}")
    assert verify_state_proof_object(obj, records["keys"], origin=env.chain) == (f"nonce/{ADMIN.did}", 5)


# -- records that break their own proofs ----------------------------------------------------------------


def test_every_committed_record_stays_readable_and_provable(env: Env) -> None:
    from blokauto.ledger.tx import build_body

    b = build_body(env.chain, "notary.anchor", ADMIN.did, 2**53, {"digest": digest("big nonce"), "kind": "x"})
    r = env.post(envelope(b, sign_body(b, [ADMIN])))
    if r.status_code == 400:   # refused at the door, writing nothing: then nothing can break below
        assert r.json()["code"] in {"bad_schema", "bad_encoding"}
        assert env.status()["log_size"] == 0
        return
    receipt = r.json()
    record = env.tc.get(f"/v1/tx/{receipt['tx']}", headers=env.token(ADMIN))
    assert record.status_code == 200, record.text
    verify_record_proof(record.json()["proof"], keys_of(env), origin=env.chain)


def test_bad_node_key_cannot_break_checkpoint_keys(env: Env) -> None:
    r = env.post(env.sign("org.set_node_key", ADMIN, 1, {"node": {"name": "quickfix-node", "public_key": "!" * 44}}))
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert (r.json()["status"], r.json()["code"]) == ("rejected", "bad_node_key")
    assert len(keys_of(env)) == 9
    assert state_proof(env, "id/node/quickfix")["value"]["name"] == "blokauto.example/demo/quickfix"


def test_node_key_must_be_32_bytes_of_canonical_base64(env: Env) -> None:
    for n, key in enumerate(["A" * 44, b64(bytes(32))[:-2] + "B=", "!" * 44], start=1):
        r = env.post(env.sign("org.set_node_key", ADMIN, n, {"node": {"name": "quickfix-node", "public_key": key}}))
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["code"]) == ("rejected", "bad_node_key")
    assert len(keys_of(env)) == 9


def test_store_folds_unstored_low_log_nodes_from_leaves(env: Env) -> None:
    """Log nodes below LOG_MIN_LEVEL are not stored; the store folds them from the leaves and
    must give exactly the hashes a full tree has, for every perfect subtree, across blocks."""
    from blokauto.crypto.merkle import leaf_hash
    from blokauto.ledger.log import LogAppender, node_id
    from blokauto.ledger.store import LOG_MIN_LEVEL

    for i in range(37):  # one block per transaction: ragged sizes everywhere
        anchor(env, f"fold {i}", i + 1)
    store = env.node.store
    size = env.node.ledger.head.log_size
    leaves = [leaf for _, _, leaf in store.iter_leaves(0, size)]
    full = dict(LogAppender().append([leaf_hash(leaf) for leaf in leaves]))
    wanted = [node_id(level, index) for level in range(LOG_MIN_LEVEL + 2) for index in range(size >> level)]
    assert store.get_log_nodes(wanted) == {i: full[i] for i in wanted}
    stored = {row[0] for row in store.writer.execute("SELECT id FROM log_nodes")}
    assert stored and all(i >> 48 >= LOG_MIN_LEVEL for i in stored)
    incomplete = node_id(LOG_MIN_LEVEL - 1, size >> (LOG_MIN_LEVEL - 1))  # its leaves are not all there
    assert store.get_log_nodes([incomplete]) == {}
    # a restarted appender resumes from folded nodes and reaches the same root
    assert LogAppender(size, store.get_log_nodes).root() == env.node.ledger.head.log_root


def test_prewarm_reads_the_whole_log_node_table(env: Env) -> None:
    """Node start reads the stored log nodes and the leaf-hash index once (into the OS page cache,
    for proofs on a ledger larger than memory): every stored hash, 32 bytes each; nothing changes."""
    for i in range(40):
        anchor(env, f"warm {i}", i + 1)
    store = env.node.store
    rows = store.writer.execute("SELECT count(*) FROM log_nodes").fetchone()[0]
    size = env.node.ledger.head.log_size
    root = env.node.ledger.head.log_root
    assert rows > 0 and store.prewarm(leaf_hashes=False) == 32 * rows
    assert store.prewarm() == 32 * (rows + size)           # and every leaf hash through the index
    assert env.node.ledger.head.log_root == root


def test_log_nodes_kept_in_memory_match_the_tree_as_it_grows(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upper log levels are kept in memory after the prewarm: every proof node read through
    that cache is the full tree's, also for subtrees completed after the cache was filled."""
    from blokauto.crypto.merkle import leaf_hash
    from blokauto.ledger import store as store_module
    from blokauto.ledger.log import LogAppender, node_id

    monkeypatch.setattr(store_module, "LOG_CACHE_MIN_LEVEL", store_module.LOG_MIN_LEVEL)
    store = env.node.store
    for i in range(21):
        anchor(env, f"cache {i}", i + 1)
    store.prewarm()
    kept = len(store._log_node_cache)
    assert kept == store.writer.execute("SELECT count(*) FROM log_nodes").fetchone()[0] > 0
    for i in range(21, 45):   # more blocks: nodes incomplete at the prewarm are complete now
        anchor(env, f"cache {i}", i + 1)
    size = env.node.ledger.head.log_size
    full = dict(LogAppender().append([leaf_hash(leaf) for _, _, leaf in store.iter_leaves(0, size)]))
    wanted = [node_id(level, index) for level in range(size.bit_length()) for index in range(size >> level)]
    assert store.get_log_nodes(wanted) == {i: full[i] for i in wanted}
    assert len(store._log_node_cache) > kept    # and those were kept as they were read


@pytest.mark.parametrize("slices", [1, 3, 16])
def test_prewarm_covers_every_key_range(env: Env, monkeypatch: pytest.MonkeyPatch, slices: int) -> None:
    """However the prewarm cuts the tables into ranges for its threads, it reads every stored hash
    exactly once."""
    from blokauto.ledger import store as store_module

    for i in range(45):
        anchor(env, f"ranges {i}", i + 1)
    monkeypatch.setattr(store_module, "PREWARM_SLICES", slices)
    store = env.node.store
    rows = store.writer.execute("SELECT count(*) FROM log_nodes").fetchone()[0]
    size = env.node.ledger.head.log_size
    assert store.prewarm(threads=3) == 32 * (rows + size)


def test_leaves_read_by_several_threads_are_the_leaves(env: Env) -> None:
    """A report reads its leaves fanned out over threads with their own connections: the same
    bytes as one query, for any set of committed indexes."""
    import random

    for i in range(30):
        anchor(env, f"fan {i}", i + 1)
    store = env.node.store
    size = env.node.ledger.head.log_size
    rng = random.Random(7)
    for count in (0, 1, 3, 4, 17, size):
        picked = rng.sample(range(size), count)
        assert store.read_committed_leaves(picked)() == store.get_leaves(picked)
    assert set(store.read_committed_leaves(list(range(size)))()) == set(range(size))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_serving_connections_are_advised_random_reads(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of a serving node asks the kernel for no read-ahead on the database file
    (a cold lookup must not wait behind megabytes of read-ahead); the audit's does not."""
    from blokauto.ledger.store import Store, _open_fds

    advised: list[int] = []

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert (offset, length, advice) == (0, 0, os.POSIX_FADV_RANDOM)
        advised.append(fd)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    db = env.node.data_dir / "ledger.sqlite"
    serving = Store(env.node.data_dir)
    try:
        serving.reader().execute("SELECT 1").fetchone()
        assert advised and set(advised) == _open_fds(db)   # the descriptors of both its connections
        assert all(os.readlink(f"/proc/self/fd/{fd}") == str(db.resolve()) for fd in advised)
    finally:
        serving.close()
    advised.clear()
    audit = Store(env.node.data_dir, random_access=False)
    try:
        audit.reader().execute("SELECT 1").fetchone()
        assert advised == []
    finally:
        audit.close()


def test_leaf_hash_index_is_built_for_a_ledger_written_before_it(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A ledger from before the covering index ``leaves_lh`` gets it on open, and proofs then fold
    the low log levels through it to the same hashes."""
    from blokauto.ledger.log import node_id
    from blokauto.ledger.store import Store

    for i in range(20):
        anchor(env, f"old {i}", i + 1)
    store = env.node.store
    size = env.node.ledger.head.log_size
    wanted = [node_id(level, index) for level in range(4) for index in range(size >> level)]
    before = store.get_log_nodes(wanted)
    store.writer.execute("DROP INDEX leaves_lh")
    with caplog.at_level("INFO", logger="blokauto.ledger.store"):
        reopened = Store(env.node.data_dir)
    try:
        assert "building the leaf-hash index" in caplog.text
        assert reopened.writer.execute("SELECT 1 FROM sqlite_master WHERE name = 'leaves_lh'").fetchone()
        assert reopened.get_log_nodes(wanted, reopened.writer) == before and len(before) == len(wanted)
    finally:
        reopened.close()
