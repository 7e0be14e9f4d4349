"""A sample fleet for the demo ledger: a few hundred vehicles with a plausible life each.

A newcomer who opens a fresh demo node should find vehicles that have been built, sold, serviced,
inspected, financed, insured, resold, crashed, stolen, exported and scrapped — and the cases the
ledger exists for: a rejected odometer rollback kept in the log, a flagged odometer jump, an
instrument-cluster replacement. Everything is derived from ``seed`` (keys included), so two runs
with the same parameters write the same vehicles; only ``now_ms`` (default: the wall clock)
moves the lives in time. The keys are demo keys: anybody can re-derive them.

Transactions are planned per vehicle (backdated ``at_ms``, strictly increasing, never after
``now_ms``), merged into one global time order, given per-signer nonces in that order and sent
through the node's real bulk path, :meth:`Node.submit_many`, which keeps their order.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from blokauto.contracts.vehicle import CHECKLIST, DAY_MS
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.demo import DEMO_ORGS, demo_admin, demo_member
from blokauto.errors import BlokError, InputError
from blokauto.ledger.tx import build_body, sign_tx, tx_hash
from blokauto.node import Node
from blokauto.vin import parse_vin, with_check_digit

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
YEAR_MS = 365 * DAY_MS
MONTH_MS = YEAR_MS // 12
FIRST_MODEL_YEAR = 2014
LAST_MODEL_YEAR = 2025
YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"   # VIN position 10 from 2010, 30-year cycle

# Special vehicles, exactly one each (a fleet smaller than this table tells only the first stories),
# with the model years that make their story plausible.
ROLE_YEARS: dict[str, tuple[int, int]] = {
    "odometer_fraud": (2014, 2019),
    "stolen": (2018, 2025),
    "salvage": (2016, 2023),
    "scrapped": (2014, 2015),
    "liened": (2019, 2025),
    "cluster_replaced": (2014, 2021),
    "clean": (2018, 2021),          # one owner, no accident, no lien, serviced on time: the showcase
    "exported": (2014, 2019),
    "odometer_jump": (2015, 2023),
}

MANUFACTURER, DEALER, INSURER, REGISTRY, LENDER, RECYCLER = (
    "nordwerk", "autohaus-lenz", "alpina-insurance", "kba-registry", "hanse-bank", "eco-recycling")
WORKSHOPS = ("werkstatt-berg", "quickfix")


@dataclass(frozen=True)
class Model:
    name: str
    vds: str                        # VIN positions 4-8
    powertrain: str
    years: tuple[int, int]
    battery: tuple[str, int] | None = None   # chemistry, capacity in Wh
    diesel: bool = False

    @property
    def weight(self) -> int:
        """Combustion engines still make most of a European fleet."""
        return {"ice": 6, "hev": 3, "phev": 2}.get(self.powertrain, 2)


@dataclass(frozen=True)
class Maker:
    wmi: str
    weight: int
    plant: tuple[str, str]          # VIN position 11, plant name
    models: tuple[Model, ...]


MAKERS: tuple[Maker, ...] = (
    Maker("WVW", 20, ("W", "Wolfsburg"), (
        Model("Golf 1.5 TSI", "ZZZAU", "ice", (2014, 2025)),
        Model("Polo 1.0 TSI", "ZZZAW", "ice", (2014, 2025)),
        Model("Passat GTE", "ZZZ3C", "phev", (2015, 2023), ("Li-ion NMC", 13_000)),
        Model("e-Golf", "ZZZAU", "bev", (2014, 2020), ("Li-ion NMC", 35_800)),
        Model("ID.3 Pro", "ZZZE1", "bev", (2020, 2025), ("Li-ion NMC", 62_000)),
    )),
    Maker("TMB", 12, ("N", "Mlada Boleslav"), (
        Model("Octavia 2.0 TDI", "JJ7NE", "ice", (2014, 2025), diesel=True),
        Model("Fabia 1.0 TSI", "EA6NJ", "ice", (2014, 2025)),
        Model("Octavia iV", "JP7NX", "phev", (2020, 2025), ("Li-ion NMC", 13_000)),
        Model("Enyaq iV 80", "AC7NY", "bev", (2021, 2025), ("Li-ion NMC", 82_000)),
    )),
    Maker("WBA", 12, ("A", "Munich"), (
        Model("320d", "8E9C5", "ice", (2014, 2025), diesel=True),
        Model("X1 xDrive25e", "21AB0", "phev", (2020, 2025), ("Li-ion NMC", 10_000)),
        Model("i3 120Ah", "8P910", "bev", (2014, 2022), ("Li-ion NMC", 42_200)),
        Model("i4 eDrive40", "61AW0", "bev", (2022, 2025), ("Li-ion NMC", 83_900)),
    )),
    Maker("VF1", 10, ("B", "Flins"), (
        Model("Clio TCe 90", "RJA00", "ice", (2014, 2025)),
        Model("Clio E-Tech Hybrid", "RJA0H", "hev", (2020, 2025), ("Li-ion", 1_200)),
        Model("Zoe R110", "AG000", "bev", (2014, 2024), ("Li-ion NMC", 52_000)),
        Model("Megane E-Tech EV60", "RCB00", "bev", (2022, 2025), ("Li-ion NMC", 60_000)),
    )),
    Maker("ZFA", 8, ("J", "Mirafiori"), (
        Model("Panda 1.2", "31900", "ice", (2014, 2025)),
        Model("Tipo 1.6 MultiJet", "35600", "ice", (2016, 2025), diesel=True),
        Model("500 1.0 Hybrid", "31200", "hev", (2020, 2025)),
        Model("500e", "33200", "bev", (2021, 2025), ("Li-ion NMC", 42_000)),
    )),
    Maker("YV1", 8, ("G", "Ghent"), (
        Model("V60 D4", "ZW8V1", "ice", (2014, 2025), diesel=True),
        Model("XC60 B4", "UZ8V1", "ice", (2017, 2025)),
        Model("XC40 T5 Recharge", "XZEFV", "phev", (2020, 2025), ("Li-ion NMC", 10_700)),
        Model("XC40 Recharge P8", "XZERV", "bev", (2021, 2025), ("Li-ion NMC", 78_000)),
    )),
    Maker("JTD", 12, ("C", "Toyota City"), (
        Model("Yaris Hybrid", "KBKD3", "hev", (2014, 2025)),
        Model("Corolla 1.8 Hybrid", "BZ3BE", "hev", (2019, 2025), ("NiMH", 1_300)),
        Model("Prius Plug-in", "KARFP", "phev", (2017, 2022), ("Li-ion", 8_800)),
        Model("Aygo 1.0", "JJ10C", "ice", (2014, 2021)),
    )),
    Maker("1HG", 5, ("A", "Marysville, Ohio"), (
        Model("Accord 1.5T", "CV1F3", "ice", (2018, 2022)),
        Model("Accord Hybrid", "CV3F4", "hev", (2018, 2022), ("Li-ion", 1_300)),
        Model("Civic 2.0", "FC2F5", "ice", (2016, 2021)),
    )),
    Maker("5YJ", 8, ("F", "Fremont, California"), (
        Model("Model S 75D", "SA1E2", "bev", (2016, 2019), ("Li-ion NCA", 75_000)),
        Model("Model 3 Long Range", "3E1EB", "bev", (2017, 2025), ("Li-ion NCA", 75_000)),
        Model("Model 3 RWD", "3E1EA", "bev", (2021, 2025), ("LFP", 57_500)),
        Model("Model Y Long Range", "YGDEE", "bev", (2020, 2025), ("Li-ion NCA", 75_000)),
    )),
)
COLORS = ("Pure White", "Deep Black", "Moonstone Grey", "Reflex Silver", "Atlantic Blue", "Flame Red",
          "Racing Green", "Graphite Grey", "Pearl White", "Midnight Blue")

# Workshop operations and the parts they use (aftermarket part numbers; oil in litres).
PARTS: dict[str, list[tuple[str, int]]] = {
    "oil and filter change": [("OX 388D", 1), ("5W-30 LL-04", 5)],
    "air filter replaced": [("C 30 005", 1)],
    "cabin filter replaced": [("CUK 2939", 1)],
    "brake fluid changed": [("DOT 4 LV", 1)],
    "brake pads front": [("0 986 494 104", 1)],
    "brake discs and pads rear": [("0 986 479 B78", 2), ("0 986 494 105", 1)],
    "tyres rotated": [],
    "wiper blades replaced": [("3 397 118 933", 1)],
    "spark plugs replaced": [("ILZKR7B11", 4)],
    "fuel filter replaced": [("KL 169/4D", 1)],
    "hybrid system check": [],
    "HV battery health check": [],
    "12 V battery replaced": [("0 092 S50 080", 1)],
    "headlamp bulb replaced": [("12972PRC1", 1)],
    "tyres replaced front": [("205/55 R16 91V", 2)],
    "stabiliser link front left": [("L 4 2512", 1)],
    "seat occupancy sensor replaced": [("SOS 4410", 1)],
    "centre silencer replaced": [("EEC 2102 ES", 1)],
    "instrument cluster replaced and coded": [("IC 62 10 9 350 157", 1)],
    "front bumper replaced": [("BC 51 11 7 293 023", 1)],
    "rear bumper replaced": [("BC 51 12 7 300 599", 1)],
    "bodywork repair left side": [("DR 41 00 7 298 153", 1)],
    "bodywork repair right side": [("DR 41 00 7 298 154", 1)],
    "paint work": [("PT 2K-CLEAR", 2)],
    "windscreen replaced": [("8599AGNMVZ", 1)],
    "airbag modules replaced": [("AB 32 30 6 882 962", 2)],
}
AREA_REPAIRS = {
    "front": "front bumper replaced", "rear": "rear bumper replaced", "left": "bodywork repair left side",
    "right": "bodywork repair right side", "glass": "windscreen replaced", "roof": "paint work",
}
FAILURES = (   # (checklist item, inspector's note, repair, only for powertrains with a combustion engine)
    ("lights", "dipped beam left inoperative", "headlamp bulb replaced", False),
    ("axles_wheels_tyres", "tread depth below 1.6 mm on the front axle", "tyres replaced front", False),
    ("brakes", "rear brake discs below minimum thickness", "brake discs and pads rear", False),
    ("suspension", "play in front left stabiliser link", "stabiliser link front left", False),
    ("seatbelts_airbags", "airbag warning lamp lit", "seat occupancy sensor replaced", False),
    ("emissions", "exhaust leak at the centre silencer", "centre silencer replaced", True),
)
MATERIALS = ["steel", "aluminium", "copper", "plastics", "glass", "tyres", "fluids", "lead_acid_battery"]


@dataclass(frozen=True)
class FleetSummary:
    """What was seeded: counts of receipts and the VINs worth looking at first."""

    vehicles: int
    transactions: int
    accepted: int
    rejected: int                   # committed leaves a contract refused (the fraud attempt)
    refused: int                    # never logged (stale nonce, bad signature...): should be 0
    notable: dict[str, str]
    rejection_codes: dict[str, int] = field(default_factory=dict)   # rejected and refused, by code
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Tx:
    at_ms: int
    vehicle: int
    seq: int
    tx_type: str
    signer: Signer
    payload: dict[str, Any]
    cosigners: tuple[Signer, ...] = ()
    lien_of: _Tx | None = None      # a release names the hash of its lien, known once signed
    hash_hex: str = ""


@dataclass(slots=True)
class _Moment:
    at: int
    rank: int                       # ties: the order it was planned in
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Vehicle:
    index: int
    vin: str
    maker: Maker
    model: Model
    year: int
    role: str | None
    color: str
    device: Signer
    telematics: bool
    service_km: int
    plan: list[_Moment] = field(default_factory=list)

    def event(self, at: int, kind: str, **data: Any) -> _Moment:
        moment = _Moment(at, len(self.plan), kind, data)
        self.plan.append(moment)
        return moment


def ms_of(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) * 1000


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


# -- identities --------------------------------------------------------------------------------


def _make_vin(rng: random.Random, maker: Maker, model: Model, year: int, taken: set[str]) -> str:
    """A VIN ``vininfo`` decodes to the maker, with the year code and (always) a valid check digit."""
    while True:
        vin = with_check_digit(f"{maker.wmi}{model.vds}0{YEAR_CODES[(year - 2010) % 30]}{maker.plant[0]}"
                               f"{rng.randrange(100_000, 1_000_000)}")
        if vin not in taken:
            taken.add(vin)
            return vin


def _identities(vehicles: int, seed: int, max_year: int) -> list[_Vehicle]:
    """Maker, model, year and VIN of each vehicle; depend only on ``seed`` (and a very early ``now``)."""
    chosen = random.Random(f"{seed}/roles").sample(range(vehicles), min(vehicles, len(ROLE_YEARS)))
    roles = dict(zip(chosen, ROLE_YEARS, strict=False))
    taken: set[str] = set()
    out = []
    for i in range(vehicles):
        rng = random.Random(f"{seed}/vehicle/{i}")
        role = roles.get(i)
        lo, hi = ROLE_YEARS[role] if role else (FIRST_MODEL_YEAR, LAST_MODEL_YEAR)
        hi = min(hi, max_year)
        lo = min(lo, hi)
        year = rng.randint(lo, hi)
        makers = [m for m in MAKERS if any(x.years[0] <= year <= x.years[1] for x in m.models)]
        maker = rng.choices(makers, weights=[m.weight for m in makers])[0]
        models = [x for x in maker.models if x.years[0] <= year <= x.years[1]]
        model = rng.choices(models, weights=[x.weight for x in models])[0]
        vin = _make_vin(rng, maker, model, year, taken)
        connected = model.powertrain in ("bev", "phev") or year >= 2018
        telematics = (connected and rng.random() < 0.9) or role == "odometer_jump"
        out.append(_Vehicle(i, vin, maker, model, year, role, rng.choice(COLORS),
                            Signer.deterministic(f"demo/fleet/device/{vin}"), telematics,
                            rng.choice((15_000, 20_000, 25_000, 30_000))))
    return out


# -- one vehicle's life (times and kinds) -------------------------------------------------------


def _plan_life(v: _Vehicle, rng: random.Random, now: int, next_owner: Callable[[], int]) -> None:
    """Schedule the vehicle's events; kilometres are filled in later, walking them in time order."""
    cap = now - 150 * DAY_MS
    start, stop = ms_of(v.year - 1, 7, 1), min(ms_of(v.year, 6, 30), cap)
    produced = rng.randint(min(start, stop), stop)
    v.event(produced, "register", km=rng.randint(1, 12))
    sold = min(produced + rng.randint(14, 120) * DAY_MS + rng.randint(9, 17) * HOUR_MS, now - 60 * DAY_MS)
    sold = max(sold, produced + DAY_MS)

    role = v.role
    end = now
    if role == "stolen":
        end = now - rng.randint(10, 200) * DAY_MS
    elif role == "exported":
        end = now - rng.randint(20, 300) * DAY_MS
    elif role == "scrapped":
        end = now - rng.randint(60, 200) * DAY_MS
    elif role == "odometer_jump":
        end = now - rng.randint(3, 40) * DAY_MS
    elif role == "salvage":
        end = rng.randint(min(sold + YEAR_MS, now - 120 * DAY_MS), now - 120 * DAY_MS)
    end = max(end, sold + 60 * DAY_MS)
    span = end - sold

    # ownership periods: (start, owner, annual km); resales in ~40% of vehicles
    resales: list[int] = []
    if role == "odometer_fraud":
        resales.append(rng.randint(min(sold + 3 * YEAR_MS, end - 60 * DAY_MS), end - 60 * DAY_MS))
    elif role != "clean" and span > 30 * MONTH_MS and rng.random() < 0.42:
        first = rng.randint(sold + 18 * MONTH_MS, end - 30 * DAY_MS)
        resales.append(first)
        if end - first > 4 * YEAR_MS and rng.random() < 0.3:
            resales.append(rng.randint(first + 18 * MONTH_MS, end - 30 * DAY_MS))
    periods = [(sold, next_owner(), rng.randint(9_000, 15_000) if role == "clean" else rng.randint(5_000, 30_000))]
    v.event(sold, "first_sale", owner=periods[0][1], annual_km=periods[0][2])
    for when in resales:
        buyer, annual = next_owner(), rng.randint(5_000, 30_000)
        v.event(when, "offer", buyer=buyer)
        accepted = when + rng.randint(2, 72) * HOUR_MS
        v.event(accepted, "accept", owner=buyer, annual_km=annual)
        periods.append((accepted, buyer, annual))
    offers = [*resales, None]

    # insurance and liens at the start of each ownership
    lien_period = -1
    if role == "liened":
        lien_period = len(periods) - 1
    elif role is None and rng.random() < 0.15:
        lien_period = 0 if rng.random() < 0.7 else rng.randrange(len(periods))
    for k, (begin, _, _) in enumerate(periods):
        if role in ("salvage", "clean") or rng.random() < 0.85:
            v.event(begin + HOUR_MS, "insure")
        if k == lien_period:
            offer = offers[k]
            release = begin + rng.randint(24, 60) * MONTH_MS
            if offer is not None:
                release = min(release, offer - rng.randint(2, 20) * DAY_MS)
            if release <= begin + DAY_MS:
                continue
            lien = v.event(begin + 30 * MINUTE_MS, "lien")
            if role != "liened" and release < end:
                v.event(release, "lien_release", lien=lien)

    def annual_at(t: int) -> int:
        return next(a for b, _, a in reversed(periods) if b <= t)

    # services: yearly or at the maker's interval, whichever comes first; a few are skipped
    t, n = sold, 0
    while True:
        days = min(365, v.service_km * 365 // annual_at(t)) + rng.randint(-10, 25)
        t += days * DAY_MS + rng.randint(8, 17) * HOUR_MS
        if t >= end:
            break
        n += 1
        if role != "clean" and rng.random() < 0.08:
            continue
        v.event(t, "service", n=n, workshop=rng.choice(WORKSHOPS))

    # periodic inspections: three years after the first sale, then every two
    t = sold + 3 * YEAR_MS + rng.randint(-20, 10) * DAY_MS
    while t < end:
        inspector = REGISTRY if rng.random() < 0.5 else rng.choice(WORKSHOPS)
        if role != "clean" and rng.random() < 0.12:
            failure = rng.choice([f for f in FAILURES if not f[3] or v.model.powertrain != "bev"])
            v.event(t, "inspection", inspector=inspector, failure=failure)
            fixed = t + rng.randint(3, 10) * DAY_MS
            v.event(fixed, "repair", workshop=rng.choice(WORKSHOPS), operations=[failure[2]])
            v.event(fixed + rng.randint(1, 3) * DAY_MS, "inspection", inspector=inspector, failure=None)
        else:
            v.event(t, "inspection", inspector=inspector, failure=None)
        t += 2 * YEAR_MS + rng.randint(-15, 15) * DAY_MS

    # device-signed odometer readings now and then
    if v.telematics:
        t = sold + rng.randint(60, 200) * DAY_MS
        while t < end:
            v.event(t, "odometer")
            t += rng.randint(120, 300) * DAY_MS + rng.randint(0, 23) * HOUR_MS

    # an accident for ~10% of the others
    if role is None and rng.random() < 0.11 and span > 90 * DAY_MS:
        t = rng.randint(sold + 30 * DAY_MS, end - 40 * DAY_MS)
        _accident(v, rng, t, severity=rng.choices(("minor", "moderate", "severe"), (55, 35, 10))[0])

    # the special vehicles
    if role == "odometer_fraud":
        v.event(resales[0] - rng.randint(3, 10) * DAY_MS, "fraud", percent=rng.randint(40, 60))
    elif role == "cluster_replaced":
        t = rng.randint(min(sold + 2 * YEAR_MS, end - 60 * DAY_MS), end - 60 * DAY_MS)
        v.event(t, "cluster", new_km=rng.randint(3, 40))
        v.event(t + 2 * HOUR_MS, "repair", workshop="werkstatt-berg",
                operations=["instrument cluster replaced and coded"])
    elif role == "odometer_jump":
        v.event(end - rng.randint(1, 3) * DAY_MS, "odometer")
        v.event(end, "jump", digit=rng.randint(0, 9))
    elif role == "salvage":
        crash = end - rng.randint(10, 30) * DAY_MS
        _accident(v, rng, crash, severity="severe", repair=False)
        v.event(end, "total_loss")
    elif role == "stolen":
        v.event(end, "stolen", reference=f"police report {rng.randint(100_000, 999_999)}")
    elif role == "exported":
        v.event(end, "exported", reference=rng.choice(("export to Poland", "export to Ukraine", "export to Ghana")))
    elif role == "scrapped":
        v.event(end, "destroyed")
        v.event(end + rng.randint(14, 45) * DAY_MS, "recycling")

    # the end of the story: nothing after a terminal event but recycling, nothing in the future
    v.plan = [m for m in v.plan if (m.at <= end or m.kind == "recycling")]
    v.plan.sort(key=lambda m: (m.at, m.rank))
    for prev, moment in zip(v.plan, v.plan[1:], strict=False):
        if moment.at <= prev.at:
            moment.at = prev.at + MINUTE_MS
    v.plan = [m for m in v.plan if m.at <= now]


def _accident(v: _Vehicle, rng: random.Random, t: int, severity: str, repair: bool = True) -> None:
    areas = rng.sample(("front", "rear", "left", "right", "glass", "roof"), 1 if severity == "minor" else 2)
    if severity == "severe" and "front" not in areas:
        areas[0] = "front"
    v.event(t, "accident", severity=severity, areas=sorted(areas), airbags=severity == "severe",
            with_km=rng.random() < 0.6, reference=f"claim {rng.randint(100_000, 999_999)}")
    if repair:
        operations = [AREA_REPAIRS[a] for a in sorted(areas)] + ["paint work"]
        if severity == "severe":
            operations.append("airbag modules replaced")
        v.event(t + rng.randint(4, 20) * DAY_MS, "repair", workshop="werkstatt-berg",
                operations=sorted(set(operations)))


# -- kilometres and payloads ------------------------------------------------------------------


def _service_operations(v: _Vehicle, n: int, rng: random.Random) -> list[str]:
    pt = v.model.powertrain
    ops = ["cabin filter replaced", "tyres rotated"] if pt == "bev" else ["oil and filter change"]
    if pt != "bev" and n % 2 == 0:
        ops += ["air filter replaced", "cabin filter replaced"]
    if n % 2 == 0:
        ops.append("brake fluid changed")
    if pt in ("hev", "phev"):
        ops.append("hybrid system check" if pt == "hev" else "HV battery health check")
    if pt == "bev":
        ops.append("HV battery health check")
    if pt != "bev" and n % 4 == 0:
        ops.append("fuel filter replaced" if v.model.diesel else "spark plugs replaced")
    if rng.random() < 0.25:
        ops.append("brake pads front")
    if rng.random() < 0.15 and "tyres rotated" not in ops:
        ops.append("tyres rotated")
    if rng.random() < 0.1:
        ops.append("wiper blades replaced")
    if n >= 5 and rng.random() < 0.15:
        ops.append("12 V battery replaced")
    return ops


def _parts(operations: list[str]) -> list[dict[str, Any]]:
    return [{"part_number": number, "quantity": qty} for op in operations for number, qty in PARTS[op]]


def _checklist(v: _Vehicle, failure: tuple[str, str, str, bool] | None) -> list[dict[str, Any]]:
    codes = ["identification", "brakes", "steering", "visibility", "lights", "electrical", "axles_wheels_tyres",
             "suspension", "chassis", "body", "seatbelts_airbags", "noise", "odometer"]
    if v.model.powertrain != "bev":
        codes.append("emissions")
    if v.model.powertrain != "ice":
        codes.append("hv_system")
    items: list[dict[str, Any]] = []
    for code in sorted(set(codes) & CHECKLIST):
        if failure is not None and code == failure[0]:
            items.append({"code": code, "passed": False, "note": failure[1]})
        else:
            items.append({"code": code, "passed": True})
    return items


@dataclass
class _Keys:
    member: dict[str, Signer]
    owners: dict[int, Signer] = field(default_factory=dict)

    def owner(self, n: int) -> Signer:
        if n not in self.owners:
            self.owners[n] = Signer.deterministic(f"demo/fleet/owner/{n}")
        return self.owners[n]


def _walk(v: _Vehicle, rng: random.Random, keys: _Keys) -> list[_Tx]:
    """The vehicle's transactions: kilometres grow with each owner's annual mileage (±15%)."""
    txs: list[_Tx] = []
    liens: dict[int, _Tx] = {}
    vin = v.vin
    m = keys.member
    true_km = offset = last_t = 0
    annual = 0
    owner: Signer | None = None
    insured = False
    last_reading = 0

    def add(tx_type: str, signer: Signer, payload: dict[str, Any], cosigners: tuple[Signer, ...] = (),
            at: int = 0) -> _Tx:
        tx = _Tx(at, v.index, len(txs), tx_type, signer, {"vin": vin, "at_ms": at, **payload}, cosigners)
        txs.append(tx)
        return tx

    for moment in v.plan:
        at, kind, d = moment.at, moment.kind, moment.data
        if annual:
            true_km += annual * (at - last_t) // YEAR_MS * rng.randint(85, 115) // 100
        last_t = at
        km = true_km - offset
        if kind == "register":
            true_km = km = d["km"]
            payload: dict[str, Any] = {
                "model": v.model.name, "year": v.year, "powertrain": v.model.powertrain,
                "device_key": v.device.did, "plant": v.maker.plant[1], "color": v.color, "odometer_km": km}
            if v.model.battery is not None:
                payload["battery"] = {"chemistry": v.model.battery[0], "capacity_wh": v.model.battery[1]}
            add("vehicle.register", m[MANUFACTURER], payload, at=at)
        elif kind == "first_sale":
            true_km += rng.randint(5, 60)
            owner, annual = keys.owner(d["owner"]), d["annual_km"]
            add("title.first_sale", m[DEALER], {"owner": owner.did, "odometer_km": true_km - offset}, (owner,),
                at=at)
        elif kind == "offer":
            assert owner is not None
            add("title.offer", owner, {"buyer": keys.owner(d["buyer"]).did}, at=at)
        elif kind == "accept":
            owner, annual, insured = keys.owner(d["owner"]), d["annual_km"], False
            add("title.accept", owner, {}, at=at)
        elif kind == "insure":
            assert owner is not None
            insured = True
            add("vehicle.insure", m[INSURER], {"reference": f"ALP-{v.index:04d}-{len(txs):03d}"}, (owner,), at=at)
        elif kind == "lien":
            assert owner is not None
            liens[id(moment)] = add("lien.record", m[LENDER], {"reference": f"HAB-LOAN-{v.index:04d}"}, (owner,),
                                    at=at)
        elif kind == "lien_release":
            add("lien.release", m[LENDER], {}, at=at).lien_of = liens[id(d["lien"])]
        elif kind == "service":
            operations = _service_operations(v, d["n"], rng)
            add("vehicle.service", m[d["workshop"]], {
                "odometer_km": km, "operations": operations, "parts": _parts(operations),
                "invoice": digest(f"invoice/{vin}/{len(txs)}")}, at=at)
        elif kind == "repair":
            add("vehicle.service", m[d["workshop"]], {
                "odometer_km": km, "operations": d["operations"], "parts": _parts(d["operations"]),
                "invoice": digest(f"invoice/{vin}/{len(txs)}")}, at=at)
        elif kind == "inspection":
            add("vehicle.inspection", m[d["inspector"]], {
                "odometer_km": km, "kind": "periodic", "items": _checklist(v, d["failure"])}, at=at)
        elif kind == "odometer":
            add("vehicle.odometer", v.device, {"odometer_km": km}, at=at)
        elif kind == "accident":
            payload = {"severity": d["severity"], "areas": d["areas"], "airbags_deployed": d["airbags"],
                       "reference": d["reference"]}
            if d["with_km"]:
                payload["odometer_km"] = km
            add("vehicle.accident", m[INSURER] if insured else m["werkstatt-berg"], payload, at=at)
        elif kind == "fraud":   # a workshop "corrects" the odometer before the sale: refused, kept as evidence
            add("vehicle.odometer", m["quickfix"], {"odometer_km": last_reading * d["percent"] // 100}, at=at)
        elif kind == "cluster":
            add("vehicle.cluster_replaced", m["werkstatt-berg"], {"old_km": km, "new_km": d["new_km"]}, at=at)
            offset += km - d["new_km"]
        elif kind == "jump":    # an extra digit typed at the service desk: accepted, flagged for ever
            add("vehicle.service", m["quickfix"], {
                "odometer_km": km * 10 + d["digit"], "operations": ["oil and filter change"],
                "parts": _parts(["oil and filter change"])}, at=at)
        elif kind == "total_loss":
            add("vehicle.total_loss", m[INSURER], {"salvage": True, "reference": f"claim total {v.index:04d}"},
                at=at)
        elif kind in ("stolen", "exported"):
            add(f"vehicle.{kind}", m[REGISTRY], {"reference": d["reference"]}, at=at)
        elif kind == "destroyed":
            add("vehicle.destroyed", m[RECYCLER], {"certificate": digest(f"destruction/{vin}"), "odometer_km": km},
                at=at)
        elif kind == "recycling":
            materials = [*MATERIALS, "li_ion_battery"] if v.model.battery else list(MATERIALS)
            add("vehicle.recycling", m[RECYCLER], {"materials": materials,
                                                  "certificate": digest(f"recycling/{vin}")}, at=at)
        else:  # pragma: no cover - a planning bug
            raise AssertionError(kind)
        if kind == "cluster":
            last_reading = d["new_km"]
        elif kind != "fraud" and "odometer_km" in txs[-1].payload:
            last_reading = txs[-1].payload["odometer_km"]
    return txs


# -- the whole fleet ------------------------------------------------------------------------------


def _plan_fleet(vehicles: int, seed: int, now_ms: int | None) -> tuple[list[_Vehicle], list[_Tx], dict[str, str]]:
    """Every vehicle's transactions (unsigned, in global time order) and the notable VINs."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    max_year = min(LAST_MODEL_YEAR, datetime.fromtimestamp((now - 200 * DAY_MS) // 1000, UTC).year)
    if max_year < 2016:
        raise InputError("the sample fleet's model years start in 2014: now_ms is too early", code="bad_time")
    fleet = _identities(vehicles, seed, max_year)
    for v in fleet:
        parse_vin(v.vin)    # every WMI must decode, NA ones with their check digit and year
    members = {spec["id"]: demo_member(spec["id"]) for spec in DEMO_ORGS}
    keys = _Keys(members)
    owners = iter(range(1, 1_000_000))
    txs: list[_Tx] = []
    for v in fleet:
        rng = random.Random(f"{seed}/life/{v.index}")
        _plan_life(v, rng, now, lambda: next(owners))
        txs.extend(_walk(v, rng, keys))
    txs.sort(key=lambda tx: (tx.at_ms, tx.vehicle, tx.seq))
    return fleet, txs, {v.role: v.vin for v in sorted(fleet, key=lambda v: v.role or "") if v.role}


def seed_fleet(node: Node, vehicles: int = 300, seed: int = 7, now_ms: int | None = None) -> FleetSummary:
    """Plan, sign and submit the fleet through ``node`` (running); wait for every receipt.

    Meant for a fresh demo ledger: the demo organisations' member keys are admitted first if
    missing, each signer's nonces continue from its committed (or pending) one, and transfers
    carry the registry's cosignature if the ``title.registry_cosign`` policy is on. Seeding the
    same seed twice into one ledger is refused by the contracts (the VINs are taken).
    """
    fleet, planned, notable = _plan_fleet(vehicles, seed, now_ms)
    chain = node.chain
    nonces: dict[str, int] = {}

    def next_nonce(did: str) -> int:
        if did not in nonces:
            nonces[did] = max(int(node.read_state(f"nonce/{did}") or 0), node.pending_nonce(did))
        nonces[did] += 1
        return nonces[did]

    raws: list[bytes] = []
    types: list[str] = []
    for spec in DEMO_ORGS:
        member = demo_member(spec["id"])
        if node.read_state(f"id/key/{member.did}") is None:
            admin = demo_admin(spec["id"])
            raws.append(sign_tx(chain, "org.add_member", admin, next_nonce(admin.did),
                                {"did": member.did, "roles": spec["roles"], "label": "operations"}))
            types.append("org.add_member")
    registry_cosigns = node.read_state("policy/title.registry_cosign") is True
    for tx in planned:
        if tx.lien_of is not None:
            tx.payload["lien"] = tx.lien_of.hash_hex
        if registry_cosigns and tx.tx_type == "title.accept":   # where the consortium asks for it
            tx.cosigners = (demo_member(REGISTRY),)
        nonce = next_nonce(tx.signer.did)
        raws.append(sign_tx(chain, tx.tx_type, tx.signer, nonce, tx.payload, tx.cosigners))
        types.append(tx.tx_type)
        if tx.tx_type == "lien.record":
            body = build_body(chain, tx.tx_type, tx.signer.did, nonce, tx.payload, [c.did for c in tx.cosigners])
            tx.hash_hex = tx_hash(canonical.encode(body)).hex()
    accepted = rejected = refused = 0
    codes: Counter[str] = Counter()
    for future in node.submit_many(raws):
        try:
            receipt = future.result(timeout=600)
        except BlokError as exc:
            refused += 1
            codes[exc.code] += 1
            continue
        if receipt["status"] == "ok":
            accepted += 1
        else:
            rejected += 1
            codes[receipt["code"]] += 1
    return FleetSummary(vehicles=len(fleet), transactions=len(raws), accepted=accepted, rejected=rejected,
                        refused=refused, notable=notable, rejection_codes=dict(sorted(codes.items())),
                        by_type=dict(sorted(Counter(types).items())))
