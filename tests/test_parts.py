"""Parts and recalls driven through the SDK against a real node, as a parts maker, a carmaker's
plant, logistics, workshops, a regulator, a recycler and anybody checking a serial would:
batches, materials, custody, installation, authenticity, certificates, recalls, end of life."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokauto.contracts.parts import batch_leaves, compute_batch_root, part_leaf
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.errors import BlokError, VerificationError
from blokauto.reports.parts import verify_certificate
from blokauto.vin import with_check_digit
from tests.conftest import demo_admin, digest
from tests.worlds import (
    DEALER,
    MAKER,
    OWNER1,
    OWNER2,
    OWNER3,
    RECYCLER,
    REGISTRY,
    WORKSHOP,
    World,
    registration,
)

SUPPLIER = demo_admin("kestrel-parts")          # parts maker and logistics
QUICKFIX = demo_admin("quickfix")               # a second workshop
PAD = "KP-BRK-PAD-22"                            # brake pads: fitted to the Kestrel 3
ECU = "KP-ECU-7"
CELL_PACK = "KP-BAT-77"


def vin(n: int) -> str:
    return with_check_digit(f"1HGCV1F30RA{n:06d}")


def serials(prefix: str, count: int, start: int = 0) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(start, start + count)]


PASSPORT = {"chemistry": "NMC 811", "rated_capacity_wh": 77_000, "soh_permille": 1000, "carbon_g_per_kwh": 61_000,
            "recycled_cobalt_permille": 160, "recycled_lithium_permille": 60, "recycled_nickel_permille": 60,
            "recycled_lead_permille": 0}


class Parts:
    """The parts side of the consortium around one ledger."""

    def __init__(self, world: World) -> None:
        self.w = world

    def define(self, number: str = PAD, category: str = "brakes", **fields: Any) -> None:
        self.w.ok(SUPPLIER, "part.define", {"part_number": number, "description": f"part {number}",
                                            "category": category, **fields})

    def approve(self, number: str = PAD, models: list[str] | None = None) -> None:
        self.w.ok(MAKER, "part.approve", {"part_number": number, "models": models or ["Kestrel 3"]})

    def batch_payload(self, ids: list[str], number: str = PAD, lot: str = "L1",
                      passports: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"part_number": number, "lot": lot, "plant": "Stuttgart",
                                   "produced_ms": 1_700_000_000_000, "serials": ids,
                                   "root": compute_batch_root(number, ids, passports)}
        if passports is not None:
            payload["passports"] = passports
        payload.update(fields)
        return payload

    def register(self, ids: list[str], **kw: Any) -> dict[str, Any]:
        return self.w.ok(SUPPLIER, "part.register_batch", self.batch_payload(ids, **kw))

    def ship(self, sender: Signer, ids: list[str], to: str, zone: str = "DE-STR", **fields: Any) -> str:
        receipt = self.w.ok(sender, "part.ship", {"serials": ids, "to": to, "zone": zone, **fields})
        return str(receipt["tx"])

    def receive(self, receiver: Signer, shipment: str, zone: str = "DE-STR", **fields: Any) -> dict[str, Any]:
        return self.w.ok(receiver, "part.receive", {"shipment": shipment, "zone": zone, **fields})

    def deliver(self, ids: list[str], to: Signer, org: str) -> None:
        self.receive(to, self.ship(SUPPLIER, ids, org))

    def vehicle(self, n: int, model: str = "Kestrel 3", owner: Signer | None = None) -> str:
        v = vin(n)
        self.w.ok(MAKER, "vehicle.register", registration(v, Signer.deterministic(f"dev/{n}"), model=model))
        if owner is not None:
            self.w.ok(DEALER, "title.first_sale", {"vin": v, "owner": owner.did, "odometer_km": 10},
                      cosigners=[owner])
        return v

    def install(self, key: Signer, v: str, ids: list[str], km: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"vin": v, "serials": ids}
        if km is not None:
            payload["odometer_km"] = km
        return self.w.ok(key, "part.install", payload)

    def check(self, serial: str) -> dict[str, Any]:
        return self.w.env.client().part(serial)


@pytest.fixture
def parts(world: World) -> Parts:
    return Parts(world)


# -- leaves and roots (pure) ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), min_size=1, max_size=40,
                unique=True), st.booleans())
def test_part_leaves_are_canonical_json(ids: list[str], battery: bool) -> None:
    passports = [PASSPORT] * len(ids) if battery else None
    for serial, leaf in zip(ids, batch_leaves("PN-1", ids, passports), strict=True):
        want = {"part_number": "PN-1", "serial": serial, **({"battery": PASSPORT} if battery else {})}
        assert leaf == canonical.encode(want) == part_leaf("PN-1", serial, PASSPORT if battery else None)
    # any change of a serial or its order changes the root the maker signs
    root = compute_batch_root("PN-1", ids, passports)
    if len(ids) > 1:
        assert compute_batch_root("PN-1", ids[::-1], passports) != root
    assert compute_batch_root("PN-1", [*ids[:-1], ids[-1] + "x"], passports) != root


# -- registration --------------------------------------------------------------------------------


def test_batch_registration_and_authenticity(parts: Parts) -> None:
    parts.define(safety=True)
    ids = serials("PAD", 500)
    receipt = parts.register(ids)
    event = next(e for e in receipt["events"] if e["type"] == "part.batch")
    assert (event["count"], event["part_number"], event["lot"]) == (500, PAD, "L1")
    check = parts.check("PAD-000042")
    assert (check["registered"], check["genuine"], check["verdict"]) == (True, True, "genuine")
    assert (check["maker"]["id"], check["part_number"], check["lot"], check["plant"], check["safety"]) == (
        "kestrel-parts", PAD, "L1", "Stuttgart", True)
    assert check["location"] == {"status": "made", "holder": "kestrel-parts", "since_ms": 1_700_000_000_000}
    assert check["recalls"] == [] and check["counterfeit_signals"] == []
    unknown = parts.check("FAKE-1")
    assert (unknown["registered"], unknown["genuine"], unknown["verdict"]) == (False, False, "not_registered")


def test_registration_refusals_change_nothing(parts: Parts, world: World) -> None:
    parts.define()
    parts.register(serials("PAD", 10))
    # a serial already registered (in any batch): a rejected leaf naming it
    again = world.rejected(SUPPLIER, "part.register_batch", parts.batch_payload(serials("PAD", 5, start=8), lot="L2"),
                           "serial_registered")
    assert "PAD-000008" in again["message"]
    assert parts.check("PAD-000012")["registered"] is False
    # the root must be the one the parts hash to
    bad_root = {**parts.batch_payload(serials("PAD", 3, start=100)), "root": digest("other")}
    world.refused(SUPPLIER, "part.register_batch", bad_root, "root_mismatch")
    # only the part number's maker registers its parts; unknown part numbers are refused
    world.rejected(MAKER, "part.register_batch", parts.batch_payload(serials("X", 2)), "not_part_maker")
    world.rejected(SUPPLIER, "part.register_batch", parts.batch_payload(serials("X", 2), number="NOPE"),
                   "unknown_part_number")
    # a malformed batch is refused at submission: nothing committed
    world.refused(SUPPLIER, "part.register_batch", parts.batch_payload(["A-1", "A-1"]), "duplicate_serial")
    world.refused(SUPPLIER, "part.register_batch", parts.batch_payload(["bad serial"]), "bad_payload")
    world.refused(SUPPLIER, "part.register_batch", {**parts.batch_payload(["A-2"]), "passports": [PASSPORT] * 2},
                  "bad_batch")
    # roles: a workshop registers no parts (a drop, no leaf)
    world.refused(WORKSHOP, "part.register_batch", parts.batch_payload(["A-3"]), "forbidden", status=403)
    # a part number is claimed once
    world.rejected(MAKER, "part.define", {"part_number": PAD, "description": "x", "category": "brakes"},
                   "part_number_taken")


def test_batteries_carry_their_passport(parts: Parts, world: World) -> None:
    parts.define(CELL_PACK, category="battery", battery=True)
    ids = serials("BAT", 3)
    world.rejected(SUPPLIER, "part.register_batch", parts.batch_payload(ids, number=CELL_PACK), "passport_required")
    parts.register(ids, number=CELL_PACK, passports=[PASSPORT, {**PASSPORT, "soh_permille": 990}, PASSPORT])
    check = parts.check("BAT-000001")
    assert check["battery"] is True
    reader = world.reader
    cert = reader.part_certificate("BAT-000001")
    verified = verify_certificate(cert, *reader.checkpoint_keys())
    assert verified.passport is not None and verified.passport["soh_permille"] == 990


def test_materials_provenance_and_mass_balance(parts: Parts, world: World) -> None:
    mine = world.ok(SUPPLIER, "material.certify", {"material": "cobalt", "stage": "mine", "origin": "Kisanfu mine",
                                                   "country": "CD", "grams": 10_000, "standard": "RMI RMAP",
                                                   "audit": digest("audit")})["tx"]
    refined = world.ok(SUPPLIER, "material.certify", {
        "material": "cobalt", "stage": "refiner", "origin": "Kokkola refinery", "country": "FI", "grams": 8_000,
        "inputs": [{"certificate": mine, "grams": 9_000}]})["tx"]
    world.rejected(SUPPLIER, "material.certify", {
        "material": "cobalt", "stage": "refiner", "origin": "elsewhere", "country": "CN", "grams": 5_000,
        "inputs": [{"certificate": mine, "grams": 1_001}]}, "insufficient_material")
    world.rejected(SUPPLIER, "material.certify", {"material": "cobalt", "stage": "cell", "origin": "x",
                                                  "country": "DE", "grams": 1}, "inputs_required")
    parts.define(CELL_PACK, category="battery", battery=True)
    parts.register(["BAT-1"], number=CELL_PACK, passports=[PASSPORT],
                   materials=[{"certificate": refined, "grams": 7_500}])
    batch = world.state(f"partbatch/{compute_batch_root(CELL_PACK, ['BAT-1'], [PASSPORT])[:16]}")
    assert batch["materials"] == [{"certificate": refined, "grams": 7_500, "material": "cobalt"}]
    assert world.state(f"material/{refined}")["remaining_g"] == 500
    assert world.state(f"material/{mine}")["remaining_g"] == 1_000
    assert world.state(f"material/{refined}")["inputs"][0]["certificate"] == mine
    # certified material cannot be counted into a second battery beyond what is left
    world.rejected(SUPPLIER, "part.register_batch", parts.batch_payload(
        ["BAT-2"], number=CELL_PACK, passports=[PASSPORT], materials=[{"certificate": refined, "grams": 501}]),
        "insufficient_material")
    # a certificate passed to another organisation is theirs to use
    passed = world.ok(SUPPLIER, "material.certify", {"material": "lithium", "stage": "mine", "origin": "Greenbushes",
                                                     "country": "AU", "grams": 100, "to": "nordwerk"})["tx"]
    world.rejected(SUPPLIER, "part.register_batch", parts.batch_payload(
        ["BAT-3"], number=CELL_PACK, passports=[PASSPORT], materials=[{"certificate": passed, "grams": 1}]),
        "not_certificate_holder")


# -- custody -------------------------------------------------------------------------------------


def test_custody_handoffs_and_conditions(parts: Parts, world: World) -> None:
    parts.define(ECU, category="electronics")
    ids = serials("ECU", 4)
    parts.register(ids, number=ECU)
    # only the holder ships; the receiver named accepts
    world.rejected(WORKSHOP, "part.ship", {"serials": ids[:1], "to": "nordwerk", "zone": "DE-LEJ"}, "not_holder")
    shipment = parts.ship(SUPPLIER, ids[:3], "nordwerk", zone="DE-LEJ", conditions={"min_dc": 0, "max_dc": 400})
    assert parts.check(ids[0])["location"]["status"] == "in_transit"
    world.rejected(SUPPLIER, "part.ship", {"serials": ids[:1], "to": "quickfix", "zone": "X"}, "bad_part_state")
    world.rejected(WORKSHOP, "part.receive", {"shipment": shipment, "zone": "DE-LEJ"}, "not_receiver")
    parts.receive(MAKER, shipment, zone="DE-LEJ", observed_min_dc=20, observed_max_dc=455, excursion_minutes=12)
    world.rejected(MAKER, "part.receive", {"shipment": shipment, "zone": "DE-LEJ"}, "shipment_closed")
    check = parts.check(ids[0])
    assert check["location"]["status"] == "in_stock" and check["location"]["holder"] == "nordwerk"
    assert check["flags"] == ["temperature_excursion"]
    # a refused shipment goes back to the sender
    back = parts.ship(SUPPLIER, ids[3:], "quickfix", zone="DE-HAM")
    parts.receive(QUICKFIX, back, zone="DE-BER", accept=False)
    returned = parts.check(ids[3])
    assert returned["location"]["holder"] == "kestrel-parts" and returned["flags"] == ["zone_mismatch"]
    # history follows the chain of events back to registration
    history = world.reader.part_history(ids[0])
    assert [e["kind"] for e in history["events"]] == ["received", "shipped", "registered"]
    assert history["events"][1]["to"] == "nordwerk"
    with pytest.raises(BlokError) as info:
        world.env.client().part_history(ids[0])
    assert info.value.code == "token_required"


# -- installation --------------------------------------------------------------------------------


def test_installation_approval_and_counterfeit_signals(parts: Parts, world: World) -> None:
    parts.define()
    ids = serials("PAD", 6)
    parts.register(ids)
    parts.deliver(ids, WORKSHOP, "werkstatt-berg")
    car, other = parts.vehicle(1, owner=OWNER1), parts.vehicle(2, model="Kestrel 5")
    # not approved by the carmaker for this model
    refused = world.rejected(WORKSHOP, "part.install", {"vin": car, "serials": ids[:2], "odometer_km": 100},
                             "part_not_approved")
    assert refused["subject"] == ids[0]
    parts.approve()
    receipt = parts.install(WORKSHOP, car, ids[:2], km=100)
    event = next(e for e in receipt["events"] if e["type"] == "vehicle.event")
    assert (event["kind"], event["serials"], event["part_numbers"], event["odometer_km"]) == (
        "part_installed", ids[:2], [PAD, PAD], 100)
    assert world.record(car)["odometer_km"] == 100
    world.rejected(WORKSHOP, "part.install", {"vin": other, "serials": [ids[2]]}, "part_not_approved")
    # a serial fitted elsewhere, never registered, or recycled: refused, and counted as a signal
    parts.approve(models=["Kestrel 3", "Kestrel 5"])
    clone = world.rejected(WORKSHOP, "part.install", {"vin": other, "serials": [ids[2], ids[0]]},
                           "part_installed_elsewhere")
    assert clone["subject"] == ids[0]
    world.rejected(WORKSHOP, "part.install", {"vin": other, "serials": ["NEVER-1"]}, "part_not_registered")
    world.rejected(QUICKFIX, "part.install", {"vin": other, "serials": [ids[3]]}, "not_holder")
    world.rejected(WORKSHOP, "part.install", {"vin": car, "serials": [ids[0]]}, "already_installed")
    member = world.reader.part(ids[0])
    public = parts.check(ids[0])
    assert member["location"]["vin"] == car and "vin" not in public["location"]
    assert public["location"]["in_vehicle"] is True
    assert [s["code"] for s in public["counterfeit_signals"]] == ["part_installed_elsewhere"]
    assert public["verdict"] == "genuine_with_signals"
    # the innocent serial in the refused transaction carries no signal
    assert parts.check(ids[2])["counterfeit_signals"] == []
    fake = parts.check("NEVER-1")
    assert fake["registered"] is False and [s["code"] for s in fake["counterfeit_signals"]] == ["part_not_registered"]
    # a plain key cannot install; a dealer neither (dropped, no leaf)
    world.refused(DEALER, "part.install", {"vin": car, "serials": [ids[4]]}, "forbidden", status=403)


def test_part_certificate_verifies_offline(parts: Parts, world: World) -> None:
    parts.define()
    ids = serials("PAD", 37)
    parts.register(ids)
    parts.deliver(ids[:1], WORKSHOP, "werkstatt-berg")
    keys, quorum = world.reader.checkpoint_keys()
    moved = verify_certificate(world.reader.part_certificate(ids[0]), keys, quorum)
    assert moved.record is not None and moved.record["holder"] == "werkstatt-berg" and moved.maker == "kestrel-parts"
    unmoved_cert = world.reader.part_certificate(ids[20])
    unmoved = verify_certificate(unmoved_cert, keys, quorum)
    assert unmoved.record is None and unmoved.lot == "L1" and unmoved.part_number == PAD
    for tamper in (
        lambda c: c["leaf"].update(serial="PAD-999999"),
        lambda c: c.update(leaf_index=c["leaf_index"] + 1),
        lambda c: c["path"].reverse(),
        lambda c: c["batch"]["value"].update(lot="L9"),
        lambda c: c.update(serial=ids[21]),
    ):
        copy = canonical.decode(canonical.encode(unmoved_cert))
        tamper(copy)
        with pytest.raises(VerificationError):
            verify_certificate(copy, keys, quorum)
    with pytest.raises(VerificationError):
        verify_certificate(unmoved_cert, [Signer.deterministic("x").did], 1)


# -- recalls -------------------------------------------------------------------------------------


def test_recall_reaches_every_affected_vehicle(parts: Parts, world: World) -> None:
    parts.define()
    parts.approve()
    faulty, good = serials("PAD", 6), serials("PADG", 3)
    parts.register(faulty, lot="L-BAD")
    parts.register(good, lot="L-OK")
    parts.deliver(faulty[:2], MAKER, "nordwerk")
    parts.deliver([*faulty[2:], *good], WORKSHOP, "werkstatt-berg")
    cars = [parts.vehicle(n, owner=owner) for n, owner in ((1, OWNER1), (2, OWNER2), (3, None), (4, None))]
    parts.install(MAKER, cars[0], faulty[:1])          # at the plant
    parts.install(MAKER, cars[1], faulty[1:2])
    parts.install(WORKSHOP, cars[2], good[:1])
    parts.install(WORKSHOP, cars[3], faulty[2:3])      # later, in a repair
    # a faulty part taken off again: that vehicle is no longer affected
    world.ok(WORKSHOP, "part.install", {"vin": cars[2], "serials": [faulty[3]]})
    world.ok(WORKSHOP, "part.remove", {"vin": cars[2], "serials": [faulty[3]], "reason": "damaged"})
    # who may open campaigns
    campaign = {"campaign": "R-2026-001", "title": "Brake pads may crack", "remedy": "Replace the front pads",
                "parts": [{"part_number": PAD, "lots": ["L-BAD"]}]}
    world.refused(WORKSHOP, "recall.open", campaign, "forbidden", status=403)
    world.refused(MAKER, "recall.open", {**campaign, "parts": []}, "empty_campaign")
    world.ok(MAKER, "recall.open", campaign)
    world.rejected(MAKER, "recall.open", campaign, "campaign_exists")
    reader = world.reader
    report = reader.recall("R-2026-001", vehicles=True)
    assert (report["affected"], report["open"], report["remedied"]) == (3, 3, 0)
    listed = {v["vin"]: v for v in report["vehicles"]}
    assert set(listed) == {cars[0], cars[1], cars[3]}
    assert listed[cars[0]]["owner"] == OWNER1.did and listed[cars[3]]["owner"] is None
    assert listed[cars[3]]["serials"] == [faulty[2]]
    # the public: figures, not owners; a serial's check says recalled; a VIN's recalls
    public = world.env.client().recall("R-2026-001")
    assert "vehicles" not in public and public["affected"] == 3
    assert parts.check(faulty[0])["recalled"] is True and parts.check(good[0])["recalled"] is False
    assert [r["status"] for r in world.env.client().vehicle_recalls(cars[0])] == ["open"]
    assert world.env.client().vehicle_recalls(cars[2]) == []
    with pytest.raises(BlokError) as info:
        world.env.client(WORKSHOP).recall("R-2026-001", vehicles=True)
    assert info.value.code == "token_required"
    # a change of owner reaches the list at once (the owner is kept beside each fitted part)
    world.ok(OWNER2, "title.offer", {"vin": cars[1], "buyer": OWNER3.did})
    world.ok(OWNER3, "title.accept", {"vin": cars[1]})
    assert {v["vin"]: v["owner"] for v in reader.recall("R-2026-001", vehicles=True)["vehicles"]}[cars[1]] == \
        OWNER3.did
    # remedy: the affected part out, a good one in
    remedy = {"vin": cars[0], "campaign": "R-2026-001", "removed": [faulty[0]], "installed": [good[1]],
              "odometer_km": 900}
    world.rejected(WORKSHOP, "recall.remedy", {**remedy, "removed": []}, "remedy_incomplete")
    world.rejected(WORKSHOP, "recall.remedy", {**remedy, "vin": cars[2], "removed": [], "installed": []},
                   "not_affected")
    world.rejected(WORKSHOP, "recall.remedy", {**remedy, "installed": [faulty[4]]}, "replacement_affected")
    world.ok(WORKSHOP, "recall.remedy", remedy)
    world.ok(WORKSHOP, "recall.remedy", {**remedy, "vin": cars[3], "removed": [faulty[2]], "installed": []})
    after = reader.recall("R-2026-001", vehicles=True)
    assert (after["affected"], after["open"], after["remedied"], after["completion_permille"]) == (3, 1, 2, 666)
    assert [v["vin"] for v in after["vehicles"]] == [cars[1]]
    assert parts.check(faulty[0])["location"] == {"status": "removed", "holder": "werkstatt-berg",
                                                  "since_ms": parts.check(faulty[0])["location"]["since_ms"]}
    assert world.record(cars[0])["odometer_km"] == 900
    assert [r["status"] for r in world.env.client().vehicle_recalls(cars[3])] == ["remedied"]
    world.rejected(WORKSHOP, "recall.remedy", {**remedy, "vin": cars[3], "removed": [], "installed": []},
                   "already_remedied")
    # a regulator's campaign by model year reaches every maker's vehicles of those years
    world.ok(REGISTRY, "recall.open", {"campaign": "R-REG-7", "title": "Inspect seat rails", "remedy": "Inspect",
                                       "models": ["Kestrel 3"], "year_from": 2024, "year_to": 2024})
    assert reader.recall("R-REG-7", vehicles=True)["affected"] == 4
    # only the opener closes a campaign
    world.rejected(MAKER, "recall.close", {"campaign": "R-REG-7", "reason": "done"}, "not_campaign_owner")
    world.ok(REGISTRY, "recall.close", {"campaign": "R-REG-7", "reason": "done"})
    world.rejected(WORKSHOP, "recall.remedy", {"vin": cars[0], "campaign": "R-REG-7"}, "campaign_closed")


# -- end of life ---------------------------------------------------------------------------------


def test_harvest_reuse_recycle_and_second_life(parts: Parts, world: World) -> None:
    parts.define()
    parts.define(CELL_PACK, category="battery", battery=True)
    parts.approve()
    parts.approve(CELL_PACK)
    pads, packs = serials("PAD", 2), ["BAT-1"]
    parts.register(pads)
    parts.register(packs, number=CELL_PACK, passports=[PASSPORT])
    parts.deliver([*pads, *packs], MAKER, "nordwerk")
    scrapped, donor_target = parts.vehicle(1), parts.vehicle(2)
    parts.install(MAKER, scrapped, [*pads, *packs])
    world.ok(RECYCLER, "vehicle.destroyed", {"vin": scrapped, "certificate": digest("cod")})
    # harvesting from a destroyed vehicle
    world.ok(RECYCLER, "part.remove", {"vin": scrapped, "serials": [*pads, *packs], "reason": "harvest"})
    world.ok(RECYCLER, "part.dispose", {"serials": pads[:1], "disposition": "reuse"})
    world.rejected(RECYCLER, "part.dispose", {"serials": pads[1:], "disposition": "second_life",
                                              "application": "home storage"}, "not_a_battery")
    world.ok(RECYCLER, "part.dispose", {"serials": pads[1:], "disposition": "recycle",
                                        "certificate": digest("recycled")})
    world.ok(RECYCLER, "part.dispose", {"serials": packs, "disposition": "second_life",
                                        "application": "grid storage", "soh_permille": 780})
    reused = parts.check(pads[0])
    assert reused["reused"] is True and reused["location"]["status"] == "in_stock" and reused["lot"] == "L1"
    assert parts.check(pads[1])["verdict"] == "recycled"
    assert parts.check(packs[0])["location"]["status"] == "second_life"
    # the reused part keeps its provenance and can be fitted again; the recycled one is refused
    shipment = parts.ship(RECYCLER, pads[:1], "werkstatt-berg")
    parts.receive(WORKSHOP, shipment)
    parts.install(WORKSHOP, donor_target, pads[:1])
    world.rejected(WORKSHOP, "part.install", {"vin": donor_target, "serials": pads[1:]}, "part_recycled")
    assert [s["code"] for s in parts.check(pads[1])["counterfeit_signals"]] == ["part_recycled"]
    history = world.reader.part_history(pads[0])
    assert [e["kind"] for e in history["events"]] == [
        "installed", "received", "shipped", "reuse", "removed", "installed", "received", "shipped", "registered"]
