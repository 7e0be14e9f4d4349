"""Report speed: a fleet committed through the real path, then the reads buyers and members make.

Measured per call, with the 99th percentile: the JSON report bundle of one vehicle with every
proof (built in one read snapshot and encoded, as the API does; and through the HTTP API
in-process), the public VIN check, and the offline verification of a 50-event bundle. Events are
the realistic mix (services, device odometer readings, inspections) with backdated times.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from blokauto import demo
from blokauto.crypto.keys import Signer
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node, NodeConfig, init_ledger
from blokauto.reports.bundle import build_bundle, verify_bundle
from blokauto.reports.history import public_summary
from blokauto.vin import with_check_digit

Log = Callable[[str], None] | None
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


def build_fleet(node: Node, vehicles: int, events: int, say: Callable[[str], None]) -> int:
    """Commit ``vehicles`` registrations and ``events`` further events each; returns the log size."""
    chain, start_ms = node.chain, int(time.time() * 1000) - 6 * 365 * DAY_MS
    shop_nonce = 0
    batch = 5_000
    with ProcessPoolExecutor(2) as pool:
        for round_no in range(events + 1):
            jobs = []
            for first in range(0, vehicles, batch):
                count = min(batch, vehicles - first)
                jobs.append((chain, round_no, first, count, events, start_ms, shop_nonce + first))
            uses_shop = round_no > 0 and round_no % 4 != 0
            for raws in pool.map(_sign_round, jobs):
                futures = node.submit_many(raws)
                for f in futures:
                    receipt = f.result()
                    if receipt["status"] != "ok":
                        raise RuntimeError(f"bench transaction refused: {receipt}")
            if uses_shop:
                shop_nonce += vehicles
            if round_no % 10 == 0:
                say(f"  round {round_no}/{events}: log size {node.ledger.head.log_size:,}")
    return node.ledger.head.log_size


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


def run_report_bench(vehicles: int = 2_000, events: int = 20, samples: int = 300, log: Log = None) -> dict[str, Any]:
    say = log or (lambda _m: None)
    from fastapi.testclient import TestClient

    from blokauto.api.app import create_app

    genesis = demo.demo_genesis(time_ms=int(time.time() * 1000) - 7 * 365 * DAY_MS)
    with tempfile.TemporaryDirectory(prefix="blokauto-bench-reports-") as tmp:
        data = Path(tmp) / "node"
        init_ledger(data, genesis, demo.OPERATOR_ORG, demo.demo_node_key(demo.OPERATOR_ORG).signing_key)
        with Node(data, NodeConfig()) as node:
            say(f"reports: committing {vehicles:,} vehicles with {events} events each through the real path...")
            t0 = time.perf_counter()
            size = build_fleet(node, vehicles, events, say)
            build_s = time.perf_counter() - t0
            keys, quorum = node.checkpoint_keys(), node.checkpoint_quorum()
            rng = random.Random(11)
            picks = [fleet_vin(rng.randrange(vehicles)) for _ in range(samples)]
            it = iter(picks * 2)
            report_ms = timed(lambda: json.dumps(build_bundle(node.store, next(it), keys, quorum)).encode(), samples)
            it_s = iter(picks * 2)
            summary_ms = timed(lambda: public_summary(node.read_state(f"vehicle/{(v := next(it_s))}"), v), samples)
            with TestClient(create_app(node)) as tc:
                owner = demo.demo_admin("kba-registry")   # a registry member may read every report
                from blokauto.client import Client

                client = Client("http://testserver", owner, transport=tc._transport)
                headers = {"Authorization": f"Bearer {client.login()}"}
                it_h = iter(picks * 2)
                http_report_ms = timed(lambda: tc.get(f"/v1/vehicles/{next(it_h)}/report", headers=headers)
                                       .raise_for_status(), samples // 2)
                it_h2 = iter(picks * 2)
                http_summary_ms = timed(lambda: tc.get(f"/v1/vehicles/{next(it_h2)}/summary").raise_for_status(),
                                        samples // 2)
            big = json.loads(json.dumps(build_bundle(node.store, picks[0], keys, quorum)))
            verify_ms = timed(lambda: verify_bundle(big, keys, quorum), 50)
            db_bytes = sum(p.stat().st_size for p in data.glob("ledger.sqlite*"))
    per_vehicle = events + 1
    lines = [
        f"reports ledger: {vehicles:,} vehicles, {vehicles * per_vehicle:,} events, log size {size:,}, "
        f"{db_bytes / 2**20:,.0f} MB on disk, built in {build_s:,.0f} s ({size / build_s:,.0f} tx/s)",
        f"report JSON bundle of one vehicle ({per_vehicle} events, all proofs), node side: "
        f"p50 {statistics.median(report_ms):.1f} ms, p99 {percentile(report_ms, 0.99):.1f} ms (target p99 <= 20 ms)",
        f"report JSON bundle through the HTTP API (in-process): p50 {statistics.median(http_report_ms):.1f} ms, "
        f"p99 {percentile(http_report_ms, 0.99):.1f} ms",
        f"public VIN check: p50 {statistics.median(summary_ms):.3f} ms, p99 {percentile(summary_ms, 0.99):.3f} ms "
        f"(target p99 <= 2 ms); through the HTTP API: p99 {percentile(http_summary_ms, 0.99):.2f} ms",
        f"offline verification of a {len(big['events'])}-event bundle: p50 {statistics.median(verify_ms):.1f} ms, "
        f"p99 {percentile(verify_ms, 0.99):.1f} ms (target for 50 events <= 50 ms)",
    ]
    return {"vehicles": vehicles, "events_per_vehicle": per_vehicle, "log_size": size, "db_bytes": db_bytes,
            "build_s": build_s, "report_ms": report_ms, "summary_ms": summary_ms, "verify_ms": verify_ms,
            "http_report_ms": http_report_ms, "http_summary_ms": http_summary_ms, "lines": lines}
