"""Vehicle data and software for the demo ledger, after the sample fleet and the parts stories.

* **Software**: the carmaker publishes its TUF trust (offline root and targets keys, demo keys) and
  two brake-ECU releases signed 2-of-3 by release keys; a campaign assigns version 2 to the Kestrel
  3; a dozen fleet cars' device keys attest installs (most on version 2, a few still on 1).
* **Usage-based insurance**: the insurer defines a product and binds a policy to one fleet car
  (the owner cosigns); the car's device sends an hour of 1 Hz driving a day for five weeks (samples
  stored off chain, checked against each committed root); the first 30-day period is priced by the
  contract; a device odometer reading; then a crash on the way home: the device deposits the
  record, whose delta-V opens a claim by itself.

Everything derives from fixed labels (demo keys), so a fresh demo node always shows the same
cars; only the current time moves the dates.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from blokauto.crypto.keys import Signer, b64
from blokauto.demo import demo_member
from blokauto.demo_parts import DemoSender, fleet_records
from blokauto.node import Node
from blokauto.offchain.checks import check_samples
from blokauto.software.releases import Release, build_release_metadata, sign_release
from blokauto.software.tuf_export import sign_trust_metadata
from blokauto.vehicledata import crash as edr
from blokauto.vehicledata import telematics as tm
from blokauto.vehicledata.telematics import Sample

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
BRAKE_HW = "brake-ecu-v2"
ROOT_KEYS = [Signer.deterministic(f"demo/software/root/{i}") for i in range(2)]
TARGETS_KEY = Signer.deterministic("demo/software/targets")
ONLINE_KEY = Signer.deterministic("demo/software/online")
RELEASE_KEYS = [Signer.deterministic(f"demo/software/brake-release/{i}") for i in range(3)]
IMAGES = {1: b"Kestrel brake ECU firmware 1.4.2\n" * 2_000, 2: b"Kestrel brake ECU firmware 2.0.1\n" * 2_100}
PRODUCT = {"currency": "EUR", "base_cents": 2_400, "per_km_cents": 3, "per_hard_braking_cents": 120,
           "per_over_limit_minute_cents": 15, "per_night_km_cents": 2, "adjustment_bp": -500,
           "max_premium_cents": 40_000}


@dataclass
class VehicleDataSummary:
    transactions: int = 0
    notable: dict[str, str] = field(default_factory=dict)


def _owner_key(did: str) -> Signer | None:
    """The fleet's owners hold deterministic demo keys: find the one behind ``did``."""
    for n in range(1, 5_000):
        key = Signer.deterministic(f"demo/fleet/owner/{n}")
        if key.did == did:
            return key
    return None


def _day_of_driving(rng: random.Random, odometer_m: int) -> tuple[bytes, int]:
    """An hour at 1 Hz: town and country roads, a few hard stops; returns the samples and the end odometer."""
    samples = []
    speed, odo = 0, odometer_m
    limit = 50
    for t in range(3_600):
        if t % 600 == 0:
            limit = rng.choice((30, 50, 50, 70, 100, 130))
        target = limit * 950 // 36 + rng.randint(-60, 60)     # ~95 % of the limit: now and then above it
        accel = max(-2_500, min(2_000, (target - speed) * 40))
        if rng.random() < 0.0003:
            accel = -rng.randint(3_000, 6_500)          # a hard stop
        speed = max(0, min(4_500, speed + accel // 10))
        odo += speed // 100
        samples.append(Sample(t_s=t, speed_cms=speed, accel_mms2=accel, brake=int(accel < -1_000), odometer_m=odo,
                              limit_kmh=limit, lat_e6=51_340_000 + t * 3, lon_e6=12_370_000 + t * 2,
                              utc_offset_min=60))
    return tm.encode_samples(samples), odo


def seed_vehicledata(node: Node, now_ms: int | None = None) -> VehicleDataSummary:
    """Software, telematics, a priced period, a crash and its claim (the fleet must be seeded first)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    send = DemoSender(node)
    summary = VehicleDataSummary()
    maker, insurer = demo_member("nordwerk"), demo_member("alpina-insurance")
    fleet = [r for _, r in fleet_records(node) if r["status"] == "active" and r["owner"]]

    # -- software ------------------------------------------------------------------------------------
    expires = datetime.fromtimestamp(now // 1000 + 2 * 365 * 86_400, UTC)
    if node.read_state("swtrust/nordwerk") is None:
        root, targets = sign_trust_metadata(
            root_signers=ROOT_KEYS, targets_signers=[TARGETS_KEY], online_keys=[ONLINE_KEY.did],
            release_keys_by_hw={BRAKE_HW: [k.did for k in RELEASE_KEYS]}, threshold_by_hw={BRAKE_HW: 2},
            root_expires=expires, targets_expires=expires)
        send.one(maker, "software.trust", {"roots": [root.decode()], "targets": targets.decode()})
        releases = [Release(BRAKE_HW, v, hashlib.sha256(IMAGES[v]).hexdigest(), len(IMAGES[v]),
                            f"kestrel-brake-{v}.bin", min_previous=0) for v in (1, 2)]
        for sequence in (1, 2):
            document = sign_release(build_release_metadata(BRAKE_HW, releases[:sequence], sequence=sequence,
                                                           expires=expires), RELEASE_KEYS[:2])
            send.one(maker, "software.release", {"hardware_id": BRAKE_HW, "document": document.decode()})
        send.one(maker, "software.campaign", {"campaign": "NW-SW-2026-03", "hardware_id": BRAKE_HW, "version": 2,
                                              "title": "Brake ECU 2.0: smoother ABS control on wet roads",
                                              "models": sorted({r["model"] for r in fleet})[:3]})
        installs = []
        for n, record in enumerate(fleet[:12]):
            device = Signer.deterministic(f"demo/fleet/device/{record['vin']}")
            for version in (1, 2) if n % 4 else (1,):
                installs.append((device, "software.installed", {
                    "vin": record["vin"], "ecu": "brake", "hardware_id": BRAKE_HW,
                    "image_sha256": releases[version - 1].sha256}, ()))
        send.strict(installs)
        summary.notable["software_car"] = fleet[1]["vin"]

    # -- usage-based insurance: a car, its owner, five weeks of driving ------------------------------
    car = next((r for r in fleet[12:] if _owner_key(r["owner"]) is not None), None)
    if car is None:
        return summary
    vin, owner = car["vin"], _owner_key(car["owner"])
    assert owner is not None
    device = Signer.deterministic(f"demo/fleet/device/{vin}")
    start = now - 35 * DAY_MS
    send.one(insurer, "insurance.product", {"product": "drive-smart", "name": "Drive Smart (pay how you drive)",
                                            "terms": PRODUCT})
    send.one(insurer, "insurance.bind", {"vin": vin, "product": "drive-smart", "start_ms": start,
                                         "period_days": 30, "claim_threshold_dkmh": 150}, (owner,))
    rng = random.Random(f"demo/telematics/{vin}")
    odometer = car["odometer_km"] * 1_000
    batches = []
    for day in range(34):
        blob, end = _day_of_driving(rng, odometer)
        evening = 22 if day % 5 == 0 else 17     # every fifth day a late drive home: night kilometres
        header = tm.seal_batch(device, vin, day, start + day * DAY_MS + evening * HOUR_MS, blob)
        refusal = check_samples(tm.header_to_dict(header), blob)
        assert refusal is None, refusal
        node.store_offchain("telematics", header.root, blob)
        batches.append((device, "telematics.batch", {"header": tm.header_to_dict(header)}, ()))
        odometer = end
    send.strict(batches)
    send.one(insurer, "insurance.premium", {"vin": vin, "period": 0})
    # after the car's latest recorded reading (the fleet's last service may be dated within the hour),
    # or the reading would be a late entry that must lie between its neighbours
    read_at = max(now - 2 * HOUR_MS, car["odometer_at_ms"] + 1)
    send.one(device, "vehicle.odometer", {"vin": vin, "odometer_km": odometer // 1_000, "at_ms": read_at})
    record = edr.sample_record(vin, device, now - HOUR_MS, braking=True, impact_kmh=41, seed=2026)
    signed = edr.sign_record(device, record)
    receipt = send.one(device, "crash.deposit", {"vin": vin, "record_hash": signed.record_hash,
                                                 "signature": b64(signed.signature), "summary": signed.summary})
    node.store_offchain("crash", signed.record_hash, signed.record)
    claim = next((e["claim"] for e in receipt["events"] if e["type"] == "claim.opened"), "")
    summary.notable.update(insured_car=vin, crash_record=signed.record_hash, claim=claim)
    summary.transactions = send.summary.transactions
    return summary

