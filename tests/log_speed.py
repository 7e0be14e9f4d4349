"""Speed check for the Merkle log (not a test): run with `.venv/bin/python tests/log_speed.py`.

Appends 1,000,000 leaves in batches of 2,000 into a dict node store and reports the appender's
cost per leaf (the target is <= 3 us/leaf in CPython), then the cost of generating and verifying
inclusion and consistency proofs against the full tree. Leaf hashing and the dict writes are
timed separately so the appender's own cost is visible. Needs the package importable (the venv's
editable install does that).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Mapping, Sequence

from blokauto.crypto.merkle import leaf_hash, verify_consistency, verify_inclusion
from blokauto.ledger.log import LogAppender, consistency_proof, inclusion_proof, root_at

TOTAL = 1_000_000
BATCH = 2_000
PROOFS = 2_000


def main() -> None:
    """Time appends, then proofs; print one line per measurement."""
    t0 = time.perf_counter()
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(TOTAL)]
    t_leaf = time.perf_counter() - t0

    store: dict[int, bytes] = {}
    appender = LogAppender()
    t_append = t_store = 0.0
    per_batch: list[float] = []
    for lo in range(0, TOTAL, BATCH):
        t0 = time.perf_counter()
        rows = appender.append(leaves[lo : lo + BATCH])
        appender.root()
        t1 = time.perf_counter()
        store.update(rows)
        t_store += time.perf_counter() - t1
        t_append += t1 - t0
        per_batch.append((t1 - t0) / BATCH * 1e6)

    print(f"leaf_hash:            {t_leaf / TOTAL * 1e6:6.3f} us/leaf (not part of append)")
    print(f"append (+root/batch): {t_append / TOTAL * 1e6:6.3f} us/leaf  [{TOTAL:,} leaves, batch {BATCH:,}]")
    best, median = min(per_batch), statistics.median(per_batch)
    print(f"  per batch:          {median:6.3f} us/leaf median, {best:6.3f} best (robust to a busy machine)")
    print(f"dict store update:    {t_store / TOTAL * 1e6:6.3f} us/leaf  ({len(store):,} node rows)")

    reads = 0

    def read_nodes(ids: Sequence[int]) -> Mapping[int, bytes]:
        nonlocal reads
        reads += 1
        return {i: store[i] for i in ids if i in store}

    rng = random.Random(6962)
    roots = {}
    size = TOTAL
    root = root_at(read_nodes, size)
    assert root == appender.root()

    cases = []
    for _ in range(PROOFS):
        n = rng.randint(1, TOTAL)
        cases.append((rng.randrange(n), n))
    for _, n in cases:
        roots[n] = root_at(read_nodes, n)

    reads = 0
    t0 = time.perf_counter()
    incl = [inclusion_proof(read_nodes, m, n) for m, n in cases]
    t_incl = time.perf_counter() - t0
    assert reads == PROOFS
    t0 = time.perf_counter()
    for (m, n), p in zip(cases, incl, strict=True):
        verify_inclusion(m, n, leaves[m], p, roots[n])
    t_vincl = time.perf_counter() - t0

    pairs = [(rng.randint(1, n), n) for _, n in cases]
    for m, _ in pairs:
        roots.setdefault(m, root_at(read_nodes, m))
    t0 = time.perf_counter()
    cons = [consistency_proof(read_nodes, m, n) for m, n in pairs]
    t_cons = time.perf_counter() - t0
    t0 = time.perf_counter()
    for (m, n), p in zip(pairs, cons, strict=True):
        verify_consistency(m, n, p, roots[m], roots[n])
    t_vcons = time.perf_counter() - t0

    avg_incl = sum(map(len, incl)) / PROOFS
    avg_cons = sum(map(len, cons)) / PROOFS
    gen, ver = t_incl / PROOFS * 1e6, t_vincl / PROOFS * 1e6
    print(f"inclusion proof:      {gen:6.1f} us generate, {ver:6.1f} us verify  (avg {avg_incl:.1f} hashes)")
    gen, ver = t_cons / PROOFS * 1e6, t_vcons / PROOFS * 1e6
    print(f"consistency proof:    {gen:6.1f} us generate, {ver:6.1f} us verify  (avg {avg_cons:.1f} hashes)")
    t0 = time.perf_counter()
    for _ in range(PROOFS):
        LogAppender(TOTAL, read_nodes)
    print(f"restore LogAppender:  {(time.perf_counter() - t0) / PROOFS * 1e6:6.1f} us (size {TOTAL:,})")


if __name__ == "__main__":
    main()
