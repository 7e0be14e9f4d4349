"""Parts speed: bulk registration through the real path, the authenticity check, recall lists.

1. Registration: 20,000-part batches signed by the parts maker, submitted as an API client would
   (``Node.submit``: stateless checks incl. the Merkle root in a worker process, execution and
   commit in the committer), in parts/s; beside same-run baselines: SHA-256 of the part leaves
   (the root alone) and SQLite inserting the same serial index rows (the commit alone).
2. A fleet built through the real path: parts shipped to the plant, received, fitted 30 per
   vehicle with ``part.install``; a recall campaign on one lot; then the authenticity check of
   random serials, the campaign's affected-vehicle list, and a part certificate built and verified.
3. The affected-vehicle list at full scale (1,000,000 vehicles, 30,000,000 fitted parts): the
   production query (:func:`blokauto.reports.parts.campaign_report`) over a store whose index and
   vehicle records are written directly in the shape the contracts write them (building 30M
   installs through the contracts would take hours here); the campaign's lot is on 10,000 vehicles.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blokauto import demo
from blokauto.bench_reports import percentile, timed
from blokauto.contracts.parts import batch_leaves, compute_batch_root
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.ledger.store import Store
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node, genesis_known_keys, init_ledger
from blokauto.reports import parts as part_queries
from blokauto.vin import with_check_digit

Log = Callable[[str], None] | None
PN = "BENCH-PAD-1"
MODEL = "Bench 1"


def timed_ms(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    times = timed(fn, runs)
    return {"p50_ms": statistics.median(times), "p99_ms": percentile(times, 0.99)}


def fleet_vin(n: int) -> str:
    return with_check_digit(f"1HGCV1F30RB{n:06d}")


def baseline_hashing(serials: list[str]) -> float:
    """Parts/s of SHA-256 alone over the batch's leaves (leaf hashes, no tree)."""
    leaves = batch_leaves(PN, serials, None)
    sha = hashlib.sha256
    t0 = time.perf_counter()
    for leaf in leaves:
        sha(b"\x00" + leaf).digest()
    return len(leaves) / (time.perf_counter() - t0)


def baseline_sqlite(work: Path, serials: list[str]) -> float:
    """Rows/s of SQLite (WAL, synchronous=NORMAL) inserting the serial index rows alone."""
    conn = sqlite3.connect(work / "baseline.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE ix (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID")
    rows = [(f"serial/{s}", f"0123456789abcdef:{i}") for i, s in enumerate(serials)]
    t0 = time.perf_counter()
    for start in range(0, len(rows), 20_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO ix (k, v) VALUES (?, ?)", rows[start:start + 20_000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed


def register_batches(node: Node, maker: Signer, total: int, batch: int, nonce: int, prefix: str,
                     lot_of: Callable[[int], str] | None = None, threads: int = 2) -> tuple[float, int]:
    """Sign (untimed), then submit from ``threads`` client threads; returns (parts/s, next nonce)."""
    raws = []
    for b in range(-(-total // batch)):
        ids = [f"{prefix}{b:04d}-{i:06d}" for i in range(min(batch, total - b * batch))]
        lot = lot_of(b) if lot_of else f"{prefix}L{b}"
        raws.append(sign_tx(node.chain, "part.register_batch", maker, nonce, {
            "part_number": PN, "lot": lot, "plant": "Bench plant", "produced_ms": 1_700_000_000_000,
            "serials": ids, "root": compute_batch_root(PN, ids, None)}))
        nonce += 1
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    # nonces must arrive in order: each thread takes the next transaction under the lock
    queue = iter(raws)

    def client() -> None:
        while True:
            with lock:
                raw = next(queue, None)
                if raw is None:
                    return
                future = node.submit(raw)
            outcome = future.result(timeout=600)
            with lock:
                results.append(outcome)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    bad = [r for r in results if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"registration refused: {bad[0]}")
    return total / elapsed, nonce


def build_fleet(node: Node, vehicles: int, per_vehicle: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Parts made, shipped to the plant, received, and fitted to ``vehicles`` new vehicles."""
    supplier, plant = demo.demo_admin("kestrel-parts"), demo.demo_admin("nordwerk")
    chain = node.chain
    total = vehicles * per_vehicle
    lots = 10
    # lot k holds every part fitted to vehicles v with v % lots == k: each lot is on vehicles/lots vehicles
    ids = [f"FLEET-{v:06d}-{j:02d}" for v in range(vehicles) for j in range(per_vehicle)]
    by_lot: dict[int, list[str]] = {}
    for v in range(vehicles):
        by_lot.setdefault(v % lots, []).extend(ids[v * per_vehicle:(v + 1) * per_vehicle])
    nonce_s = int(node.read_state(f"nonce/{supplier.did}") or 0) + 1
    raws = []
    for lot, serials in by_lot.items():
        for start in range(0, len(serials), 20_000):
            chunk = serials[start:start + 20_000]
            raws.append(sign_tx(chain, "part.register_batch", supplier, nonce_s, {
                "part_number": PN, "lot": f"FL{lot}", "plant": "Bench plant", "produced_ms": 1_700_000_000_000,
                "serials": chunk, "root": compute_batch_root(PN, chunk, None)}))
            nonce_s += 1
    for start in range(0, total, 1_000):
        raws.append(sign_tx(chain, "part.ship", supplier, nonce_s, {
            "serials": ids[start:start + 1_000], "to": "nordwerk", "zone": "DE-LEJ"}))
        nonce_s += 1
    outcomes = [t.result(timeout=600) for t in node.submit_many(raws)]
    shipped = [o["tx"] for o in outcomes if any(e["type"] == "part.event" for e in o["events"])]
    nonce_p = int(node.read_state(f"nonce/{plant.did}") or 0) + 1
    raws = []
    for tx in shipped:
        raws.append(sign_tx(chain, "part.receive", plant, nonce_p, {"shipment": tx, "zone": "DE-LEJ"}))
        nonce_p += 1
    raws.append(sign_tx(chain, "part.approve", plant, nonce_p, {"part_number": PN, "models": [MODEL]}))
    nonce_p += 1
    for v in range(vehicles):
        raws.append(sign_tx(chain, "vehicle.register", plant, nonce_p, {
            "vin": fleet_vin(v), "model": MODEL, "year": 2024, "powertrain": "ice",
            "device_key": Signer.deterministic(f"bench/parts/device/{v}").did}))
        nonce_p += 1
    for v in range(vehicles):
        raws.append(sign_tx(chain, "part.install", plant, nonce_p, {
            "vin": fleet_vin(v), "serials": ids[v * per_vehicle:(v + 1) * per_vehicle]}))
        nonce_p += 1
    t0 = time.perf_counter()
    outcomes = [t.result(timeout=600) for t in node.submit_many(raws)]
    bad = [o for o in outcomes if o["status"] != "ok"]
    if bad:
        raise RuntimeError(f"fleet refused: {bad[0]}")
    say(f"  fleet: {vehicles:,} vehicles with {per_vehicle} parts each fitted through part.install "
        f"({time.perf_counter() - t0:.1f} s for receipts, registrations and installs)")
    campaign = sign_tx(chain, "recall.open", plant, nonce_p, {
        "campaign": "BENCH-R1", "title": "Bench recall", "remedy": "Replace",
        "parts": [{"part_number": PN, "lots": ["FL3"]}]})
    node.submit(campaign).result(timeout=60)
    return {"ids": ids, "lot_vehicles": vehicles // lots}


def synthetic_index(work: Path, vehicles: int, per_vehicle: int, hit: int, say: Callable[[str], None]) -> Store:
    """A store holding the recall query's inputs at full scale, written in the contracts' shapes."""
    from blokauto.contracts.recalls import recall_key

    store = Store(work / "index", synchronous="OFF", create=True)
    conn = store.writer
    owner = Signer.deterministic("bench/owner").did
    record = {"vin": "", "manufacturer": "nordwerk", "model": MODEL, "year": 2024, "owner": owner,
              "status": "active", "events": 3, "odometer_km": 12_345, "brands": [], "liens": [],
              "device_key": Signer.deterministic("bench/device").did, "registered_ms": 1_700_000_000_000}
    lots = max(1, vehicles // hit)
    t0 = time.perf_counter()
    vins = [fleet_vin(v) for v in range(vehicles)]
    # rows go in in key order (B-tree appends): part number j, lot, then VIN, as the index sorts them
    for j in range(per_vehicle):
        conn.execute("BEGIN")
        for lot in sorted(range(lots), key=str):
            rows = sorted((f"fitted/BENCH-PN-{j:02d}|L{lot}|{vins[v]}|S{v:07d}-{j:02d}",
                           f"nordwerk|{MODEL}|2024|{owner}") for v in range(lot, vehicles, lots))
            conn.executemany("INSERT INTO ix (k, v) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    for start in range(0, vehicles, 100_000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO state (k, v) VALUES (?, ?)", sorted(
            (f"vehicle/{vin}", canonical.encode({**record, "vin": vin})) for vin in vins[start:start + 100_000]))
        conn.execute("COMMIT")
    campaign = {"campaign": "FULL-R1", "title": "Brake pads", "remedy": "Replace", "hazard": "",
                "parts": [{"part_number": "BENCH-PN-07", "lots": ["L3"]}], "vin_ranges": [], "models": [],
                "year_from": None, "year_to": None, "scope": "nordwerk", "opened_by": "nordwerk",
                "opened_ms": 0, "status": "open", "remedied": 0, "tx": "0" * 64}
    conn.execute("INSERT INTO state (k, v) VALUES (?, ?)", (recall_key("FULL-R1"), canonical.encode(campaign)))
    say(f"  full-scale index: {vehicles:,} vehicles, {vehicles * per_vehicle:,} fitted-part rows written in "
        f"{time.perf_counter() - t0:.0f} s")
    return store


def run_parts_bench(parts: int = 400_000, fleet: int = 1_000, per_vehicle: int = 30,
                    index_vehicles: int = 100_000, samples: int = 200, log: Log = None) -> dict[str, Any]:
    say = log or (lambda _line: None)
    genesis = demo.demo_genesis(time_ms=int(time.time() * 1000))
    keys = genesis_known_keys(genesis)
    with tempfile.TemporaryDirectory(prefix="blokauto-parts-bench-") as tmp:
        work = Path(tmp)
        data = work / "node"
        init_ledger(data, genesis, demo.OPERATOR_ORG, demo.demo_node_key(demo.OPERATOR_ORG).signing_key)
        maker = demo.demo_admin("kestrel-parts")
        sample_ids = [f"BASE-{i:07d}" for i in range(min(parts, 200_000))]
        hash_rate = baseline_hashing(sample_ids)
        sqlite_rate = baseline_sqlite(work, sample_ids)
        with Node(data) as node:
            node.submit(sign_tx(node.chain, "part.define", maker, 1, {
                "part_number": PN, "description": "bench brake pad", "category": "brakes",
                "safety": True})).result(timeout=60)
            # warm-up (untimed): the first bulk check starts the node's worker processes
            _, nonce = register_batches(node, maker, 20_000, 20_000, 2, "WARM")
            say(f"parts: registering {parts:,} parts in 20,000-part batches ...")
            rate, _ = register_batches(node, maker, parts, 20_000, nonce, "REG")
            fleet_info = build_fleet(node, fleet, per_vehicle, say)
            rng = random.Random(7)
            registered = [f"REG{rng.randrange(parts // 20_000):04d}-{rng.randrange(20_000):06d}"
                          for _ in range(samples)]
            fitted = rng.sample(fleet_info["ids"], min(samples, len(fleet_info["ids"])))
            store = node.store
            auth_unmoved = timed_ms(lambda it=iter(registered * 2): part_queries.authenticity(store, next(it)),
                                    samples)
            auth_fitted = timed_ms(lambda it=iter(fitted * 2): part_queries.authenticity(store, next(it),
                                                                                        member=True), samples)
            recall = part_queries.campaign_report(store, "BENCH-R1")
            recall_fleet = timed_ms(lambda: part_queries.campaign_report(store, "BENCH-R1"), 30)
            cert = part_queries.build_certificate(store, fitted[0])
            cert_build = timed_ms(lambda it=iter(fitted * 2): part_queries.build_certificate(store, next(it)),
                                  min(samples, 50))
            cert_verify = timed_ms(lambda: part_queries.verify_certificate(cert, keys, 1), min(samples, 50))
        index_store = synthetic_index(work, index_vehicles, per_vehicle, 10_000 if index_vehicles >= 100_000
                                      else max(1, index_vehicles // 100), say)
        full = part_queries.campaign_report(index_store, "FULL-R1")
        recall_full = timed_ms(lambda: part_queries.campaign_report(index_store, "FULL-R1"), 20)
        index_store.close()
    result = {
        "register_parts_per_s": rate, "baseline_sha256_leaves_per_s": hash_rate,
        "baseline_sqlite_rows_per_s": sqlite_rate,
        "authenticity_unmoved": auth_unmoved, "authenticity_fitted": auth_fitted,
        "recall_fleet": {**recall_fleet, "affected": recall["affected"], "vehicles": fleet},
        "certificate_build": cert_build, "certificate_verify": cert_verify,
        "recall_full": {**recall_full, "affected": full["affected"], "vehicles": index_vehicles,
                        "fitted_parts": index_vehicles * per_vehicle},
    }
    result["lines"] = [
        f"parts: bulk registration through node.submit (20,000-part batches): {rate:,.0f} parts/s "
        f"(target >= 100,000)",
        f"  same-run baselines: SHA-256 of the leaves alone {hash_rate:,.0f}/s (ratio {rate / hash_rate:.2f}); "
        f"SQLite inserting the serial rows alone {sqlite_rate:,.0f}/s (ratio {rate / sqlite_rate:.2f})",
        f"  authenticity check: unmoved part p50 {auth_unmoved['p50_ms']:.2f} ms p99 {auth_unmoved['p99_ms']:.2f} ms; "
        f"fitted part p50 {auth_fitted['p50_ms']:.2f} ms p99 {auth_fitted['p99_ms']:.2f} ms (target <= 2 ms)",
        f"  recall list, fleet of {fleet:,} built through the contracts: {recall['affected']:,} affected vehicles "
        f"p50 {recall_fleet['p50_ms']:.1f} ms p99 {recall_fleet['p99_ms']:.1f} ms",
        f"  recall list at {index_vehicles:,} vehicles / {index_vehicles * per_vehicle:,} fitted parts "
        f"(index written directly): {full['affected']:,} affected vehicles with owners "
        f"p50 {recall_full['p50_ms']:.1f} ms p99 {recall_full['p99_ms']:.1f} ms (target <= 100 ms at 10,000)",
        f"  part certificate: build p50 {cert_build['p50_ms']:.2f} ms, offline verify p50 "
        f"{cert_verify['p50_ms']:.2f} ms",
    ]
    for line in result["lines"]:
        say(line)
    return result
