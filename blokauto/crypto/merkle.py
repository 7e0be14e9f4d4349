"""RFC 6962 / RFC 9162 Merkle tree hashing and proof verification.

Pure functions, no I/O: offline verifiers (auditors, clients holding a signed checkpoint) import
only this module, so it is kept small enough to audit by reading. The verifiers follow RFC 9162
sections 2.1.3.2 and 2.1.4.2 in the decomposed form used by transparency-dev/merkle and
sigstore-python: the expected proof length is derived from (index, size) and checked before any
proof element is touched, so a malformed proof can never index out of range.

Hashes: leaf = SHA-256(0x00 || data), interior node = SHA-256(0x01 || left || right),
root of the empty tree = SHA-256 of the empty string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from blokauto.errors import InputError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "compute_root",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
try:  # CPython's own SHA-256: ~25% cheaper than OpenSSL's per small message (batch trees hash millions)
    from _sha256 import sha256 as _fast_sha256
except ImportError:  # pragma: no cover - other interpreters
    _fast_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Hash a leaf; the 0x00 prefix keeps leaves and interior nodes in separate domains."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children; the 0x01 prefix stops a node being passed off as a leaf."""
    return _sha256(b"\x01" + left + right).digest()


def _check_hash(value: object, what: str) -> bytes:
    """Reject anything that is not a 32-byte string before it reaches the hash chain."""
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise VerificationError(f"{what} must be {HASH_SIZE} bytes")
    return bytes(value)


def _check_size(value: object, what: str) -> int:
    """Sizes and indexes come from untrusted input: insist on non-negative ints (not bools)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise VerificationError(f"{what} must be a non-negative integer")
    return value


def _check_proof(proof: Sequence[bytes], expected_len: int) -> list[bytes]:
    """Check the proof length first, then every element, so later loops cannot go out of range."""
    if len(proof) != expected_len:
        raise VerificationError(f"wrong proof length {len(proof)}, expected {expected_len}")
    return [_check_hash(h, "proof hash") for h in proof]


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split the path of leaf `index` in a tree of `size` where it diverges from the last leaf's path.

    `inner` proof hashes lie below the divergence (siblings on either side), `border` hashes lie
    above it along the right edge of the tree (left siblings only). Requires index < size.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Hash upward through siblings that may sit on either side, as given by the bits of `index`."""
    for i, h in enumerate(proof):
        seed = node_hash(h, seed) if (index >> i) & 1 else node_hash(seed, h)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Like _chain_inner but only left siblings count: this rebuilds the older, smaller tree."""
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    """Along the right border every proof hash is a left sibling."""
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def _mismatch(calculated: bytes, expected: bytes, what: str) -> None:
    if calculated != expected:
        raise VerificationError(f"{what}: calculated {calculated.hex()} != expected {expected.hex()}")


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """Recompute the root implied by an inclusion proof (RFC 9162 2.1.3.2).

    Returned rather than compared so callers can check it against a signed checkpoint themselves.
    """
    index = _check_size(index, "index")
    size = _check_size(size, "size")
    if index >= size:
        raise VerificationError(f"index {index} is beyond tree size {size}")
    seed = _check_hash(leaf_hash, "leaf hash")
    inner, border = _decompose(index, size)
    hashes = _check_proof(proof, inner + border)
    res = _chain_inner(seed, hashes[:inner], index)
    return _chain_border_right(res, hashes[inner:])


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise VerificationError unless `proof` shows `leaf_hash` at `index` in the tree (size, root)."""
    expected = _check_hash(root, "root")
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    _mismatch(calculated, expected, "inclusion proof root mismatch")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise VerificationError unless (size2, root2) is an append-only extension of (size1, root1).

    RFC 9162 2.1.4.2. Edge cases: size1 == size2 needs an empty proof and equal roots; size1 == 0
    needs an empty proof and root1 == EMPTY_ROOT (every tree extends the empty one).
    """
    size1 = _check_size(size1, "size1")
    size2 = _check_size(size2, "size2")
    root1 = _check_hash(root1, "root1")
    root2 = _check_hash(root2, "root2")
    if size1 > size2:
        raise VerificationError(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0:
        _check_proof(proof, 0)
        _mismatch(root1, EMPTY_ROOT, "root of the empty tree")
        if size2 == 0:
            _mismatch(root2, EMPTY_ROOT, "root of the empty tree")
        return
    if size1 == size2:
        _check_proof(proof, 0)
        _mismatch(root2, root1, "consistency proof root mismatch")
        return

    # The proof is the inclusion proof of the node covering the last 2^shift leaves of the old
    # tree, prefixed with that node's hash unless the old tree is exactly that node (root1).
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift  # size1 < size2 guarantees shift < inner
    start = 0 if size1 == 1 << shift else 1
    hashes = _check_proof(proof, start + inner + border)
    seed = root1 if start == 0 else hashes[0]
    path = hashes[start:]
    mask = (size1 - 1) >> shift

    hash1 = _chain_border_right(_chain_inner_right(seed, path[:inner], mask), path[inner:])
    _mismatch(hash1, root1, "consistency proof does not match the old root")
    hash2 = _chain_border_right(_chain_inner(seed, path[:inner], mask), path[inner:])
    _mismatch(hash2, root2, "consistency proof does not match the new root")


def compute_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of RFC 9162 2.1.1 by direct recursion: slow and obviously correct, a reference for audits."""
    for h in leaf_hashes:
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise InputError(f"leaf hashes must be {HASH_SIZE} bytes")

    def mth(begin: int, end: int) -> bytes:
        n = end - begin
        if n == 1:
            return bytes(leaf_hashes[begin])
        k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
        return node_hash(mth(begin, begin + k), mth(begin + k, end))

    if not leaf_hashes:
        return EMPTY_ROOT
    return mth(0, len(leaf_hashes))


def tree_levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the RFC 9162 tree over ``leaf_hashes``, leaves first, root last ([] if none).

    Built bottom-up by pairing neighbours and carrying an odd last node up unchanged, which gives
    the same tree as the MTH recursion (the largest-power-of-two split) in linear time. Batches of
    thousands of parts or telematics samples are hashed this way; ``compute_root`` stays the
    obviously-correct reference the tests compare against.
    """
    if not leaf_hashes:
        return []
    level = list(leaf_hashes)
    levels = [level]
    sha = _fast_sha256
    while len(level) > 1:
        odd = level[-1] if len(level) & 1 else None
        pairs = zip(level[0::2], level[1::2], strict=False)
        level = [sha(b"\x01" + left + right).digest() for left, right in pairs]
        if odd is not None:
            level.append(odd)
        levels.append(level)
    return levels


def batch_leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 leaf hashes of many leaves (the same as :func:`leaf_hash` on each, faster)."""
    sha = _fast_sha256
    return [sha(b"\x00" + leaf).digest() for leaf in leaves]


def batch_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the RFC 9162 tree over ``leaf_hashes`` (empty: SHA-256 of nothing)."""
    return tree_levels(leaf_hashes)[-1][0] if leaf_hashes else EMPTY_ROOT


def inclusion_path(levels: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf ``index`` from ``tree_levels`` output.

    Checked by :func:`verify_inclusion` like any log proof: siblings bottom-up, a level where the
    node was carried up (no sibling) contributes nothing.
    """
    size = len(levels[0]) if levels else 0
    if not 0 <= index < size:
        raise InputError(f"index {index} is outside a tree of {size} leaves")
    path: list[bytes] = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index >>= 1
    return path
