"""The ledger's append-only log: an RFC 6962 Merkle tree stored as perfect subtrees.

Storage model: the hash of every *perfect* (complete power-of-two) subtree is stored once, under
``node_id(level, index)``; level 0 holds the leaf hashes themselves. Perfect subtrees never change
once complete, so the table is append-only and any historical root or proof can be rebuilt from it.
Hashes on the ragged right edge of a tree are never stored; they are folded on demand from the
perfect subtrees that cover them (transparency-dev/merkle's "compact range" idea).

Proof generators first work out every node id they need, then fetch them in ONE ``read_nodes``
call, so a proof costs one batched database query however large the tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

from blokauto.crypto.merkle import EMPTY_ROOT, HASH_SIZE, node_hash
from blokauto.errors import InputError, StorageError

__all__ = [
    "MAX_SIZE",
    "LogAppender",
    "ReadNodes",
    "consistency_proof",
    "inclusion_proof",
    "node_id",
    "root_at",
]

_INDEX_BITS = 48
_INDEX_MASK = (1 << _INDEX_BITS) - 1
MAX_SIZE = 1 << _INDEX_BITS
"""Leaf indexes must fit in the 48 index bits of a node id."""

ReadNodes = Callable[[Sequence[int]], Mapping[int, bytes]]
"""Batch fetch of stored node hashes by id; ids that are not stored are simply absent."""


def node_id(level: int, index: int) -> int:
    """Pack (level, index) into one integer key: level in the high bits, index in the low 48."""
    if not 0 <= level <= _INDEX_BITS or not 0 <= index <= _INDEX_MASK >> level:
        raise InputError(f"node ({level}, {index}) is outside the log's id space")
    return (level << _INDEX_BITS) | index


def _check_size(value: int, what: str, *, maximum: int = MAX_SIZE) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise InputError(f"{what} must be an integer in [0, {maximum}], got {value!r}")
    return value


def _range_nodes(begin: int, end: int) -> list[tuple[int, int]]:
    """Perfect subtrees (level, index) exactly covering leaves [begin, end), left to right.

    Greedy: at each step take the largest aligned subtree starting at `begin` that fits.
    For begin == 0 this is one subtree per set bit of `end`, largest first.
    """
    nodes: list[tuple[int, int]] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Root of a range whose perfect subtrees are given left to right, largest first.

    The RFC 6962 tree pairs the right edge from the right, so fold right to left.
    """
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


_Item = tuple[int, ...]
"""One proof element as node ids: one stored node, or the perfect subtrees of an ephemeral node."""


def _fetch(read_nodes: ReadNodes, items: Sequence[_Item]) -> list[bytes]:
    """Resolve all items with a single batched read; a missing or malformed row is a StorageError."""
    wanted = sorted({i for item in items for i in item})
    if not wanted:
        return []
    got = read_nodes(wanted)
    missing = [i for i in wanted if i not in got]
    if missing:
        shown = ", ".join(f"({i >> _INDEX_BITS}, {i & _INDEX_MASK})" for i in missing[:5])
        raise StorageError(f"{len(missing)} Merkle node(s) missing from storage, e.g. {shown}")
    for i in wanted:
        value = got[i]
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise StorageError(f"stored Merkle node {i} is not a {HASH_SIZE}-byte hash")
    return [got[item[0]] if len(item) == 1 else _fold([got[i] for i in item]) for item in items]


def _range_item(begin: int, end: int) -> _Item:
    return tuple(node_id(level, index) for level, index in _range_nodes(begin, end))


def _path_items(index: int, size: int, from_level: int) -> list[_Item]:
    """Audit path of the node containing leaf `index`, from level `from_level` up, in a tree of `size`.

    Below the level where the paths to `index` and to the last leaf diverge (`inner`), each level
    contributes the sibling; only the topmost of those can be ragged (ephemeral). Above it the
    path runs along the right border, where only left siblings exist and they are all perfect.
    This is RFC 9162 PATH (from_level == 0) and the tail of SUBPROOF (from_level == tz(size1)).
    """
    inner = (index ^ (size - 1)).bit_length()
    items: list[_Item] = []
    for level in range(from_level, inner):
        sibling = (index >> level) ^ 1
        begin = sibling << level
        end = begin + (1 << level)
        if end <= size:
            items.append((node_id(level, sibling),))
        else:
            items.append(_range_item(begin, size))
    # inner > from_level always: a consistency proof has size1 < size2, so leaf size1 - 1 and the
    # last leaf already differ at level tz(size1) or above.
    for level in range(inner, size.bit_length()):
        if (index >> level) & 1:
            items.append((node_id(level, (index >> level) ^ 1),))
    return items


def _check_stored(size: int, stored_size: int | None) -> None:
    if stored_size is not None and size > stored_size:
        raise InputError(f"tree size {size} is beyond the stored log size {stored_size}")


def root_at(read_nodes: ReadNodes, size: int, *, stored_size: int | None = None) -> bytes:
    """Root of the first `size` leaves, folded from at most 48 stored perfect subtrees."""
    _check_size(size, "size")
    _check_stored(size, stored_size)
    if size == 0:
        return EMPTY_ROOT
    (root,) = _fetch(read_nodes, [_range_item(0, size)])
    return root


def inclusion_proof(read_nodes: ReadNodes, index: int, size: int, *, stored_size: int | None = None) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(index, D[0:size]), bottom to top, in one batched read."""
    _check_size(size, "size")
    _check_stored(size, stored_size)
    _check_size(index, "index")
    if index >= size:
        raise InputError(f"leaf index {index} is not below tree size {size}")
    return _fetch(read_nodes, _path_items(index, size, 0))


def consistency_proof(read_nodes: ReadNodes, size1: int, size2: int, *, stored_size: int | None = None) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(size1, D[0:size2]) in one batched read.

    The proof is the hash of the last perfect subtree of the old tree (omitted when that subtree
    is the whole old tree, as the verifier already holds its root) followed by that subtree's
    audit path in the new tree. Empty when size1 is 0 or equals size2.
    """
    _check_size(size2, "size2")
    _check_stored(size2, stored_size)
    _check_size(size1, "size1")
    if size1 > size2:
        raise InputError(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0 or size1 == size2:
        return []
    level = (size1 & -size1).bit_length() - 1
    last = size1 - 1
    items = _path_items(last, size2, level)
    if size1 != 1 << level:
        items.insert(0, (node_id(level, last >> level),))
    return _fetch(read_nodes, items)


class LogAppender:
    """Holds the compact range (the perfect-subtree roots of the current size, at most 48 hashes).

    Appending therefore needs no reads: the frontier is all a new leaf can merge with.
    """

    __slots__ = ("_frontier", "_min_level", "_root", "_size")

    def __init__(self, size: int = 0, read_nodes: ReadNodes | None = None, *, min_level: int = 0) -> None:
        """Start empty, or resume at `size` by reading that size's perfect-subtree roots.

        ``min_level``: :meth:`append` returns no rows below this level, for a store that folds those
        small subtrees from the leaves when asked (fewer rows to write per leaf).
        """
        _check_size(size, "size")
        if not 0 <= min_level <= _INDEX_BITS:
            raise InputError(f"min_level must be in [0, {_INDEX_BITS}]")
        self._size = size
        self._min_level = min_level
        self._root: bytes | None = None
        # _frontier[i] is the root of a perfect subtree; sizes strictly decrease left to right.
        self._frontier: list[bytes] = []
        if size:
            if read_nodes is None:
                raise InputError("restoring a log of non-zero size needs read_nodes")
            self._frontier = _fetch(read_nodes, [(i,) for i in _range_item(0, size)])

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def root(self) -> bytes:
        """Root of the whole log, folded from the frontier (cached until the next append)."""
        if self._root is None:
            self._root = _fold(self._frontier) if self._frontier else EMPTY_ROOT
        return self._root

    def append(self, leaf_hashes: Sequence[bytes]) -> list[tuple[int, bytes]]:
        """Append leaves; return every new (node_id, hash) row: the leaves and each completed subtree
        (only those at ``min_level`` or above).

        The whole batch is validated before any state changes, so a bad batch leaves the appender
        untouched. Each leaf costs one hash on average (a binary counter's carries).
        """
        for h in leaf_hashes:
            if type(h) is not bytes or len(h) != HASH_SIZE:
                raise InputError(f"leaf hashes must be {HASH_SIZE}-byte bytes")
        size = self._size
        if len(leaf_hashes) > MAX_SIZE - size:
            raise InputError(f"the log cannot hold more than {MAX_SIZE} leaves")
        if not leaf_hashes:
            return []

        sha256 = hashlib.sha256
        frontier = self._frontier
        push = frontier.append
        pop = frontier.pop
        rows: list[tuple[int, bytes]] = []
        add = rows.append
        min_level = self._min_level
        for h in leaf_hashes:
            if not min_level:
                add((size, h))  # node_id(0, size) == size
            idx = size
            level = 0
            while idx & 1:
                h = sha256(b"\x01" + pop() + h).digest()
                idx >>= 1
                level += 1
                if level >= min_level:
                    add(((level << _INDEX_BITS) | idx, h))
            push(h)
            size += 1
        self._size = size
        self._root = None
        return rows
