"""Report speed: a fleet committed through the real path, then the reads buyers and members make.

Measured per call, with the 99th percentile: the JSON report bundle of one vehicle with every
proof (built in one read snapshot and encoded, as the API does; and through the HTTP API
in-process), the public VIN check, and the offline verification of a 50-event bundle. Events are
the realistic mix (services, device odometer readings, inspections) with backdated times.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from blokauto import demo
from blokauto.contracts.registry import load_all
from blokauto.crypto.keys import Signer
from blokauto.errors import InputError
from blokauto.ledger.chain import Ledger
from blokauto.ledger.store import Store
from blokauto.ledger.tx import SignedTx, decode_batch, sign_tx
from blokauto.node import Node, NodeConfig, init_ledger, read_node_key
from blokauto.reports.bundle import build_bundle, verify_bundle
from blokauto.reports.history import public_summary
from blokauto.reports.parts import vehicle_recalls
from blokauto.reports.queries import list_vehicles
from blokauto.vin import with_check_digit

Log = Callable[[str], None] | None
FLEET_KEY = "bench_fleet"
DAY_MS = 86_400_000
WMIS = ("WBA", "WVW", "VF1", "TMB", "YV1", "ZFA")
VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def fleet_vin(n: int) -> str:
    """A distinct valid VIN per number (European WMIs: no mandatory check digit; we set it anyway)."""
    serial = f"{n:06d}"
    vds = "".join(VIN_CHARS[(n // 7 ** k) % len(VIN_CHARS)] for k in range(5))
    return with_check_digit(f"{WMIS[n % len(WMIS)]}{vds}0K{n % 10}{serial[-6:]}"[:17])


def _sign_round(args: tuple[str, int, int, int, int, int, int]) -> list[bytes]:
    """Signed transactions of one round (all vehicles' k-th event), in a worker process."""
    chain, round_no, first, count, events, start_ms, nonce_base = args
    maker, shop = demo.demo_admin("nordwerk"), demo.demo_admin("werkstatt-berg")
    out = []
    for n in range(first, first + count):
        vin = fleet_vin(n)
        if round_no == 0:
            out.append(sign_tx(chain, "vehicle.register", maker, n + 1, {
                "vin": vin, "model": "Fleet " + str(n % 9), "year": 2020, "powertrain": "ice",
                "device_key": Signer.deterministic(f"bench/device/{n}").did, "at_ms": start_ms}))
            continue
        at = start_ms + round_no * (5 * 365 * DAY_MS // events)
        km = round_no * 1_500 + n % 997
        if round_no % 4 == 0:
            device = Signer.deterministic(f"bench/device/{n}")
            out.append(sign_tx(chain, "vehicle.odometer", device, round_no, {"vin": vin, "odometer_km": km,
                                                                              "at_ms": at}))
        else:
            nonce = nonce_base + (n - first) + 1
            out.append(sign_tx(chain, "vehicle.service", shop, nonce, {
                "vin": vin, "odometer_km": km, "at_ms": at, "operations": ["oil and filter change", "inspection"],
                "parts": [{"part_number": "11428575211", "quantity": 1}]}))
    return out


COHORT = 50_000      # vehicles whose whole histories are committed before the next ones start
JOB = 5_000          # transactions per signing job
JOBS_PER_BLOCK = 4   # a block holds 20,000 transactions: fewer, larger commits share more of the state tree's paths
IN_FLIGHT = 8        # signing jobs ahead of the committer (bounds memory)
BUILD_PAGE_CACHE_KIB = 1_048_576   # the build's SQLite page cache: the indexes a cohort touches stay in it
PROGRESS_KEY = "bench_fleet_jobs"


def fleet_plan(vehicles: int, events: int) -> list[tuple[int, int, int, int]]:
    """Every signing job of the fleet in commit order: (round, first vehicle, count, workshop nonce base).

    Cohorts keep the committer's working set (vehicle records, state-tree paths) in its caches, as a
    region's or a year's vehicles would be; within a cohort events arrive round by round, so blocks
    interleave many vehicles' histories."""
    plan, shop_nonce = [], 0
    for cohort in range(0, vehicles, COHORT):
        size = min(COHORT, vehicles - cohort)
        for round_no in range(events + 1):
            uses_shop = round_no > 0 and round_no % 4 != 0
            for first in range(cohort, cohort + size, JOB):
                count = min(JOB, cohort + size - first)
                plan.append((round_no, first, count, shop_nonce))
                if uses_shop:
                    shop_nonce += count
    return plan


def _sign_and_check(args: tuple[str, int, int, int, int, int, int]) -> bytes:
    """A signing job plus the node's stateless checks (schema, payload, every signature), in a worker."""
    from blokauto.node import check_stateless_batch

    raws = _sign_round(args)
    encoded, refusals = check_stateless_batch(raws, args[0])
    if refusals:
        raise RuntimeError(f"bench transaction refused by the stateless checks: {refusals[0]}")
    return encoded


def _nice_worker() -> None:
    os.nice(10)   # signing and checks use what the committer leaves


def build_fleet(data: Path, vehicles: int, events: int, say: Callable[[str], None],
                max_jobs: int | None = None) -> int:
    """Commit ``vehicles`` registrations and ``events`` further events each into the ledger at ``data``;
    returns the log size. Resumes where an interrupted build stopped (the plan is deterministic and
    each block records how many of its jobs are done); ``max_jobs`` stops after that many jobs.

    Transactions are signed and put through the node's stateless checks on two worker processes,
    then executed and committed by :meth:`Ledger.apply_block` in blocks of 20,000, exactly as the
    node's committer does, without the submission queue in between."""
    store = Store(data)
    store.writer.execute(f"PRAGMA cache_size=-{BUILD_PAGE_CACHE_KIB}")
    store.start_checkpointer()
    _, signer = read_node_key(data)
    ledger = Ledger(store, load_all(), signer, state_cache_entries=4 * COHORT, tree_cache_nodes=4_000_000)
    ledger.prechecked = True
    try:
        chain = ledger.chain
        genesis_ms = int(ledger.genesis["time_ms"])
        start_ms = genesis_ms + 365 * DAY_MS
        plan = fleet_plan(vehicles, events)
        done = int(store.get_meta(PROGRESS_KEY) or b"0")
        if done:
            say(f"  resuming after {done:,} of {len(plan):,} jobs")
        todo = plan[done:] if max_jobs is None else plan[done : done + max_jobs]
        jobs = ((chain, r, first, count, events, start_ms, nonce) for r, first, count, nonce in todo)
        context = multiprocessing.get_context("spawn")
        started, last_say, committed = time.perf_counter(), 0.0, 0
        with ProcessPoolExecutor(2, mp_context=context, initializer=_nice_worker) as pool:
            ahead: deque[Future[bytes]] = deque(pool.submit(_sign_and_check, job)
                                                for job in itertools.islice(jobs, IN_FLIGHT))
            while ahead:
                txs: list[SignedTx] = []
                for _ in range(min(JOBS_PER_BLOCK, len(ahead))):
                    txs += decode_batch(ahead.popleft().result())
                    done += 1
                    nxt = next(jobs, None)
                    if nxt is not None:
                        ahead.append(pool.submit(_sign_and_check, nxt))
                committed += len(txs)
                result = ledger.apply_block(txs, int(time.time() * 1000), {PROGRESS_KEY: b"%d" % done})
                refused = [o for o in result.outcomes if o.receipt is None or o.receipt["status"] != "ok"]
                if refused:
                    raise RuntimeError(f"bench transaction refused: {refused[0].receipt or refused[0].error}")
                now = time.perf_counter()
                if now - last_say > 30:
                    last_say = now
                    say(f"  job {done:,}/{len(plan):,}: log size {ledger.head.log_size:,}, "
                        f"{committed / (now - started):,.0f} tx/s")
        return ledger.head.log_size
    finally:
        store.close()


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def disk_read_bytes() -> int | None:
    """Bytes this process has had read from storage (page-cache hits excluded), or None if unknown."""
    try:
        with open("/proc/self/io") as fh:
            for line in fh:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run_report_bench(vehicles: int = 2_000, events: int = 20, samples: int = 300, log: Log = None,
                     data_dir: Path | None = None, seed: int | None = None) -> dict[str, Any]:
    """With ``data_dir`` the fleet ledger is kept there: built (or its build resumed) on the first run,
    measured as it is on later runs with the same size. Otherwise it lives in a temporary directory.

    The vehicles measured are drawn with ``seed`` (a fresh one by default, printed), so a run on a kept
    ledger reads vehicles no earlier run has brought into memory: cold reads are what a node serving
    a million vehicles mostly does."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="blokauto-bench-reports-") as tmp:
            return _report_bench(Path(tmp) / "node", vehicles, events, samples, log or (lambda _m: None), seed)
    return _report_bench(Path(data_dir), vehicles, events, samples, log or (lambda _m: None), seed)


def _report_bench(data: Path, vehicles: int, events: int, samples: int, say: Callable[[str], None],
                  seed: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from blokauto.api.app import create_app

    label = f"{vehicles}x{events}".encode()
    if (data / "ledger.sqlite").exists():
        store = Store(data)
        try:
            built_for = store.get_meta(FLEET_KEY)
        finally:
            store.close()
        if built_for is not None and built_for != label:
            raise InputError(f"{data} holds a fleet of {built_for.decode()} (vehicles x events), not "
                             f"{label.decode()}; use another directory", code="bench_data_mismatch")
    else:
        built_for = None
        genesis = demo.demo_genesis(time_ms=int(time.time() * 1000) - 7 * 365 * DAY_MS)
        init_ledger(data, genesis, demo.OPERATOR_ORG, demo.demo_node_key(demo.OPERATOR_ORG).signing_key)
    build_s = 0.0
    if built_for is None:
        say(f"reports: committing {vehicles:,} vehicles with {events} events each...")
        t0 = time.perf_counter()
        build_fleet(data, vehicles, events, say)
        build_s = time.perf_counter() - t0
        store = Store(data)
        try:
            store.put_meta({FLEET_KEY: label})
        finally:
            store.close()
    else:
        say(f"reports: measuring the fleet already committed in {data}")
    with Node(data, NodeConfig()) as node:
        node.prewarmed.wait(600)   # what a node does at start, before it serves (see Store.prewarm)
        prewarm = node.prewarm_result
        size = node.ledger.head.log_size
        keys, quorum = node.checkpoint_keys(), node.checkpoint_quorum()
        rng = random.Random(seed)
        picks = [fleet_vin(rng.randrange(vehicles)) for _ in range(samples)]
        http_picks = [fleet_vin(rng.randrange(vehicles)) for _ in range(samples // 2)]
        summary_picks = [fleet_vin(rng.randrange(vehicles)) for _ in range(samples)]
        http_summary_picks = [fleet_vin(rng.randrange(vehicles)) for _ in range(samples // 2)]
        it = iter(picks)
        read_before = disk_read_bytes()
        report_ms = timed(lambda: json.dumps(build_bundle(node.store, next(it), keys, quorum)).encode(), samples)
        read_after = disk_read_bytes()
        it = iter(picks)      # the same vehicles again: what their pages in memory leave
        warm_ms = timed(lambda: json.dumps(build_bundle(node.store, next(it), keys, quorum)).encode(), samples)
        it_s = iter(summary_picks)
        def vin_check() -> dict[str, Any]:   # what GET /v1/vehicles/{vin}/summary answers, recalls included
            vin = next(it_s)
            record = node.read_state(f"vehicle/{vin}")
            return public_summary(record, vin, None if record is None else vehicle_recalls(node.store, record))

        summary_ms = timed(vin_check, samples)
        # a member's filtered vehicle list, one page of 50 from a random cursor: filters taken from
        # records drawn with the seed (the fleet's makers, years, statuses)
        list_picks = [node.read_state(f"vehicle/{fleet_vin(rng.randrange(vehicles))}") or {}
                      for _ in range(samples // 3)]
        list_args = [({"maker": r.get("maker")}, {"status": r.get("status"), "year": r.get("year")},
                      {"maker": r.get("maker"), "model": r.get("model"), "powertrain": r.get("powertrain")})[n % 3]
                     for n, r in enumerate(list_picks)]
        it_l = iter(list_args)
        list_ms = timed(lambda: list_vehicles(node.store, next(it_l), fleet_vin(rng.randrange(vehicles)), 50),
                        len(list_args))
        with TestClient(create_app(node)) as tc:
            owner = demo.demo_admin("kba-registry")   # a registry member may read every report
            from blokauto.client import Client

            client = Client("http://testserver", owner, transport=tc._transport)
            headers = {"Authorization": f"Bearer {client.login()}"}
            it_h = iter(http_picks)
            http_report_ms = timed(lambda: tc.get(f"/v1/vehicles/{next(it_h)}/report", headers=headers)
                                   .raise_for_status(), len(http_picks))
            it_h2 = iter(http_summary_picks)
            http_summary_ms = timed(lambda: tc.get(f"/v1/vehicles/{next(it_h2)}/summary").raise_for_status(),
                                    len(http_summary_picks))
        big = json.loads(json.dumps(build_bundle(node.store, picks[0], keys, quorum)))
        verify_ms = timed(lambda: verify_bundle(big, keys, quorum), 50)
        db_bytes = sum(p.stat().st_size for p in data.glob("ledger.sqlite*"))
    per_vehicle = events + 1
    lines = [
        f"reports ledger: {vehicles:,} vehicles, {vehicles * per_vehicle:,} events, log size {size:,}, "
        f"{db_bytes / 2**20:,.0f} MB on disk, "
        + (f"built in {build_s:,.0f} s ({size / build_s:,.0f} tx/s)" if build_s else "built by an earlier run")
        + ("" if prewarm is None else
           f"; the node's start-up prewarm read its log nodes and leaf hashes ({prewarm[0] / 2**20:,.0f} MB) "
           f"in {prewarm[1]:.1f} s"),
        f"report JSON bundle of one vehicle ({per_vehicle} events, all proofs), node side, {samples} vehicles "
        f"not read before (seed {seed}): p50 {statistics.median(report_ms):.1f} ms, "
        f"p99 {percentile(report_ms, 0.99):.1f} ms (target p99 <= 20 ms)"
        + ("" if read_before is None or read_after is None else
           f"; read from disk: {(read_after - read_before) / samples / 1024:,.0f} KiB per report"),
        f"  the same vehicles again (their pages now in memory): p50 {statistics.median(warm_ms):.1f} ms, "
        f"p99 {percentile(warm_ms, 0.99):.1f} ms",
        f"report JSON bundle through the HTTP API (in-process, other vehicles not read before): "
        f"p50 {statistics.median(http_report_ms):.1f} ms, p99 {percentile(http_report_ms, 0.99):.1f} ms",
        f"public VIN check: p50 {statistics.median(summary_ms):.3f} ms, p99 {percentile(summary_ms, 0.99):.3f} ms "
        f"(target p99 <= 2 ms); through the HTTP API: p99 {percentile(http_summary_ms, 0.99):.2f} ms",
        f"vehicle list (members), a filtered page of 50 from a random cursor (maker; status and year; maker, "
        f"model and powertrain): p50 {statistics.median(list_ms):.2f} ms, p99 {percentile(list_ms, 0.99):.2f} ms",
        f"offline verification of a {len(big['events'])}-event bundle: p50 {statistics.median(verify_ms):.1f} ms, "
        f"p99 {percentile(verify_ms, 0.99):.1f} ms (target for 50 events <= 50 ms)",
    ]
    return {"vehicles": vehicles, "events_per_vehicle": per_vehicle, "log_size": size, "db_bytes": db_bytes,
            "build_s": build_s, "seed": seed, "report_ms": report_ms, "report_warm_ms": warm_ms,
            "summary_ms": summary_ms, "verify_ms": verify_ms,
            "http_report_ms": http_report_ms, "http_summary_ms": http_summary_ms, "list_ms": list_ms,
            "lines": lines}
