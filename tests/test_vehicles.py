"""Vehicle scenarios driven through the SDK client against a real node, as the carmaker, dealer,
buyers, workshops, lender, insurer, registry and recycler of the demo consortium would:
registration, title, liens, status, the history chain and the odometer rules."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokauto.contracts.vehicle import DAY_MS, DEFAULT_OFFER_MS, MAX_ODOMETER_KM
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.demo import OPERATOR_ORG, demo_genesis, demo_node_key
from blokauto.errors import BlokError
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node, init_ledger
from blokauto.vin import parse_vin, with_check_digit
from tests.conftest import GENESIS_TIME_MS, demo_member, digest
from tests.worlds import (
    BMW_VIN,
    DEALER,
    DEVICE,
    DEVICE2,
    HONDA_VIN,
    HOUR_MS,
    INSURER,
    JAN_2027_MS,
    LENDER,
    MAKER,
    NORDBANK,
    OWNER1,
    OWNER2,
    OWNER3,
    RECYCLER,
    REGISTRY,
    STRANGER,
    UNKNOWN_VIN,
    WORKSHOP,
    World,
    registration,
    vehicle_event,
    wrong_check_digit,
)

# -- registration -------------------------------------------------------------------------------


def test_registration_is_the_birth_certificate(world: World) -> None:
    receipt = world.register(BMW_VIN, DEVICE, plant="Leipzig", color="blue", odometer_km=5)
    event = vehicle_event(receipt)
    block_time = world.reader.block(receipt["height"])["header"]["time_ms"]
    assert event == {"type": "vehicle.event", "vin": BMW_VIN, "kind": "registered", "seq": 1, "prev": None,
                     "at_ms": block_time, "org": "nordwerk", "odometer_km": 5, "flagged": False}
    record = world.record(BMW_VIN)
    assert record is not None
    assert (record["maker"], record["wmi"], record["country"], record["region"]) == (
        "BMW", "WBA", "Germany", "Europe")
    assert (record["manufacturer"], record["model"], record["year"], record["plant"], record["color"]) == (
        "nordwerk", "Kestrel 3", 2012, "Leipzig", "blue")
    assert (record["status"], record["brands"], record["owner"], record["owners"], record["liens"]) == (
        "active", [], None, 0, [])
    assert (record["head"], record["events"], record["registered_ms"], record["last_at_ms"]) == (
        receipt["tx"], 1, block_time, block_time)
    assert (record["device_key"], record["odometer_km"], record["odometer_flags"]) == (DEVICE.did, 5, 0)
    assert world.state(f"device/{DEVICE.did}") == {"vin": BMW_VIN}

    battery = {"chemistry": "NMC 811", "capacity_wh": 77_000, "cells": 288}
    world.register(HONDA_VIN, DEVICE2, year=2024, powertrain="bev", battery=battery)
    honda = world.record(HONDA_VIN)
    assert honda is not None
    assert (honda["maker"], honda["region"], honda["year"], honda["battery"]) == (
        "Honda", "North America", 2024, battery)
    assert world.state(f"device/{DEVICE2.did}") == {"vin": HONDA_VIN}


def test_duplicate_vin_is_a_rejected_leaf(world: World) -> None:
    first = world.register(BMW_VIN, DEVICE)
    duplicate = world.rejected(MAKER, "vehicle.register", registration(BMW_VIN, DEVICE2), "vin_registered")
    record = world.record(BMW_VIN)
    assert record is not None and record["head"] == first["tx"] and record["device_key"] == DEVICE.did
    assert world.state(f"device/{DEVICE2.did}") is None

    stored = world.reader.tx(duplicate["tx"])
    assert (stored["receipt"]["status"], stored["receipt"]["code"]) == ("rejected", "vin_registered")
    assert stored["receipt"]["leaf_index"] == duplicate["leaf_index"]
    assert stored["transaction"]["body"]["payload"]["device_key"] == DEVICE2.did
    assert world.reader.verify_tx(duplicate["tx"])["result"]["code"] == "vin_registered"

    # one device key, one vehicle
    world.rejected(MAKER, "vehicle.register", registration(HONDA_VIN, DEVICE), "device_key_in_use")
    assert world.record(HONDA_VIN) is None


@pytest.mark.parametrize(("vin", "year"), [
    pytest.param(BMW_VIN[:16], 2012, id="16-characters"),
    pytest.param(BMW_VIN + "1", 2012, id="18-characters"),
    pytest.param(BMW_VIN[:8] + "I" + BMW_VIN[9:], 2012, id="letter-I"),
    pytest.param(BMW_VIN[:11] + "O" + BMW_VIN[12:], 2012, id="letter-O"),
    pytest.param("WBAQ" + BMW_VIN[4:], 2012, id="letter-Q"),
    pytest.param(BMW_VIN.lower(), 2012, id="lower-case"),
    pytest.param(BMW_VIN[:10] + " " + BMW_VIN[11:], 2012, id="space"),
    pytest.param(wrong_check_digit(HONDA_VIN), 2024, id="north-american-check-digit"),
    pytest.param(wrong_check_digit(with_check_digit("LRW3E7EA0RC000001")), 2024, id="chinese-check-digit"),
    pytest.param(HONDA_VIN, 2023, id="model-year-2023-for-R"),
    pytest.param(HONDA_VIN, 2014, id="model-year-2014-for-R"),
])
def test_invalid_vins_are_refused_at_submission(world: World, vin: str, year: int) -> None:
    world.refused(MAKER, "vehicle.register", registration(vin, year=year), "bad_vin")


def test_every_vehicle_transaction_checks_its_vin(world: World) -> None:
    world.register()
    world.refused(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN.lower(), "odometer_km": 10}, "bad_vin")
    world.refused(OWNER1, "title.accept", {"vin": wrong_check_digit(HONDA_VIN)}, "bad_vin")


def test_model_years_do_not_depend_on_the_date(world: World) -> None:
    # Position 10 'W' is 1998 or 2028 (or later cycles): the table must not stop at next year.
    next_cycle = with_check_digit("1HGCV1F30WA000001")
    assert 2028 in parse_vin(next_cycle).model_years and 2058 in parse_vin(next_cycle).model_years
    assert parse_vin(BMW_VIN).model_years == ()
    # the ledger allows a model year up to two years ahead of the block time: make that 2027 at least
    world.clock.advance(max(0, JAN_2027_MS - world.clock.now_ms()))
    world.register(next_cycle, year=2028)
    world.rejected(MAKER, "vehicle.register", registration(with_check_digit("1HGCV1F30AA000001"), DEVICE2,
                                                           year=2040), "bad_year")
    world.rejected(MAKER, "vehicle.register", registration(HONDA_VIN, DEVICE2, at_ms=world.clock.now_ms() + HOUR_MS),
                   "future_time")


@pytest.mark.parametrize("powertrain", ["bev", "phev"])
def test_electric_vehicles_need_battery_data(world: World, powertrain: str) -> None:
    world.refused(MAKER, "vehicle.register", registration(powertrain=powertrain), "bad_payload")
    world.refused(MAKER, "vehicle.register", registration(powertrain=powertrain, battery={"chemistry": "LFP"}),
                  "bad_payload")
    world.register(powertrain=powertrain, battery={"chemistry": "LFP", "capacity_wh": 60_000})


@pytest.mark.parametrize("key", [WORKSHOP, DEALER, OWNER1], ids=["workshop", "dealer", "plain-key"])
def test_only_manufacturers_register(world: World, key: Signer) -> None:
    world.refused(key, "vehicle.register", registration(), "forbidden", status=403)
    assert world.record(BMW_VIN) is None


def test_refused_sdk_submission_raises_the_nodes_code(world: World) -> None:
    """The SDK turns a problem answer into a BlokError with the node's code and status."""
    with pytest.raises(BlokError) as refused:
        world.client(MAKER).submit("vehicle.register", registration(BMW_VIN.lower()))
    assert (refused.value.code, refused.value.http_status) == ("bad_vin", 400)
    with pytest.raises(BlokError) as refused:
        world.client(WORKSHOP).submit("vehicle.register", registration())
    assert (refused.value.code, refused.value.http_status) == ("forbidden", 403)
    world.register()    # the client's nonce skipped the refused ones: gaps are allowed


# -- title -----------------------------------------------------------------------------------------


def test_first_sale_needs_the_buyers_cosignature(world: World) -> None:
    world.register()
    sale = {"vin": BMW_VIN, "owner": OWNER1.did, "odometer_km": 12}
    world.rejected(DEALER, "title.first_sale", sale, "signature_missing")
    world.rejected(DEALER, "title.first_sale", sale, "signature_missing", cosigners=[OWNER2])
    world.refused(WORKSHOP, "title.first_sale", sale, "forbidden", status=403, cosigners=[OWNER1])
    # before the sale OWNER1 is nobody to this vehicle: refused at admission, never a leaf
    world.refused(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did}, "forbidden", status=403)

    receipt = world.ok(DEALER, "title.first_sale", sale, cosigners=[OWNER1])
    event = vehicle_event(receipt)
    assert (event["kind"], event["seq"], event["owner"], event["org"], event["odometer_km"], event["flagged"]) == (
        "first_sale", 2, OWNER1.did, "autohaus-lenz", 12, False)
    record = world.record(BMW_VIN)
    assert record is not None
    assert (record["owner"], record["owners"], record["dealer"], record["owner_since_ms"], record["odometer_km"]) == (
        OWNER1.did, 1, "autohaus-lenz", event["at_ms"], 12)
    world.rejected(DEALER, "title.first_sale", {**sale, "owner": OWNER2.did}, "already_sold", cosigners=[OWNER2])


def test_offer_and_accept_between_owners(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.refused(OWNER2, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did}, "forbidden", status=403)
    world.rejected(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER1.did}, "bad_buyer")
    world.refused(OWNER2, "title.accept", {"vin": BMW_VIN}, "forbidden", status=403)
    world.rejected(OWNER1, "title.accept", {"vin": BMW_VIN}, "no_offer")

    offer = world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    event = vehicle_event(offer)
    assert (event["kind"], event["buyer"], event["org"]) == ("offered", OWNER2.did, None)
    assert event["expires_ms"] == event["at_ms"] + DEFAULT_OFFER_MS
    record = world.record(BMW_VIN)
    assert record is not None
    assert record["offer"] == {"buyer": OWNER2.did, "expires_ms": event["expires_ms"], "tx": offer["tx"]}

    world.refused(OWNER3, "title.accept", {"vin": BMW_VIN}, "forbidden", status=403)
    world.rejected(OWNER1, "title.accept", {"vin": BMW_VIN}, "not_buyer")
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN, "offer": "0" * 64}, "stale_offer")
    accept = world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})
    event = vehicle_event(accept)
    assert (event["kind"], event["owner"], event["previous_owner"], event["offer"]) == (
        "transferred", OWNER2.did, OWNER1.did, offer["tx"])
    record = world.record(BMW_VIN)
    assert record is not None
    assert (record["owner"], record["owners"], record["offer"], record["owner_since_ms"]) == (
        OWNER2.did, 2, None, event["at_ms"])
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "no_offer")        # no second accept
    world.refused(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did}, "forbidden", status=403)  # seller

    # an offer the owner withdraws cannot be accepted
    world.ok(OWNER2, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did})
    world.rejected(OWNER3, "title.cancel_offer", {"vin": BMW_VIN}, "not_owner")   # the named buyer is admitted
    cancelled = world.ok(OWNER2, "title.cancel_offer", {"vin": BMW_VIN})
    assert vehicle_event(cancelled)["kind"] == "offer_cancelled"
    world.refused(OWNER3, "title.accept", {"vin": BMW_VIN}, "forbidden", status=403)   # nobody to it any more
    world.rejected(OWNER2, "title.cancel_offer", {"vin": BMW_VIN}, "no_offer")


def test_offers_expire(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.rejected(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did,
                                           "expires_ms": world.clock.now_ms() - 1}, "bad_expiry")
    expires = world.clock.now_ms() + HOUR_MS
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did, "expires_ms": expires})
    world.clock.advance(2 * HOUR_MS)
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "offer_expired")

    # the default: fourteen days
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    world.clock.advance(13 * DAY_MS)
    world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})
    world.ok(OWNER2, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did})
    world.clock.advance(15 * DAY_MS)
    world.rejected(OWNER3, "title.accept", {"vin": BMW_VIN}, "offer_expired")
    record = world.record(BMW_VIN)
    assert record is not None and record["owner"] == OWNER2.did


def test_lien_blocks_transfer_until_its_lender_releases_it(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    loan = {"vin": BMW_VIN, "reference": "loan-2026-17"}
    world.rejected(LENDER, "lien.record", loan, "signature_missing")         # the owner must consent
    world.refused(WORKSHOP, "lien.record", loan, "forbidden", status=403, cosigners=[OWNER1])
    lien = world.ok(LENDER, "lien.record", loan, cosigners=[OWNER1])
    event = vehicle_event(lien)
    assert (event["kind"], event["lien"], event["lender"]) == ("lien_recorded", lien["tx"], "hanse-bank")
    record = world.record(BMW_VIN)
    assert record is not None
    assert record["liens"] == [{"id": lien["tx"], "lender": "hanse-bank", "since_ms": event["at_ms"]}]

    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "lien_active")   # an offer made before the lien
    world.rejected(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did}, "lien_active")
    world.rejected(LENDER, "lien.release", {"vin": BMW_VIN, "lien": digest("no such lien")}, "unknown_lien")
    world.refused(OWNER1, "lien.release", {"vin": BMW_VIN, "lien": lien["tx"]}, "forbidden", status=403)

    # a second lender joins the consortium; it cannot release the first lender's lien
    world.vote({"kind": "admit_org", "org": {"id": "nordbank", "name": "Nord Auto Credit", "roles": ["lender"],
                                             "admins": [NORDBANK.did]}})
    world.rejected(NORDBANK, "lien.release", {"vin": BMW_VIN, "lien": lien["tx"]}, "not_lender")

    release = world.ok(LENDER, "lien.release", {"vin": BMW_VIN, "lien": lien["tx"]})
    assert vehicle_event(release)["kind"] == "lien_released"
    record = world.record(BMW_VIN)
    assert record is not None and record["liens"] == []
    world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})
    world.rejected(LENDER, "lien.release", {"vin": BMW_VIN, "lien": lien["tx"]}, "unknown_lien")  # once only


def test_stolen_vehicle_cannot_change_hands(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    world.refused(INSURER, "vehicle.stolen", {"vin": BMW_VIN}, "forbidden", status=403)
    world.rejected(REGISTRY, "vehicle.recovered", {"vin": BMW_VIN}, "not_stolen")
    world.ok(REGISTRY, "vehicle.stolen", {"vin": BMW_VIN, "reference": "police-4711"})
    record = world.record(BMW_VIN)
    assert record is not None and (record["status"], record["brands"]) == ("stolen", ["stolen"])

    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "vehicle_stolen")
    world.rejected(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did}, "vehicle_stolen")
    world.rejected(REGISTRY, "vehicle.stolen", {"vin": BMW_VIN}, "bad_status")
    world.rejected(RECYCLER, "vehicle.destroyed", {"vin": BMW_VIN, "certificate": digest("cod")}, "vehicle_stolen")

    world.ok(REGISTRY, "vehicle.recovered", {"vin": BMW_VIN})
    record = world.record(BMW_VIN)
    assert record is not None and (record["status"], record["brands"]) == ("active", ["stolen", "stolen_recovered"])
    world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})


def test_registry_cosignature_policy(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    clerk, inspector = demo_member("kba-registry"), demo_member("kba-registry", 2)
    world.ok(REGISTRY, "org.add_member", {"did": clerk.did, "roles": ["registry"], "label": "title desk"})
    world.ok(REGISTRY, "org.add_member", {"did": inspector.did, "roles": ["regulator"], "label": "market watch"})

    receipt = world.vote({"kind": "set_policy", "name": "title.registry_cosign", "value": True})
    assert {"type": "policy.set", "name": "title.registry_cosign", "value": True} in receipt["events"]
    assert world.state("policy/title.registry_cosign") is True

    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "registry_cosign_required")
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "registry_cosign_required", cosigners=[WORKSHOP])
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "registry_cosign_required", cosigners=[OWNER1])
    # a key of the registry's organisation without the registry role is not enough
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "registry_cosign_required", cosigners=[inspector])
    receipt = world.ok(OWNER2, "title.accept", {"vin": BMW_VIN}, cosigners=[clerk])
    assert vehicle_event(receipt)["owner"] == OWNER2.did


# -- history ---------------------------------------------------------------------------------------


def test_events_form_a_chain_with_the_head_on_the_record(world: World) -> None:
    receipts = [
        world.register(),
        world.sell(owner=OWNER1, km=12),
        world.ok(WORKSHOP, "vehicle.service", {
            "vin": BMW_VIN, "odometer_km": 1_200, "operations": ["oil change", "brake pads front"],
            "parts": [{"part_number": "11427953129", "quantity": 1}], "invoice": digest("invoice 1")}),
        world.ok(REGISTRY, "vehicle.inspection", {
            "vin": BMW_VIN, "odometer_km": 1_300,
            "items": [{"code": "brakes", "passed": True}, {"code": "lights", "passed": True}]}),
        world.ok(INSURER, "vehicle.accident", {
            "vin": BMW_VIN, "severity": "moderate", "areas": ["front", "left"], "odometer_km": 1_400,
            "reference": "claim-77"}),
        world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 1_500}),
        world.ok(DEVICE, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 1_510}),
        world.ok(INSURER, "vehicle.insure", {"vin": BMW_VIN}, cosigners=[OWNER1]),
    ]
    events = [vehicle_event(r) for r in receipts]
    assert [e["kind"] for e in events] == [
        "registered", "first_sale", "service", "inspection", "accident", "odometer", "odometer", "insured"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["prev"] for e in events] == [None] + [r["tx"] for r in receipts[:-1]]
    assert all(not e.get("flagged", False) for e in events)
    assert events[3]["passed"] is True and events[4]["severity"] == "moderate"
    record = world.record(BMW_VIN)
    assert record is not None
    assert (record["head"], record["events"], record["odometer_km"], record["accidents"], record["insurer"]) == (
        receipts[-1]["tx"], len(receipts), 1_510, 1, "alpina-insurance")
    assert record["last_inspection"] == {"at_ms": events[3]["at_ms"], "passed": True}

    # a sender who saw an older head is refused, and the refusal does not extend the chain
    service = {"vin": BMW_VIN, "odometer_km": 1_600, "operations": ["tyres"]}
    world.rejected(WORKSHOP, "vehicle.service", {**service, "prev": receipts[-2]["tx"]}, "stale_head")
    world.rejected(WORKSHOP, "vehicle.service", {**service, "prev": digest("never an event")}, "stale_head")
    latest = world.ok(WORKSHOP, "vehicle.service", {**service, "prev": receipts[-1]["tx"]})
    event = vehicle_event(latest)
    assert (event["seq"], event["prev"]) == (len(receipts) + 1, receipts[-1]["tx"])
    record = world.record(BMW_VIN)
    assert record is not None and (record["head"], record["events"]) == (latest["tx"], len(receipts) + 1)


def test_odometer_rollback_is_refused_and_kept_as_evidence(world: World) -> None:
    world.register()
    world.ok(WORKSHOP, "vehicle.service", {"vin": BMW_VIN, "odometer_km": 1_000, "operations": ["oil change"]})
    rollback = world.rejected(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 999}, "odometer_rollback")
    stored = world.reader.tx(rollback["tx"])
    assert (stored["receipt"]["status"], stored["receipt"]["code"]) == ("rejected", "odometer_rollback")
    assert stored["receipt"]["leaf_index"] == rollback["leaf_index"]
    assert stored["transaction"]["body"]["payload"] == {"vin": BMW_VIN, "odometer_km": 999}
    assert stored["transaction"]["body"]["signer"] == WORKSHOP.did
    leaf = world.reader.verify_tx(rollback["tx"])
    assert leaf["result"]["code"] == "odometer_rollback" and leaf["height"] == rollback["height"]

    # every event that carries a reading applies the same rule
    world.rejected(WORKSHOP, "vehicle.service", {"vin": BMW_VIN, "odometer_km": 10, "operations": ["x"]},
                   "odometer_rollback")
    world.rejected(INSURER, "vehicle.accident", {"vin": BMW_VIN, "severity": "minor", "areas": ["rear"],
                                                 "odometer_km": 500}, "odometer_rollback")
    world.rejected(DEALER, "title.first_sale", {"vin": BMW_VIN, "owner": OWNER1.did, "odometer_km": 0},
                   "odometer_rollback", cosigners=[OWNER1])
    world.rejected(DEVICE, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 0}, "odometer_rollback")
    # the same reading again is no rollback
    same = world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 1_000})
    assert vehicle_event(same)["flagged"] is False


def test_implausibly_fast_rise_is_accepted_but_flagged(world: World) -> None:
    world.register()
    steps = [(0, 2_500, False),            # 2,500 km within a day: the limit itself
             (0, 5_001, True),             # 2,501 more within the same day
             (10 * DAY_MS, 30_001, False),  # 25,000 km over a little more than ten days
             (10 * DAY_MS, 55_002, True)]   # 25,001 km over a little more than ten days
    for flags, (advance, km, flagged) in enumerate(steps, start=1):
        world.clock.advance(advance)
        event = vehicle_event(world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": km}))
        assert event["flagged"] is flagged, (km, event)
        record = world.record(BMW_VIN)
        assert record is not None
        assert record["odometer_km"] == km
        assert record["odometer_flags"] == sum(f for _, _, f in steps[:flags])


def test_readings_by_the_device_or_a_workshop_only(world: World) -> None:
    world.register(BMW_VIN, DEVICE)
    world.register(HONDA_VIN, DEVICE2)
    event = vehicle_event(world.ok(DEVICE, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 100}))
    assert (event["source"], event["org"], event["odometer_km"]) == ("device", None, 100)

    # a forged device signature (another key) never reaches the log; a member without the role is a leaf
    world.refused(STRANGER, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 200}, "forbidden", status=403)
    world.refused(DEVICE2, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 200}, "forbidden", status=403)
    stored = world.reader.tx(world.rejected(INSURER, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 200},
                                            "not_device")["tx"])
    assert stored["transaction"]["body"]["signer"] == INSURER.did

    event = vehicle_event(world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 200}))
    assert (event["source"], event["org"]) == ("workshop", "werkstatt-berg")
    world.ok(DEVICE2, "vehicle.odometer", {"vin": HONDA_VIN, "odometer_km": 50})
    # a device key reads its odometer and does nothing else
    world.refused(DEVICE, "vehicle.service", {"vin": BMW_VIN, "odometer_km": 300, "operations": ["x"]},
                  "forbidden", status=403)


def test_cluster_replacement_restarts_the_odometer(world: World) -> None:
    world.register()
    world.clock.advance(100 * DAY_MS)
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 150_000})
    world.rejected(WORKSHOP, "vehicle.cluster_replaced", {"vin": BMW_VIN, "old_km": 149_000, "new_km": 0},
                   "odometer_rollback")
    world.rejected(WORKSHOP, "vehicle.cluster_replaced", {"vin": BMW_VIN, "old_km": 150_100, "new_km": 150_100},
                   "bad_cluster_reading")
    world.refused(DEVICE, "vehicle.cluster_replaced", {"vin": BMW_VIN, "old_km": 150_100, "new_km": 0},
                  "forbidden", status=403)

    event = vehicle_event(world.ok(WORKSHOP, "vehicle.cluster_replaced",
                                   {"vin": BMW_VIN, "old_km": 150_100, "new_km": 0}))
    assert (event["kind"], event["old_km"], event["new_km"], event["flagged"]) == (
        "cluster_replaced", 150_100, 0, False)
    record = world.record(BMW_VIN)
    assert record is not None and (record["odometer_km"], record["odometer_offset_km"]) == (0, 150_100)

    world.ok(DEVICE, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 50})
    world.rejected(DEVICE, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 40}, "odometer_rollback")
    world.ok(WORKSHOP, "vehicle.cluster_replaced", {"vin": BMW_VIN, "old_km": 80, "new_km": 5})
    record = world.record(BMW_VIN)
    assert record is not None and (record["odometer_km"], record["odometer_offset_km"]) == (5, 150_175)


def test_event_dates_keep_the_order(world: World) -> None:
    now = world.clock.now_ms()
    world.register(at_ms=now - 30 * DAY_MS)
    service = {"vin": BMW_VIN, "odometer_km": 2_000, "operations": ["inspection service"]}
    entered_late = world.ok(WORKSHOP, "vehicle.service", {**service, "at_ms": now - 10 * DAY_MS})
    assert vehicle_event(entered_late)["at_ms"] == now - 10 * DAY_MS
    # entered late (up to 90 days): allowed, but it may not read more than the later reading
    world.rejected(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 2_100, "at_ms": now - 20 * DAY_MS},
                   "odometer_inconsistent")
    late = world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 1_500, "at_ms": now - 20 * DAY_MS})
    assert vehicle_event(late)["late"] is True
    assert world.record(BMW_VIN)["odometer_km"] == 2_000                    # the later reading stands
    world.rejected(WORKSHOP, "vehicle.service", {**service, "at_ms": now - 31 * DAY_MS}, "out_of_order")  # pre-birth
    world.rejected(WORKSHOP, "vehicle.service", {**service, "at_ms": world.clock.now_ms() + HOUR_MS}, "future_time")
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 2_000, "at_ms": now - 10 * DAY_MS})
    record = world.record(BMW_VIN)
    assert record is not None and record["last_at_ms"] == now - 10 * DAY_MS


def test_inspection_uses_the_standard_checklist(world: World) -> None:
    world.register()
    items = [{"code": "brakes", "passed": True}, {"code": "lights", "passed": False, "note": "left low beam"}]
    inspection = {"vin": BMW_VIN, "odometer_km": 100, "kind": "periodic", "items": items}
    world.refused(WORKSHOP, "vehicle.inspection", {**inspection, "items": [{"code": "flux_capacitor",
                                                                            "passed": True}]}, "bad_checklist")
    world.refused(WORKSHOP, "vehicle.inspection", {**inspection, "items": [items[0], items[0]]}, "bad_checklist")
    world.refused(WORKSHOP, "vehicle.inspection", {**inspection, "items": []}, "bad_payload")
    world.refused(DEALER, "vehicle.inspection", inspection, "forbidden", status=403)

    failed = vehicle_event(world.ok(REGISTRY, "vehicle.inspection", inspection))
    assert failed["passed"] is False
    record = world.record(BMW_VIN)
    assert record is not None and record["last_inspection"] == {"at_ms": failed["at_ms"], "passed": False}
    passed = vehicle_event(world.ok(WORKSHOP, "vehicle.inspection", {
        **inspection, "odometer_km": 120, "kind": "damage", "items": [{"code": "lights", "passed": True}]}))
    assert passed["passed"] is True


# -- status ----------------------------------------------------------------------------------------


def test_total_loss_brands_the_title(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.refused(WORKSHOP, "vehicle.total_loss", {"vin": BMW_VIN}, "forbidden", status=403)
    event = vehicle_event(world.ok(INSURER, "vehicle.total_loss", {"vin": BMW_VIN, "reference": "claim-9"}))
    assert (event["kind"], event["salvage"], event["org"]) == ("total_loss", True, "alpina-insurance")
    record = world.record(BMW_VIN)
    assert record is not None and (record["status"], record["brands"]) == ("total_loss", ["total_loss", "salvage"])
    world.rejected(INSURER, "vehicle.total_loss", {"vin": BMW_VIN}, "bad_status")

    # a salvage vehicle may still be sold, and the brands go with it
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})
    record = world.record(BMW_VIN)
    assert record is not None and (record["owner"], record["brands"]) == (OWNER2.did, ["total_loss", "salvage"])

    world.register(HONDA_VIN, DEVICE2)
    world.ok(INSURER, "vehicle.total_loss", {"vin": HONDA_VIN, "salvage": False})
    honda = world.record(HONDA_VIN)
    assert honda is not None and (honda["status"], honda["brands"]) == ("total_loss", ["total_loss"])
    # a wreck can be stolen too, and comes back a wreck
    world.ok(REGISTRY, "vehicle.stolen", {"vin": HONDA_VIN})
    world.ok(REGISTRY, "vehicle.recovered", {"vin": HONDA_VIN})
    honda = world.record(HONDA_VIN)
    assert honda is not None
    assert (honda["status"], honda["brands"]) == ("total_loss", ["total_loss", "stolen", "stolen_recovered"])


def test_exported_vehicle_leaves_the_title_register(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    world.refused(INSURER, "vehicle.exported", {"vin": BMW_VIN}, "forbidden", status=403)
    world.ok(REGISTRY, "vehicle.exported", {"vin": BMW_VIN, "reference": "export-PL-1"})
    record = world.record(BMW_VIN)
    assert record is not None and (record["status"], record["brands"]) == ("exported", ["exported"])
    world.rejected(OWNER2, "title.accept", {"vin": BMW_VIN}, "bad_status")   # the open offer died with the export
    world.rejected(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER3.did}, "bad_status")
    world.rejected(REGISTRY, "vehicle.exported", {"vin": BMW_VIN}, "bad_status")
    world.rejected(REGISTRY, "vehicle.stolen", {"vin": BMW_VIN}, "bad_status")


def test_destroyed_vehicle_takes_only_recycling_records(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    lien = world.ok(LENDER, "lien.record", {"vin": BMW_VIN}, cosigners=[OWNER1])
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 2_000})
    certificate = digest("certificate of destruction 1")
    world.rejected(RECYCLER, "vehicle.recycling", {"vin": BMW_VIN, "materials": ["steel"]}, "not_destroyed")
    world.refused(WORKSHOP, "vehicle.destroyed", {"vin": BMW_VIN, "certificate": certificate}, "forbidden",
                  status=403)
    world.rejected(RECYCLER, "vehicle.destroyed", {"vin": BMW_VIN, "certificate": certificate, "odometer_km": 2_050},
                   "lien_active")
    world.ok(LENDER, "lien.release", {"vin": BMW_VIN, "lien": lien["tx"]})   # the loan is settled first
    world.rejected(RECYCLER, "vehicle.destroyed", {"vin": BMW_VIN, "certificate": certificate, "odometer_km": 1_999},
                   "odometer_rollback")

    event = vehicle_event(world.ok(RECYCLER, "vehicle.destroyed",
                                   {"vin": BMW_VIN, "certificate": certificate, "odometer_km": 2_050}))
    assert (event["kind"], event["certificate"], event["odometer_km"]) == ("destroyed", certificate, 2_050)
    record = world.record(BMW_VIN)
    assert record is not None and (record["status"], record["brands"], record["offer"]) == (
        "destroyed", ["destroyed"], None)

    world.rejected(WORKSHOP, "vehicle.service", {"vin": BMW_VIN, "odometer_km": 2_100, "operations": ["x"]},
                   "vehicle_destroyed")
    world.rejected(DEVICE, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 2_100}, "vehicle_destroyed")
    world.rejected(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did}, "vehicle_destroyed")
    world.refused(OWNER2, "title.accept", {"vin": BMW_VIN}, "forbidden", status=403)   # the offer died with it
    world.rejected(REGISTRY, "vehicle.stolen", {"vin": BMW_VIN}, "vehicle_destroyed")
    world.rejected(RECYCLER, "vehicle.destroyed", {"vin": BMW_VIN, "certificate": certificate}, "vehicle_destroyed")

    recycled = vehicle_event(world.ok(RECYCLER, "vehicle.recycling", {
        "vin": BMW_VIN, "materials": ["steel", "aluminium", "li_ion_cells"], "certificate": digest("recycling 1")}))
    assert (recycled["kind"], recycled["materials"]) == ("recycled", ["steel", "aluminium", "li_ion_cells"])
    record = world.record(BMW_VIN)
    assert record is not None and (record["status"], record["liens"]) == ("destroyed", [])


def test_events_for_an_unknown_vehicle(world: World) -> None:
    vin = UNKNOWN_VIN
    attempts: list[tuple[Signer, str, dict[str, Any], list[Signer]]] = [
        (DEALER, "title.first_sale", {"owner": OWNER1.did, "odometer_km": 0}, [OWNER1]),
        (LENDER, "lien.record", {}, [OWNER1]),
        (REGISTRY, "vehicle.stolen", {}, []),
        (INSURER, "vehicle.total_loss", {}, []),
        (RECYCLER, "vehicle.destroyed", {"certificate": digest("cod")}, []),
        (WORKSHOP, "vehicle.service", {"odometer_km": 1, "operations": ["x"]}, []),
        (WORKSHOP, "vehicle.odometer", {"odometer_km": 1}, []),
        (WORKSHOP, "vehicle.cluster_replaced", {"old_km": 2, "new_km": 1}, []),
    ]
    for key, tx_type, fields, cosigners in attempts:
        world.rejected(key, tx_type, {"vin": vin, **fields}, "unknown_vehicle", cosigners=cosigners)
    # keys that are nobody's cannot write about an unregistered vehicle at all
    world.refused(OWNER1, "title.offer", {"vin": vin, "buyer": OWNER2.did}, "forbidden", status=403)
    world.refused(OWNER2, "title.accept", {"vin": vin}, "forbidden", status=403)
    world.refused(DEVICE, "vehicle.odometer", {"vin": vin, "odometer_km": 1}, "forbidden", status=403)
    assert world.record(vin) is None


# -- the subject index ----------------------------------------------------------------------------------


def test_subject_index_lists_every_leaf_naming_the_vin(world: World) -> None:
    world.register(BMW_VIN, DEVICE)
    world.register(HONDA_VIN, DEVICE2)
    world.rejected(MAKER, "vehicle.register", registration(BMW_VIN, OWNER3), "vin_registered")
    world.sell(BMW_VIN, OWNER1)
    world.ok(DEVICE2, "vehicle.odometer", {"vin": HONDA_VIN, "odometer_km": 40})
    world.rejected(INSURER, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 60}, "not_device")
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 50})
    world.rejected(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 49}, "odometer_rollback")
    world.ok(MAKER, "notary.anchor", {"digest": digest("build sheet"), "kind": "build_sheet"})   # names no VIN
    # refusals at submission never reach the log, so no index names them
    world.refused(WORKSHOP, "vehicle.register", registration(BMW_VIN), "forbidden", status=403)
    world.refused(WORKSHOP, "vehicle.inspection", {"vin": BMW_VIN, "odometer_km": 60,
                                                   "items": [{"code": "warp_drive", "passed": True}]}, "bad_checklist")
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})

    store = world.env.node.store
    for vin in (BMW_VIN, HONDA_VIN):
        indexes = store.subject_leaves("vin:" + vin)
        assert indexes == world.leaves[vin]
        leaves = store.get_leaves(indexes)
        decoded = [canonical.decode(leaves[i][2]) for i in indexes]
        assert all(leaf["tx"]["body"]["payload"]["vin"] == vin for leaf in decoded)
    bmw = [canonical.decode(leaf) for _, _, leaf in store.get_leaves(world.leaves[BMW_VIN]).values()]
    assert sorted(leaf["result"]["status"] for leaf in bmw).count("rejected") == 3
    assert store.subject_leaves("vin:" + UNKNOWN_VIN) == []
    assert store.subject_leaves("vin:" + BMW_VIN, after=world.leaves[BMW_VIN][-2]) == world.leaves[BMW_VIN][-1:]


# -- property: the odometer is the highest accepted reading --------------------------------------------


@contextmanager
def demo_node(directory: Path) -> Iterator[Node]:
    """A running demo node (the operator's) in ``directory``, like the ``env`` fixture's but without HTTP."""
    data_dir = directory / "node"
    init_ledger(data_dir, demo_genesis(time_ms=GENESIS_TIME_MS), OPERATOR_ORG,
                demo_node_key(OPERATOR_ORG).signing_key)
    with Node(data_dir) as node:
        yield node


class Submitter:
    """Signs with each key's next nonce and submits a batch in order; returns the receipts."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.nonces: dict[str, int] = {}

    def run(self, txs: Sequence[tuple[Signer, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        futures = []
        for key, tx_type, payload in txs:
            self.nonces[key.did] = nonce = self.nonces.get(key.did, 0) + 1
            futures.append(self.node.submit(sign_tx(self.node.chain, tx_type, key, nonce, payload)))
        return [future.result(timeout=60) for future in futures]


readings_strategy = st.lists(
    st.tuples(st.booleans(), st.one_of(st.integers(0, 3_000), st.integers(0, MAX_ODOMETER_KM))),
    min_size=1, max_size=12)


def test_odometer_is_the_highest_accepted_reading() -> None:
    serial = itertools.count()
    with tempfile.TemporaryDirectory() as tmp, demo_node(Path(tmp)) as node:
        submitter = Submitter(node)

        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(start=st.integers(0, 2_000), readings=readings_strategy)
        def check(start: int, readings: list[tuple[bool, int]]) -> None:
            n = next(serial)
            vin, device = f"WBA00000{n:09d}", Signer.deterministic(f"tests/property/device{n}")
            assert submitter.run([(MAKER, "vehicle.register", registration(vin, device, odometer_km=start))])[0][
                "status"] == "ok"
            txs = [(device if by_device else WORKSHOP, "vehicle.odometer", {"vin": vin, "odometer_km": km})
                    for by_device, km in readings]
            receipts = [{"status": "ok"}, *submitter.run(txs)]
            highest, accepted = start, 0
            for (_, km), receipt in zip(readings, receipts[1:], strict=True):
                if km < highest:
                    assert (receipt["status"], receipt["code"]) == ("rejected", "odometer_rollback"), receipt
                else:
                    assert receipt["status"] == "ok", receipt
                    highest, accepted = km, accepted + 1
            record = node.read_state(f"vehicle/{vin}")
            assert record is not None
            assert record["odometer_km"] == highest
            assert record["events"] == 1 + accepted

        check()


# -- corrections and status paths added after review ------------------------------------------------


def test_registry_corrects_a_mistyped_reading_and_the_record_stays_flagged(world: World) -> None:
    world.register()
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 15_000})
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 150_000})   # one digit too many
    world.rejected(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 15_500}, "odometer_rollback")
    world.refused(WORKSHOP, "vehicle.odometer_corrected",
                  {"vin": BMW_VIN, "odometer_km": 15_000, "reason": "typo"}, "forbidden", status=403)
    world.rejected(REGISTRY, "vehicle.odometer_corrected",
                   {"vin": BMW_VIN, "odometer_km": 160_000, "reason": "typo"}, "bad_correction")
    event = vehicle_event(world.ok(REGISTRY, "vehicle.odometer_corrected",
                                   {"vin": BMW_VIN, "odometer_km": 15_000, "reason": "service desk typo"}))
    assert (event["replaced_km"], event["odometer_km"], event["flagged"]) == (150_000, 15_000, True)
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 15_500})
    record = world.record(BMW_VIN)
    assert record["odometer_km"] == 15_500 and record["odometer_corrections"] == 1 and record["odometer_flags"] >= 1


def test_exports_liens_theft_payouts_and_insurance_consent(world: World) -> None:
    world.register()
    world.sell(owner=OWNER1)
    lien = world.ok(LENDER, "lien.record", {"vin": BMW_VIN}, cosigners=[OWNER1])
    world.rejected(REGISTRY, "vehicle.exported", {"vin": BMW_VIN}, "lien_active")
    world.ok(LENDER, "lien.release", {"vin": BMW_VIN, "lien": lien["tx"]})
    world.ok(REGISTRY, "vehicle.exported", {"vin": BMW_VIN})
    world.rejected(REGISTRY, "vehicle.recovered", {"vin": BMW_VIN}, "not_stolen")
    world.ok(REGISTRY, "vehicle.reimported", {"vin": BMW_VIN})
    record = world.record(BMW_VIN)
    assert (record["status"], record["brands"]) == ("active", ["exported"])
    world.rejected(REGISTRY, "vehicle.reimported", {"vin": BMW_VIN}, "not_exported")

    world.ok(INSURER, "vehicle.insure", {"vin": BMW_VIN}, cosigners=[OWNER1])
    assert world.record(BMW_VIN)["insurer"] == "alpina-insurance"
    world.ok(OWNER1, "title.offer", {"vin": BMW_VIN, "buyer": OWNER2.did})
    world.ok(OWNER2, "title.accept", {"vin": BMW_VIN})
    assert world.record(BMW_VIN)["insurer"] is None        # the buyer consents anew

    world.ok(REGISTRY, "vehicle.stolen", {"vin": BMW_VIN})
    world.ok(INSURER, "vehicle.total_loss", {"vin": BMW_VIN, "salvage": False})   # theft never recovered: paid out
    record = world.record(BMW_VIN)
    assert (record["status"], record["brands"]) == ("total_loss", ["exported", "stolen", "total_loss"])


def test_registration_rules_added_after_review(world: World) -> None:
    not_a_year = HONDA_VIN[:9] + "U" + HONDA_VIN[10:]
    world.refused(MAKER, "vehicle.register", registration(with_check_digit(not_a_year)), "bad_vin")
    world.rejected(MAKER, "vehicle.register", registration(BMW_VIN, REGISTRY), "device_key_in_use")
    world.rejected(MAKER, "vehicle.register", {**registration(BMW_VIN), "prev": "0" * 64}, "bad_payload")


def test_a_late_reading_must_fit_between_the_readings_around_its_date(world: World) -> None:
    now = world.clock.now_ms()
    world.register(at_ms=now - 200 * DAY_MS)
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 15_000, "at_ms": now - 60 * DAY_MS})
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 30_000, "at_ms": now - 10 * DAY_MS})
    world.rejected(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 9_000, "at_ms": now - 30 * DAY_MS},
                   "odometer_inconsistent")                      # a rollback entered "late"
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 20_000, "at_ms": now - 30 * DAY_MS})
    world.rejected(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 25_000, "at_ms": now - 45 * DAY_MS},
                   "odometer_inconsistent")                      # above the later late entry of 20,000
    world.ok(WORKSHOP, "vehicle.odometer", {"vin": BMW_VIN, "odometer_km": 16_000, "at_ms": now - 45 * DAY_MS})
    assert world.record(BMW_VIN)["odometer_km"] == 30_000
