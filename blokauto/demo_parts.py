"""Parts for the demo ledger, after the sample fleet: two stories a newcomer can follow.

1. A chip traced from a fab in Taiwan to a car in Germany. The consortium admits a chip maker in
   Hsinchu and a freight forwarder by vote; the fab registers a wafer lot of microcontrollers; one
   tray flies Taipei -> Frankfurt, goes to the Tier-1 in Stuttgart that builds brake ECUs, then to
   the carmaker's plant in Leipzig, which fits a chip to a new car. Every handoff is signed by the
   sender and accepted by the receiver (``blokauto part history``).
2. A faulty brake-pad lot recalled across the fleet. The Tier-1 registers two lots of pads (with
   a cobalt-free friction compound, and a battery lot with its passport and a certified cobalt
   chain), ships pads to both workshops, which fit them in brake services on fleet cars; some
   faulty pads are already replaced in later repairs. The carmaker opens a campaign on the bad lot;
   the list names exactly the cars still carrying one, with their owners' keys; a workshop
   remedies a few.

Everything derives from fixed labels (demo keys, serials), so the notable serials are the same
on every fresh demo node.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from blokauto.contracts.parts import compute_batch_root
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.demo import LATER_ORGS, demo_admin, demo_member
from blokauto.errors import BlokError
from blokauto.ledger.tx import sign_tx
from blokauto.node import Node
from blokauto.vin import with_check_digit

DAY_MS = 86_400_000
CHIP_MAKER, FORWARDER = LATER_ORGS
VOTERS = ("autohaus-lenz", "werkstatt-berg", "quickfix", "alpina-insurance", "kba-registry")
CHIP = "FS-MCU-A7"
PAD = "KP-BRK-PAD-22"
PACK = "KP-BAT-77"
CHIP_LOT = "W2611-07"
BAD_LOT, GOOD_LOT = "BP-2409-A", "BP-2409-B"
CAMPAIGN = "NW-2026-014"
TRACED_CHIP = "FS7-2611-07-000042"
NEW_CAR = with_check_digit("WBA8E9C50RA000777")   # a car built today at the Leipzig plant


@dataclass
class PartsSummary:
    transactions: int = 0
    refused: int = 0
    notable: dict[str, str] = field(default_factory=dict)
    recall: dict[str, int] = field(default_factory=dict)


class DemoSender:
    """Signs with each key's next nonce and submits in order, one stage at a time (the demo seeders)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.nonces: dict[str, int] = {}
        self.summary = PartsSummary()

    def nonce(self, key: Signer) -> int:
        did = key.did
        if did not in self.nonces:
            self.nonces[did] = max(int(self.node.read_state(f"nonce/{did}") or 0), self.node.pending_nonce(did))
        self.nonces[did] += 1
        return self.nonces[did]

    def stage(self, txs: Sequence[tuple[Signer, str, dict[str, Any], tuple[Signer, ...]]]) -> list[dict[str, Any]]:
        raws = [sign_tx(self.node.chain, t, k, self.nonce(k), p, c) for k, t, p, c in txs]
        receipts = []
        for ticket in self.node.submit_many(raws):
            try:
                receipt = ticket.result(timeout=600)
            except BlokError as exc:
                self.summary.refused += 1
                receipt = {"status": "refused", "code": exc.code, "message": exc.message}
            else:
                self.summary.transactions += 1
            receipts.append(receipt)
        return receipts

    def strict(self, txs: Sequence[tuple[Signer, str, dict[str, Any], tuple[Signer, ...]]]) -> list[dict[str, Any]]:
        """:meth:`stage`, where every transaction must be accepted."""
        receipts = self.stage(txs)
        for (_, tx_type, _, _), receipt in zip(txs, receipts, strict=True):
            if receipt["status"] != "ok":
                raise BlokError(f"demo: {tx_type} failed: {receipt}", code="demo_failed")
        return receipts

    def one(self, key: Signer, tx_type: str, payload: dict[str, Any],
            cosigners: tuple[Signer, ...] = ()) -> dict[str, Any]:
        return self.strict([(key, tx_type, payload, cosigners)])[0]


def _admit(send: DemoSender, spec: dict[str, Any]) -> None:
    """A new organisation joins by vote: the carmaker proposes, five more members cosign."""
    if send.node.read_state(f"id/org/{spec['id']}") is not None:
        return
    admin = demo_admin(spec["id"])
    action = {"kind": "admit_org", "org": {**spec, "admins": [admin.did]}}
    send.one(demo_admin("nordwerk"), "gov.propose", {"action": action},
             tuple(demo_admin(org) for org in VOTERS))
    send.one(admin, "org.add_member", {"did": demo_member(spec["id"]).did, "roles": spec["roles"],
                                       "label": "operations"})


def _ship(send: DemoSender, sender: Signer, receiver: Signer, serials: list[str], to: str, zone: str,
          conditions: dict[str, int] | None = None, **observed: Any) -> None:
    payload: dict[str, Any] = {"serials": serials, "to": to, "zone": zone}
    if conditions:
        payload["conditions"] = conditions
    shipment = send.one(sender, "part.ship", payload)["tx"]
    send.one(receiver, "part.receive", {"shipment": shipment, "zone": zone, **observed})


def _batch(part_number: str, lot: str, plant: str, produced_ms: int, serials: list[str],
           passports: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"part_number": part_number, "lot": lot, "plant": plant, "produced_ms": produced_ms,
                               "serials": serials, "root": compute_batch_root(part_number, serials, passports),
                               **extra}
    if passports is not None:
        payload["passports"] = passports
    return payload


def seed_parts(node: Node, now_ms: int | None = None) -> PartsSummary:
    """Both stories, through the node's real bulk path (the sample fleet must be seeded first)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    send = DemoSender(node)
    rng = random.Random("blokauto/demo/parts")
    maker, plant = demo_member("kestrel-parts"), demo_member("nordwerk")
    berg, quickfix = demo_member("werkstatt-berg"), demo_member("quickfix")
    _admit(send, CHIP_MAKER)
    _admit(send, FORWARDER)
    fab, forwarder = demo_member(CHIP_MAKER["id"]), demo_member(FORWARDER["id"])

    # -- 1. the chip -----------------------------------------------------------------------------
    send.one(fab, "part.define", {"part_number": CHIP, "description": "32-bit automotive microcontroller (ASIL D)",
                                  "category": "electronics", "safety": True})
    chips = [f"FS7-2611-07-{i:06d}" for i in range(2_000)]
    send.one(fab, "part.register_batch", _batch(CHIP, CHIP_LOT, "Hsinchu Fab 12", now - 40 * DAY_MS, chips))
    tray = chips[:500]
    _ship(send, fab, forwarder, tray, FORWARDER["id"], "TW-TPE", {"min_dc": -400, "max_dc": 850},
          observed_min_dc=180, observed_max_dc=260)
    _ship(send, forwarder, maker, tray, "kestrel-parts", "DE-STR", {"min_dc": -400, "max_dc": 850},
          observed_min_dc=40, observed_max_dc=310)
    _ship(send, maker, plant, tray[:100], "nordwerk", "DE-LEJ")
    models = sorted({record["model"] for _, record in fleet_records(node)} | {"Kestrel 3"})
    send.one(plant, "part.approve", {"part_number": CHIP, "models": models})
    if node.read_state(f"vehicle/{NEW_CAR}") is None:
        send.one(plant, "vehicle.register", {"vin": NEW_CAR, "model": "Kestrel 3", "year": 2024, "powertrain": "bev",
                                             "battery": {"chemistry": "NMC 811", "capacity_wh": 77_000},
                                             "device_key": Signer.deterministic("demo/parts/new-car").did,
                                             "plant": "Leipzig"})
    send.one(plant, "part.install", {"vin": NEW_CAR, "serials": [TRACED_CHIP], "position": "brake ECU"})

    # -- 2. materials and a battery lot ------------------------------------------------------------
    mine = send.one(maker, "material.certify", {
        "material": "cobalt", "stage": "mine", "origin": "Kisanfu mine", "country": "CD", "grams": 2_000_000,
        "standard": "RMI RMAP", "audit": hashlib.sha256(b"demo cobalt audit 2026").hexdigest()})["tx"]
    refined = send.one(maker, "material.certify", {
        "material": "cobalt", "stage": "refiner", "origin": "Kokkola refinery", "country": "FI",
        "grams": 1_800_000, "inputs": [{"certificate": mine, "grams": 2_000_000}]})["tx"]
    send.one(maker, "part.define", {"part_number": PACK, "description": "77 kWh traction battery pack",
                                    "category": "battery", "battery": True, "safety": True})
    packs = [f"KP77-2610-{i:04d}" for i in range(40)]
    passports = [{"chemistry": "NMC 811", "rated_capacity_wh": 77_000, "soh_permille": 1000,
                  "carbon_g_per_kwh": 61_000 + rng.randrange(4_000), "recycled_cobalt_permille": 160,
                  "recycled_lithium_permille": 60, "recycled_nickel_permille": 60} for _ in packs]
    send.one(maker, "part.register_batch", _batch(PACK, "BAT-2610", "Stuttgart pack line", now - 30 * DAY_MS,
                                                  packs, passports,
                                                  materials=[{"certificate": refined, "grams": 1_200_000}]))

    # -- 3. brake pads and the recall ----------------------------------------------------------------
    send.one(maker, "part.define", {"part_number": PAD, "description": "Front brake pad set, low-copper compound",
                                    "category": "brakes", "safety": True})
    bad = [f"BP-2409-A-{i:05d}" for i in range(300)]
    good = [f"BP-2409-B-{i:05d}" for i in range(300)]
    send.one(maker, "part.register_batch", _batch(PAD, BAD_LOT, "Stuttgart", now - 120 * DAY_MS, bad))
    send.one(maker, "part.register_batch", _batch(PAD, GOOD_LOT, "Stuttgart", now - 90 * DAY_MS, good))
    send.one(plant, "part.approve", {"part_number": PAD, "models": models})
    _ship(send, maker, berg, bad[:150] + good[:150], "werkstatt-berg", "DE-HH")
    _ship(send, maker, quickfix, bad[150:] + good[150:], "quickfix", "DE-B")
    cars = [vin for vin, record in fleet_records(node) if record["status"] == "active" and record["owner"]]
    rng.shuffle(cars)
    fitted: list[tuple[str, Signer, str, str]] = []   # (vin, workshop key, pad, workshop org)
    installs = []
    stock = {"werkstatt-berg": (bad[:150], good[:150]), "quickfix": (bad[150:], good[150:])}
    used = {"werkstatt-berg": [0, 0], "quickfix": [0, 0]}
    for n, vin in enumerate(cars[:120]):
        org = "werkstatt-berg" if n % 2 == 0 else "quickfix"
        key = berg if org == "werkstatt-berg" else quickfix
        faulty = n % 3 != 2             # two in three brake jobs drew from the faulty lot
        pool = stock[org][0 if faulty else 1]
        pad = pool[used[org][0 if faulty else 1]]
        used[org][0 if faulty else 1] += 1
        installs.append((key, "part.install", {"vin": vin, "serials": [pad], "position": "front axle"}, ()))
        fitted.append((vin, key, pad, org))
    send.stage(installs)
    # later repairs already swapped some faulty pads for good ones: those cars are not affected any more
    faulty_jobs = [f for f in fitted if f[2].startswith("BP-2409-A")]
    swaps = faulty_jobs[:len(faulty_jobs) * 3 // 20]
    repairs = []
    for vin, key, pad, org in swaps:
        pool, i = stock[org][1], used[org][1]
        used[org][1] += 1
        repairs.append((key, "part.remove", {"vin": vin, "serials": [pad], "reason": "damaged"}, ()))
        repairs.append((key, "part.install", {"vin": vin, "serials": [pool[i]], "position": "front axle"}, ()))
    send.stage(repairs)
    send.one(plant, "recall.open", {
        "campaign": CAMPAIGN, "title": "Front brake pads of lot BP-2409-A may delaminate",
        "remedy": "Replace the front brake pads with a set from another lot",
        "hazard": "Reduced braking performance after prolonged heavy braking",
        "parts": [{"part_number": PAD, "lots": [BAD_LOT]}]})
    affected = [f for f in fitted if f[2].startswith("BP-2409-A") and f not in swaps]
    remedies = []
    for vin, key, pad, org in affected[:len(affected) * 22 // 100]:
        pool, i = stock[org][1], used[org][1]
        used[org][1] += 1
        remedies.append((key, "recall.remedy", {"vin": vin, "campaign": CAMPAIGN, "removed": [pad],
                                                "installed": [pool[i]]}, ()))
    send.stage(remedies)
    # a pad nobody registered: the workshop's attempt to fit it is refused and kept as a counterfeit signal
    if cars:
        send.stage([(quickfix, "part.install", {"vin": cars[-1], "serials": ["BP-2409-X-00001"]}, ())])
    summary = send.summary
    summary.notable = {"traced_chip": TRACED_CHIP, "chip_car": NEW_CAR, "recall": CAMPAIGN,
                       "battery_pack": packs[0], "counterfeit_check": "BP-2409-X-00001"}
    if affected:
        summary.notable.update(recalled_pad=affected[-1][2], recalled_car=affected[-1][0])
    summary.recall = {"fitted_faulty": len(faulty_jobs), "swapped_before": len(swaps), "affected": len(affected),
                      "remedied": len(remedies)}
    return summary


def fleet_records(node: Node) -> list[tuple[str, dict[str, Any]]]:
    return [(key[len("vehicle/"):], canonical.decode_trusted(value))
            for key, value in node.store.iter_state("vehicle/")]
