"""The demo's sample fleet: seeded through the real node, every story visible in the state and
the log, nothing refused but the one odometer rollback, deterministic, and auditable."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from blokauto import demo
from blokauto.contracts import governance
from blokauto.contracts.registry import load_all
from blokauto.crypto import canonical
from blokauto.demo_fleet import ROLE_YEARS, FleetSummary, seed_fleet
from blokauto.ledger.audit import audit
from blokauto.ledger.store import Store
from blokauto.node import Node, genesis_known_keys, init_ledger

FLEET = 40
SEED = 7
DEMO_TXS = 2 * len(demo.DEMO_ORGS)      # what seed_demo writes before the fleet


def new_ledger(data: Path) -> None:
    init_ledger(data, demo.demo_genesis(time_ms=1_700_000_000_000), demo.OPERATOR_ORG,
                demo.demo_node_key(demo.OPERATOR_ORG).signing_key)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, FleetSummary]]:
    data = tmp_path_factory.mktemp("fleet") / "node"
    new_ledger(data)
    demo.seed_demo(data)
    with Node(data) as node:
        summary = seed_fleet(node, vehicles=FLEET, seed=SEED)
        yield node, summary


def vehicle(node: Node, vin: str) -> dict[str, Any]:
    record = node.read_state(f"vehicle/{vin}")
    assert record is not None, vin
    return dict(record)


def leaves_of(node: Node, vin: str) -> list[dict[str, Any]]:
    """Every leaf naming the VIN, accepted or rejected, in log order."""
    indexes = node.store.subject_leaves("vin:" + vin)
    found = node.store.get_leaves(indexes)
    return [json.loads(found[i][2]) for i in indexes]


def test_everything_is_accepted_but_the_fraud_attempt(seeded: tuple[Node, FleetSummary]) -> None:
    _, summary = seeded
    assert summary.vehicles == FLEET
    assert summary.refused == 0
    assert summary.rejected == 1 and summary.rejection_codes == {"odometer_rollback": 1}
    assert summary.accepted == summary.transactions - 1
    assert summary.transactions == sum(summary.by_type.values()) > 20 * FLEET
    assert set(summary.notable) == set(ROLE_YEARS)
    assert len(set(summary.notable.values())) == len(ROLE_YEARS)


def test_notable_vehicles_have_their_stories(seeded: tuple[Node, FleetSummary]) -> None:
    node, summary = seeded
    notable = summary.notable
    stolen = vehicle(node, notable["stolen"])
    assert stolen["status"] == "stolen" and "stolen" in stolen["brands"]
    salvage = vehicle(node, notable["salvage"])
    assert salvage["status"] == "total_loss" and {"total_loss", "salvage"} <= set(salvage["brands"])
    assert salvage["accidents"] >= 1
    scrapped = vehicle(node, notable["scrapped"])
    assert scrapped["status"] == "destroyed" and "destroyed" in scrapped["brands"]
    assert [leaf["result"]["events"][0]["kind"] for leaf in leaves_of(node, notable["scrapped"])][-2:] == [
        "destroyed", "recycled"]
    exported = vehicle(node, notable["exported"])
    assert exported["status"] == "exported"
    cluster = vehicle(node, notable["cluster_replaced"])
    assert cluster["odometer_offset_km"] > 0 and cluster["odometer_flags"] == 0
    jump = vehicle(node, notable["odometer_jump"])
    assert jump["odometer_flags"] > 0
    liened = vehicle(node, notable["liened"])
    assert liened["liens"] and liened["liens"][0]["lender"] == "hanse-bank"
    fraud = vehicle(node, notable["odometer_fraud"])
    assert fraud["owners"] >= 2 and fraud["odometer_flags"] == 0    # sold on after the refused rollback
    clean = vehicle(node, notable["clean"])
    assert (clean["status"], clean["brands"], clean["liens"], clean["accidents"], clean["owners"]) == (
        "active", [], [], 0, 1)
    assert clean["odometer_flags"] == clean["odometer_offset_km"] == 0 and clean["events"] >= 5
    assert clean["last_inspection"]["passed"] is True


def test_the_rest_of_the_fleet_is_plausible(seeded: tuple[Node, FleetSummary]) -> None:
    node, summary = seeded
    records = [canonical.decode(v) for _, v in node.store.iter_state("vehicle/")]
    assert len(records) == FLEET
    assert len({r["maker"] for r in records}) >= 5 and all(r["maker"] != "Unknown" for r in records)
    assert all(2014 <= r["year"] <= 2025 for r in records)
    assert [r["vin"] for r in records if r["odometer_flags"]] == [summary.notable["odometer_jump"]]
    assert sorted(r["status"] for r in records if r["status"] != "active") == [
        "destroyed", "exported", "stolen", "total_loss"]
    assert all(r["owner"] is not None for r in records)
    assert all(r["powertrain"] not in ("bev", "phev") or r["battery"] for r in records)
    assert len({r["device_key"] for r in records}) == FLEET


def test_times_are_ordered_per_vehicle_and_never_in_the_future(seeded: tuple[Node, FleetSummary]) -> None:
    node, _ = seeded
    now = int(time.time() * 1000)
    for _, encoded in node.store.iter_state("vehicle/"):
        vin = canonical.decode(encoded)["vin"]
        times = [leaf["tx"]["body"]["payload"]["at_ms"] for leaf in leaves_of(node, vin)]
        assert all(a < b for a, b in pairwise(times)), vin
        assert times[-1] <= now


def test_the_fraud_attempt_stays_in_the_log_as_a_rejected_leaf(seeded: tuple[Node, FleetSummary]) -> None:
    node, summary = seeded
    vin = summary.notable["odometer_fraud"]
    leaves = leaves_of(node, vin)
    rejected = [leaf for leaf in leaves if leaf["result"]["status"] != "ok"]
    assert len(rejected) == 1
    attempt = rejected[0]
    assert attempt["result"]["code"] == "odometer_rollback"
    body = attempt["tx"]["body"]
    assert body["type"] == "vehicle.odometer" and body["signer"] == demo.demo_member("quickfix").did
    before = [leaf for leaf in leaves if leaf["result"]["status"] == "ok"
              and leaf["tx"]["body"]["payload"]["at_ms"] < body["payload"]["at_ms"]]
    last_km = max(leaf["tx"]["body"]["payload"].get("odometer_km", 0) for leaf in before)
    assert body["payload"]["odometer_km"] < last_km * 2 // 3     # far below, not a slip
    kinds_after = [leaf["result"]["events"][0]["kind"] for leaf in leaves
                   if leaf["result"]["status"] == "ok" and leaf["tx"]["body"]["payload"]["at_ms"]
                   > body["payload"]["at_ms"]]
    assert "transferred" in kinds_after


def test_the_seeded_ledger_passes_the_full_audit(seeded: tuple[Node, FleetSummary]) -> None:
    node, summary = seeded
    store = Store(node.data_dir)
    try:
        stored = store.get_meta("genesis")
        assert stored is not None
        genesis = canonical.decode(stored)
        report = audit(store, load_all(), governance.apply_genesis, genesis_known_keys(genesis))
    finally:
        store.close()
    assert report.ok, report.problems
    assert report.transactions == DEMO_TXS + summary.transactions


def test_same_parameters_same_vehicles(seeded: tuple[Node, FleetSummary], tmp_path: Path) -> None:
    node, summary = seeded
    data = tmp_path / "again"
    new_ledger(data)
    total = demo.seed_demo(data, fleet=FLEET, parts=False)    # the `init --demo --fleet` path, default seed
    store = Store(data)
    try:
        vins = [k for k, _ in store.iter_state("vehicle/")]
        logged = store.writer.execute("SELECT COUNT(*) FROM leaves").fetchone()[0]
    finally:
        store.close()
    assert vins == [k for k, _ in node.store.iter_state("vehicle/")]
    assert total == logged
    assert abs(total - (DEMO_TXS + summary.transactions)) <= 2     # lives end "now", a moment later


def test_the_list_filter_index_matches_the_records(seeded: tuple[Node, FleetSummary]) -> None:
    """``facets`` holds exactly the filter values of every current vehicle record: status changes
    (a theft, a total loss) moved their rows; nothing stale is left."""
    from blokauto.ledger.store import facet_values

    node, _ = seeded
    records = dict(node.store.iter_state("vehicle/"))
    expected = {(f, v, key) for key, value in records.items() for f, v in facet_values(key, value)}
    stored = set(node.store.reader().execute("SELECT facet, value, k FROM facets").fetchall())
    assert stored == expected
    assert {v for f, v, _ in stored if f == "status"} > {"active"}   # the fleet has changed statuses


def test_filtered_vehicle_lists_are_what_a_scan_finds(seeded: tuple[Node, FleetSummary]) -> None:
    """Every filter and combination of filters, paged 7 at a time, lists exactly the vehicles a scan
    of the records finds, in VIN order."""
    from blokauto.reports.queries import FILTERS, list_vehicles

    node, _ = seeded
    records = [canonical.decode(v) for _, v in node.store.iter_state("vehicle/")]
    combos: list[dict[str, str | int]] = [{}]
    for field in FILTERS:
        combos += [{field: value} for value in sorted({r[field] for r in records}, key=str)]
        combos.append({field: "no such value" if field != "year" else 1901})
    sample = records[len(records) // 2]
    combos += [{"maker": sample["maker"], "year": sample["year"]},
               {"status": "active", "powertrain": sample["powertrain"]},
               {"maker": sample["maker"], "model": sample["model"], "year": sample["year"], "status": sample["status"]},
               {"status": "stolen", "maker": "no such maker"}]
    for filters in combos:
        want = sorted(r["vin"] for r in records if all(r.get(k) == v for k, v in filters.items()))
        got: list[str] = []
        after = ""
        while True:
            page = list_vehicles(node.store, filters, after, limit=7)
            got += [item["vin"] for item in page["items"]]
            if page["next"] is None:
                break
            after = page["next"]
        assert got == want, filters


def test_a_ledger_from_before_the_index_gets_it_on_open(seeded: tuple[Node, FleetSummary], tmp_path: Path) -> None:
    """An older ledger (no ``facets`` table) has it built from its records when opened, and the audit
    names a tampered row of it."""
    import sqlite3

    node, _ = seeded
    copy = tmp_path / "node"
    copy.mkdir()
    source = sqlite3.connect(node.data_dir / "ledger.sqlite")
    target = sqlite3.connect(copy / "ledger.sqlite")
    source.backup(target)
    source.close()
    original = set(target.execute("SELECT facet, value, k FROM facets").fetchall())
    target.execute("DROP TABLE facets")
    target.commit()
    target.close()
    store = Store(copy)
    try:
        assert set(store.writer.execute("SELECT facet, value, k FROM facets").fetchall()) == original
        store.writer.execute("UPDATE facets SET value = 'stolen' WHERE facet = 'status' AND value = 'active' "
                             "AND k = (SELECT min(k) FROM facets WHERE facet = 'status' AND value = 'active')")
        genesis = canonical.decode(store.get_meta("genesis") or b"{}")
        report = audit(store, load_all(), governance.apply_genesis, genesis_known_keys(genesis))
    finally:
        store.close()
    assert not report.ok and any("list-filter index entry" in p for p in report.problems), report.problems
