"""Signed vehicle data: crash-recorder deposits, telematics batches, consent, usage-based insurance,
automatic claims.

The vehicle's device key signs what the vehicle recorded; the ledger holds commitments and the
summary anyone entitled needs, the full data stays off chain (``blokauto/offchain``) and is checked
against these commitments whenever it is stored or read:

* ``crash/<record hash>``: an event-data-recorder deposit (49 CFR 563 elements, see
  :mod:`blokauto.vehicledata.crash`): the SHA-256 of the canonical record, the device's signature
  over it, the public summary (delta-V, speeds, brake, belt, air bags; no place), and the vehicle's
  state at that moment (odometer, owner, insurer, status). Nobody can replace it afterwards: a
  second deposit for the same vehicle and event time is refused, and only the device signs.
* ``telem/<vin>``: the vehicle's telematics chain (last batch ``seq``, end time, totals); each
  batch (``tbatch`` index: ``<vin>|<seq>``) commits the Merkle root over its 1 Hz samples and the
  aggregates (:mod:`blokauto.vehicledata.telematics`). A batch shown false by a sample-level
  proof (``telematics.dispute``) is marked and no longer counts for premiums.
* ``consent/<vin>/<org>``: the owner lets an organisation read the vehicle's telematics samples
  (and crash records); a change of owner ends every consent the previous owner gave.
* ``product/<insurer>/<id>``, ``policy/<vin>``, ``premium/<vin>/<period>``: usage-based insurance.
  A policy is bound by the insurer with the owner's cosignature (their consent); batches add their
  aggregates to the period they start in; ``insurance.premium`` closes a period with the premium
  the contract computes (:func:`blokauto.vehicledata.insurance.premium`) and every term explained.
* ``claim/<id>``: a crash deposit whose maximum delta-V exceeds the policy's threshold opens a
  claim by itself, linked to the crash record and the vehicle's state at the time; an insurer may
  open one by hand (flagged ``no_crash_record`` when none is named). ``claim.decide`` records the
  adjuster's decision.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from blokauto.contracts.governance import OrgId
from blokauto.contracts.registry import Payload, contract
from blokauto.contracts.vehicle import (
    FUTURE_SKEW_MS,
    Digest,
    Event,
    Text,
    TimeMs,
    TxHash,
    Vin,
    append_event,
    event_time,
    load,
    vehicle_key,
    vehicle_party,
)
from blokauto.crypto.keys import unb64
from blokauto.errors import InputError, VerificationError
from blokauto.ledger.state import ANYONE, Context, StateReader, require
from blokauto.vehicledata import insurance as ubi
from blokauto.vehicledata import telematics
from blokauto.vin import parse_vin

DAY_MS = 86_400_000
Scope = Literal["telematics", "crash"]
DeciKmh = Annotated[int, msgspec.Meta(ge=-2_500, le=2_500)]


# -- payloads ----------------------------------------------------------------------------------


class CrashSummary(Payload, kw_only=True):
    """The on-ledger part of a crash record (:func:`blokauto.vehicledata.crash.summary`)."""

    version: Literal[1]
    profile: Literal["5s_2hz", "20s_10hz"]
    event_ms: TimeMs
    max_delta_v_dkmh: DeciKmh
    time_max_delta_v_ms: Annotated[int, msgspec.Meta(ge=0, le=300)]
    speed_at_minus_500ms_dkmh: Annotated[int, msgspec.Meta(ge=0, le=3_000)]
    speed_at_0ms_dkmh: Annotated[int, msgspec.Meta(ge=0, le=3_000)]
    brake_window_ms: Annotated[int, msgspec.Meta(ge=0, le=20_000)]
    brake_applied: bool
    driver_belt_buckled: bool
    airbag_warning_lamp: bool
    driver_airbag_deployed: bool
    passenger_airbag_deployed: bool
    event_count: Annotated[int, msgspec.Meta(ge=1, le=2)]
    complete_file: bool


class CrashDeposit(Event, kw_only=True):
    record_hash: Digest
    signature: Annotated[str, msgspec.Meta(min_length=88, max_length=88)]   # base64 Ed25519 over the record
    summary: CrashSummary

    def validate(self) -> None:
        parse_vin(self.vin)
        unb64(self.signature, size=64, what="record signature")


class TelematicsBatch(Payload, kw_only=True):
    """A batch header exactly as the device sealed it (:class:`telematics.TelematicsHeader`)."""

    header: dict[str, Any]

    def validate(self) -> None:
        header = telematics.header_from_dict(self.header)
        try:
            telematics.verify_batch(header)          # the device's signature and the sample count
        except VerificationError as exc:
            raise InputError(exc.message, code=exc.code) from None


class TelematicsDispute(Payload, kw_only=True):
    vin: Vin
    seq: Annotated[int, msgspec.Meta(ge=0)]
    proof: dict[str, Any]


class Consent(Event, kw_only=True):
    org: OrgId
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=2)]
    until_ms: TimeMs | None = None


class ConsentRevoke(Event, kw_only=True):
    org: OrgId


class DefineProduct(Payload, kw_only=True):
    product: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{1,39}$")]
    name: Text
    terms: dict[str, Any]

    def validate(self) -> None:
        ubi.parse_product(self.terms)


class Bind(Event, kw_only=True):
    product: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{1,39}$")]
    start_ms: TimeMs
    period_days: Annotated[int, msgspec.Meta(ge=1, le=366)] = 30
    claim_threshold_dkmh: Annotated[int, msgspec.Meta(ge=0, le=2_500)] = 150   # 15 km/h delta-V


class ClosePeriod(Payload, kw_only=True):
    vin: Vin
    period: Annotated[int, msgspec.Meta(ge=0)]


class OpenClaim(Event, kw_only=True):
    crash: Digest | None = None
    reason: Text


class Decide(Payload, kw_only=True):
    claim: TxHash
    decision: Literal["approved", "rejected", "needs_inspection"]
    amount_cents: Annotated[int, msgspec.Meta(ge=0, le=10**12)] = 0
    note: Annotated[str, msgspec.Meta(max_length=300)] = ""


# -- helpers -----------------------------------------------------------------------------------


def device_only(ctx: Context, record: dict[str, Any]) -> None:
    require(ctx.signer == record["device_key"], "not_device",
            "only the vehicle's own device key signs its recorded data")


def consent_key(vin: str, org: str) -> str:
    return f"consent/{vin}/{org}"


def has_consent(state: Any, vin: str, org: str, scope: str, now_ms: int) -> bool:
    """Has the vehicle's current owner let ``org`` read ``scope`` data of ``vin``?"""
    record = state.get(vehicle_key(vin))
    consent = state.get(consent_key(vin, org))
    if record is None or consent is None or consent["owner"] != record.get("owner"):
        return False
    return scope in consent["scopes"] and (consent["until_ms"] is None or now_ms <= consent["until_ms"])


def period_of(policy: dict[str, Any], at_ms: int) -> int | None:
    if at_ms < policy["start_ms"]:
        return None
    return (at_ms - policy["start_ms"]) // policy["period_ms"]


def open_claim(ctx: Context, vin: str, vehicle: dict[str, Any], policy: dict[str, Any], crash: str | None,
               reason: str, automatic: bool) -> str:
    """Open a claim linked to the crash record and the vehicle's state now; returns its id."""
    telem = ctx.get(f"telem/{vin}") or {}
    flags = ubi.claim_flags(crash is not None, vehicle.get("odometer_km"), telem.get("odometer_m"))
    claim = {
        "id": ctx.tx_hash, "vin": vin, "insurer": policy["insurer"], "policy": policy["id"], "crash": crash,
        "reason": reason, "automatic": automatic, "status": "open", "flags": flags, "opened_ms": ctx.time_ms,
        "vehicle_state": {"odometer_km": vehicle.get("odometer_km"), "owner": vehicle.get("owner"),
                          "status": vehicle.get("status"), "events": vehicle.get("events")},
        "telematics_odometer_m": telem.get("odometer_m"),
    }
    ctx.put(f"claim/{ctx.tx_hash}", claim)
    ctx.index_put("vclaims", f"{vin}|{ctx.tx_hash}", policy["insurer"])
    ctx.emit("claim.opened", claim=ctx.tx_hash, vin=vin, insurer=policy["insurer"], automatic=automatic,
             flags=flags)
    return ctx.tx_hash


# -- crash data --------------------------------------------------------------------------------


@contract("crash.deposit", payload=CrashDeposit, roles={ANYONE}, admit=vehicle_party)
def deposit(ctx: Context, p: CrashDeposit) -> None:
    """The vehicle deposits a crash record's hash, signature and summary; a claim may open by itself."""
    vehicle = load(ctx, p)
    device_only(ctx, vehicle)
    require(ctx.get(f"crash/{p.record_hash}") is None, "duplicate_deposit", "this record is already deposited")
    event_ms = p.summary.event_ms
    require(event_ms <= ctx.time_ms + FUTURE_SKEW_MS, "future_time", "the crash is dated after its block")
    slot = f"{p.vin}|{event_ms:015d}"
    require(ctx.index_get("crashes", slot) is None, "duplicate_event",
            "a record for this vehicle and event time is already deposited; it cannot be replaced")
    at = event_time(ctx, vehicle, event_ms)
    summary = msgspec.to_builtins(p.summary)
    state = {"odometer_km": vehicle["odometer_km"], "owner": vehicle["owner"], "insurer": vehicle["insurer"],
             "status": vehicle["status"], "events": vehicle["events"]}
    ctx.put(f"crash/{p.record_hash}", {
        "record_hash": p.record_hash, "vin": p.vin, "device": ctx.signer, "signature": p.signature,
        "summary": summary, "tx": ctx.tx_hash, "deposited_ms": ctx.time_ms, "vehicle_state": state,
    })
    ctx.index_put("crashes", slot, p.record_hash)
    policy = ctx.get(f"policy/{p.vin}")
    claim = None
    if policy is not None and policy["status"] == "active" and ubi.claim_due(policy["claim_threshold_dkmh"], summary):
        claim = open_claim(ctx, p.vin, vehicle, policy, p.record_hash,
                           f"crash with delta-V {abs(p.summary.max_delta_v_dkmh) / 10} km/h above the policy's "
                           f"{policy['claim_threshold_dkmh'] / 10} km/h", automatic=True)
    append_event(ctx, vehicle, "crash_recorded", at, record_hash=p.record_hash,
                 max_delta_v_dkmh=p.summary.max_delta_v_dkmh, airbags=p.summary.driver_airbag_deployed
                 or p.summary.passenger_airbag_deployed, claim=claim)


# -- telematics --------------------------------------------------------------------------------


def header_party(state: StateReader, signer: str, payload: dict[str, Any]) -> str:
    """Admission of a batch: the vehicle its header names must know the signer (its device key)."""
    header = payload.get("header") if isinstance(payload, dict) else None
    return vehicle_party(state, signer, header if isinstance(header, dict) else {})


@contract("telematics.batch", payload=TelematicsBatch, roles={ANYONE}, admit=header_party)
def telematics_batch(ctx: Context, p: TelematicsBatch) -> None:
    """The vehicle commits a batch of samples: Merkle root and aggregates, in sequence."""
    header = telematics.header_from_dict(p.header)
    vehicle = ctx.get(vehicle_key(header.vin))
    require(vehicle is not None, "unknown_vehicle", f"no vehicle {header.vin} is registered")
    assert vehicle is not None
    require(ctx.signer == vehicle["device_key"] == header.device, "not_device",
            "only the vehicle's own device key signs its recorded data")
    chain = dict(ctx.get(f"telem/{header.vin}") or {"seq": -1, "end_ms": 0, "batches": 0, "samples": 0,
                                                       "distance_m": 0, "odometer_m": None, "disputed": 0})
    require(header.seq == chain["seq"] + 1, "batch_out_of_order",
            f"batch {header.seq} does not follow batch {chain['seq']} (duplicated or out of order)")
    require(header.start_ms >= chain["end_ms"], "batch_overlaps",
            "the batch starts before the previous batch ended")
    require(header.start_ms <= ctx.time_ms + FUTURE_SKEW_MS, "future_time", "the batch is dated after its block")
    aggregates = msgspec.structs.asdict(header.aggregates)
    require(aggregates["night_distance_m"] <= aggregates["distance_m"], "bad_aggregates",
            "night distance exceeds distance")
    end_ms = header.start_ms + 1_000 * header.count   # 1 Hz: at least one second per sample
    chain.update(seq=header.seq, end_ms=end_ms, batches=chain["batches"] + 1,
                 samples=chain["samples"] + header.count, distance_m=chain["distance_m"] + aggregates["distance_m"],
                 odometer_m=aggregates["odometer_end_m"])
    ctx.put(f"telem/{header.vin}", chain)
    ctx.put(f"tbatch/{header.vin}/{header.seq}", {**p.header, "tx": ctx.tx_hash})
    ctx.index_put("tbatch", f"{header.vin}|{header.seq:012d}",
                  f"{header.root}|{header.start_ms}|{header.count}|{ctx.tx_hash}")
    ctx.index_put("troot", header.root, f"{header.vin}|{header.seq}")   # samples arriving from other nodes
    policy = ctx.get(f"policy/{header.vin}")
    period = None if policy is None or policy["status"] != "active" else period_of(policy, header.start_ms)
    if policy is not None and period is not None and str(period) not in policy["closed"]:
        policy = dict(policy)
        totals = policy["periods"].get(str(period)) or {"distance_m": 0, "hard_braking": 0, "over_limit_s": 0,
                                                        "night_distance_m": 0, "samples": 0, "batches": []}
        for name in ("distance_m", "hard_braking", "over_limit_s", "night_distance_m", "samples"):
            totals[name] += aggregates[name]
        totals["batches"] = [*totals["batches"], header.seq]
        policy["periods"] = {**policy["periods"], str(period): totals}
        ctx.put(f"policy/{header.vin}", policy)
    ctx.emit("telematics.batch", vin=header.vin, seq=header.seq, root=header.root, count=header.count,
             period=period)


@contract("telematics.dispute", payload=TelematicsDispute, roles={ANYONE})
def dispute(ctx: Context, p: TelematicsDispute) -> None:
    """Anyone holding the samples shows a batch's aggregates false with sample-level proofs."""
    stored = ctx.get(f"tbatch/{p.vin}/{p.seq}")
    require(stored is not None, "unknown_batch", f"no batch {p.seq} of {p.vin}")
    assert stored is not None
    require(ctx.get(f"tdispute/{p.vin}/{p.seq}") is None, "already_disputed", "this batch is already disputed")
    header = {k: v for k, v in stored.items() if k != "tx"}
    try:
        claim = telematics.verify_mismatch(telematics.header_from_dict(header), p.proof)
    except (InputError, VerificationError) as exc:
        require(False, "dispute_failed", f"the proof does not disprove the batch: {exc.message}")
    ctx.put(f"tdispute/{p.vin}/{p.seq}", {"claim": claim, "by": ctx.signer, "tx": ctx.tx_hash,
                                          "at_ms": ctx.time_ms})
    chain = dict(ctx.get(f"telem/{p.vin}") or {})
    chain["disputed"] = chain.get("disputed", 0) + 1
    ctx.put(f"telem/{p.vin}", chain)
    ctx.emit("telematics.disputed", vin=p.vin, seq=p.seq, disproved=claim)


# -- consent -----------------------------------------------------------------------------------


@contract("consent.grant", payload=Consent, roles={ANYONE}, admit=vehicle_party)
def grant(ctx: Context, p: Consent) -> None:
    """The owner lets an organisation read the vehicle's telematics samples and/or crash records."""
    vehicle = load(ctx, p)
    require(vehicle["owner"] is not None and ctx.signer == vehicle["owner"], "not_owner",
            "only the vehicle's owner gives consent")
    org = ctx.get(f"id/org/{p.org}")
    require(org is not None and org.get("status") == "active", "unknown_org", f"no active organisation {p.org}")
    require(p.until_ms is None or p.until_ms > ctx.time_ms, "bad_expiry", "the consent would end before it starts")
    ctx.put(consent_key(p.vin, p.org), {"owner": ctx.signer, "scopes": sorted(set(p.scopes)), "until_ms": p.until_ms,
                                        "since_ms": ctx.time_ms, "tx": ctx.tx_hash})
    ctx.emit("consent.granted", vin=p.vin, org=p.org, scopes=sorted(set(p.scopes)))


@contract("consent.revoke", payload=ConsentRevoke, roles={ANYONE}, admit=vehicle_party)
def revoke(ctx: Context, p: ConsentRevoke) -> None:
    """The owner withdraws a consent."""
    vehicle = load(ctx, p)
    require(ctx.signer == vehicle["owner"], "not_owner", "only the vehicle's owner withdraws consent")
    require(ctx.get(consent_key(p.vin, p.org)) is not None, "no_consent", f"{p.org} holds no consent for {p.vin}")
    ctx.delete(consent_key(p.vin, p.org))
    ctx.emit("consent.revoked", vin=p.vin, org=p.org)


# -- usage-based insurance ---------------------------------------------------------------------


@contract("insurance.product", payload=DefineProduct, roles={"insurer"})
def define_product(ctx: Context, p: DefineProduct) -> None:
    """An insurer defines a usage-based product: base premium and integer weights."""
    key = f"product/{ctx.org}/{p.product}"
    require(ctx.get(key) is None, "product_exists", f"product {p.product} already exists")
    terms = msgspec.to_builtins(ubi.parse_product(p.terms))
    ctx.put(key, {"id": p.product, "insurer": ctx.org, "name": p.name, "terms": terms, "since_ms": ctx.time_ms})
    ctx.emit("insurance.product", insurer=ctx.org, product=p.product)


@contract("insurance.bind", payload=Bind, roles={"insurer"})
def bind(ctx: Context, p: Bind) -> None:
    """An insurer binds a policy to a vehicle; the owner cosigns (their consent to telematics pricing)."""
    vehicle = load(ctx, p)
    require(vehicle["owner"] is not None, "no_owner", "a policy needs an owner who consents")
    require(vehicle["owner"] in ctx.cosigners, "consent_missing",
            "the owner's cosignature is their consent to the policy and its telematics pricing")
    product = ctx.get(f"product/{ctx.org}/{p.product}")
    require(product is not None, "unknown_product", f"{ctx.org} has no product {p.product}")
    assert product is not None
    current = ctx.get(f"policy/{p.vin}")
    require(current is None or current["status"] != "active" or current["insurer"] == ctx.org,
            "insured_elsewhere", "the vehicle has an active policy with another insurer")
    policy = {"id": ctx.tx_hash, "vin": p.vin, "insurer": ctx.org, "product": p.product, "terms": product["terms"],
              "owner": vehicle["owner"], "start_ms": p.start_ms, "period_ms": p.period_days * DAY_MS,
              "claim_threshold_dkmh": p.claim_threshold_dkmh, "status": "active", "periods": {}, "closed": {}}
    ctx.put(f"policy/{p.vin}", policy)
    ctx.put(consent_key(p.vin, str(ctx.org)), {"owner": vehicle["owner"], "scopes": ["crash", "telematics"],
                                               "until_ms": None, "since_ms": ctx.time_ms, "tx": ctx.tx_hash})
    at = event_time(ctx, vehicle, None)
    vehicle["insurer"] = ctx.org
    append_event(ctx, vehicle, "insured", at, insurer=ctx.org, policy=ctx.tx_hash, product=p.product)


@contract("insurance.premium", payload=ClosePeriod, roles={"insurer"})
def close_period(ctx: Context, p: ClosePeriod) -> None:
    """Close an ended period: the contract computes the premium from the verified aggregates."""
    policy = ctx.get(f"policy/{p.vin}")
    require(policy is not None and policy["insurer"] == ctx.org, "no_policy", f"{ctx.org} insures no policy on {p.vin}")
    assert policy is not None
    policy = dict(policy)
    end = policy["start_ms"] + (p.period + 1) * policy["period_ms"]
    require(ctx.time_ms >= end, "period_open", "the period has not ended yet")
    require(str(p.period) not in policy["closed"], "period_closed", "this period is already closed")
    totals = dict(policy["periods"].get(str(p.period)) or {"distance_m": 0, "hard_braking": 0, "over_limit_s": 0,
                                                           "night_distance_m": 0, "samples": 0, "batches": []})
    disputed = [seq for seq in totals["batches"] if ctx.get(f"tdispute/{p.vin}/{seq}") is not None]
    require(not disputed, "disputed_batches",
            f"batches {disputed} of the period are disputed: the insurer settles them before pricing")
    aggregates = {k: totals[k] for k in ("distance_m", "hard_braking", "over_limit_s", "night_distance_m",
                                         "samples")}
    result = ubi.premium(policy["terms"], aggregates)
    premium = {"vin": p.vin, "period": p.period, "from_ms": end - policy["period_ms"], "to_ms": end,
               "aggregates": aggregates, "batches": totals["batches"], "currency": result.currency,
               "total_cents": result.total_cents, "terms": result.terms, "tx": ctx.tx_hash}
    ctx.put(f"premium/{p.vin}/{p.period}", premium)
    policy["closed"] = {**policy["closed"], str(p.period): result.total_cents}
    ctx.put(f"policy/{p.vin}", policy)
    ctx.emit("insurance.premium", vin=p.vin, period=p.period, total_cents=result.total_cents,
             currency=result.currency)


@contract("claim.open", payload=OpenClaim, roles={"insurer"})
def open_claim_by_hand(ctx: Context, p: OpenClaim) -> None:
    """An insurer opens a claim on a vehicle it insures (flagged when no crash record backs it)."""
    vehicle = load(ctx, p)
    policy = ctx.get(f"policy/{p.vin}")
    require(policy is not None and policy["insurer"] == ctx.org and policy["status"] == "active", "no_policy",
            f"{ctx.org} holds no active policy on {p.vin}")
    assert policy is not None
    if p.crash is not None:
        crash = ctx.get(f"crash/{p.crash}")
        require(crash is not None and crash["vin"] == p.vin, "unknown_crash", "no such crash record of this vehicle")
    open_claim(ctx, p.vin, vehicle, policy, p.crash, p.reason, automatic=False)


@contract("claim.decide", payload=Decide, roles={"insurer"})
def decide(ctx: Context, p: Decide) -> None:
    """The insurer's adjuster records the decision on a claim."""
    claim = ctx.get(f"claim/{p.claim}")
    require(claim is not None, "unknown_claim", f"no claim {p.claim}")
    assert claim is not None
    require(claim["insurer"] == ctx.org, "not_insurer", "only the insurer that holds the claim decides it")
    require(claim["status"] in ("open", "needs_inspection"), "claim_closed", f"the claim is {claim['status']}")
    ctx.put(f"claim/{p.claim}", {**claim, "status": p.decision, "amount_cents": p.amount_cents, "note": p.note,
                                 "decided_ms": ctx.time_ms, "decided_by": ctx.signer})
    ctx.emit("claim.decided", claim=p.claim, decision=p.decision, amount_cents=p.amount_cents)
