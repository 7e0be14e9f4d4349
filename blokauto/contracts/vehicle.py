"""Vehicles: identity, title, liens, status and the lifecycle history.

State: ``vehicle/<VIN>`` is the vehicle's record and its title (the non-fungible token: the
``owner`` field is the owner's key, never a name); ``device/<did>`` maps a vehicle's on-board
signer to its VIN. Every accepted event on a vehicle emits a ``vehicle.event`` naming the
previous event's transaction hash (``prev``) and a sequence number, and the record keeps the
head: a report holding the record's state proof and the chain of events back to registration
proves that no accepted event was left out. Refused attempts (an odometer rollback) stay in the
log as evidence and are found through the ``vin:`` subject index.

Times: events carry ``at_ms``, when it happened (a service is often entered later); it may not
precede the vehicle's last event nor lie in the future of the block. Odometer readings are whole
kilometres on the current instrument cluster; only ``vehicle.cluster_replaced`` may restart them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from blokauto.contracts.governance import Did, get_policy
from blokauto.contracts.registry import Payload, contract
from blokauto.errors import InputError
from blokauto.ledger.state import ANYONE, Context, StateReader, key_record, require
from blokauto.vin import parse_vin

DAY_MS = 86_400_000
MAX_KM_PER_DAY = 2_500          # a faster rise is accepted but flagged on the record
FUTURE_SKEW_MS = 300_000        # an event may be dated at most 5 minutes after its block
LATE_WINDOW_MS = 90 * DAY_MS    # a record may be entered up to 90 days after a later-dated event
DEFAULT_OFFER_MS = 14 * DAY_MS
MAX_ODOMETER_KM = 5_000_000

Vin = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]   # checked in full by validate()
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
Km = Annotated[int, msgspec.Meta(ge=0, le=MAX_ODOMETER_KM)]
TxHash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Powertrain = Literal["ice", "hev", "phev", "bev", "fcev"]
Severity = Literal["minor", "moderate", "severe"]
Area = Literal["front", "rear", "left", "right", "roof", "underbody", "interior", "glass"]

# The standard inspection checklist (after the EU roadworthiness directive 2014/45 groups); the
# same codes serve periodic, pre-purchase and used commercial vehicle inspections.
CHECKLIST = frozenset({
    "identification", "brakes", "steering", "visibility", "lights", "electrical", "axles_wheels_tyres",
    "suspension", "chassis", "body", "seatbelts_airbags", "emissions", "noise", "hv_system",
    "tachograph", "load_securing", "coupling", "odometer",
})
STATUSES = ("active", "stolen", "total_loss", "exported", "destroyed")


class Event(Payload, kw_only=True):
    """Fields every history event shares."""

    vin: Vin
    at_ms: TimeMs | None = None     # when it happened; default the block time
    prev: TxHash | None = None      # optional optimistic check: the head the sender saw

    def validate(self) -> None:
        parse_vin(self.vin)


class Battery(Payload):
    chemistry: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9 ()/+-]{2,32}$")]
    capacity_wh: Annotated[int, msgspec.Meta(ge=1_000, le=500_000)]
    cells: Annotated[int, msgspec.Meta(ge=1, le=20_000)] | None = None


class Register(Event, kw_only=True):
    model: Text
    year: Annotated[int, msgspec.Meta(ge=1981, le=2100)]
    powertrain: Powertrain
    device_key: Did
    battery: Battery | None = None
    plant: Annotated[str, msgspec.Meta(max_length=80)] = ""
    color: Annotated[str, msgspec.Meta(max_length=40)] = ""
    odometer_km: Km = 0

    def validate(self) -> None:
        info = parse_vin(self.vin)
        if self.powertrain in ("bev", "phev") and self.battery is None:
            raise InputError(f"a {self.powertrain} registration needs its battery data", code="bad_payload")
        if info.model_years and self.year not in info.model_years:
            raise InputError(f"model year {self.year} contradicts VIN position 10 ({list(info.model_years)})",
                             code="bad_vin")


class FirstSale(Event, kw_only=True):
    owner: Did
    odometer_km: Km


class Offer(Event, kw_only=True):
    buyer: Did
    expires_ms: TimeMs | None = None


class Accept(Event, kw_only=True):
    offer: TxHash | None = None     # optional: the offer accepted (refused if another is open)


class CancelOffer(Event, kw_only=True):
    pass


class Lien(Event, kw_only=True):
    reference: Annotated[str, msgspec.Meta(max_length=64)] = ""


class LienRelease(Event, kw_only=True):
    lien: TxHash


class StatusReport(Event, kw_only=True):
    reference: Annotated[str, msgspec.Meta(max_length=64)] = ""


class TotalLoss(Event, kw_only=True):
    salvage: bool = True
    reference: Annotated[str, msgspec.Meta(max_length=64)] = ""


class Destroyed(Event, kw_only=True):
    certificate: Digest                # SHA-256 of the certificate of destruction
    odometer_km: Km | None = None


class Recycling(Event, kw_only=True):
    materials: Annotated[list[Code], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=list)
    certificate: Digest | None = None


class PartUsed(Payload):
    part_number: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    serial: Annotated[str, msgspec.Meta(max_length=64)] = ""
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


class Service(Event, kw_only=True):
    odometer_km: Km
    operations: Annotated[list[Text], msgspec.Meta(min_length=1, max_length=40)]
    parts: Annotated[list[PartUsed], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    invoice: Digest | None = None


class InspectionItem(Payload):
    code: Code
    passed: bool
    note: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Inspection(Event, kw_only=True):
    odometer_km: Km
    kind: Literal["periodic", "pre_purchase", "commercial", "damage"] = "periodic"
    items: Annotated[list[InspectionItem], msgspec.Meta(min_length=1, max_length=64)]

    def validate(self) -> None:
        parse_vin(self.vin)
        codes = [item.code for item in self.items]
        unknown = sorted(set(codes) - CHECKLIST)
        if unknown:
            raise InputError(f"unknown checklist items {unknown}; use {sorted(CHECKLIST)}", code="bad_checklist")
        if len(set(codes)) != len(codes):
            raise InputError("a checklist item appears twice", code="bad_checklist")


class Accident(Event, kw_only=True):
    severity: Severity
    areas: Annotated[list[Area], msgspec.Meta(min_length=1, max_length=8)]
    airbags_deployed: bool = False
    odometer_km: Km | None = None
    reference: Annotated[str, msgspec.Meta(max_length=64)] = ""


class Odometer(Event, kw_only=True):
    odometer_km: Km


class ClusterReplaced(Event, kw_only=True):
    old_km: Km
    new_km: Km


class OdometerCorrection(Event, kw_only=True):
    odometer_km: Km
    reason: Text


class Insure(Event, kw_only=True):
    reference: Annotated[str, msgspec.Meta(max_length=64)] = ""


# -- helpers ---------------------------------------------------------------------------------


def vehicle_key(vin: str) -> str:
    return f"vehicle/{vin}"


def device_key(did: str) -> str:
    return f"device/{did}"


def load(ctx: Context, p: Event, *, allow_destroyed: bool = False) -> dict[str, Any]:
    """The vehicle's record, after the checks every event shares."""
    record = ctx.get(vehicle_key(p.vin))
    require(record is not None, "unknown_vehicle", f"no vehicle {p.vin} is registered")
    assert record is not None
    record = dict(record)
    if record["status"] == "destroyed" and not allow_destroyed:
        require(False, "vehicle_destroyed", "the vehicle has a certificate of destruction; only recycling "
                "records are accepted")
    if p.prev is not None:
        require(p.prev == record["head"], "stale_head",
                f"the vehicle's last event is {record['head']}, not {p.prev}")
    return record


def event_time(ctx: Context, record: dict[str, Any] | None, at_ms: int | None) -> int:
    """When the event happened: not after its block (+5 min), not before registration, and at most
    90 days before the vehicle's latest-dated event (a workshop entering last month's service)."""
    at = ctx.time_ms if at_ms is None else at_ms
    require(at <= ctx.time_ms + FUTURE_SKEW_MS, "future_time", "the event is dated after its block")
    if record is not None:
        require(at >= record["registered_ms"], "out_of_order", "the event is dated before the vehicle's registration")
        require(at >= record["last_at_ms"] - LATE_WINDOW_MS, "out_of_order",
                "the event is dated more than 90 days before the vehicle's latest event")
    return at


def check_odometer(record: dict[str, Any], km: int, at_ms: int) -> bool:
    """Refuse a rollback; return whether the rise is implausibly fast (flagged, not refused)."""
    last = record["odometer_km"]
    require(km >= last, "odometer_rollback",
            f"odometer {km} km is below the last reading of {last} km (only a cluster replacement may restart it)")
    elapsed = max(at_ms - record["odometer_at_ms"], DAY_MS)
    return (km - last) * DAY_MS > MAX_KM_PER_DAY * elapsed


def recent_readings(record: dict[str, Any]) -> list[list[int]]:
    """``[at_ms, km]`` of accepted readings on the current cluster within the late-entry window,
    plus the last one before it: what a late entry must fit between."""
    return [list(r) for r in record.get("recent_readings") or [[record["odometer_at_ms"], record["odometer_km"]]]]


def keep_recent(readings: list[list[int]]) -> list[list[int]]:
    readings.sort()
    horizon = readings[-1][0] - LATE_WINDOW_MS
    older = [r for r in readings if r[0] < horizon]
    return older[-1:] + [r for r in readings if r[0] >= horizon]


def reading(record: dict[str, Any], km: int, at_ms: int) -> dict[str, Any]:
    """Record an accepted reading; returns the fields the event carries about it.

    A late entry (dated before the latest reading) must fit between the readings around its date;
    it leaves the current odometer as it is."""
    readings = recent_readings(record)
    if at_ms < record["odometer_at_ms"]:
        before = [r for r in readings if r[0] <= at_ms]
        after = [r for r in readings if r[0] > at_ms]
        low, high = (before[-1][1] if before else 0), after[0][1]
        require(low <= km <= high, "odometer_inconsistent",
                f"a reading of {km} km dated between readings of {low} and {high} km must lie between them")
        record["recent_readings"] = keep_recent([*readings, [at_ms, km]])
        return {"odometer_km": km, "flagged": False, "late": True}
    flagged = check_odometer(record, km, at_ms)
    record["odometer_km"], record["odometer_at_ms"] = km, at_ms
    record["recent_readings"] = keep_recent([*readings, [at_ms, km]])
    if flagged:
        record["odometer_flags"] += 1
    return {"odometer_km": km, "flagged": flagged}


def append_event(ctx: Context, record: dict[str, Any], kind: str, at_ms: int, **fields: Any) -> None:
    """Chain the event to the vehicle's previous one and store the record."""
    seq = record["events"] + 1
    ctx.emit("vehicle.event", vin=record["vin"], kind=kind, seq=seq, prev=record["head"], at_ms=at_ms,
             org=ctx.org, **fields)
    record["events"], record["head"] = seq, ctx.tx_hash
    record["last_at_ms"] = max(record["last_at_ms"], at_ms)
    ctx.put(vehicle_key(record["vin"]), record)


def fitted_key(part_number: str, lot: str, vin: str, serial: str) -> str:
    """``fitted`` index space: which vehicles carry parts of a lot now, for recall lists."""
    return f"{part_number}|{lot}|{vin}|{serial}"


def fitted_value(record: dict[str, Any]) -> str:
    """What a recall list needs of the vehicle, kept beside each fitted part (a covering index): a
    list of 10,000 vehicles and their owners' keys then reads 10,000 rows, not 20,000."""
    return f"{record['manufacturer']}|{record['model']}|{record['year']}|{record['owner'] or ''}"


def refresh_fitted(ctx: Context, record: dict[str, Any]) -> None:
    """After a change of owner: the vehicle's fitted-part rows name the new owner."""
    vin, value = record["vin"], fitted_value(record)
    for key, part in ctx.index_scan("vparts", f"{vin}|"):
        part_number, _, lot = part.partition("|")
        ctx.index_put("fitted", fitted_key(part_number, lot, vin, key.partition("|")[2]), value)


def has_role(ctx: Context, role: str) -> bool:
    return ctx.member is not None and role in ctx.member["roles"]


def active_member_with_role(ctx: Context, did: str, role: str) -> bool:
    """A cosigner's key is active, holds ``role``, and its organisation is not suspended."""
    member = ctx.member_of(did)
    if member is None or role not in member["roles"]:
        return False
    org = ctx.get(f"id/org/{member['org']}")
    return org is not None and org.get("status") == "active"


def vehicle_party(state: StateReader, signer: str, payload: dict[str, Any]) -> str:
    """Admission for the types anyone may send: only the vehicle's owner, the buyer its open offer
    names, or its own device key (member keys are admitted by role before this)."""
    vin = payload.get("vin") if isinstance(payload, dict) else None
    record = state.get(vehicle_key(vin)) if isinstance(vin, str) and len(vin) == 17 else None
    if record is None:
        return "only members may send transactions about an unregistered vehicle"
    offer = record.get("offer") or {}
    if signer in (record.get("owner"), record.get("device_key"), offer.get("buyer")):
        return ""
    return "only the vehicle's owner, the buyer named in its open offer, or its device key may send this"


def require_owner(ctx: Context, record: dict[str, Any]) -> None:
    require(record["owner"] is not None, "no_owner", "the vehicle has not been sold to an owner yet")
    require(ctx.signer == record["owner"], "not_owner", "only the vehicle's owner may do this")


def require_cosigned(ctx: Context, did: str, what: str) -> None:
    require(did in ctx.all_signers(), "signature_missing", f"{what} must sign this transaction too")


def require_no_lien(record: dict[str, Any]) -> None:
    require(not record["liens"], "lien_active",
            f"the vehicle carries a lien of {record['liens'][0]['lender'] if record['liens'] else ''}; "
            "the lender must release it first")


def require_transferable(record: dict[str, Any]) -> None:
    require(record["status"] != "stolen", "vehicle_stolen", "the vehicle is reported stolen")
    require_no_lien(record)


# -- identity ----------------------------------------------------------------------------------


@contract("vehicle.register", payload=Register, roles={"manufacturer"})
def register(ctx: Context, p: Register) -> None:
    """Register a vehicle at production: its birth certificate."""
    info = parse_vin(p.vin)
    require(ctx.get(vehicle_key(p.vin)) is None, "vin_registered", f"VIN {p.vin} is already registered")
    require(ctx.get(device_key(p.device_key)) is None, "device_key_in_use",
            "this device key already belongs to another vehicle")
    require(ctx.get(key_record(p.device_key)) is None, "device_key_in_use",
            "the device key is a member key; a vehicle signs with its own key")
    require(p.prev is None, "bad_payload", "a registration has no previous event")
    at = event_time(ctx, None, p.at_ms)
    require(p.year <= 1970 + at // (365 * DAY_MS) + 2, "bad_year", f"model year {p.year} lies too far ahead")
    record: dict[str, Any] = {
        "vin": p.vin, "wmi": info.wmi, "maker": info.maker, "country": info.country, "region": info.region,
        "model": p.model, "year": p.year, "powertrain": p.powertrain,
        "battery": None if p.battery is None else msgspec.to_builtins(p.battery),
        "plant": p.plant, "color": p.color, "device_key": p.device_key, "manufacturer": ctx.org,
        "registered_ms": at, "status": "active", "brands": [], "owner": None, "owner_since_ms": None,
        "owners": 0, "offer": None, "liens": [], "insurer": None, "odometer_km": p.odometer_km,
        "odometer_at_ms": at, "odometer_flags": 0, "odometer_offset_km": 0, "accidents": 0,
        "events": 0, "head": None, "last_at_ms": at,
    }
    ctx.put(device_key(p.device_key), {"vin": p.vin})
    # recalls by model and year find their vehicles through this index, not a scan of every record
    ctx.index_put("vmodel", f"{ctx.org}|{p.model}|{p.year:04d}|{p.vin}", "")
    append_event(ctx, record, "registered", at, odometer_km=p.odometer_km, flagged=False)


# -- title -------------------------------------------------------------------------------------


@contract("title.first_sale", payload=FirstSale, roles={"dealer"})
def first_sale(ctx: Context, p: FirstSale) -> None:
    """A dealer sells a new vehicle to its first owner, who cosigns with their key."""
    record = load(ctx, p)
    require(record["owner"] is None, "already_sold", "the vehicle already has an owner; use title.offer")
    require(record["status"] == "active", "bad_status", f"the vehicle's status is {record['status']}")
    require_cosigned(ctx, p.owner, "the buyer")
    at = event_time(ctx, record, p.at_ms)
    odo = reading(record, p.odometer_km, at)
    record.update(owner=p.owner, owner_since_ms=at, owners=1, dealer=ctx.org)
    refresh_fitted(ctx, record)
    append_event(ctx, record, "first_sale", at, owner=p.owner, **odo)


@contract("title.offer", payload=Offer, roles={ANYONE}, admit=vehicle_party)
def offer(ctx: Context, p: Offer) -> None:
    """The owner offers the title to a buyer's key; the buyer accepts with title.accept."""
    record = load(ctx, p)
    require_owner(ctx, record)
    require_transferable(record)
    require(record["status"] == "active" or record["status"] == "total_loss", "bad_status",
            f"a vehicle with status {record['status']} cannot change hands")
    require(p.buyer != record["owner"], "bad_buyer", "the buyer already owns the vehicle")
    at = event_time(ctx, record, p.at_ms)
    expires = p.expires_ms if p.expires_ms is not None else ctx.time_ms + DEFAULT_OFFER_MS
    require(expires > ctx.time_ms, "bad_expiry", "the offer would expire before it is made")
    record["offer"] = {"buyer": p.buyer, "expires_ms": expires, "tx": ctx.tx_hash}
    append_event(ctx, record, "offered", at, buyer=p.buyer, expires_ms=expires)


@contract("title.cancel_offer", payload=CancelOffer, roles={ANYONE}, admit=vehicle_party)
def cancel_offer(ctx: Context, p: CancelOffer) -> None:
    """The owner withdraws an open offer."""
    record = load(ctx, p)
    require_owner(ctx, record)
    require(record["offer"] is not None, "no_offer", "there is no open offer")
    at = event_time(ctx, record, p.at_ms)
    record["offer"] = None
    append_event(ctx, record, "offer_cancelled", at)


@contract("title.accept", payload=Accept, roles={ANYONE}, admit=vehicle_party)
def accept(ctx: Context, p: Accept) -> None:
    """The buyer named in the open offer takes the title (with a registry cosignature where policy asks)."""
    record = load(ctx, p)
    pending = record["offer"]
    require(pending is not None, "no_offer", "there is no open offer for this vehicle")
    require(ctx.signer == pending["buyer"], "not_buyer", "only the buyer named in the offer may accept it")
    require(p.offer is None or p.offer == pending["tx"], "stale_offer", "the open offer is not the one named")
    require(ctx.time_ms <= pending["expires_ms"], "offer_expired", "the offer has expired")
    require_transferable(record)
    # the status may have changed since the offer (exported): the same rule as title.offer
    require(record["status"] in ("active", "total_loss"), "bad_status",
            f"a vehicle with status {record['status']} cannot change hands")
    if get_policy(ctx, "title.registry_cosign", False):
        registry_signed = any(active_member_with_role(ctx, did, "registry") for did in ctx.cosigners)
        require(registry_signed, "registry_cosign_required",
                "the consortium's policy needs a registry cosignature on every transfer")
    at = event_time(ctx, record, p.at_ms)
    previous = record["owner"]
    # the previous owner's consent to their insurer does not pass to the buyer
    record.update(owner=ctx.signer, owner_since_ms=at, owners=record["owners"] + 1, offer=None, insurer=None)
    refresh_fitted(ctx, record)
    append_event(ctx, record, "transferred", at, owner=ctx.signer, previous_owner=previous, offer=pending["tx"])


# -- liens -------------------------------------------------------------------------------------


@contract("lien.record", payload=Lien, roles={"lender"})
def record_lien(ctx: Context, p: Lien) -> None:
    """A lender records a lien with the owner's cosignature; transfers wait until it is released."""
    record = load(ctx, p)
    require(record["owner"] is not None, "no_owner", "a lien needs an owner who consents")
    require_cosigned(ctx, record["owner"], "the owner")
    at = event_time(ctx, record, p.at_ms)
    record["liens"] = [*record["liens"], {"id": ctx.tx_hash, "lender": ctx.org, "since_ms": at}]
    append_event(ctx, record, "lien_recorded", at, lien=ctx.tx_hash, lender=ctx.org)


@contract("lien.release", payload=LienRelease, roles={"lender"})
def release_lien(ctx: Context, p: LienRelease) -> None:
    """The lender that holds a lien releases it."""
    record = load(ctx, p, allow_destroyed=True)
    held = [lien for lien in record["liens"] if lien["id"] == p.lien]
    require(held, "unknown_lien", f"the vehicle carries no lien {p.lien}")
    require(held[0]["lender"] == ctx.org, "not_lender", "only the lender holding the lien may release it")
    at = event_time(ctx, record, p.at_ms)
    record["liens"] = [lien for lien in record["liens"] if lien["id"] != p.lien]
    append_event(ctx, record, "lien_released", at, lien=p.lien, lender=ctx.org)


# -- status ------------------------------------------------------------------------------------


def brand(record: dict[str, Any], name: str) -> None:
    if name not in record["brands"]:
        record["brands"] = [*record["brands"], name]


@contract("vehicle.stolen", payload=StatusReport, roles={"registry"})
def stolen(ctx: Context, p: StatusReport) -> None:
    """The registry reports the vehicle stolen: transfers are refused until it is recovered."""
    record = load(ctx, p)
    require(record["status"] in ("active", "total_loss"), "bad_status",
            f"a vehicle with status {record['status']} cannot be reported stolen")
    at = event_time(ctx, record, p.at_ms)
    record["status_before_theft"] = record["status"]
    record["status"] = "stolen"
    brand(record, "stolen")
    append_event(ctx, record, "stolen", at, reference=p.reference)


@contract("vehicle.recovered", payload=StatusReport, roles={"registry"})
def recovered(ctx: Context, p: StatusReport) -> None:
    """The registry records a stolen vehicle as recovered."""
    record = load(ctx, p)
    require(record["status"] == "stolen", "not_stolen", "the vehicle is not reported stolen")
    at = event_time(ctx, record, p.at_ms)
    record["status"] = record.pop("status_before_theft", "active")
    brand(record, "stolen_recovered")
    append_event(ctx, record, "recovered", at, reference=p.reference)


@contract("vehicle.total_loss", payload=TotalLoss, roles={"insurer"})
def total_loss(ctx: Context, p: TotalLoss) -> None:
    """An insurer declares a total loss (optionally branding the title salvage), also for an unrecovered theft."""
    record = load(ctx, p)
    require(record["status"] in ("active", "stolen"), "bad_status", f"the vehicle's status is {record['status']}")
    at = event_time(ctx, record, p.at_ms)
    record.pop("status_before_theft", None)
    record["status"] = "total_loss"
    brand(record, "total_loss")
    if p.salvage:
        brand(record, "salvage")
    append_event(ctx, record, "total_loss", at, salvage=p.salvage, reference=p.reference)


@contract("vehicle.exported", payload=StatusReport, roles={"registry"})
def exported(ctx: Context, p: StatusReport) -> None:
    """The registry records that the vehicle left the registry's territory."""
    record = load(ctx, p)
    require(record["status"] in ("active", "total_loss"), "bad_status",
            f"a vehicle with status {record['status']} cannot be exported")
    require_no_lien(record)
    at = event_time(ctx, record, p.at_ms)
    record["status"] = "exported"
    brand(record, "exported")
    append_event(ctx, record, "exported", at, reference=p.reference)


@contract("vehicle.reimported", payload=StatusReport, roles={"registry"})
def reimported(ctx: Context, p: StatusReport) -> None:
    """The registry records that an exported vehicle is back (the export brand stays)."""
    record = load(ctx, p)
    require(record["status"] == "exported", "not_exported", "the vehicle is not recorded as exported")
    at = event_time(ctx, record, p.at_ms)
    record["status"] = "total_loss" if "total_loss" in record["brands"] else "active"
    append_event(ctx, record, "reimported", at, reference=p.reference)


@contract("vehicle.destroyed", payload=Destroyed, roles={"recycler"})
def destroyed(ctx: Context, p: Destroyed) -> None:
    """A recycler's certificate of destruction: the end of the vehicle's life."""
    record = load(ctx, p)
    require(record["status"] != "stolen", "vehicle_stolen", "a stolen vehicle cannot be scrapped")
    require_no_lien(record)
    at = event_time(ctx, record, p.at_ms)
    odo = reading(record, p.odometer_km, at) if p.odometer_km is not None else {}
    record["status"] = "destroyed"
    record["offer"] = None
    brand(record, "destroyed")
    append_event(ctx, record, "destroyed", at, certificate=p.certificate, **odo)


@contract("vehicle.recycling", payload=Recycling, roles={"recycler"})
def recycling(ctx: Context, p: Recycling) -> None:
    """A recycling record for a destroyed vehicle (materials recovered)."""
    record = load(ctx, p, allow_destroyed=True)
    require(record["status"] == "destroyed", "not_destroyed", "recycling records follow a certificate of destruction")
    at = event_time(ctx, record, p.at_ms)
    append_event(ctx, record, "recycled", at, materials=list(p.materials))


@contract("vehicle.insure", payload=Insure, roles={"insurer"})
def insure(ctx: Context, p: Insure) -> None:
    """An insurer becomes the vehicle's insurer with the owner's cosignature (and may read its history)."""
    record = load(ctx, p)
    require(record["owner"] is not None, "no_owner", "insurance needs an owner who consents")
    require_cosigned(ctx, record["owner"], "the owner")
    at = event_time(ctx, record, p.at_ms)
    record["insurer"] = ctx.org
    append_event(ctx, record, "insured", at, insurer=ctx.org)


# -- history -----------------------------------------------------------------------------------


@contract("vehicle.service", payload=Service, roles={"workshop"})
def service(ctx: Context, p: Service) -> None:
    """A workshop's service or repair record: odometer, operations, parts used."""
    record = load(ctx, p)
    at = event_time(ctx, record, p.at_ms)
    odo = reading(record, p.odometer_km, at)
    append_event(ctx, record, "service", at, **odo)


@contract("vehicle.inspection", payload=Inspection, roles={"workshop", "registry"})
def inspection(ctx: Context, p: Inspection) -> None:
    """An inspection against the standard checklist; passed when every item passed."""
    record = load(ctx, p)
    at = event_time(ctx, record, p.at_ms)
    odo = reading(record, p.odometer_km, at)
    passed = all(item.passed for item in p.items)
    record["last_inspection"] = {"at_ms": at, "passed": passed}
    append_event(ctx, record, "inspection", at, passed=passed, **odo)


@contract("vehicle.accident", payload=Accident, roles={"insurer", "workshop", "registry"})
def accident(ctx: Context, p: Accident) -> None:
    """An accident or damage report."""
    record = load(ctx, p)
    at = event_time(ctx, record, p.at_ms)
    odo = reading(record, p.odometer_km, at) if p.odometer_km is not None else {}
    record["accidents"] += 1
    append_event(ctx, record, "accident", at, severity=p.severity, **odo)


@contract("vehicle.odometer", payload=Odometer, roles={ANYONE}, admit=vehicle_party)
def odometer(ctx: Context, p: Odometer) -> None:
    """An odometer reading signed by the vehicle's own device key or by a workshop."""
    record = load(ctx, p)
    by_device = ctx.signer == record["device_key"]
    require(by_device or has_role(ctx, "workshop"), "not_device",
            "an odometer reading must be signed by the vehicle's device key or a workshop")
    at = event_time(ctx, record, p.at_ms)
    odo = reading(record, p.odometer_km, at)
    append_event(ctx, record, "odometer", at, source="device" if by_device else "workshop", **odo)


@contract("vehicle.cluster_replaced", payload=ClusterReplaced, roles={"workshop"})
def cluster_replaced(ctx: Context, p: ClusterReplaced) -> None:
    """Instrument-cluster replacement: the only way the odometer may restart (old and new readings kept)."""
    record = load(ctx, p)
    at = event_time(ctx, record, p.at_ms)
    require(at >= record["odometer_at_ms"], "out_of_order", "a cluster replacement cannot be entered late")
    odo = reading(record, p.old_km, at)
    require(p.new_km < p.old_km, "bad_cluster_reading",
            "the new cluster must read less than the old one (otherwise record a plain reading)")
    record["odometer_offset_km"] += p.old_km - p.new_km
    record["odometer_km"] = p.new_km
    record["recent_readings"] = [[at, p.new_km]]     # a new cluster: earlier readings no longer compare
    append_event(ctx, record, "cluster_replaced", at, old_km=p.old_km, new_km=p.new_km, flagged=odo["flagged"])


@contract("vehicle.odometer_corrected", payload=OdometerCorrection, roles={"registry"})
def odometer_corrected(ctx: Context, p: OdometerCorrection) -> None:
    """The registry corrects a mistyped reading downwards, with a reason; the record stays flagged.

    A buyer must see that the odometer history was corrected, so the flag is permanent."""
    record = load(ctx, p)
    require(p.odometer_km < record["odometer_km"], "bad_correction",
            "a correction lowers the latest reading; a higher reading is a plain reading")
    at = event_time(ctx, record, p.at_ms)
    require(at >= record["odometer_at_ms"], "out_of_order", "a correction is dated after the reading it corrects")
    wrong = record["odometer_km"]
    record["odometer_km"], record["odometer_at_ms"] = p.odometer_km, at
    record["recent_readings"] = keep_recent([r for r in recent_readings(record) if r[1] <= p.odometer_km]
                                            + [[at, p.odometer_km]])
    record["odometer_flags"] += 1
    record["odometer_corrections"] = record.get("odometer_corrections", 0) + 1
    append_event(ctx, record, "odometer_corrected", at, odometer_km=p.odometer_km, replaced_km=wrong,
                 reason=p.reason, flagged=True)
