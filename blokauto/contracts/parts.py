"""Parts: digital twins, materials provenance, custody, installation into vehicles, end of life.

State:

* ``partno/<part number>``: who makes it (the organisation that defined it), what it is, whether
  it is a traction battery (then every part carries its EU battery-passport data).
* ``fit/<manufacturer>/<part number>``: the models a carmaker approved the part number for.
* ``partbatch/<id>``: one bulk registration; ``id`` is the first 16 hex digits of ``root``, the
  RFC 9162 Merkle root over the batch's part leaves (:func:`part_leaf`) that the maker signs.
  A part's authenticity certificate is this record's state proof plus the part's inclusion path.
* ``material/<tx>``: a raw-material certificate (a mine's cobalt, a refiner's sulphate...) with
  the inputs it was made from and what is left of it to pass on (mass balance: no gram of
  certified cobalt can be counted into two batteries).
* ``part/<serial>``: a part's current state, written the first time it moves. Until then the
  part is ``made`` and held by its maker, which its batch says.
* ``shipment/<tx>``: a custody handoff: sent by the holder, accepted (or refused) by the receiver.

Registration is Merkle-batched so that it costs one state record per batch, not per part: the
serials go into the consensus index (``serial`` space: serial -> ``<batch id>:<leaf index>``), which
every node keeps identically (contracts alone write it, inside blocks) and which refuses a serial
registered twice. See docs/adr/0007-parts-batches-and-the-consensus-index.md.

Statuses: ``made`` -> ``in_transit`` -> ``in_stock`` -> ``installed`` -> ``removed`` ->
(``in_stock`` when reused | ``recycled`` | ``second_life`` for batteries); refused moves name the
part (the rejection's ``subject``). Installing a serial that was never registered, is fitted to
another vehicle or was recycled is refused, and that refusal in the log is a counterfeit signal.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from blokauto.contracts.governance import OrgId
from blokauto.contracts.registry import Payload, contract
from blokauto.contracts.vehicle import (
    FUTURE_SKEW_MS,
    Event,
    Km,
    Text,
    TimeMs,
    TxHash,
    append_event,
    event_time,
    fitted_key,
    fitted_value,
    load,
    reading,
)
from blokauto.crypto import canonical
from blokauto.crypto.merkle import batch_leaf_hashes, batch_root
from blokauto.errors import InputError
from blokauto.ledger.state import MEMBER, Context, require

SERIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"        # no "/": serials go into URL paths
PART_NUMBER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$"
MAX_BATCH = 20_000        # parts per registration transaction
MAX_MOVE = 1_000          # parts per shipment, installation or disposal
MAX_FITTED = 100          # parts per installation

Serial = Annotated[str, msgspec.Meta(pattern=SERIAL_PATTERN)]
PartNumber = Annotated[str, msgspec.Meta(pattern=PART_NUMBER_PATTERN)]
Lot = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Permille = Annotated[int, msgspec.Meta(ge=0, le=1000)]
Grams = Annotated[int, msgspec.Meta(ge=1, le=10**15)]
Zone = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,39}$")]
Country = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
DeciCelsius = Annotated[int, msgspec.Meta(ge=-1000, le=2000)]   # tenths of a degree Celsius
Category = Literal["electronics", "brakes", "airbag", "steering", "suspension", "battery", "powertrain",
                   "body", "lighting", "tyres", "seating", "sensor", "other"]
Material = Literal["cobalt", "lithium", "nickel", "manganese", "graphite", "copper", "aluminium", "tin",
                   "tantalum", "tungsten", "gold", "rare_earths", "silicon", "steel", "lead"]
Stage = Literal["mine", "smelter", "refiner", "precursor", "cathode", "cell", "component"]

MOVABLE = frozenset({"made", "in_stock", "removed"})
# Codes of refused installations that suggest a counterfeit or cloned part; the authenticity
# check counts them per serial.
COUNTERFEIT_CODES = frozenset({"part_not_registered", "part_installed_elsewhere", "part_recycled"})


# -- payloads ----------------------------------------------------------------------------------


class Define(Payload, kw_only=True):
    part_number: PartNumber
    description: Text
    category: Category
    battery: bool = False
    safety: bool = False


class Approve(Payload, kw_only=True):
    part_number: PartNumber
    models: Annotated[list[Text], msgspec.Meta(max_length=200)]   # empty: the approval is withdrawn


class Passport(Payload, kw_only=True):
    """The EU battery-passport data a traction battery is registered with (Regulation 2023/1542)."""

    chemistry: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9 ()/+-]{2,32}$")]
    rated_capacity_wh: Annotated[int, msgspec.Meta(ge=100, le=500_000)]
    soh_permille: Permille = 1000                                 # state of health at registration
    carbon_g_per_kwh: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]   # carbon footprint, g CO2e/kWh
    recycled_cobalt_permille: Permille = 0
    recycled_lithium_permille: Permille = 0
    recycled_nickel_permille: Permille = 0
    recycled_lead_permille: Permille = 0


class MaterialUse(Payload):
    certificate: TxHash
    grams: Grams


class RegisterBatch(Payload, kw_only=True):
    part_number: PartNumber
    lot: Lot
    plant: Text
    produced_ms: TimeMs
    serials: Annotated[list[Serial], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    passports: Annotated[list[Passport], msgspec.Meta(max_length=MAX_BATCH)] | None = None
    materials: Annotated[list[MaterialUse], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=list)
    root: Digest

    def validate(self) -> None:
        """The batch is well formed and hashes to the root the maker signed (stateless: it runs on
        the submission workers, not in the committer)."""
        if self.passports is not None and len(self.passports) != len(self.serials):
            raise InputError(f"{len(self.passports)} passports for {len(self.serials)} serials; give one per part",
                             code="bad_batch")
        if len(set(self.serials)) != len(self.serials):
            seen: set[str] = set()
            twice = next(s for s in self.serials if s in seen or seen.add(s))  # type: ignore[func-returns-value]
            raise InputError(f"serial {twice} appears twice in the batch", code="duplicate_serial")
        if len({m.certificate for m in self.materials}) != len(self.materials):
            raise InputError("a material certificate is named twice", code="bad_batch")
        passports = None if self.passports is None else [msgspec.to_builtins(x) for x in self.passports]
        root = compute_batch_root(self.part_number, self.serials, passports)
        if root != self.root:
            raise InputError(f"the parts hash to root {root}, not the {self.root} the batch names",
                             code="root_mismatch")


class Certify(Payload, kw_only=True):
    material: Material
    stage: Stage
    origin: Text                          # the mine, smelter or plant
    country: Country
    grams: Grams
    inputs: Annotated[list[MaterialUse], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=list)
    to: OrgId | None = None               # who may use it next (default: the issuer itself)
    standard: Annotated[str, msgspec.Meta(max_length=60)] = ""   # e.g. "RMI RMAP", "OECD DDG annex II"
    audit: Digest | None = None           # SHA-256 of the third-party audit report


class Conditions(Payload, kw_only=True):
    min_dc: DeciCelsius | None = None
    max_dc: DeciCelsius | None = None


class Ship(Payload, kw_only=True):
    serials: Annotated[list[Serial], msgspec.Meta(min_length=1, max_length=MAX_MOVE)]
    to: OrgId
    zone: Zone                            # where it must arrive (a plant, a warehouse, a customs zone)
    conditions: Conditions | None = None
    reference: Annotated[str, msgspec.Meta(max_length=64)] = ""

    def validate(self) -> None:
        unique_serials(self.serials)


class Receive(Payload, kw_only=True):
    shipment: TxHash
    accept: bool = True
    zone: Zone
    observed_min_dc: DeciCelsius | None = None
    observed_max_dc: DeciCelsius | None = None
    excursion_minutes: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    note: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Install(Event, kw_only=True):
    serials: Annotated[list[Serial], msgspec.Meta(min_length=1, max_length=MAX_FITTED)]
    odometer_km: Km | None = None
    position: Annotated[str, msgspec.Meta(max_length=40)] = ""

    def validate(self) -> None:
        super().validate()
        unique_serials(self.serials)


class Remove(Event, kw_only=True):
    serials: Annotated[list[Serial], msgspec.Meta(min_length=1, max_length=MAX_FITTED)]
    odometer_km: Km | None = None
    reason: Literal["repair", "damaged", "harvest", "recall", "upgrade"] = "repair"

    def validate(self) -> None:
        super().validate()
        unique_serials(self.serials)


class Dispose(Payload, kw_only=True):
    serials: Annotated[list[Serial], msgspec.Meta(min_length=1, max_length=MAX_MOVE)]
    disposition: Literal["reuse", "recycle", "second_life"]
    application: Annotated[str, msgspec.Meta(max_length=80)] = ""   # second life: "home storage", ...
    soh_permille: Permille | None = None
    certificate: Digest | None = None     # recycling certificate

    def validate(self) -> None:
        unique_serials(self.serials)
        if self.disposition == "second_life" and not self.application:
            raise InputError("a second life names its application", code="bad_payload")


def unique_serials(serials: list[str]) -> None:
    if len(set(serials)) != len(serials):
        raise InputError("a serial is named twice", code="duplicate_serial")


# -- leaves and records ------------------------------------------------------------------------


def part_leaf(part_number: str, serial: str, passport: dict[str, Any] | None = None) -> bytes:
    """The canonical bytes of one part in its batch's Merkle tree.

    Part numbers and serials match patterns without characters JSON escapes, so plain formatting
    is exactly the canonical (RFC 8785) encoding; the tests check that against the encoder."""
    if passport is None:
        return b'{"part_number":"%s","serial":"%s"}' % (part_number.encode(), serial.encode())
    return canonical.encode({"battery": passport, "part_number": part_number, "serial": serial})


def full_passport(passport: dict[str, Any]) -> dict[str, Any]:
    """A passport with its defaults filled in: the leaf commits to every field, whether the maker
    wrote the default or left it out."""
    return msgspec.to_builtins(msgspec.convert(passport, Passport, strict=True))  # type: ignore[no-any-return]


def batch_leaves(part_number: str, serials: list[str], passports: list[dict[str, Any]] | None) -> list[bytes]:
    if passports is None:
        pn = part_number.encode()
        return [b'{"part_number":"%s","serial":"%s"}' % (pn, s.encode()) for s in serials]
    return [part_leaf(part_number, s, full_passport(p)) for s, p in zip(serials, passports, strict=True)]


def compute_batch_root(part_number: str, serials: list[str], passports: list[dict[str, Any]] | None) -> str:
    """What a parts maker puts in ``part.register_batch``'s ``root`` (hex)."""
    return batch_root(batch_leaf_hashes(batch_leaves(part_number, serials, passports))).hex()


def part_key(serial: str) -> str:
    return f"part/{serial}"


def batch_id(root: str) -> str:
    """A batch's short name: the first 64 bits of its root. The index repeats it for every serial,
    so it is kept short; a batch whose id is taken (odds 2**-64 by accident) is refused."""
    return root[:16]


def batch_key(batch: str) -> str:
    return f"partbatch/{batch}"


def partno_key(part_number: str) -> str:
    return f"partno/{part_number}"


def fit_key(manufacturer: str, part_number: str) -> str:
    return f"fit/{manufacturer}/{part_number}"


def load_parts(ctx: Context, serials: list[str]) -> list[dict[str, Any] | None]:
    """Each serial's current record; a registered part that never moved is built from its batch."""
    records: list[dict[str, Any] | None] = []
    unmoved: list[int] = []
    for i, serial in enumerate(serials):
        record = ctx.get(part_key(serial))
        records.append(None if record is None else dict(record))
        if record is None:
            unmoved.append(i)
    if unmoved:
        where = ctx.index_get_many("serial", [serials[i] for i in unmoved])
        batches: dict[str, dict[str, Any]] = {}
        for i in unmoved:
            entry = where.get(serials[i])
            if entry is None:
                continue
            bid, _, leaf = entry.partition(":")
            batch = batches.get(bid) or ctx.get(batch_key(bid))
            assert batch is not None, "a serial in the index always has its batch"
            batches[bid] = batch
            records[i] = unmoved_record(serials[i], bid, int(leaf), batch)
    return records


def unmoved_record(serial: str, batch_id: str, leaf: int, batch: dict[str, Any]) -> dict[str, Any]:
    """The record a registered part has until it first moves: made, held by its maker."""
    return {
        "serial": serial, "part_number": batch["part_number"], "lot": batch["lot"], "batch": batch_id,
        "leaf": leaf, "maker": batch["maker"], "status": "made", "holder": batch["maker"],
        "vin": None, "shipment": None, "since_ms": batch["produced_ms"], "events": 0, "head": None,
        "installs": 0, "reused": False, "flags": [],
    }


def require_registered(records: list[dict[str, Any] | None], serials: list[str]) -> list[dict[str, Any]]:
    for serial, record in zip(serials, records, strict=True):
        require(record is not None, "part_not_registered", f"no part with serial {serial} is registered", serial)
    return records  # type: ignore[return-value]


class PartEvents:
    """One ``part.event`` per transaction listing ``[serial, seq, prev]`` for every part it touched:
    each part's record keeps its head, so a part's history is a chain like a vehicle's."""

    def __init__(self, ctx: Context, kind: str, **fields: Any) -> None:
        self.ctx, self.kind, self.fields = ctx, kind, fields
        self.links: list[list[Any]] = []

    def touch(self, record: dict[str, Any]) -> None:
        seq = record["events"] + 1
        self.links.append([record["serial"], seq, record["head"]])
        record["events"], record["head"] = seq, self.ctx.tx_hash
        self.ctx.put(part_key(record["serial"]), record)

    def emit(self) -> None:
        self.ctx.emit("part.event", kind=self.kind, parts=self.links, org=self.ctx.org, **self.fields)


def org_active(ctx: Context, org: str) -> bool:
    record = ctx.get(f"id/org/{org}")
    return record is not None and record.get("status") == "active"


# -- definitions and approvals -----------------------------------------------------------------


@contract("part.define", payload=Define, roles={"parts_maker", "manufacturer"})
def define(ctx: Context, p: Define) -> None:
    """A parts maker (or a carmaker making its own parts) claims a part number."""
    require(ctx.get(partno_key(p.part_number)) is None, "part_number_taken",
            f"part number {p.part_number} is already defined")
    require(not p.battery or p.category == "battery", "bad_payload", "a battery part number has category battery")
    ctx.put(partno_key(p.part_number), {
        "part_number": p.part_number, "maker": ctx.org, "description": p.description, "category": p.category,
        "battery": p.battery, "safety": p.safety, "defined_ms": ctx.time_ms,
    })
    ctx.emit("part.defined", part_number=p.part_number, maker=ctx.org)


@contract("part.approve", payload=Approve, roles={"manufacturer"})
def approve(ctx: Context, p: Approve) -> None:
    """A carmaker approves a part number for some of its models (an empty list withdraws it)."""
    require(ctx.get(partno_key(p.part_number)) is not None, "unknown_part_number",
            f"part number {p.part_number} is not defined")
    require(len(set(p.models)) == len(p.models), "bad_payload", "a model is named twice")
    assert ctx.org is not None
    if p.models:
        ctx.put(fit_key(ctx.org, p.part_number), {"models": sorted(p.models), "since_ms": ctx.time_ms})
    else:
        ctx.delete(fit_key(ctx.org, p.part_number))
    ctx.emit("part.approved", part_number=p.part_number, manufacturer=ctx.org, models=sorted(p.models))


# -- materials ---------------------------------------------------------------------------------


def consume_materials(ctx: Context, uses: list[MaterialUse]) -> list[dict[str, Any]]:
    """Take grams from certificates passed to the signer's organisation (mass balance)."""
    taken = []
    for use in uses:
        cert = ctx.get(f"material/{use.certificate}")
        require(cert is not None, "unknown_certificate", f"no material certificate {use.certificate}",
                use.certificate)
        assert cert is not None
        cert = dict(cert)
        require(cert["to"] == ctx.org, "not_certificate_holder",
                f"certificate {use.certificate} was passed to {cert['to']}, not {ctx.org}", use.certificate)
        require(cert["remaining_g"] >= use.grams, "insufficient_material",
                f"certificate {use.certificate} has {cert['remaining_g']} g left, not {use.grams}", use.certificate)
        cert["remaining_g"] -= use.grams
        ctx.put(f"material/{use.certificate}", cert)
        taken.append({"certificate": use.certificate, "grams": use.grams, "material": cert["material"]})
    return taken


@contract("material.certify", payload=Certify, roles={"parts_maker", "manufacturer"})
def certify(ctx: Context, p: Certify) -> None:
    """Certify a quantity of a material at one stage, made from earlier certificates' material."""
    require(p.stage == "mine" or p.inputs, "inputs_required", f"a {p.stage} certificate names its inputs")
    require(p.stage != "mine" or not p.inputs, "bad_payload", "a mine certificate has no inputs")
    require(len({u.certificate for u in p.inputs}) == len(p.inputs), "bad_payload", "an input is named twice")
    to = p.to or ctx.org
    require(org_active(ctx, str(to)), "unknown_org", f"no active organisation {to}")
    inputs = consume_materials(ctx, p.inputs)
    ctx.put(f"material/{ctx.tx_hash}", {
        "id": ctx.tx_hash, "material": p.material, "stage": p.stage, "origin": p.origin, "country": p.country,
        "grams": p.grams, "remaining_g": p.grams, "issuer": ctx.org, "to": to, "inputs": inputs,
        "standard": p.standard, "audit": p.audit, "at_ms": ctx.time_ms,
    })
    ctx.emit("material.certified", certificate=ctx.tx_hash, material=p.material, stage=p.stage, to=to)


# -- registration ------------------------------------------------------------------------------


@contract("part.register_batch", payload=RegisterBatch, roles={"parts_maker", "manufacturer"}, bulk=True)
def register_batch(ctx: Context, p: RegisterBatch) -> None:
    """A parts maker registers up to 20,000 parts of one lot under one Merkle root."""
    number = ctx.get(partno_key(p.part_number))
    require(number is not None, "unknown_part_number", f"part number {p.part_number} is not defined")
    assert number is not None
    require(number["maker"] == ctx.org, "not_part_maker",
            f"part number {p.part_number} belongs to {number['maker']}")
    require(p.produced_ms <= ctx.time_ms + FUTURE_SKEW_MS, "future_time", "the parts are dated after their block")
    if number["battery"]:
        require(p.passports is not None, "passport_required",
                f"{p.part_number} is a traction battery: every part needs its battery-passport data")
    else:
        require(p.passports is None, "bad_batch", f"{p.part_number} is not a battery; passports do not apply")
    root = p.root      # RegisterBatch.validate() checked that the parts hash to it
    taken = ctx.index_get_many("serial", p.serials)
    if taken:
        first = next(s for s in p.serials if s in taken)
        require(False, "serial_registered", f"serial {first} is already registered ({len(taken)} of the batch are)",
                first)
    batch = batch_id(root)
    require(ctx.get(batch_key(batch)) is None, "batch_registered", f"a batch {batch} is already registered")
    materials = consume_materials(ctx, p.materials)
    ctx.index_put_many("serial", zip(p.serials, [f"{batch}:{i}" for i in range(len(p.serials))], strict=True))
    ctx.put(batch_key(batch), {
        "id": batch, "root": root, "tx": ctx.tx_hash, "maker": ctx.org, "part_number": p.part_number, "lot": p.lot,
        "plant": p.plant, "produced_ms": p.produced_ms, "count": len(p.serials), "materials": materials,
        "battery": p.passports is not None, "registered_ms": ctx.time_ms,
    })
    ctx.emit("part.batch", batch=batch, root=root, part_number=p.part_number, lot=p.lot, count=len(p.serials))


# -- custody -----------------------------------------------------------------------------------


@contract("part.ship", payload=Ship, roles={MEMBER})
def ship(ctx: Context, p: Ship) -> None:
    """The holder hands parts to another organisation; they are in transit until it accepts them."""
    require(p.to != ctx.org, "bad_receiver", "a shipment goes to another organisation")
    require(org_active(ctx, p.to), "unknown_org", f"no active organisation {p.to}")
    records = require_registered(load_parts(ctx, p.serials), p.serials)
    events = PartEvents(ctx, "shipped", to=p.to, zone=p.zone)
    for record in records:
        serial = record["serial"]
        require(record["holder"] == ctx.org, "not_holder", f"{ctx.org} does not hold part {serial}", serial)
        require(record["status"] in MOVABLE, "bad_part_state", f"part {serial} is {record['status']}", serial)
        record.update(status="in_transit", shipment=ctx.tx_hash, since_ms=ctx.time_ms)
        events.touch(record)
    ctx.put(f"shipment/{ctx.tx_hash}", {
        "id": ctx.tx_hash, "from": ctx.org, "to": p.to, "zone": p.zone, "serials": list(p.serials),
        "conditions": None if p.conditions is None else msgspec.to_builtins(p.conditions),
        "reference": p.reference, "sent_ms": ctx.time_ms, "status": "in_transit",
    })
    events.emit()


@contract("part.receive", payload=Receive, roles={MEMBER})
def receive(ctx: Context, p: Receive) -> None:
    """The receiver accepts a shipment (or refuses it back to the sender), reporting conditions."""
    shipment = ctx.get(f"shipment/{p.shipment}")
    require(shipment is not None, "unknown_shipment", f"no shipment {p.shipment}")
    assert shipment is not None
    shipment = dict(shipment)
    require(shipment["to"] == ctx.org, "not_receiver", f"the shipment is addressed to {shipment['to']}")
    require(shipment["status"] == "in_transit", "shipment_closed", f"the shipment was already {shipment['status']}")
    flags = []
    if p.zone != shipment["zone"]:
        flags.append("zone_mismatch")
    wanted = shipment["conditions"] or {}
    too_cold = wanted.get("min_dc") is not None and p.observed_min_dc is not None \
        and p.observed_min_dc < wanted["min_dc"]
    too_warm = wanted.get("max_dc") is not None and p.observed_max_dc is not None \
        and p.observed_max_dc > wanted["max_dc"]
    if too_cold or too_warm or p.excursion_minutes:
        flags.append("temperature_excursion")
    holder = ctx.org if p.accept else shipment["from"]
    records = load_parts(ctx, shipment["serials"])
    events = PartEvents(ctx, "received" if p.accept else "refused", shipment=p.shipment, flags=flags)
    for record in records:
        assert record is not None
        record.update(status="in_stock", holder=holder, shipment=None, since_ms=ctx.time_ms)
        if flags:
            record["flags"] = sorted({*record["flags"], *flags})
        events.touch(record)
    shipment.update(status="received" if p.accept else "refused", received_ms=ctx.time_ms, flags=flags,
                    observed={"zone": p.zone, "min_dc": p.observed_min_dc, "max_dc": p.observed_max_dc,
                              "excursion_minutes": p.excursion_minutes, "note": p.note})
    ctx.put(f"shipment/{p.shipment}", shipment)
    events.emit()


# -- installation ------------------------------------------------------------------------------


def install_parts(ctx: Context, vehicle: dict[str, Any], serials: list[str], events: PartEvents) -> list[str]:
    """Fit parts the signer's organisation holds to ``vehicle``; returns their part numbers."""
    vin = vehicle["vin"]
    records = load_parts(ctx, serials)
    numbers = []
    for serial, record in zip(serials, records, strict=True):
        require(record is not None, "part_not_registered",
                f"no part with serial {serial} is registered: possibly counterfeit", serial)
        assert record is not None
        status = record["status"]
        if status == "installed":
            require(record["vin"] == vin, "part_installed_elsewhere",
                    f"part {serial} is fitted to another vehicle: possibly a cloned serial", serial)
            require(False, "already_installed", f"part {serial} is already fitted to {vin}", serial)
        require(status not in ("recycled", "second_life"), "part_recycled",
                f"part {serial} was {status.replace('_', ' ')}: it cannot be fitted again", serial)
        require(status != "in_transit", "part_in_transit", f"part {serial} is in transit", serial)
        require(record["holder"] == ctx.org, "not_holder", f"{ctx.org} does not hold part {serial}", serial)
        fit = ctx.get(fit_key(vehicle["manufacturer"], record["part_number"]))
        require(fit is not None and vehicle["model"] in fit["models"], "part_not_approved",
                f"{vehicle['manufacturer']} has not approved part number {record['part_number']} for the "
                f"{vehicle['model']}", serial)
        record.update(status="installed", vin=vin, holder=None, since_ms=ctx.time_ms,
                      installs=record["installs"] + 1, installed_by=ctx.org)
        events.touch(record)
        ctx.index_put("fitted", fitted_key(record["part_number"], record["lot"], vin, serial), fitted_value(vehicle))
        ctx.index_put("vparts", f"{vin}|{serial}", f"{record['part_number']}|{record['lot']}")
        numbers.append(record["part_number"])
    return numbers


def remove_parts(ctx: Context, vin: str, serials: list[str], events: PartEvents) -> list[str]:
    records = load_parts(ctx, serials)
    numbers = []
    for serial, record in zip(serials, records, strict=True):
        require(record is not None and record["status"] == "installed" and record["vin"] == vin,
                "part_not_fitted", f"part {serial} is not fitted to {vin}", serial)
        assert record is not None
        record.update(status="removed", vin=None, holder=ctx.org, since_ms=ctx.time_ms, removed_from=vin)
        events.touch(record)
        ctx.index_delete("fitted", fitted_key(record["part_number"], record["lot"], vin, serial))
        ctx.index_delete("vparts", f"{vin}|{serial}")
        numbers.append(record["part_number"])
    return numbers


def odometer_fields(record: dict[str, Any], km: int | None, at: int) -> dict[str, Any]:
    return {} if km is None else reading(record, km, at)


@contract("part.install", payload=Install, roles={"manufacturer", "workshop"})
def install(ctx: Context, p: Install) -> None:
    """A plant or workshop fits parts it holds to a vehicle; the vehicle's history shows it."""
    vehicle = load(ctx, p)
    at = event_time(ctx, vehicle, p.at_ms)
    events = PartEvents(ctx, "installed", vin=p.vin)
    numbers = install_parts(ctx, vehicle, p.serials, events)
    odo = odometer_fields(vehicle, p.odometer_km, at)
    append_event(ctx, vehicle, "part_installed", at, serials=list(p.serials), part_numbers=numbers,
                 position=p.position, **odo)
    events.emit()


@contract("part.remove", payload=Remove, roles={"manufacturer", "workshop", "recycler"})
def remove(ctx: Context, p: Remove) -> None:
    """A workshop or recycler takes parts off a vehicle (a scrapped one too: harvesting)."""
    vehicle = load(ctx, p, allow_destroyed=True)
    at = event_time(ctx, vehicle, p.at_ms)
    events = PartEvents(ctx, "removed", vin=p.vin, reason=p.reason)
    numbers = remove_parts(ctx, p.vin, p.serials, events)
    odo = odometer_fields(vehicle, p.odometer_km, at) if vehicle["status"] != "destroyed" else {}
    append_event(ctx, vehicle, "part_removed", at, serials=list(p.serials), part_numbers=numbers,
                 reason=p.reason, **odo)
    events.emit()


@contract("part.dispose", payload=Dispose, roles={"workshop", "recycler", "parts_maker", "manufacturer"})
def dispose(ctx: Context, p: Dispose) -> None:
    """End of a part's first life: reused (its provenance kept), recycled, or a battery's second life."""
    records = require_registered(load_parts(ctx, p.serials), p.serials)
    events = PartEvents(ctx, p.disposition, application=p.application)
    for record in records:
        serial = record["serial"]
        require(record["holder"] == ctx.org, "not_holder", f"{ctx.org} does not hold part {serial}", serial)
        allowed = ("removed", "in_stock", "made", "second_life") if p.disposition == "recycle" else (
            "removed", "in_stock", "made")
        require(record["status"] in allowed, "bad_part_state", f"part {serial} is {record['status']}", serial)
        if p.disposition == "reuse":
            require(record["status"] == "removed", "bad_part_state",
                    f"only a part taken off a vehicle is reused; {serial} is {record['status']}", serial)
            record.update(status="in_stock", reused=True, since_ms=ctx.time_ms)
        elif p.disposition == "recycle":
            record.update(status="recycled", holder=ctx.org, since_ms=ctx.time_ms, certificate=p.certificate)
        else:
            batch = ctx.get(batch_key(record["batch"]))
            require(batch is not None and batch["battery"], "not_a_battery",
                    f"part {serial} is not a traction battery", serial)
            record.update(status="second_life", since_ms=ctx.time_ms, application=p.application)
        if p.soh_permille is not None:
            record["soh_permille"] = p.soh_permille
        events.touch(record)
    events.emit()
