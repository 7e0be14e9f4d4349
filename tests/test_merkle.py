"""Tests for the RFC 6962 Merkle log: shared vectors, generator/verifier agreement, tamper rejection.

Generation (blokauto.ledger.log over a dict store) and verification (blokauto.crypto.merkle) are
checked against the shared RFC 6962 vectors and against compute_root, the plain MTH recursion,
so neither side is only tested against itself.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from blokauto.crypto.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    batch_root,
    compute_root,
    inclusion_path,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    tree_levels,
    verify_consistency,
    verify_inclusion,
)
from blokauto.errors import InputError, StorageError, VerificationError
from blokauto.ledger.log import (
    LogAppender,
    _range_nodes,
    consistency_proof,
    inclusion_proof,
    node_id,
    root_at,
)

VECTORS_PATH = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "rfc6962.json"
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Store:
    """A dict-backed node table whose read_nodes counts calls, to pin "one batched read per proof"."""

    def __init__(self, rows: Iterable[tuple[int, bytes]] = ()) -> None:
        self.nodes: dict[int, bytes] = dict(rows)
        self.calls = 0

    def read_nodes(self, ids: Sequence[int]) -> Mapping[int, bytes]:
        self.calls += 1
        return {i: self.nodes[i] for i in ids if i in self.nodes}


def flip_bit(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# A few thousand distinct leaves with a ragged size, built once and shared by the properties.
N = 2**11 + 2**10 + 37
LEAVES = [leaf_hash(i.to_bytes(8, "big")) for i in range(N)]
BIG = Store(LogAppender().append(LEAVES))


@functools.cache
def ref_root(size: int) -> bytes:
    return compute_root(LEAVES[:size])


# --- shared vectors ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return data


@pytest.fixture(scope="module")
def vector_store(vectors: dict[str, Any]) -> Store:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in vectors["leaves_hex"]]
    return Store(LogAppender().append(leaves))


def test_vector_roots(vectors: dict[str, Any], vector_store: Store) -> None:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in vectors["leaves_hex"]]
    appender = LogAppender()
    store = Store()
    assert sorted(int(k) for k in vectors["roots"]) == list(range(9))
    for size in range(9):
        if size:
            store.nodes.update(appender.append([leaves[size - 1]]))
        want = bytes.fromhex(vectors["roots"][str(size)])
        assert appender.size == size
        assert appender.root() == want
        assert compute_root(leaves[:size]) == want
        assert root_at(store.read_nodes, size) == want
        assert root_at(vector_store.read_nodes, size) == want
    assert bytes.fromhex(vectors["roots"]["0"]) == EMPTY_ROOT


def test_vector_inclusion(vectors: dict[str, Any], vector_store: Store) -> None:
    leaves = [leaf_hash(bytes.fromhex(x)) for x in vectors["leaves_hex"]]
    cases = vectors["inclusion"]
    assert {(c["leaf_index"], c["tree_size"]) for c in cases} == {(m, n) for n in range(1, 9) for m in range(n)}
    for case in cases:
        index, size = case["leaf_index"], case["tree_size"]
        want = [bytes.fromhex(h) for h in case["path"]]
        assert inclusion_proof(vector_store.read_nodes, index, size) == want, (index, size)
        root = bytes.fromhex(vectors["roots"][str(size)])
        verify_inclusion(index, size, leaves[index], want, root)
        assert root_from_inclusion_proof(index, size, leaves[index], want) == root


def test_vector_consistency(vectors: dict[str, Any], vector_store: Store) -> None:
    cases = vectors["consistency"]
    assert {(c["from"], c["to"]) for c in cases} == {(m, n) for n in range(1, 9) for m in range(1, n + 1)}
    for case in cases:
        size1, size2 = case["from"], case["to"]
        want = [bytes.fromhex(h) for h in case["proof"]]
        assert consistency_proof(vector_store.read_nodes, size1, size2) == want, (size1, size2)
        root1 = bytes.fromhex(vectors["roots"][str(size1)])
        root2 = bytes.fromhex(vectors["roots"][str(size2)])
        verify_consistency(size1, size2, want, root1, root2)


# --- verifier edge cases -----------------------------------------------------------------------


def test_hash_functions() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert len(node_hash(EMPTY_ROOT, EMPTY_ROOT)) == HASH_SIZE
    assert node_hash(LEAVES[0], LEAVES[1]) != node_hash(LEAVES[1], LEAVES[0])


def test_consistency_trivial_cases() -> None:
    r5 = ref_root(5)
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, [], EMPTY_ROOT, r5)
    verify_consistency(5, 5, [], r5, r5)
    with pytest.raises(VerificationError):
        verify_consistency(0, 5, [LEAVES[0]], EMPTY_ROOT, r5)  # size1 == 0 takes only an empty proof
    with pytest.raises(VerificationError):
        verify_consistency(0, 5, [], r5, r5)  # a size-0 tree has exactly one root
    with pytest.raises(VerificationError):
        verify_consistency(0, 0, [], EMPTY_ROOT, r5)
    with pytest.raises(VerificationError):
        verify_consistency(5, 5, [r5], r5, r5)
    with pytest.raises(VerificationError):
        verify_consistency(5, 5, [], r5, ref_root(6))
    with pytest.raises(VerificationError):
        verify_consistency(6, 5, [], ref_root(6), r5)
    with pytest.raises(VerificationError):
        verify_consistency(4, 5, [], ref_root(4), r5)  # size1 < size2 needs a non-empty proof


@pytest.mark.parametrize(
    ("index", "size", "leaf", "proof"),
    [
        (0, 0, LEAVES[0], []),  # empty tree has no leaves
        (3, 3, LEAVES[3], [LEAVES[0]] * 2),  # index == size
        (-1, 3, LEAVES[0], [LEAVES[0]] * 2),
        (0, -1, LEAVES[0], []),
        (True, 3, LEAVES[1], [LEAVES[0]] * 2),  # bools are not indexes
        (0, 3, LEAVES[0][:31], [LEAVES[1], LEAVES[2]]),  # short leaf hash
        (0, 3, LEAVES[0], [LEAVES[1], LEAVES[2] + b"\x00"]),  # long proof hash
        (0, 3, LEAVES[0], [LEAVES[1], "ab" * 32]),  # not bytes
        (0, 3, LEAVES[0], [LEAVES[1]] * 1000),  # length is checked before any chaining
        (0, 2**64 - 1, LEAVES[0], []),
    ],
)
def test_inclusion_rejects_malformed(index: int, size: int, leaf: bytes, proof: list[Any]) -> None:
    with pytest.raises(VerificationError):
        root_from_inclusion_proof(index, size, leaf, proof)


def test_verifiers_reject_bad_root_sizes() -> None:
    proof = inclusion_proof(BIG.read_nodes, 1, 3)
    with pytest.raises(VerificationError):
        verify_inclusion(1, 3, LEAVES[1], proof, ref_root(3)[:16])
    cproof = consistency_proof(BIG.read_nodes, 3, 7)
    with pytest.raises(VerificationError):
        verify_consistency(3, 7, cproof, ref_root(3) + b"\x00", ref_root(7))
    with pytest.raises(VerificationError):
        verify_consistency(3, 7, cproof, ref_root(3), b"")


def test_compute_root_rejects_bad_leaf() -> None:
    with pytest.raises(InputError):
        compute_root([LEAVES[0], b"short"])


# --- generator argument checking and storage failures --------------------------------------------


def test_node_id_layout() -> None:
    assert node_id(0, 5) == 5
    assert node_id(1, 0) == 1 << 48
    assert node_id(3, 7) == (3 << 48) | 7
    assert node_id(48, 0) == 48 << 48
    for level, index in [(-1, 0), (0, -1), (0, 2**48), (1, 2**47), (49, 0)]:
        with pytest.raises(InputError):
            node_id(level, index)


def test_range_nodes_cover_any_range_with_aligned_perfect_subtrees() -> None:
    # Callers only pass aligned starts today; the general case keeps the helper safe to reuse.
    for begin in range(70):
        for end in range(begin, 70):
            nodes = _range_nodes(begin, end)
            pos = begin
            for level, index in nodes:
                assert index << level == pos
                pos += 1 << level
            assert pos == end
            assert len(nodes) <= 2 * max(1, (end - begin).bit_length())


def test_generator_rejects_invalid_arguments() -> None:
    read = BIG.read_nodes
    calls: list[Callable[[], object]] = [
        lambda: inclusion_proof(read, 5, 5),
        lambda: inclusion_proof(read, -1, 5),
        lambda: inclusion_proof(read, 0, 0),
        lambda: consistency_proof(read, 6, 5),
        lambda: consistency_proof(read, -1, 5),
        lambda: root_at(read, -1),
        lambda: root_at(read, N + 1, stored_size=N),
        lambda: inclusion_proof(read, 0, N + 1, stored_size=N),
        lambda: consistency_proof(read, 1, N + 1, stored_size=N),
    ]
    for call in calls:
        with pytest.raises(InputError):
            call()


def test_missing_nodes_raise_storage_error() -> None:
    # Without stored_size the generator cannot tell "too big" from "lost rows": both are missing ids.
    with pytest.raises(StorageError):
        root_at(BIG.read_nodes, N + 1)
    with pytest.raises(StorageError):
        inclusion_proof(BIG.read_nodes, 0, N + 1)
    with pytest.raises(StorageError):
        LogAppender(N + 1, BIG.read_nodes)
    holed = Store(BIG.nodes.items())
    del holed.nodes[node_id(0, 1)]
    with pytest.raises(StorageError):
        inclusion_proof(holed.read_nodes, 0, 4)
    corrupt = Store(BIG.nodes.items())
    corrupt.nodes[node_id(0, 1)] = b"\x00" * 31
    with pytest.raises(StorageError):
        inclusion_proof(corrupt.read_nodes, 0, 4)


def test_restore_needs_reader() -> None:
    with pytest.raises(InputError):
        LogAppender(5)
    with pytest.raises(InputError):
        LogAppender(-1)


def test_bad_batch_leaves_appender_untouched() -> None:
    appender = LogAppender()
    appender.append(LEAVES[:5])
    root = appender.root()
    for bad in [b"\x00" * 31, bytearray(32), "00" * 32]:
        with pytest.raises(InputError):
            appender.append([LEAVES[5], bad, LEAVES[6]])  # type: ignore[list-item]
        assert appender.size == 5
        assert appender.root() == root
    assert appender.append([]) == []


def test_appended_rows_are_exactly_the_perfect_subtrees() -> None:
    size = 300
    rows = LogAppender().append(LEAVES[:size])
    assert len(rows) == 2 * size - size.bit_count()
    ids = [i for i, _ in rows]
    assert len(set(ids)) == len(ids)
    for nid, h in rows:
        level, index = nid >> 48, nid & (2**48 - 1)
        begin, end = index << level, (index + 1) << level
        assert end <= size
        assert h == compute_root(LEAVES[begin:end])


# --- properties ----------------------------------------------------------------------------------


@PROPS
@given(size=st.integers(0, N))
def test_root_at_matches_reference(size: int) -> None:
    before = BIG.calls
    assert root_at(BIG.read_nodes, size, stored_size=N) == ref_root(size)
    assert BIG.calls - before == (1 if size else 0)


@PROPS
@given(data=st.data(), size=st.integers(1, N))
def test_inclusion_proofs_verify(data: st.DataObject, size: int) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    before = BIG.calls
    proof = inclusion_proof(BIG.read_nodes, index, size)
    assert BIG.calls - before <= 1
    verify_inclusion(index, size, LEAVES[index], proof, ref_root(size))


@PROPS
@given(data=st.data(), size2=st.integers(0, N))
def test_consistency_proofs_verify(data: st.DataObject, size2: int) -> None:
    size1 = data.draw(st.integers(0, size2), label="size1")
    before = BIG.calls
    proof = consistency_proof(BIG.read_nodes, size1, size2)
    assert BIG.calls - before <= 1
    root1 = ref_root(size1)
    verify_consistency(size1, size2, proof, root1, ref_root(size2))


@PROPS
@given(
    size=st.integers(0, 2000),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_batch_splits_do_not_matter(size: int, cuts: list[int]) -> None:
    one = LogAppender()
    want = one.append(LEAVES[:size])
    split = LogAppender()
    got: list[tuple[int, bytes]] = []
    bounds = [0, *sorted(c for c in cuts if c <= size), size]
    for lo, hi in itertools.pairwise(bounds):
        got.extend(split.append(LEAVES[lo:hi]))
    assert got == want
    assert split.size == one.size == size
    assert split.root() == one.root() == ref_root(size)


@PROPS
@given(first=st.integers(0, 1500), more=st.integers(0, 1500))
def test_restore_then_append(first: int, more: int) -> None:
    original = LogAppender()
    stored = Store(original.append(LEAVES[:first]))
    tail = original.append(LEAVES[first : first + more])
    restored = LogAppender(first, stored.read_nodes)
    assert stored.calls == (1 if first else 0)
    assert restored.size == first
    assert restored.root() == ref_root(first)
    assert restored.append(LEAVES[first : first + more]) == tail
    assert restored.root() == original.root() == ref_root(first + more)


def _inclusion_case(data: st.DataObject) -> tuple[int, int, list[bytes]]:
    size = data.draw(st.integers(2, N), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    return index, size, inclusion_proof(BIG.read_nodes, index, size)


@PROPS
@given(data=st.data())
def test_inclusion_rejects_tampering(data: st.DataObject) -> None:
    index, size, proof = _inclusion_case(data)
    root = ref_root(size)
    leaf = LEAVES[index]
    with pytest.raises(VerificationError):  # wrong root
        verify_inclusion(index, size, leaf, proof, flip_bit(root, data.draw(st.integers(0, 255))))
    with pytest.raises(VerificationError):  # wrong leaf
        verify_inclusion(index, size, flip_bit(leaf, data.draw(st.integers(0, 255))), proof, root)
    with pytest.raises(VerificationError):  # extended
        verify_inclusion(index, size, leaf, [*proof, LEAVES[0]], root)
    if proof:
        pos = data.draw(st.integers(0, len(proof) - 1), label="pos")
        bad = list(proof)
        bad[pos] = flip_bit(bad[pos], data.draw(st.integers(0, 255), label="bit"))
        with pytest.raises(VerificationError):  # flipped bit
            verify_inclusion(index, size, leaf, bad, root)
        with pytest.raises(VerificationError):  # truncated
            verify_inclusion(index, size, leaf, proof[:-1], root)
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other index")
    with pytest.raises(VerificationError):  # wrong index, same leaf and proof
        verify_inclusion(other, size, leaf, proof, root)


@PROPS
@given(data=st.data())
def test_inclusion_rejects_wrong_size(data: st.DataObject) -> None:
    # A proof alone does not pin the size: (0, 3) and (0, 4) chain identically. What must fail is
    # passing it off as a proof for another (size, root) pair, i.e. another signed checkpoint.
    index, size, proof = _inclusion_case(data)
    other = data.draw(st.integers(index + 1, N), label="other size")
    assume(other != size)
    assume(inclusion_proof(BIG.read_nodes, index, other) != proof)
    with pytest.raises(VerificationError):
        verify_inclusion(index, other, LEAVES[index], proof, ref_root(other))


@PROPS
@given(data=st.data())
def test_consistency_rejects_tampering(data: st.DataObject) -> None:
    size2 = data.draw(st.integers(2, N), label="size2")
    size1 = data.draw(st.integers(1, size2 - 1), label="size1")
    proof = consistency_proof(BIG.read_nodes, size1, size2)
    root1, root2 = ref_root(size1), ref_root(size2)
    assert proof
    pos = data.draw(st.integers(0, len(proof) - 1), label="pos")
    bad = list(proof)
    bad[pos] = flip_bit(bad[pos], data.draw(st.integers(0, 255), label="bit"))
    for args in [
        (size1, size2, bad, root1, root2),  # flipped bit
        (size1, size2, proof[:-1], root1, root2),  # truncated
        (size1, size2, [*proof, LEAVES[0]], root1, root2),  # extended
        (size1, size2, proof, flip_bit(root1, data.draw(st.integers(0, 255))), root2),  # wrong old root
        (size1, size2, proof, root1, flip_bit(root2, data.draw(st.integers(0, 255)))),  # wrong new root
        (size1, size2, proof, root2, root1),  # swapped roots
    ]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)

    other1 = data.draw(st.integers(1, size2).filter(lambda s: s != size1), label="other size1")
    if consistency_proof(BIG.read_nodes, other1, size2) != proof:
        with pytest.raises(VerificationError):
            verify_consistency(other1, size2, proof, ref_root(other1), root2)
    other2 = data.draw(st.integers(size1, N).filter(lambda s: s != size2), label="other size2")
    if consistency_proof(BIG.read_nodes, size1, other2) != proof:
        with pytest.raises(VerificationError):
            verify_consistency(size1, other2, proof, root1, ref_root(other2))


@given(size=st.integers(0, 300), data=st.data())
def test_batch_tree_matches_reference_and_proves(size: int, data: st.DataObject) -> None:
    """The linear bottom-up batch tree is the RFC 9162 tree: same root, paths the log verifier accepts."""
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    levels = tree_levels(leaves)
    assert batch_root(leaves) == compute_root(leaves)
    if size:
        index = data.draw(st.integers(0, size - 1))
        verify_inclusion(index, size, leaves[index], inclusion_path(levels, index), levels[-1][0])
        with pytest.raises(VerificationError):
            verify_inclusion(index, size, leaf_hash(b"other"), inclusion_path(levels, index), levels[-1][0])
    with pytest.raises(InputError):
        inclusion_path(levels, size)
