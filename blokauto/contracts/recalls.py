"""Recalls: campaigns that reach every affected vehicle, and the remedies workshops record.

A campaign names part numbers (optionally only some lots) and/or vehicles (VIN ranges, models,
model years). A carmaker's campaign covers its own vehicles; a regulator's covers every maker's.
When parts are named, a vehicle is affected while such a part is fitted to it: one that received
an affected part later in a repair is affected, one whose affected part was removed is not. The
``fitted`` index (kept by the parts contract) answers "which vehicles carry lot L" without a scan.

State: ``recall/<campaign>``. Index: ``campaignpart`` (``<pn>|<lot or *>|<campaign>``) and
``vcampaign`` (``<scope or *>|<campaign>``) find the campaigns that may apply to a vehicle;
``remedied`` (``<campaign>|<vin>``) and ``vremedied`` (``<vin>|<campaign>``) hold each remedy.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from blokauto.contracts.parts import (
    Lot,
    PartEvents,
    PartNumber,
    Serial,
    install_parts,
    load_parts,
    odometer_fields,
    partno_key,
    remove_parts,
    unique_serials,
)
from blokauto.contracts.registry import Payload, contract
from blokauto.contracts.vehicle import Event, Km, Text, Vin, append_event, event_time, load
from blokauto.errors import InputError
from blokauto.ledger.state import Context, require
from blokauto.vin import parse_vin

CampaignId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{2,39}$")]
Year = Annotated[int, msgspec.Meta(ge=1981, le=2100)]


class PartCriterion(Payload, kw_only=True):
    part_number: PartNumber
    lots: Annotated[list[Lot], msgspec.Meta(max_length=200)] = msgspec.field(default_factory=list)  # [] = all


class VinRange(Payload, kw_only=True):
    first: Vin
    last: Vin


class Open(Payload, kw_only=True):
    campaign: CampaignId
    title: Text
    remedy: Text
    hazard: Annotated[str, msgspec.Meta(max_length=300)] = ""
    parts: Annotated[list[PartCriterion], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)
    vin_ranges: Annotated[list[VinRange], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    models: Annotated[list[Text], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)
    year_from: Year | None = None
    year_to: Year | None = None

    def validate(self) -> None:
        if not (self.parts or self.vin_ranges or self.models or self.year_from or self.year_to):
            raise InputError("a campaign names part numbers or vehicles (VIN ranges, models, years)",
                             code="empty_campaign")
        for r in self.vin_ranges:
            parse_vin(r.first)
            parse_vin(r.last)
            if r.first > r.last:
                raise InputError(f"VIN range {r.first}..{r.last} is empty", code="bad_vin_range")
        if self.year_from and self.year_to and self.year_from > self.year_to:
            raise InputError("year_from is after year_to", code="bad_payload")
        numbers = [c.part_number for c in self.parts]
        if len(set(numbers)) != len(numbers):
            raise InputError("a part number is named twice", code="bad_payload")


class Remedy(Event, kw_only=True):
    campaign: CampaignId
    removed: Annotated[list[Serial], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    installed: Annotated[list[Serial], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    odometer_km: Km | None = None
    note: Annotated[str, msgspec.Meta(max_length=200)] = ""

    def validate(self) -> None:
        super().validate()
        unique_serials([*self.removed, *self.installed])


class Close(Payload, kw_only=True):
    campaign: CampaignId
    reason: Text


def recall_key(campaign: str) -> str:
    return f"recall/{campaign}"


# -- matching (pure: the contract and the read-side lists use the same rules) ------------------


def vehicle_in_scope(campaign: dict[str, Any], vin: str, manufacturer: str, model: str, year: int) -> bool:
    """The vehicle criteria: maker scope, VIN ranges, models, model years (all that are given)."""
    if campaign["scope"] is not None and manufacturer != campaign["scope"]:
        return False
    if campaign["vin_ranges"] and not any(r["first"] <= vin <= r["last"] for r in campaign["vin_ranges"]):
        return False
    if campaign["models"] and model not in campaign["models"]:
        return False
    if campaign["year_from"] is not None and year < campaign["year_from"]:
        return False
    return not (campaign["year_to"] is not None and year > campaign["year_to"])


def part_affected(campaign: dict[str, Any], part_number: str, lot: str) -> bool:
    for criterion in campaign["parts"]:
        if criterion["part_number"] == part_number and (not criterion["lots"] or lot in criterion["lots"]):
            return True
    return False


def affected_parts(ctx: Context, campaign: dict[str, Any], vin: str) -> list[str]:
    """Serials of the campaign's parts fitted to ``vin`` now."""
    found = []
    for key, value in ctx.index_scan("vparts", f"{vin}|"):
        part_number, _, lot = value.partition("|")
        if part_affected(campaign, part_number, lot):
            found.append(key.partition("|")[2])
    return found


# -- contracts ---------------------------------------------------------------------------------


@contract("recall.open", payload=Open, roles={"manufacturer", "regulator"})
def open_campaign(ctx: Context, p: Open) -> None:
    """A carmaker (its own vehicles) or a regulator (every maker's) opens a recall campaign."""
    require(ctx.get(recall_key(p.campaign)) is None, "campaign_exists", f"campaign {p.campaign} already exists")
    for criterion in p.parts:
        require(ctx.get(partno_key(criterion.part_number)) is not None, "unknown_part_number",
                f"part number {criterion.part_number} is not defined")
    assert ctx.member is not None
    regulator = "regulator" in ctx.member["roles"]
    scope = None if regulator else ctx.org
    campaign = {
        "campaign": p.campaign, "title": p.title, "remedy": p.remedy, "hazard": p.hazard,
        "parts": [msgspec.to_builtins(c) for c in p.parts],
        "vin_ranges": [msgspec.to_builtins(r) for r in p.vin_ranges],
        "models": list(p.models), "year_from": p.year_from, "year_to": p.year_to, "scope": scope,
        "opened_by": ctx.org, "opened_ms": ctx.time_ms, "status": "open", "remedied": 0, "tx": ctx.tx_hash,
    }
    ctx.put(recall_key(p.campaign), campaign)
    for criterion in p.parts:
        for lot in criterion.lots or ["*"]:
            ctx.index_put("campaignpart", f"{criterion.part_number}|{lot}|{p.campaign}", "")
    if not p.parts:
        ctx.index_put("vcampaign", f"{scope or '*'}|{p.campaign}", "")
    ctx.emit("recall.opened", campaign=p.campaign, scope=scope, parts=len(p.parts))


@contract("recall.remedy", payload=Remedy, roles={"workshop", "manufacturer"})
def remedy(ctx: Context, p: Remedy) -> None:
    """A workshop records a campaign's remedy on a vehicle, replacing the affected parts."""
    campaign = ctx.get(recall_key(p.campaign))
    require(campaign is not None, "unknown_campaign", f"no campaign {p.campaign}")
    assert campaign is not None
    campaign = dict(campaign)
    require(campaign["status"] == "open", "campaign_closed", f"campaign {p.campaign} is {campaign['status']}")
    vehicle = load(ctx, p)
    require(vehicle_in_scope(campaign, p.vin, vehicle["manufacturer"], vehicle["model"], vehicle["year"]),
            "not_affected", f"{p.vin} is not covered by campaign {p.campaign}")
    require(ctx.index_get("remedied", f"{p.campaign}|{p.vin}") is None, "already_remedied",
            f"campaign {p.campaign} was already remedied on {p.vin}")
    at = event_time(ctx, vehicle, p.at_ms)
    events = PartEvents(ctx, "recall_remedy", vin=p.vin, campaign=p.campaign)
    if campaign["parts"]:
        affected = affected_parts(ctx, campaign, p.vin)
        require(affected, "not_affected", f"{p.vin} carries no part of campaign {p.campaign}")
        missing = sorted(set(affected) - set(p.removed))
        require(not missing, "remedy_incomplete",
                f"affected parts still fitted: {', '.join(missing)}; remove them in the remedy",
                missing[0] if missing else "")
        for serial, record in zip(p.installed, load_parts(ctx, list(p.installed)), strict=True):
            require(record is None or not part_affected(campaign, record["part_number"], record["lot"]),
                    "replacement_affected", f"replacement part {serial} is itself under campaign {p.campaign}", serial)
    remove_parts(ctx, p.vin, list(p.removed), events)
    install_parts(ctx, vehicle, list(p.installed), events)
    odo = odometer_fields(vehicle, p.odometer_km, at)
    ctx.index_put("remedied", f"{p.campaign}|{p.vin}", ctx.tx_hash)
    ctx.index_put("vremedied", f"{p.vin}|{p.campaign}", ctx.tx_hash)
    campaign["remedied"] += 1
    ctx.put(recall_key(p.campaign), campaign)
    append_event(ctx, vehicle, "recall_remedied", at, campaign=p.campaign, removed=list(p.removed),
                 installed=list(p.installed), note=p.note, **odo)
    if events.links:
        events.emit()


@contract("recall.close", payload=Close, roles={"manufacturer", "regulator"})
def close(ctx: Context, p: Close) -> None:
    """The organisation that opened a campaign closes it."""
    campaign = ctx.get(recall_key(p.campaign))
    require(campaign is not None, "unknown_campaign", f"no campaign {p.campaign}")
    assert campaign is not None
    require(campaign["opened_by"] == ctx.org, "not_campaign_owner", f"campaign {p.campaign} was opened by "
            f"{campaign['opened_by']}")
    require(campaign["status"] == "open", "campaign_closed", f"campaign {p.campaign} is already closed")
    ctx.put(recall_key(p.campaign), {**campaign, "status": "closed", "closed_ms": ctx.time_ms, "reason": p.reason})
    ctx.emit("recall.closed", campaign=p.campaign)
