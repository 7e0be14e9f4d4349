"""Tests for the state tree: roots against a naive reference, persistence, proofs, tampering."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokauto.errors import BlokError, InputError, StorageError, VerificationError
from blokauto.ledger.smt import (
    EMPTY,
    SparseMerkleTree,
    StateProof,
    leaf_hash,
    node_hash,
    verify_state_proof,
)

# --------------------------------------------------------------------------------------------
# An independent, naive reference: the compressed-SMT root straight from a plain dict.
# --------------------------------------------------------------------------------------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bit(key: bytes, depth: int) -> int:
    return (int.from_bytes(key, "big") >> (255 - depth)) & 1


def reference_root(state: Mapping[bytes, bytes], depth: int = 0) -> bytes:
    """Empty -> zeros, one key -> its leaf, else split on the bit at ``depth`` and recurse."""
    if not state:
        return bytes(32)
    if len(state) == 1:
        ((key, value),) = state.items()
        return _sha(b"\x00" + key + value)
    left = {k: v for k, v in state.items() if not _bit(k, depth)}
    right = {k: v for k, v in state.items() if _bit(k, depth)}
    return _sha(b"\x01" + reference_root(left, depth + 1) + reference_root(right, depth + 1))


def _key(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _h(label: str) -> bytes:
    return _sha(label.encode())


class Harness:
    """A tree over a dict store, as the ledger would use it over SQLite."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self.store: dict[int, bytes] = {}
        self.tree = SparseMerkleTree(self.store.__getitem__, cache_size=cache_size)

    def update(self, root: int | None, changes: Mapping[bytes, bytes | None]) -> tuple[int | None, bytes]:
        new_root, new_hash, nodes = self.tree.update(root, changes)
        ids = [i for i, _ in nodes]
        assert ids == sorted(ids) and not set(ids) & set(self.store), "fresh, increasing ids"
        for _, enc in nodes:
            assert len(enc) in (97, 113)
        self.store.update(nodes)
        return new_root, new_hash


# Keys: fully random, or crafted to share long prefixes (down to differing in the last bit only).
_BASES = [0, (1 << 256) - 1, 0x5A << 248, int.from_bytes(_h("base"), "big")]
_prefix_keys = st.builds(
    lambda base, low_bits, low: _key((base >> low_bits << low_bits) | (low % (1 << low_bits))),
    st.sampled_from(_BASES),
    st.sampled_from([1, 2, 3, 8, 12, 40]),
    st.integers(0, (1 << 40) - 1),
)
keys_st = st.one_of(st.binary(min_size=32, max_size=32), _prefix_keys)
values_st = st.one_of(st.none(), st.binary(min_size=32, max_size=32), st.sampled_from([_h("a"), _h("b")]))


@st.composite
def batches_st(draw: st.DrawFn) -> list[dict[bytes, bytes | None]]:
    """Batches over a shared key pool, so later batches update and delete earlier keys."""
    pool = draw(st.lists(keys_st, min_size=1, max_size=40, unique=True))
    n_batches = draw(st.integers(1, 6))
    batches = []
    for _ in range(n_batches):
        chosen = draw(st.lists(st.sampled_from(pool), max_size=len(pool), unique=True))
        batches.append({k: draw(values_st) for k in chosen})
    if draw(st.booleans()):
        batches.append(dict.fromkeys(pool))  # delete everything: back to the empty tree
    return batches


# --------------------------------------------------------------------------------------------
# Hashes and basics
# --------------------------------------------------------------------------------------------


def test_hash_definitions() -> None:
    k, v = _h("k"), _h("v")
    assert bytes(32) == EMPTY
    assert leaf_hash(k, v) == _sha(b"\x00" + k + v)
    assert node_hash(k, v) == _sha(b"\x01" + k + v)


def test_empty_tree() -> None:
    h = Harness()
    assert h.tree.root_hash(None) == EMPTY
    assert h.tree.get(None, _h("k")) is None
    proof = h.tree.prove(None, _h("k"))
    assert proof == StateProof((), None)
    verify_state_proof(EMPTY, _h("k"), None, proof)
    with pytest.raises(VerificationError):
        verify_state_proof(EMPTY, _h("k"), _h("v"), proof)
    assert h.tree.update(None, {}) == (None, EMPTY, [])
    assert h.tree.update(None, {_h("k"): None}) == (None, EMPTY, [])


def test_single_key_root_is_its_leaf_and_delete_returns_to_empty() -> None:
    h = Harness()
    k, v = _h("k"), _h("v")
    root, root_hash = h.update(None, {k: v})
    assert root_hash == leaf_hash(k, v) == h.tree.root_hash(root)
    assert h.tree.prove(root, k) == StateProof((), (k, v))
    assert h.tree.update(root, {k: None})[:2] == (None, EMPTY)


def test_noop_changes_write_nothing() -> None:
    h = Harness()
    k1, k2 = _key(1), _key(2)
    root, _ = h.update(None, {k1: _h("1"), k2: _h("2")})
    assert h.tree.update(root, {k1: _h("1"), _key(3): None}) == (root, h.tree.root_hash(root), [])
    assert h.tree.update(root, {}) == (root, h.tree.root_hash(root), [])


def test_delete_collapses_long_chain() -> None:
    """Two keys differing only in the last bit sit at depth 256; deleting one lifts the other."""
    h = Harness()
    a, b, c = _key(0), _key(1), _key(1 << 255)
    root, _ = h.update(None, {a: _h("a"), b: _h("b"), c: _h("c")})
    proof = h.tree.prove(root, a)
    assert len(proof.siblings) == 256
    verify_state_proof(h.tree.root_hash(root), a, _h("a"), proof)
    assert StateProof.from_json(proof.to_json()) == proof
    root2, root2_hash = h.update(root, {b: None})
    assert root2_hash == reference_root({a: _h("a"), c: _h("c")})
    assert len(h.tree.prove(root2, a).siblings) == 1
    root3, root3_hash = h.update(root2, {c: None})
    assert root3_hash == leaf_hash(a, _h("a")) == h.tree.root_hash(root3)


def test_batch_equals_one_by_one() -> None:
    h = Harness()
    changes = {_h(f"k{i}"): _h(f"v{i}") for i in range(300)}
    batch_root, batch_hash = h.update(None, changes)
    root: int | None = None
    for k, v in changes.items():
        root, _ = h.update(root, {k: v})
    assert h.tree.root_hash(root) == batch_hash == reference_root(changes)
    assert h.tree.root_hash(batch_root) == batch_hash


# --------------------------------------------------------------------------------------------
# Random batches against the reference; persistence of every old root
# --------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_st(), cache_size=st.sampled_from([2, 16, 100_000]))
def test_random_batches_match_reference_and_old_roots_persist(
    batches: list[dict[bytes, bytes | None]], cache_size: int
) -> None:
    h = Harness(cache_size=cache_size)
    model: dict[bytes, bytes] = {}
    versions: list[tuple[int | None, bytes, dict[bytes, bytes]]] = []
    root: int | None = None
    pool = {k for batch in batches for k in batch}
    for batch in batches:
        for k, v in batch.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        root, root_hash = h.update(root, batch)
        assert root_hash == reference_root(model)
        assert (root is None) == (not model)
        assert h.tree.cached_nodes() <= cache_size
        versions.append((root, root_hash, dict(model)))
    # Every version, old or new, is still readable and provable, also from a fresh cache.
    fresh = SparseMerkleTree(h.store.__getitem__, next_id=h.tree.next_id, cache_size=cache_size)
    for tree in (h.tree, fresh):
        for old_root, old_hash, old_model in versions:
            assert tree.root_hash(old_root) == old_hash
            for k in pool:
                assert tree.get(old_root, k) == old_model.get(k)
                verify_state_proof(old_hash, k, old_model.get(k), tree.prove(old_root, k))


@settings(max_examples=60, deadline=None)
@given(state=st.dictionaries(keys_st, st.binary(min_size=32, max_size=32), max_size=30), probe=keys_st)
def test_proofs_verify_and_reject_wrong_claims(state: dict[bytes, bytes], probe: bytes) -> None:
    h = Harness()
    root, root_hash = h.update(None, state)
    other_value = _h("something else")
    for k in [*state, probe]:
        value = state.get(k)
        proof = h.tree.prove(root, k)
        verify_state_proof(root_hash, k, value, proof)
        assert StateProof.from_json(proof.to_json()) == proof
        # The wrong claim about the same key fails.
        wrong = other_value if value is None or value != other_value else _h("x")
        with pytest.raises(VerificationError):
            verify_state_proof(root_hash, k, wrong, proof)
        if value is not None:
            with pytest.raises(VerificationError):
                verify_state_proof(root_hash, k, None, proof)
        # The same proof does not speak for a different key, unless it ends at that key's leaf
        # (then it is that key's inclusion proof too).
        for other in state:
            if other == k:
                continue
            if proof.leaf is not None and proof.leaf[0] == other:
                verify_state_proof(root_hash, other, state[other], proof)
            else:
                with pytest.raises(VerificationError):
                    verify_state_proof(root_hash, other, state[other], proof)
        # Nor against a different root.
        if root_hash != EMPTY:
            with pytest.raises(VerificationError):
                verify_state_proof(_h("other root"), k, value, proof)


# --------------------------------------------------------------------------------------------
# Tampered proofs
# --------------------------------------------------------------------------------------------


@pytest.fixture
def populated() -> tuple[Harness, int | None, bytes, dict[bytes, bytes]]:
    h = Harness()
    state = {_h(f"key{i}"): _h(f"value{i}") for i in range(200)}
    root, root_hash = h.update(None, state)
    return h, root, root_hash, state


def _tamper_cases(proof: StateProof) -> list[StateProof]:
    cases = []
    for i in range(len(proof.siblings)):
        s = bytearray(proof.siblings[i])
        s[i % 32] ^= 0x01
        cases.append(StateProof((*proof.siblings[:i], bytes(s), *proof.siblings[i + 1 :]), proof.leaf))
    cases.append(StateProof(proof.siblings[:-1], proof.leaf))  # truncated
    cases.append(StateProof(proof.siblings[1:], proof.leaf))  # top dropped
    cases.append(StateProof((*proof.siblings, EMPTY), proof.leaf))  # extended
    cases.append(StateProof((EMPTY, *proof.siblings), proof.leaf))
    return cases


def test_tampered_inclusion_proofs_fail(populated: tuple[Harness, int | None, bytes, dict[bytes, bytes]]) -> None:
    h, root, root_hash, state = populated
    for k, v in list(state.items())[:20]:
        proof = h.tree.prove(root, k)
        assert proof.leaf == (k, v)
        for bad in _tamper_cases(proof):
            with pytest.raises(VerificationError):
                verify_state_proof(root_hash, k, v, bad)
        with pytest.raises(VerificationError):  # pretend the path ends empty
            verify_state_proof(root_hash, k, None, StateProof(proof.siblings, None))
        with pytest.raises(VerificationError):  # swap in another value in the leaf itself
            verify_state_proof(root_hash, k, _h("x"), StateProof(proof.siblings, (k, _h("x"))))


def test_tampered_absence_proofs_fail(populated: tuple[Harness, int | None, bytes, dict[bytes, bytes]]) -> None:
    h, root, root_hash, state = populated
    present = next(iter(state))
    for i in range(20):
        k = _h(f"absent{i}")
        proof = h.tree.prove(root, k)
        verify_state_proof(root_hash, k, None, proof)
        for bad in _tamper_cases(proof):
            with pytest.raises(VerificationError):
                verify_state_proof(root_hash, k, None, bad)
        # A leaf that does not share the path cannot prove absence, even with matching siblings.
        with pytest.raises(VerificationError):
            verify_state_proof(root_hash, k, None, StateProof(proof.siblings, (present, state[present])))


def test_absence_proof_via_neighbour_leaf_checks_prefix() -> None:
    h = Harness()
    a, b = _key(0b00 << 254), _key(0b01 << 254)
    root, root_hash = h.update(None, {a: _h("a"), b: _h("b")})
    probe = _key((0b01 << 254) | 1)  # shares b's first 255 bits, so the path ends at b's leaf
    proof = h.tree.prove(root, probe)
    assert proof.leaf == (b, _h("b"))
    verify_state_proof(root_hash, probe, None, proof)
    with pytest.raises(VerificationError):
        verify_state_proof(root_hash, probe, _h("b"), proof)


def test_verify_rejects_malformed_arguments() -> None:
    proof = StateProof((), None)
    for args in [
        (b"short", _h("k"), None, proof),
        (EMPTY, b"short", None, proof),
        (EMPTY, _h("k"), b"short", proof),
        (EMPTY, _h("k"), None, StateProof((b"short",), None)),
        (EMPTY, _h("k"), None, StateProof((EMPTY,) * 257, None)),
        (EMPTY, _h("k"), None, StateProof((), (b"k", b"v"))),
    ]:
        with pytest.raises(VerificationError):
            verify_state_proof(*args)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def test_json_shape() -> None:
    proof = StateProof((_h("s1"), _h("s2")), (_h("k"), _h("v")))
    obj = proof.to_json()
    assert obj == {
        "siblings": [base64.b64encode(_h("s1")).decode(), base64.b64encode(_h("s2")).decode()],
        "leaf": {"key_hash": base64.b64encode(_h("k")).decode(), "value_hash": base64.b64encode(_h("v")).decode()},
    }
    assert StateProof.from_json(obj) == proof
    assert StateProof((), None).to_json() == {"siblings": [], "leaf": None}


@given(
    siblings=st.lists(st.binary(min_size=32, max_size=32), max_size=256),
    leaf=st.none() | st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)),
)
def test_json_round_trip(siblings: list[bytes], leaf: tuple[bytes, bytes] | None) -> None:
    proof = StateProof(tuple(siblings), leaf)
    assert StateProof.from_json(proof.to_json()) == proof


_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "proof",
        {},
        {"siblings": []},
        {"leaf": None},
        {"siblings": [], "leaf": None, "extra": 1},
        {"siblings": None, "leaf": None},
        {"siblings": _B64, "leaf": None},
        {"siblings": [_B64] * 257, "leaf": None},
        {"siblings": [1], "leaf": None},
        {"siblings": [_B64[:-4]], "leaf": None},  # 30 bytes... wrong length
        {"siblings": [base64.b64encode(bytes(33)).decode()], "leaf": None},
        {"siblings": ["not base64!"], "leaf": None},
        {"siblings": [_B64.rstrip("=")], "leaf": None},  # missing padding
        {"siblings": [_B64 + "\n"], "leaf": None},
        {"siblings": [_B64[:-2] + "B="], "leaf": None},  # same bytes, non-canonical spelling
        {"siblings": ["é" * 44], "leaf": None},
        {"siblings": [], "leaf": []},
        {"siblings": [], "leaf": {"key_hash": _B64}},
        {"siblings": [], "leaf": {"key_hash": _B64, "value_hash": None}},
        {"siblings": [], "leaf": {"key_hash": _B64, "value_hash": _B64, "x": _B64}},
        {"siblings": [], "leaf": [_B64, _B64]},
    ],
)
def test_from_json_rejects_malformed(obj: object) -> None:
    with pytest.raises(VerificationError):
        StateProof.from_json(obj)


# --------------------------------------------------------------------------------------------
# Storage failures, caching, ids, input checks
# --------------------------------------------------------------------------------------------


def _small_tree() -> tuple[Harness, int | None, dict[bytes, bytes]]:
    h = Harness(cache_size=2)
    state = {_h(f"k{i}"): _h(f"v{i}") for i in range(50)}
    root, _ = h.update(None, state)
    h.tree.clear_cache()
    return h, root, state


def test_missing_node_is_storage_error() -> None:
    h, root, state = _small_tree()
    assert root is not None
    del h.store[root - 1]  # the last child written before the root
    with pytest.raises(StorageError):
        for k in state:
            h.tree.prove(root, k)


def test_corrupt_node_is_storage_error() -> None:
    h, root, state = _small_tree()
    victim = next(i for i, enc in h.store.items() if enc[0] == 0)
    enc = bytearray(h.store[victim])
    enc[40] ^= 0xFF  # flip a byte of the leaf's value_hash
    h.store[victim] = bytes(enc)
    with pytest.raises(StorageError, match="corrupt"):
        for k in state:
            h.tree.get(root, k)
    h.store[victim] = b"\x07" + bytes(96)
    h.tree.clear_cache()
    with pytest.raises(StorageError, match="corrupt"):
        h.tree.update(root, {k: None for k in state})


def test_swapped_node_is_storage_error() -> None:
    h, root, state = _small_tree()
    leaves = [i for i, enc in h.store.items() if enc[0] == 0]
    h.store[leaves[0]], h.store[leaves[1]] = h.store[leaves[1]], h.store[leaves[0]]
    with pytest.raises(StorageError, match="does not match"):
        for k in state:
            h.tree.update(root, {k: _h("new")})
    assert issubclass(StorageError, BlokError)


def test_failed_update_never_reuses_ids() -> None:
    h, root, _ = _small_tree()
    h.store.clear()
    h.tree.clear_cache()
    start = h.tree.next_id
    with pytest.raises(StorageError):
        h.tree.update(root, {_h("new"): _h("v")})
    assert h.tree.next_id >= start


def test_cache_is_bounded_and_reads_go_to_storage() -> None:
    reads: list[int] = []
    store: dict[int, bytes] = {}

    def load(node_id: int) -> bytes:
        reads.append(node_id)
        return store[node_id]

    tree = SparseMerkleTree(load, cache_size=100)
    root: int | None = None
    for b in range(10):
        root, _, nodes = tree.update(root, {_h(f"{b}-{i}"): _h("v") for i in range(100)})
        store.update(nodes)
        assert tree.cached_nodes() <= 100
    assert reads, "a small cache must fall back to storage"
    reads.clear()
    tree.get(root, _h("0-0"))
    tree.get(root, _h("0-0"))
    path_reads = len(reads)
    tree.get(root, _h("0-0"))
    assert len(reads) == path_reads, "a repeated read is served from the cache"


def test_next_id_and_rollback() -> None:
    h = Harness()
    tree = SparseMerkleTree(h.store.__getitem__, next_id=1000)
    root, _, nodes = tree.update(None, {_h("a"): _h("1"), _h("b"): _h("2")})
    assert [i for i, _ in nodes] == [1000, 1001, 1002]
    assert tree.next_id == 1003
    h.store.update(nodes)
    _, _, dropped = tree.update(root, {_h("c"): _h("3")})
    tree.rollback(1003)
    assert tree.next_id == 1003
    root2, root2_hash, nodes2 = tree.update(root, {_h("c"): _h("4")})
    assert nodes2[0][0] == 1003 and nodes2 != dropped
    h.store.update(nodes2)
    assert root2_hash == reference_root({_h("a"): _h("1"), _h("b"): _h("2"), _h("c"): _h("4")})
    assert tree.get(root2, _h("c")) == _h("4")
    with pytest.raises(InputError):
        tree.rollback(tree.next_id + 1)


def test_bad_inputs_rejected() -> None:
    empty: dict[int, bytes] = {}
    tree = SparseMerkleTree(empty.__getitem__)
    with pytest.raises(InputError):
        tree.update(None, {b"short": _h("v")})
    with pytest.raises(InputError):
        tree.update(None, {_h("k"): b"short"})
    with pytest.raises(InputError):
        tree.get(None, b"short")
    with pytest.raises(InputError):
        tree.prove(None, "k" * 32)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        SparseMerkleTree(empty.__getitem__, next_id=0)
