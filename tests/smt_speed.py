"""Speed check for the state tree: how long one block's batch update takes per changed key.

Not a test (no ``test_`` prefix). Run: ``.venv/bin/python tests/smt_speed.py [keys] [block] [cache]``
(defaults 200000, 2000, 100000). Nodes live in a dict, so this measures the tree's own work
(hashing, encoding, cache) plus "storage reads" that cost only a dict lookup and a decode; with
SQLite each read costs more, so the reads per changed key are printed too. After the build it
times blocks that update existing keys spread over the whole tree, the ledger's steady state.
The SHA-256 line calibrates the machine: one node costs at least one such hash.
"""

from __future__ import annotations

import hashlib
import sys
import time
import timeit

from blokauto.ledger.smt import SparseMerkleTree


def _h(prefix: bytes, i: int) -> bytes:
    return hashlib.sha256(prefix + i.to_bytes(8, "big")).digest()


def main(total: int = 200_000, block: int = 2_000, cache_size: int = 100_000) -> None:
    """Build a ``total``-key tree in blocks of ``block`` inserts, then run update-only blocks."""
    sha = hashlib.sha256
    data = bytes(65)
    sha_ns = min(timeit.repeat(lambda: sha(data).digest(), number=100_000, repeat=5)) / 100_000 * 1e9
    print(f"calibration: SHA-256 of 65 bytes = {sha_ns:.0f} ns; cache_size = {cache_size}")

    store: dict[int, bytes] = {}
    reads = 0

    def load(node_id: int) -> bytes:
        nonlocal reads
        reads += 1
        return store[node_id]

    tree = SparseMerkleTree(load, cache_size=cache_size)
    root: int | None = None
    build_time = 0.0
    build_nodes = 0
    n_blocks = total // block
    report_every = max(1, n_blocks // 5)
    for b in range(n_blocks):
        changes: dict[bytes, bytes | None] = {_h(b"k", i): _h(b"v", i) for i in range(b * block, (b + 1) * block)}
        reads = 0
        t0 = time.process_time()
        root, _, nodes = tree.update(root, changes)
        elapsed = time.process_time() - t0
        store.update(nodes)
        build_time += elapsed
        build_nodes += len(nodes)
        if (b + 1) % report_every == 0:
            print(
                f"insert block {b + 1:4d}: tree {(b + 1) * block:7d} keys, "
                f"{elapsed / block * 1e6:6.2f} us/changed key, "
                f"{len(nodes) / block:5.2f} nodes written/key, {reads / block:5.2f} reads/key"
            )
    n_keys = n_blocks * block
    print(
        f"build total: {n_keys} inserts, {build_time / n_keys * 1e6:.2f} us/changed key, "
        f"{build_nodes / n_keys:.2f} nodes written/changed key, {len(store)} nodes stored"
    )

    upd_time = 0.0
    upd_nodes = 0
    upd_reads = 0
    n_changed = 0
    rounds = 10
    for r in range(rounds):
        # existing keys spread uniformly over the tree
        changes = {_h(b"k", (i * 104_729 + r * 7_919) % n_keys): _h(b"w", i * rounds + r) for i in range(block)}
        reads = 0
        t0 = time.process_time()
        root, _, nodes = tree.update(root, changes)
        upd_time += time.process_time() - t0
        store.update(nodes)
        upd_nodes += len(nodes)
        upd_reads += reads
        n_changed += len(changes)
    print(
        f"update blocks on the {n_keys}-key tree: {upd_time / n_changed * 1e6:.2f} us/changed key, "
        f"{upd_nodes / n_changed:.2f} nodes written/changed key, {upd_reads / n_changed:.2f} reads/changed key"
    )


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:4]])
