"""The demo's parts stories on a sample fleet: the chip's handoffs from Taiwan to a car in Germany,
the brake-pad recall listing exactly the cars still carrying a faulty pad, the counterfeit signal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from blokauto import demo
from blokauto.demo_fleet import seed_fleet
from blokauto.demo_parts import CAMPAIGN, NEW_CAR, TRACED_CHIP, PartsSummary, seed_parts
from blokauto.node import Node
from blokauto.reports import parts
from tests.test_demo_fleet import new_ledger


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, PartsSummary]]:
    data = tmp_path_factory.mktemp("parts") / "node"
    new_ledger(data)
    demo.seed_demo(data)
    with Node(data) as node:
        seed_fleet(node, vehicles=120, seed=7)
        yield node, seed_parts(node)


def test_everything_went_through(seeded: tuple[Node, PartsSummary]) -> None:
    node, summary = seeded
    assert summary.refused == 0 and summary.transactions > 50
    for org in ("formosa-semi", "meridian-freight"):    # admitted by a vote of the consortium
        assert node.read_state(f"id/org/{org}")["status"] == "active"


def test_the_chip_is_traced_from_taiwan_to_the_car(seeded: tuple[Node, PartsSummary]) -> None:
    node, _ = seeded
    history = parts.part_history(node.store, TRACED_CHIP)
    trail = [(e["kind"], e["org"], e.get("to"), e.get("zone")) for e in reversed(history["events"])]
    assert trail == [
        ("registered", "formosa-semi", None, None),
        ("shipped", "formosa-semi", "meridian-freight", "TW-TPE"), ("received", "meridian-freight", None, None),
        ("shipped", "meridian-freight", "kestrel-parts", "DE-STR"), ("received", "kestrel-parts", None, None),
        ("shipped", "kestrel-parts", "nordwerk", "DE-LEJ"), ("received", "nordwerk", None, None),
        ("installed", "nordwerk", None, None),
    ]
    check = parts.authenticity(node.store, TRACED_CHIP, member=True)
    assert check["genuine"] and check["location"]["vin"] == NEW_CAR and check["maker"]["id"] == "formosa-semi"


def test_the_recall_lists_exactly_the_cars_still_carrying_a_faulty_pad(seeded: tuple[Node, PartsSummary]) -> None:
    node, summary = seeded
    report = parts.campaign_report(node.store, CAMPAIGN)
    figures = summary.recall
    assert figures["affected"] == figures["fitted_faulty"] - figures["swapped_before"] > 0
    assert (report["affected"], report["remedied"]) == (figures["affected"], figures["remedied"])
    assert report["open"] == figures["affected"] - figures["remedied"]
    for vehicle in report["vehicles"]:
        assert vehicle["owner"] == node.read_state(f"vehicle/{vehicle['vin']}")["owner"]
        assert all(s.startswith("BP-2409-A-") for s in vehicle["serials"])
    signal = parts.authenticity(node.store, "BP-2409-X-00001")
    assert not signal["registered"] and [s["code"] for s in signal["counterfeit_signals"]] == ["part_not_registered"]


def test_software_telematics_premium_and_crash_claim(seeded: tuple[Node, PartsSummary]) -> None:
    from blokauto.demo_vehicledata import seed_vehicledata

    node, _ = seeded
    summary = seed_vehicledata(node)
    vin = summary.notable["insured_car"]
    premium = node.read_state(f"premium/{vin}/0")
    assert premium["aggregates"]["samples"] == 30 * 3_600 and premium["aggregates"]["night_distance_m"] > 0
    assert premium["total_cents"] == sum(t["cents"] for t in premium["terms"]) > 0
    claim = node.read_state(f"claim/{summary.notable['claim']}")
    assert claim["automatic"] and claim["crash"] == summary.notable["crash_record"] and claim["flags"] == []
    software = node.read_state(f"vehicle/{summary.notable['software_car']}")["software"]["brake"]
    assert software["hardware_id"] == "brake-ecu-v2" and software["version"] in (1, 2)
