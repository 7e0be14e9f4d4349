"""Signed vehicle data driven through the SDK against a real node, as the car, its owner, the
carmaker, the insurer and a regulator would: the disputed "brakes failed" crash, telematics batches
with consent, a usage-based premium computed by the contract, automatic and manual claims."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from blokauto.crypto.keys import Signer
from blokauto.errors import BlokError, VerificationError
from blokauto.vehicledata import crash as edr
from blokauto.vehicledata import insurance as ubi
from blokauto.vehicledata import telematics as tm
from blokauto.vehicledata.telematics import Sample
from tests.worlds import (
    DEALER,
    DEVICE,
    INSURER,
    MAKER,
    OWNER1,
    OWNER2,
    REGISTRY,
    STRANGER,
    WORKSHOP,
    World,
)

VIN = "WBA3A5C51CF256985"
DAY = 86_400_000
PRODUCT = {"currency": "EUR", "base_cents": 2_000, "per_km_cents": 4, "per_hard_braking_cents": 150,
           "per_over_limit_minute_cents": 20, "per_night_km_cents": 3, "max_premium_cents": 50_000}


def drive(count: int, *, odometer_m: int, hard_at: tuple[int, ...] = (), speeding: bool = False) -> bytes:
    """``count`` seconds at 54 km/h in a 50 zone (or 30 when ``speeding``), braking hard at ``hard_at``."""
    samples = [Sample(t_s=i, speed_cms=1_500, accel_mms2=-4_000 if i in hard_at else 0, brake=int(i in hard_at),
                      odometer_m=odometer_m + 15 * i, limit_kmh=30 if speeding else 50, lat_e6=48_137_000,
                      lon_e6=11_575_000, utc_offset_min=60) for i in range(count)]
    return tm.encode_samples(samples)


@pytest.fixture
def car(world: World) -> World:
    world.ok(MAKER, "vehicle.register", {"vin": VIN, "model": "Kestrel 3", "year": 2012, "powertrain": "ice",
                                          "device_key": DEVICE.did})
    world.ok(DEALER, "title.first_sale", {"vin": VIN, "owner": OWNER1.did, "odometer_km": 50}, cosigners=[OWNER1])
    world.clock.advance(3 * DAY)     # the car has been on the road a few days
    return world


def deposit(world: World, *, braking: bool, impact_kmh: int, seed: int = 1, at_ms: int | None = None) -> Any:
    record = edr.sample_record(VIN, DEVICE, at_ms or world.clock.now_ms() - 60_000, braking=braking,
                               impact_kmh=impact_kmh, seed=seed)
    signed = edr.sign_record(DEVICE, record)
    receipt = world.client(DEVICE).deposit_crash(signed)
    return signed, receipt


# -- the disputed crash ----------------------------------------------------------------------------


def test_brakes_failed_dispute(car: World, tmp_path: Path) -> None:
    world = car
    signed, receipt = deposit(world, braking=True, impact_kmh=38)
    assert receipt["status"] == "ok", (receipt.get("code"), receipt.get("message"))
    event = next(e for e in receipt["events"] if e["type"] == "vehicle.event")
    assert event["kind"] == "crash_recorded" and event["record_hash"] == signed.record_hash
    # the owner fetches what the car recorded and checks it against the ledger, byte for byte
    owner = world.client(OWNER1)
    owner.login()
    record = owner.crash_record(signed.record_hash)
    assert record.service_brake[-1] is True and signed.summary["brake_applied"] is True
    deposit_view = owner.crash(signed.record_hash, proof=True)
    assert deposit_view["deposit"]["vehicle_state"]["owner"] == OWNER1.did and deposit_view["stored"]
    assert deposit_view["proof"]["value"]["record_hash"] == signed.record_hash

    # the carmaker claims the brakes were never applied: it cannot put another record in its place
    altered = msgspec.structs.replace(edr.decode_record(signed.record),
                                      service_brake=[False] * 11)
    forged = edr.encode_record(altered)
    response = world.env.tc.put(f"/v1/crash/{signed.record_hash}/record", content=forged)
    assert response.status_code == 422 and response.json()["code"] == "record_hash_mismatch"
    maker_sig = edr.sign_record(DEVICE, altered)   # even with the device key it would be a new deposit ...
    world.rejected(MAKER, "crash.deposit", {"vin": VIN, "record_hash": maker_sig.record_hash,
                                            "signature": "A" * 86 + "==", "summary": maker_sig.summary},
                   "not_device")                     # ... and the carmaker's own key is not the device's
    again = world.client(DEVICE).submit("crash.deposit", {
        "vin": VIN, "record_hash": maker_sig.record_hash, "signature": _b64(maker_sig.signature),
        "summary": maker_sig.summary})
    assert (again["status"], again["code"]) == ("rejected", "duplicate_event")   # one record per event, for good
    # a node operator who edits the stored file is caught by every reader
    stored = next((world.env.node.data_dir / "offchain" / "crash").rglob(signed.record_hash))
    stored.write_bytes(forged)
    with pytest.raises(VerificationError) as caught:
        owner.crash_record(signed.record_hash)
    assert caught.value.code == "record_hash_mismatch"

    # the owner's history report lists the deposit
    page = owner.vehicle_report(VIN, format="html")
    assert "Crash-recorder deposits" in page and signed.record_hash[:16] in page
    # who reads: owner, carmaker, regulator; not a stranger or an unrelated workshop
    world.reader.crash(signed.record_hash)                       # the registry (regulator role)
    for key in (STRANGER, WORKSHOP):
        client = world.client(key)
        client.login()
        with pytest.raises(BlokError) as denied:
            client.crash(signed.record_hash)
        assert denied.value.code in ("not_entitled", "not_a_member")


def _b64(data: bytes) -> str:
    from blokauto.crypto.keys import b64

    return b64(data)


def test_bad_crash_deposits_change_nothing(car: World) -> None:
    world = car
    record = edr.sample_record(VIN, DEVICE, world.clock.now_ms(), braking=False, impact_kmh=20, seed=3)
    signed = edr.sign_record(DEVICE, record)
    payload = {"vin": VIN, "record_hash": signed.record_hash, "signature": _b64(signed.signature),
               "summary": signed.summary}
    world.refused(DEVICE, "crash.deposit", {**payload, "summary": {**signed.summary, "max_delta_v_dkmh": 9_999}},
                  "bad_payload")
    world.refused(DEVICE, "crash.deposit", {**payload, "signature": "nope"}, "bad_payload")
    world.refused(STRANGER, "crash.deposit", payload, "forbidden", status=403)     # not a party of the vehicle
    response = world.env.tc.put(f"/v1/crash/{signed.record_hash}/record", content=signed.record)
    assert response.status_code == 404 and response.json()["code"] == "unknown_crash"


# -- telematics, consent, premiums, claims ---------------------------------------------------------


def test_usage_based_insurance_and_claims(car: World) -> None:
    world = car
    start = world.clock.now_ms() - 2 * DAY
    world.ok(INSURER, "insurance.product", {"product": "pay-how-you-drive", "name": "Pay how you drive",
                                            "terms": PRODUCT})
    world.refused(INSURER, "insurance.product", {"product": "bad", "name": "x",
                                                 "terms": {**PRODUCT, "min_premium_cents": 60_000}}, "bad_product")
    bind = {"vin": VIN, "product": "pay-how-you-drive", "start_ms": start, "period_days": 30,
            "claim_threshold_dkmh": 150}
    world.rejected(INSURER, "insurance.bind", bind, "consent_missing")
    world.ok(INSURER, "insurance.bind", bind, cosigners=[OWNER1])

    device = world.client(DEVICE)
    blobs = [drive(600, odometer_m=50_000, hard_at=(100, 101, 400)), drive(600, odometer_m=59_000, speeding=True),
             drive(300, odometer_m=68_000)]
    headers = []
    for seq, blob in enumerate(blobs):
        header = tm.seal_batch(DEVICE, VIN, seq, start + seq * 700_000, blob)
        headers.append(header)
        assert device.send_telematics(header, blob)["status"] == "ok"
    # out of order, duplicated, or signed by another key: refused
    replay = world.client(DEVICE).submit("telematics.batch", {"header": tm.header_to_dict(headers[1])})
    assert (replay["status"], replay["code"]) == ("rejected", "batch_out_of_order")
    forged = tm.seal_batch(Signer.deterministic("not the car"), VIN, 3, start + 3 * 700_000, blobs[2])
    world.refused(STRANGER, "telematics.batch", {"header": tm.header_to_dict(forged)}, "forbidden", status=403)
    tampered = tm.header_to_dict(msgspec.structs.replace(headers[2], seq=3))
    world.refused(DEVICE, "telematics.batch", {"header": tampered}, "bad_signature")

    # the insurer (consent through the policy) reads samples and proves single ones; a workshop may not
    insurer = world.client(INSURER)
    insurer.login()
    assert insurer.samples(VIN, 0) == blobs[0]
    proven = insurer.sample(VIN, 1, 42)
    assert proven["sample"]["limit_kmh"] == 30
    workshop = world.client(WORKSHOP)
    workshop.login()
    with pytest.raises(BlokError) as denied:
        workshop.samples(VIN, 0)
    assert denied.value.code == "not_entitled"
    world.ok(OWNER1, "consent.grant", {"vin": VIN, "org": "werkstatt-berg", "scopes": ["telematics"]})
    assert workshop.samples(VIN, 2) == blobs[2]

    # a crash above the policy's 15 km/h delta-V threshold opens a claim by itself
    signed, receipt = deposit(world, braking=True, impact_kmh=45, seed=9)
    opened = next(e for e in receipt["events"] if e["type"] == "claim.opened")
    claim = insurer.claim(opened["claim"])
    assert claim["automatic"] and claim["crash"] == signed.record_hash and claim["vehicle_state"]["owner"] == OWNER1.did
    # the cluster reads 50 km, the telematics odometer 72.5 km: flagged for a human look
    assert claim["flags"] == ["odometer_inconsistent"] and claim["telematics_odometer_m"] == 72_485
    _, receipt = deposit(world, braking=True, impact_kmh=8, seed=4, at_ms=world.clock.now_ms() - 30_000)
    assert not any(e["type"] == "claim.opened" for e in receipt["events"])
    manual = world.ok(INSURER, "claim.open", {"vin": VIN, "reason": "windscreen, reported by phone"})
    assert next(e for e in manual["events"] if e["type"] == "claim.opened")["flags"] == [
        "no_crash_record", "odometer_inconsistent"]
    world.ok(INSURER, "claim.decide", {"claim": opened["claim"], "decision": "approved", "amount_cents": 420_000})
    world.rejected(INSURER, "claim.decide", {"claim": opened["claim"], "decision": "rejected"}, "claim_closed")
    world.refused(WORKSHOP, "claim.decide", {"claim": opened["claim"], "decision": "approved"}, "forbidden",
                  status=403)
    owner = world.client(OWNER1)
    owner.login()
    assert owner.claim(opened["claim"])["status"] == "approved"

    # the period's premium: computed by the contract from the committed aggregates, every term explained
    world.rejected(INSURER, "insurance.premium", {"vin": VIN, "period": 0}, "period_open")
    world.clock.advance(29 * DAY)
    world.ok(INSURER, "insurance.premium", {"vin": VIN, "period": 0})
    premium = insurer.premium(VIN, 0)
    totals = {k: sum(msgspec.structs.asdict(h.aggregates)[k] for h in headers)
              for k in ("distance_m", "hard_braking", "over_limit_s", "night_distance_m", "samples")}
    assert premium["aggregates"] == totals and premium["batches"] == [0, 1, 2]
    expected = ubi.premium(PRODUCT, totals)
    assert premium["total_cents"] == expected.total_cents == sum(t["cents"] for t in premium["terms"])
    assert [t["term"] for t in premium["terms"]][:5] == ["base", "distance", "hard_braking", "over_limit", "night"]
    world.rejected(INSURER, "insurance.premium", {"vin": VIN, "period": 0}, "period_closed")

    # a new owner: the previous owner's consents end with the title
    world.ok(OWNER1, "title.offer", {"vin": VIN, "buyer": OWNER2.did})
    world.ok(OWNER2, "title.accept", {"vin": VIN})
    with pytest.raises(BlokError):
        workshop.samples(VIN, 2)


def test_lying_batch_is_disproved_by_samples(car: World) -> None:
    world = car
    start = world.clock.now_ms() - DAY
    world.ok(INSURER, "insurance.product", {"product": "p1", "name": "p1", "terms": PRODUCT})
    world.ok(INSURER, "insurance.bind", {"vin": VIN, "product": "p1", "start_ms": start}, cosigners=[OWNER1])
    blob = drive(300, odometer_m=1_000, hard_at=(10, 50, 90))
    honest = tm.seal_batch(DEVICE, VIN, 0, start, blob)
    # the car's software understates hard braking (0 instead of 3), signs and commits it
    lie = msgspec.structs.replace(honest, aggregates=msgspec.structs.replace(honest.aggregates, hard_braking=0))
    unsigned = msgspec.structs.replace(lie, signature="")
    signature = DEVICE.sign(tm.DOMAIN_TELEMATICS, tm.header_bytes(unsigned))
    lie = msgspec.structs.replace(unsigned, signature=_b64(signature))
    device = world.client(DEVICE)
    assert device.send_telematics(lie, blob, upload=False)["status"] == "ok"
    # uploading the samples exposes the lie, with a sample-level proof anyone can check
    response = world.env.tc.put(f"/v1/telematics/{VIN}/0/samples", content=blob)
    problem = response.json()
    assert response.status_code == 422 and problem["code"] == "aggregates_mismatch"
    proof = problem["mismatch_proof"]
    assert proof["claim"] == "hard_braking" and "samples" in proof
    world.ok(INSURER, "telematics.dispute", {"vin": VIN, "seq": 0, "proof": proof})
    world.rejected(INSURER, "telematics.dispute", {"vin": VIN, "seq": 0, "proof": proof}, "already_disputed")
    world.clock.advance(31 * DAY)
    world.rejected(INSURER, "insurance.premium", {"vin": VIN, "period": 0}, "disputed_batches")
    # an honest batch cannot be disputed
    honest_next = tm.seal_batch(DEVICE, VIN, 1, start + 400_000, drive(60, odometer_m=6_000))
    assert device.send_telematics(honest_next, drive(60, odometer_m=6_000))["status"] == "ok"
    bogus = {"claim": "distance_m", "samples": [tm.prove_sample(drive(60, odometer_m=6_000), 0)]}
    world.rejected(INSURER, "telematics.dispute", {"vin": VIN, "seq": 1, "proof": bogus}, "dispute_failed")
    world.rejected(OWNER1, "consent.grant", {"vin": VIN, "org": "nobody-here", "scopes": ["crash"]}, "unknown_org")
    world.rejected(DEALER, "consent.grant", {"vin": VIN, "org": "werkstatt-berg", "scopes": ["crash"]}, "not_owner")
    assert REGISTRY  # the registry reads claims too (covered by the crash test's regulator read)


def test_a_gateway_posts_several_batches_at_once(car: World) -> None:
    world = car
    start = world.clock.now_ms() - DAY
    blobs = [drive(120, odometer_m=1_000 + 2_000 * i) for i in range(3)]
    headers = [tm.seal_batch(DEVICE, VIN, i, start + i * 200_000, blob) for i, blob in enumerate(blobs)]
    device = world.client(DEVICE)
    nonce = device.next_nonce()

    def item(i: int, header: Any, blob: bytes) -> dict[str, Any]:
        raw = device.build("telematics.batch", {"header": tm.header_to_dict(header)}, nonce=nonce + i)
        return {"tx": json.loads(raw), "samples": _b64(blob)}

    # one lying header refuses the whole request, naming it; nothing is committed
    lie = msgspec.structs.replace(headers[2], aggregates=msgspec.structs.replace(headers[2].aggregates,
                                                                                  hard_braking=5))
    unsigned = msgspec.structs.replace(lie, signature="")
    lie = msgspec.structs.replace(unsigned, signature=_b64(DEVICE.sign(tm.DOMAIN_TELEMATICS,
                                                                       tm.header_bytes(unsigned))))
    before = world.env.status()["log_size"]
    refused = world.env.tc.post("/v1/telematics", json={"batches": [item(0, headers[0], blobs[0]),
                                                                    item(1, headers[1], blobs[1]),
                                                                    item(2, lie, blobs[2])]})
    problem = refused.json()
    assert refused.status_code == 422 and problem["code"] == "aggregates_mismatch"
    assert problem["detail"].startswith("batches[2]: ") and problem["mismatch_proof"]["claim"] == "hard_braking"
    assert world.env.status()["log_size"] == before
    ok = world.env.tc.post("/v1/telematics", json={"batches": [item(i, h, b) for i, (h, b) in
                                                               enumerate(zip(headers, blobs, strict=True))]})
    assert ok.status_code == 200 and [r["status"] for r in ok.json()["receipts"]] == ["ok"] * 3
    owner = world.client(OWNER1)
    owner.login()
    assert owner.telematics(VIN)["chain"]["seq"] == 2 and owner.samples(VIN, 1) == blobs[1]
    bad = world.env.tc.post("/v1/telematics", json={"batches": []})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_ingest"
