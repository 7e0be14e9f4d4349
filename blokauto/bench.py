"""``blokauto bench``: committed transactions per second through the real path, printed beside
baselines measured in the same run (these machines are shared and noisy: compare ratios).

The real path is: canonical decode, schema and payload checks, Ed25519 verification of every
signature (on a 2-thread pool: PyNaCl releases the GIL), the nonce/role pre-check, ordering,
contract execution, the RFC 6962 log append, the sparse-Merkle state update, a signed checkpoint
per block and one SQLite commit per block (WAL, synchronous=NORMAL: survives kill -9, the node's
default). Signing is the clients' work and is not timed.
"""

from __future__ import annotations

import gc
import hashlib
import os
import resource
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blokauto import demo
from blokauto.crypto.keys import DOMAIN_TX, Signer
from blokauto.ledger import proofs
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node, NodeConfig, genesis_known_keys, init_ledger
from blokauto.runtime import tune_process

Log = Callable[[str], None] | None


def make_transactions(chain: str, n: int, signers: list[Signer]) -> list[bytes]:
    """``n`` signed anchors, round-robin over ``signers`` (each with its own nonce sequence)."""
    nonces = {s.did: 0 for s in signers}
    raws = []
    for i in range(n):
        signer = signers[i % len(signers)]
        nonces[signer.did] += 1
        digest = hashlib.sha256(b"bench-%d" % i).hexdigest()
        raws.append(sign_tx(chain, "notary.anchor", signer, nonces[signer.did],
                            {"digest": digest, "kind": "invoice", "label": f"invoice {i}"}))
    return raws


def rss_mb() -> float:
    """Current resident memory (not the peak), so a plateau shows."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_busy_s() -> float | None:
    """CPU-seconds the whole machine has spent busy (all cores, /proc/stat), or None where unknown.
    Read before and after a phase that is the machine's only work: its CPU cost, whatever processes
    (worker pools, nats servers, node processes) it ran in."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def bench_ledger(raws: list[bytes], work: Path, genesis: dict[str, Any]) -> dict[str, Any]:
    data = work / "node"
    init_ledger(data, genesis, demo.OPERATOR_ORG, demo.demo_node_key(demo.OPERATOR_ORG).signing_key)
    with Node(data, NodeConfig()) as node:
        # Submitted in slices of 5,000 with the next slice queued before waiting for the previous
        # one (as a steady client would), so the node never idles and the bench itself holds at most
        # two slices of receipts: RSS, read at each quarter, is then the node's own memory.
        slice_size = max(1, min(5_000, -(-len(raws) // 4)))
        quarters = sorted({min(len(raws), -(-len(raws) * q // 4)) for q in range(1, 5)})
        gc.collect()
        rss = [rss_mb()]
        ok = 0
        busy_before = machine_busy_s()
        started = time.perf_counter()
        previous: list[Any] = []
        for start in range(0, len(raws), slice_size):
            end = min(len(raws), start + slice_size)
            current = node.submit_many(raws[start:end])
            ok += sum(1 for f in previous if f.result()["status"] == "ok")
            previous = current
            rss.extend(rss_mb() for q in quarters if start < q <= end)
        ok += sum(1 for f in previous if f.result()["status"] == "ok")
        elapsed = time.perf_counter() - started
        busy_after = machine_busy_s()
        height = node.ledger.head.height
        size = node.ledger.head.log_size
        db_bytes = sum(p.stat().st_size for p in data.glob("ledger.sqlite*"))
        # proofs: generation (node side) and verification (offline side)
        keys = genesis_known_keys(genesis)
        sample = [i * (size // 200) for i in range(200)]
        gen, ver = [], []
        for index in sample:
            t0 = time.perf_counter()
            proof = proofs.build_record_proof(node.store, index)
            t1 = time.perf_counter()
            proofs.verify_record_proof(proof, keys, 1, origin=genesis["chain"])
            t2 = time.perf_counter()
            gen.append(t1 - t0)
            ver.append(t2 - t1)
        state_gen = []
        for i in range(100):
            t0 = time.perf_counter()
            proofs.build_state_proof(node.store, f"notary/{hashlib.sha256(b'bench-%d' % i).hexdigest()}")
            state_gen.append(time.perf_counter() - t0)
    return {
        "tx_per_s": len(raws) / elapsed, "seconds": elapsed, "blocks": height, "log_size": size,
        "committed_ok": ok, "bytes_per_tx": db_bytes / max(size, 1),
        "rss_mb_by_quarter": rss,
        "proof_gen_us": statistics.median(gen) * 1e6, "proof_verify_us": statistics.median(ver) * 1e6,
        "state_proof_gen_us": statistics.median(state_gen) * 1e6,
        "cpu_us_per_tx": None if busy_before is None or busy_after is None
        else (busy_after - busy_before) / len(raws) * 1e6,
    }


def bench_ed25519(raws: list[bytes], signer: Signer, threads: int) -> float:
    """Signature verifications per second on ``threads`` threads: the physical limit here."""
    message = raws[0]
    signature = signer.sign(DOMAIN_TX, message)
    verify_key = signer.signing_key.verify_key
    n = max(2_000, len(raws) // 4)
    per_thread = n // threads

    def work() -> None:
        for _ in range(per_thread):
            verify_key.verify(DOMAIN_TX + message, signature)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return per_thread * threads / (time.perf_counter() - started)


def bench_plain_sqlite(raws: list[bytes], work: Path) -> float:
    """The same records inserted into SQLite in blocks of 4,000 with no integrity at all."""
    conn = sqlite3.connect(work / "plain.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE txs (id INTEGER PRIMARY KEY, hash BLOB, body BLOB)")
    conn.execute("CREATE INDEX txs_hash ON txs (hash)")
    started = time.perf_counter()
    for i in range(0, len(raws), 4000):
        rows = [(hashlib.sha256(r).digest(), r) for r in raws[i : i + 4000]]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO txs (hash, body) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(raws) / elapsed


def bench_pymerkle(raws: list[bytes], work: Path) -> float | None:
    """pymerkle's SQLite-backed RFC 6962 tree (a library a developer might pick instead)."""
    try:
        from pymerkle import SqliteTree
    except ImportError:
        return None
    tree = SqliteTree(str(work / "pymerkle.sqlite"))
    started = time.perf_counter()
    for i in range(0, len(raws), 4000):
        tree.append_entries(raws[i : i + 4000])
    elapsed = time.perf_counter() - started
    tree.con.close()
    return len(raws) / elapsed


def run_bench(n: int, log: Log = None) -> dict[str, Any]:
    say = log or (lambda _msg: None)
    tune_process()
    genesis = demo.demo_genesis(time_ms=1_700_000_000_000)
    signers = [demo.demo_admin(o["id"]) for o in demo.DEMO_ORGS]
    say(f"signing {n} transactions (client side, not timed)...")
    raws = make_transactions(genesis["chain"], n, signers)
    with tempfile.TemporaryDirectory(prefix="blokauto-bench-") as tmp:
        work = Path(tmp)
        say("Ed25519 verification rate...")
        ed1 = bench_ed25519(raws, signers[0], 1)
        ed2 = bench_ed25519(raws, signers[0], 2)
        say("plain SQLite inserts...")
        plain = bench_plain_sqlite(raws, work)
        say("pymerkle SQLite tree...")
        pym = bench_pymerkle(raws, work)
        say(f"Blok Auto: committing {n} transactions through the real path...")
        ledger = bench_ledger(raws, work, genesis)
    tps = ledger["tx_per_s"]
    lines = [
        f"blokauto (verified, executed, logged, state-proven, committed in WAL synchronous=NORMAL): {tps:,.0f} tx/s",
        f"ed25519 verify, 1 thread (physical limit per core): {ed1:,.0f} tx/s",
        f"ed25519 verify, 2 threads (physical limit on this machine): {ed2:,.0f} tx/s",
        f"plain sqlite inserts, same records, no integrity: {plain:,.0f} tx/s",
    ]
    if pym is not None:
        lines.append(f"pymerkle SqliteTree append (log only, no signatures or state): {pym:,.0f} tx/s")
    lines += [
        f"ratio blokauto / ed25519 2-thread limit: {tps / ed2:.2f}",
        f"ratio blokauto / plain sqlite: {tps / plain:.2f}",
        *([f"ratio blokauto / pymerkle: {tps / pym:.2f}"] if pym else []),
        f"inclusion proof: generate {ledger['proof_gen_us']:.0f} us, verify offline (with checkpoint signature) "
        f"{ledger['proof_verify_us']:.0f} us; state proof generate {ledger['state_proof_gen_us']:.0f} us",
        f"storage: {ledger['bytes_per_tx']:,.0f} bytes per transaction (log, state, state tree, indexes)",
        "memory (RSS, MB) before and after each quarter of the run: "
        + " -> ".join(f"{m:.0f}" for m in ledger["rss_mb_by_quarter"]),
        f"blocks: {ledger['blocks']}, transactions: {n}, cpus: {os.cpu_count()}",
    ]
    return {"transactions": n, "blokauto": ledger, "ed25519_1_thread": ed1, "ed25519_2_threads": ed2,
            "plain_sqlite": plain, "pymerkle": pym, "lines": lines}
