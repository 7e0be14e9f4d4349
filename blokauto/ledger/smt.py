"""Authenticated world state: a persistent, compressed binary sparse Merkle tree.

Every block header commits to the root of this tree, so anybody can check "key K has value V"
or "key K is absent" against the root of *any* past block with a proof of at most 256 hashes.
The design follows Diem/Aptos' SparseMerkleTree (binary Jellyfish):

* Keys and values arrive already hashed (32 bytes each). The 256 bits of ``key_hash``, most
  significant bit of byte 0 first, are the path from the root: bit 0 goes left, bit 1 right.
* ``EMPTY`` (32 zero bytes) is the hash of an empty subtree,
  ``leaf = SHA-256(0x00 || key_hash || value_hash)``, ``internal = SHA-256(0x01 || left || right)``.
  The prefix byte separates the two domains, so a leaf can never pose as an internal node.
* Compression: a leaf sits at the shallowest depth where its subtree holds only it. Hence the
  empty tree has root ``EMPTY``, a one-key tree has root = that leaf's hash, and every internal
  node has at least two leaves below it (an internal node with one empty child and one leaf
  child never exists; deletes collapse such nodes). A leaf's hash does not depend on its depth,
  so a leaf that moves up or down on a delete/insert is reused as is, never rewritten.
* Persistence (path copying): stored nodes are immutable. An update writes new nodes for the
  changed paths only and shares every untouched subtree with older roots, so the root of any
  past block stays readable and provable for as long as its nodes are kept.

Storage layout. Nodes get sequential integer ids (``0`` means "no node / empty subtree", so the
ids start at 1); sequential ids make SQLite inserts append at the end of an ``INTEGER PRIMARY
KEY`` table. A node is stored as fixed-size bytes whose first 65 bytes are exactly the preimage
of its hash, so a loaded node is checked with one SHA-256 over ``enc[:65]`` against ``enc[65:97]``:

* leaf, 97 bytes:      ``0x00 | key_hash(32) | value_hash(32) | hash(32)``
* internal, 113 bytes: ``0x01 | left_hash(32) | right_hash(32) | hash(32) | left_id | right_id``
  (ids are unsigned 64-bit big-endian)

A child id is ``0`` exactly when the child is empty (its hash is then ``EMPTY``). Storing the
children's hashes in the parent means siblings for proofs and rehashing never load the sibling.

:class:`SparseMerkleTree` does no I/O: it reads nodes through a ``load(id) -> bytes`` callable and
returns the new nodes for the caller to persist. :func:`verify_state_proof` is pure and needs no
storage, so offline verifiers can import it alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import struct
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from blokauto.errors import InputError, StorageError, VerificationError

__all__ = [
    "EMPTY",
    "HASH_SIZE",
    "MAX_DEPTH",
    "SparseMerkleTree",
    "StateProof",
    "leaf_hash",
    "node_hash",
    "verify_state_proof",
]

HASH_SIZE = 32
MAX_DEPTH = 256  # bits in a key hash: the deepest a leaf can sit, and the longest proof
EMPTY = bytes(HASH_SIZE)

_LEAF_TAG = b"\x00"
_NODE_TAG = b"\x01"
# Stored layouts (see the module docstring); unpacking gives the in-memory node directly:
#   leaf:     (0, key_hash, value_hash, hash)
#   internal: (1, left_hash, right_hash, hash, left_id, right_id)
# Plain tuples keep per-node overhead low; node[0] is the type and node[3] always the hash.
_LEAF_STRUCT = struct.Struct(">B32s32s32s")
_NODE_STRUCT = struct.Struct(">B32s32s32sQQ")
_LEAF_SIZE = _LEAF_STRUCT.size  # 97
_NODE_SIZE = _NODE_STRUCT.size  # 113
_sha256 = hashlib.sha256

# The update recursion describes a subtree by a "ref" (id, hash, kind); id 0 = empty subtree.
_K_EMPTY = 0
_K_LEAF = 1
_K_NODE = 2
_K_UNKNOWN = 3  # an untouched child: its kind is only looked up if a collapse needs it
_EMPTY_REF: tuple[int, bytes, int] = (0, EMPTY, _K_EMPTY)

_Node = tuple[Any, ...]  # see the shapes above
_Ref = tuple[int, bytes, int]


def leaf_hash(key_hash: bytes, value_hash: bytes) -> bytes:
    """Hash of a leaf; the 0x00 prefix keeps leaves and internal nodes in separate domains."""
    return _sha256(_LEAF_TAG + key_hash + value_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an internal node from its children's hashes (``EMPTY`` for an empty child)."""
    return _sha256(_NODE_TAG + left + right).digest()


def _check_hash(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise VerificationError(f"{name} must be {HASH_SIZE} bytes")
    return value


# --------------------------------------------------------------------------------------------
# Proofs (pure: no storage needed)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateProof:
    """Proof for one key against one state root.

    ``siblings`` are the hashes of the siblings along the key's path, **from the root downward**
    (``siblings[0]`` is the sibling at depth 0, i.e. a child of the root). The path ends at depth
    ``len(siblings)`` in either an empty subtree (``leaf is None``) or a leaf ``(key_hash,
    value_hash)``, which is the key's own leaf (inclusion) or another key's leaf that shares the
    first ``len(siblings)`` bits (absence).
    """

    siblings: tuple[bytes, ...]
    leaf: tuple[bytes, bytes] | None

    def to_json(self) -> dict[str, object]:
        """JSON-ready form with base64 (standard alphabet, padded) strings."""
        leaf: dict[str, str] | None = None
        if self.leaf is not None:
            leaf = {"key_hash": _b64(self.leaf[0]), "value_hash": _b64(self.leaf[1])}
        return {"siblings": [_b64(s) for s in self.siblings], "leaf": leaf}

    @classmethod
    def from_json(cls, obj: object) -> StateProof:
        """Strict parse of :meth:`to_json` output; anything malformed raises VerificationError."""
        if not isinstance(obj, dict) or set(obj) != {"siblings", "leaf"}:
            raise VerificationError("state proof must be an object with exactly 'siblings' and 'leaf'")
        raw_siblings = obj["siblings"]
        if not isinstance(raw_siblings, list):
            raise VerificationError("state proof 'siblings' must be a list")
        if len(raw_siblings) > MAX_DEPTH:
            raise VerificationError(f"state proof has more than {MAX_DEPTH} siblings")
        siblings = tuple(_unb64(s, "sibling") for s in raw_siblings)
        raw_leaf = obj["leaf"]
        leaf: tuple[bytes, bytes] | None = None
        if raw_leaf is not None:
            if not isinstance(raw_leaf, dict) or set(raw_leaf) != {"key_hash", "value_hash"}:
                raise VerificationError("state proof 'leaf' must be null or {key_hash, value_hash}")
            leaf = (
                _unb64(raw_leaf["key_hash"], "leaf key_hash"),
                _unb64(raw_leaf["value_hash"], "leaf value_hash"),
            )
        return cls(siblings, leaf)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(f"state proof {what} must be a base64 string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise VerificationError(f"state proof {what} is not valid base64") from exc
    if len(data) != HASH_SIZE:
        raise VerificationError(f"state proof {what} must decode to {HASH_SIZE} bytes, got {len(data)}")
    if _b64(data) != value:
        raise VerificationError(f"state proof {what} is not canonical base64")  # one spelling per proof
    return data


def verify_state_proof(root: bytes, key_hash: bytes, value_hash: bytes | None, proof: StateProof) -> None:
    """Raise VerificationError unless ``proof`` shows exactly the claim against ``root``.

    ``value_hash`` is the claimed value, or ``None`` to claim that ``key_hash`` is absent. The
    root is recomputed bottom-up from the leaf (or ``EMPTY``) using ``key_hash``'s bit at each
    depth; an empty-tree absence proof is ``StateProof((), None)``.
    """
    _check_hash("root", root)
    _check_hash("key_hash", key_hash)
    if value_hash is not None:
        _check_hash("value_hash", value_hash)
    siblings = proof.siblings
    depth = len(siblings)
    if depth > MAX_DEPTH:
        raise VerificationError(f"state proof has {depth} siblings, more than {MAX_DEPTH}")
    for sibling in siblings:
        _check_hash("sibling", sibling)
    leaf = proof.leaf
    if leaf is None:
        if value_hash is not None:
            raise VerificationError("state proof shows the key is absent, but a value was claimed")
        current = EMPTY
    else:
        if not isinstance(leaf, tuple) or len(leaf) != 2:
            raise VerificationError("state proof leaf must be (key_hash, value_hash)")
        leaf_key = _check_hash("leaf key_hash", leaf[0])
        leaf_value = _check_hash("leaf value_hash", leaf[1])
        if leaf_key == key_hash:
            if value_hash is None:
                raise VerificationError("state proof shows the key is present, but absence was claimed")
            if leaf_value != value_hash:
                raise VerificationError("state proof shows a different value for the key")
        else:
            if value_hash is not None:
                raise VerificationError("state proof ends at another key's leaf, so the key is absent")
            diff = int.from_bytes(leaf_key, "big") ^ int.from_bytes(key_hash, "big")
            if MAX_DEPTH - diff.bit_length() < depth:
                raise VerificationError("state proof leaf does not lie on the key's path")
        current = leaf_hash(leaf_key, leaf_value)
    path = int.from_bytes(key_hash, "big")
    for d in range(depth - 1, -1, -1):
        if (path >> (255 - d)) & 1:
            current = _sha256(_NODE_TAG + siblings[d] + current).digest()
        else:
            current = _sha256(_NODE_TAG + current + siblings[d]).digest()
    if current != root:
        raise VerificationError("state proof does not match the state root")


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


def _decode(node_id: int, data: object) -> _Node:
    """Decode one stored node and check it against its own stored hash (detects corruption)."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise StorageError(f"state node {node_id}: storage returned {type(data).__name__}, not bytes")
    size = len(data)
    node: _Node
    if size == _LEAF_SIZE and data[0] == 0:
        node = _LEAF_STRUCT.unpack(data)
    elif size == _NODE_SIZE and data[0] == 1:
        node = _NODE_STRUCT.unpack(data)
        _, left, right, _, left_id, right_id = node
        if (left_id == 0) != (left == EMPTY) or (right_id == 0) != (right == EMPTY) or left_id == right_id:
            raise StorageError(f"state node {node_id} is corrupt: inconsistent children")
    else:
        raise StorageError(f"state node {node_id} is corrupt: bad type or length {size}")
    if _sha256(data[:65]).digest() != node[3]:
        raise StorageError(f"state node {node_id} is corrupt: hash mismatch")
    return node


def _mismatch(node_id: int) -> StorageError:
    return StorageError(f"state node {node_id} does not match the hash its parent stores")


class SparseMerkleTree:
    """Reads, proves and batch-updates the state tree; every version is addressed by its root id.

    ``load(id)`` must return the bytes stored for a node id and raise ``LookupError`` (e.g.
    ``KeyError``) or :class:`StorageError` if there is none. ``next_id`` is the id the next new
    node gets: on start-up pass ``max(stored id) + 1``. Ids are never reused, so a block whose
    nodes are dropped only leaves a gap (see :meth:`rollback` to reuse them).

    Decoded nodes are cached (nodes are immutable, so caching is always safe), including the
    nodes an update creates, so the next block does not read back the upper levels it needs.
    The cache is a two-generation approximate LRU holding at most ``cache_size`` nodes: new and
    recently used nodes go to a young dict; when it reaches half the budget it becomes the old
    generation and the previous old one is dropped; a hit in the old generation is copied back
    to the young one. That costs one dict lookup per hit (no per-access reordering). A cached
    node takes about 350 bytes (the default of 100,000 is about 35 MB) and a tree holds about
    2.4 live nodes per key; every cache miss is one ``load`` call, so size the cache to the
    memory you can spare: caching the whole live tree roughly halves the update time.

    Every node read from storage is checked against its own stored hash and against the hash
    its parent commits to, so a corrupt or swapped node raises :class:`StorageError`.

    Not thread-safe: use one instance per writer, or lock around it.
    """

    def __init__(self, load: Callable[[int], bytes], next_id: int = 1, cache_size: int = 100_000) -> None:
        if next_id < 1:
            raise InputError("next_id must be >= 1 (id 0 means 'empty subtree')")
        if cache_size < 2:
            raise InputError("cache_size must be >= 2")
        self._load = load
        self._next_id = next_id
        self._half = cache_size // 2
        self._young: dict[int, _Node] = {}
        self._old: dict[int, _Node] = {}

    @property
    def next_id(self) -> int:
        """The id the next created node will get."""
        return self._next_id

    def cached_nodes(self) -> int:
        """How many decoded nodes the cache holds (an upper bound; for monitoring and tests)."""
        return len(self._young) + len(self._old)

    def rollback(self, next_id: int) -> None:
        """Forget nodes with id >= ``next_id`` and allocate from ``next_id`` again.

        Only for an update whose nodes were never persisted and whose ids you want to reuse;
        otherwise simply dropping the returned nodes is fine (ids then have a harmless gap).
        """
        if not 1 <= next_id <= self._next_id:
            raise InputError("rollback target must be between 1 and the current next_id")
        for gen in (self._young, self._old):
            for node_id in [i for i in gen if i >= next_id]:
                del gen[node_id]
        self._next_id = next_id

    def clear_cache(self) -> None:
        """Drop every cached node (e.g. after the storage was restored from a backup)."""
        self._young = {}
        self._old = {}

    # -- reading ------------------------------------------------------------------------------

    def _read(self, node_id: int) -> _Node:
        """Fetch and decode a node from storage (no caching)."""
        try:
            data = self._load(node_id)
        except StorageError:
            raise
        except LookupError as exc:
            raise StorageError(f"state node {node_id} is missing") from exc
        if data is None:
            raise StorageError(f"state node {node_id} is missing")
        return _decode(node_id, data)

    def _node(self, node_id: int) -> _Node:
        """A node through the cache (outside :meth:`update`, which inlines the same logic)."""
        node = self._young.get(node_id)
        if node is None:
            node = self._old.get(node_id)
            if node is None:
                node = self._read(node_id)
            young = self._young
            young[node_id] = node
            if len(young) >= self._half:
                self._old = young
                self._young = {}
        return node

    def _walk(self, root_id: int | None, key_hash: bytes) -> tuple[list[bytes], _Node | None]:
        """Follow ``key_hash``'s path: (siblings from the root down, final leaf or None if empty)."""
        _require_hash("key_hash", key_hash)
        siblings: list[bytes] = []
        node_id = root_id or 0
        if not node_id:
            return siblings, None
        node = self._node(node_id)
        path = int.from_bytes(key_hash, "big")
        depth = 0
        while node[0]:
            if (path >> (255 - depth)) & 1:
                siblings.append(node[1])
                node_id, expected = node[5], node[2]
            else:
                siblings.append(node[2])
                node_id, expected = node[4], node[1]
            if not node_id:
                return siblings, None
            node = self._node(node_id)
            if node[3] != expected:
                raise _mismatch(node_id)
            depth += 1
        return siblings, node

    def root_hash(self, root_id: int | None) -> bytes:
        """State root of the version ``root_id`` (``None`` or 0: the empty tree -> ``EMPTY``)."""
        if not root_id:
            return EMPTY
        digest: bytes = self._node(root_id)[3]
        return digest

    def get(self, root_id: int | None, key_hash: bytes) -> bytes | None:
        """The value_hash stored for ``key_hash`` in version ``root_id``, or None if absent."""
        _, leaf = self._walk(root_id, key_hash)
        if leaf is None or leaf[1] != key_hash:
            return None
        value: bytes = leaf[2]
        return value

    def prove(self, root_id: int | None, key_hash: bytes) -> StateProof:
        """Inclusion proof if ``key_hash`` is present in version ``root_id``, else absence proof."""
        siblings, leaf = self._walk(root_id, key_hash)
        return StateProof(tuple(siblings), None if leaf is None else (leaf[1], leaf[2]))

    # -- writing ------------------------------------------------------------------------------

    def update(
        self, root_id: int | None, changes: Mapping[bytes, bytes | None]
    ) -> tuple[int | None, bytes, list[tuple[int, bytes]]]:
        """Apply a whole block's changes to version ``root_id`` as one batch.

        ``changes`` maps key_hash -> new value_hash, or ``None`` to delete. Deleting an absent
        key and re-setting a key to its current value are no-ops (no new nodes; if nothing
        changes at all the old root id is returned). Returns ``(new_root_id, new_root_hash,
        new_nodes)`` where ``new_nodes`` are ``(id, encoded)`` in increasing id order, children
        before parents; persist them all before anyone loads ``new_root_id`` from storage. The
        old version is untouched and stays readable and provable.

        The changed keys are sorted and the tree is rebuilt top-down by splitting the sorted run
        on one bit per level, so a path shared by many changes is rebuilt once; below the point
        where a run shrinks to one change an iterative walk rebuilds the remaining path.
        """
        for key, value in changes.items():
            if type(key) is not bytes or len(key) != HASH_SIZE:
                _require_hash("key_hash", key)
            if value is not None and (type(value) is not bytes or len(value) != HASH_SIZE):
                _require_hash("value_hash", value)
        old_id = root_id or 0
        old_hash = self.root_hash(old_id)
        if not changes:
            return (old_id or None, old_hash, [])
        items = sorted(changes.items())
        keys = [k for k, _ in items]
        vals = [v for _, v in items]
        paths = [int.from_bytes(k, "big") for k in keys]
        new_nodes: list[tuple[int, bytes]] = []
        append_new = new_nodes.append
        ids = itertools.count(self._next_id)
        next_id = ids.__next__
        sha = _sha256
        pack_node = _NODE_STRUCT.pack
        leaf_tag, node_tag = _LEAF_TAG, _NODE_TAG
        read = self._read
        half = self._half
        young = self._young
        old = self._old

        def rotate() -> None:
            nonlocal young, old
            old = young
            young = {}

        def load_node(node_id: int) -> _Node:
            """Cache miss in the young generation: old generation, else storage."""
            node = old.get(node_id)
            if node is None:
                node = read(node_id)
            young[node_id] = node
            if len(young) >= half:
                rotate()
            return node

        def new_leaf(key: bytes, value: bytes) -> _Ref:
            pre = leaf_tag + key + value
            digest = sha(pre).digest()
            node_id = next_id()
            append_new((node_id, pre + digest))
            young[node_id] = (0, key, value, digest)
            if len(young) >= half:
                rotate()
            return (node_id, digest, _K_LEAF)

        def new_internal(left_id: int, left: bytes, right_id: int, right: bytes) -> _Ref:
            digest = sha(node_tag + left + right).digest()
            node_id = next_id()
            append_new((node_id, pack_node(1, left, right, digest, left_id, right_id)))
            young[node_id] = (1, left, right, digest, left_id, right_id)
            if len(young) >= half:
                rotate()
            return (node_id, digest, _K_NODE)

        def is_leaf(ref: _Ref) -> bool:
            if ref[2] != _K_UNKNOWN:
                return ref[2] == _K_LEAF
            node = young.get(ref[0]) or load_node(ref[0])
            return not node[0]

        def join(left: _Ref, right: _Ref) -> _Ref:
            """Parent of two subtrees, letting a lone leaf rise instead (compression)."""
            if not left[0]:
                if not right[0]:
                    return _EMPTY_REF
                if is_leaf(right):
                    return right
            elif not right[0] and is_leaf(left):
                return left
            return new_internal(left[0], left[1], right[0], right[1])

        def apply_one(ref: _Ref, depth: int, i: int) -> _Ref:
            """One change below ``ref`` at ``depth``: walk down, then rebuild the path upward."""
            key, value, path = keys[i], vals[i], paths[i]
            node_id, expected = ref[0], ref[1]
            trail: list[tuple[int, int, bytes]] = []  # (bit, sibling id, sibling hash) per level
            node: _Node = ()
            while node_id:
                node = young.get(node_id) or load_node(node_id)
                if node[3] != expected:
                    raise _mismatch(node_id)
                if not node[0]:
                    break
                if (path >> (255 - depth)) & 1:
                    trail.append((1, node[4], node[1]))
                    node_id, expected = node[5], node[2]
                else:
                    trail.append((0, node[5], node[2]))
                    node_id, expected = node[4], node[1]
                depth += 1
            # The path ends at ``depth`` in an empty subtree (node_id 0) or in the leaf ``node``.
            if not node_id:
                if value is None:
                    return ref  # deleting an absent key
                cur_id, cur, _ = new_leaf(key, value)
                cur_leaf = True
            elif node[1] == key:
                if value == node[2]:
                    return ref  # same value: nothing changes
                if value is None:
                    cur_id, cur, cur_leaf = 0, EMPTY, False
                else:
                    cur_id, cur, _ = new_leaf(key, value)
                    cur_leaf = True
            elif value is None:
                return ref  # deleting an absent key
            else:
                # Another key's leaf: push it down next to the new leaf, to an internal node
                # where the two keys first differ, plus one-child internal nodes up to ``depth``.
                split = MAX_DEPTH - (path ^ int.from_bytes(node[1], "big")).bit_length()
                if split < depth:
                    raise StorageError(f"state node {node_id} is corrupt: leaf is off its key's path")
                leaf_id, leaf, _ = new_leaf(key, value)
                if (path >> (255 - split)) & 1:
                    cur_id, cur, _ = new_internal(node_id, expected, leaf_id, leaf)
                else:
                    cur_id, cur, _ = new_internal(leaf_id, leaf, node_id, expected)
                for d in range(split - 1, depth - 1, -1):
                    if (path >> (255 - d)) & 1:
                        cur_id, cur, _ = new_internal(0, EMPTY, cur_id, cur)
                    else:
                        cur_id, cur, _ = new_internal(cur_id, cur, 0, EMPTY)
                cur_leaf = False
            # Rebuild upward (inlined new_internal: this loop is the hot path).
            for bit, sib_id, sib in reversed(trail):
                if not sib_id:
                    if cur_leaf or not cur_id:
                        continue  # a lone leaf rises past an empty sibling
                elif not cur_id:
                    sib_node = young.get(sib_id) or load_node(sib_id)
                    if not sib_node[0]:
                        cur_id, cur, cur_leaf = sib_id, sib, True  # the sibling leaf is now alone
                        continue
                if bit:
                    left_id, left, right_id, right = sib_id, sib, cur_id, cur
                else:
                    left_id, left, right_id, right = cur_id, cur, sib_id, sib
                cur = sha(node_tag + left + right).digest()
                cur_id = next_id()
                append_new((cur_id, pack_node(1, left, right, cur, left_id, right_id)))
                young[cur_id] = (1, left, right, cur, left_id, right_id)
                if len(young) >= half:
                    rotate()
                cur_leaf = False
            return (cur_id, cur, _K_LEAF if cur_leaf else (_K_NODE if cur_id else _K_EMPTY))

        def apply(ref: _Ref, depth: int, lo: int, hi: int) -> _Ref:
            """Apply changes[lo:hi] (2 or more, all sharing their first ``depth`` bits) to ``ref``."""
            shift = 255 - depth
            mid = bisect_left(paths, ((paths[lo] >> shift) | 1) << shift, lo, hi)  # first with bit 1
            node_id = ref[0]
            if not node_id:
                left_ref = right_ref = _EMPTY_REF
            else:
                node = young.get(node_id) or load_node(node_id)
                if node[3] != ref[1]:
                    raise _mismatch(node_id)
                if node[0]:
                    left_ref = (node[4], node[1], _K_UNKNOWN)
                    right_ref = (node[5], node[2], _K_UNKNOWN)
                elif (int.from_bytes(node[1], "big") >> shift) & 1:
                    # Treat the leaf as sitting one level lower, on its own side.
                    left_ref, right_ref = _EMPTY_REF, (node_id, node[3], _K_LEAF)
                else:
                    left_ref, right_ref = (node_id, node[3], _K_LEAF), _EMPTY_REF
            # (one change left on a side: go straight to the iterative walk)
            if mid - lo > 1:
                new_left = apply(left_ref, depth + 1, lo, mid)
            else:
                new_left = apply_one(left_ref, depth + 1, lo) if lo < mid else left_ref
            if hi - mid > 1:
                new_right = apply(right_ref, depth + 1, mid, hi)
            else:
                new_right = apply_one(right_ref, depth + 1, mid) if mid < hi else right_ref
            if new_left[0] == left_ref[0] and new_right[0] == right_ref[0]:
                return ref  # only no-op changes below
            return join(new_left, new_right)

        start: _Ref = (old_id, old_hash, _K_UNKNOWN if old_id else _K_EMPTY)
        try:
            result = apply(start, 0, 0, len(items)) if len(items) > 1 else apply_one(start, 0, 0)
        finally:
            # Even on failure: ids handed out are cached, so they must never be handed out again.
            self._next_id = next_id()
            self._young, self._old = young, old
        return (result[0] or None, result[1], new_nodes)


def _require_hash(name: str, value: object) -> None:
    """Reject a caller's malformed key/value hash before it can corrupt the tree."""
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise InputError(f"{name} must be {HASH_SIZE} bytes")
