"""Software endpoints: a carmaker's TUF trust, release catalogues, a vehicle's software per ECU.

Who reads what: everything here is public. Trust metadata and catalogues are what a TUF
repository serves to anybody (a vehicle fetching updates has no member token), and a vehicle's
software versions are a lookup like its recalls. The VIN lists of software campaigns are not
shown here (a campaign's record is member-only state).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from blokauto.api.auth import TokenIssuer
from blokauto.contracts.governance import ORG_ID
from blokauto.contracts.software import HARDWARE_PATTERN, campaign_key, release_key, trust_key
from blokauto.errors import InputError, NotFound
from blokauto.node import Node
from blokauto.vin import canonical_vin

_HARDWARE = re.compile(HARDWARE_PATTERN)


def check_org(org: str) -> str:
    if not ORG_ID.fullmatch(org):
        raise InputError("an organisation id is 2-40 of a-z, 0-9 and -, starting with a letter", code="bad_org")
    return org


def check_hardware(hardware_id: str) -> str:
    if not _HARDWARE.fullmatch(hardware_id):
        raise InputError("a hardware id is 1-63 of a-z, 0-9 and . _ -, starting with a letter or digit",
                         code="bad_hardware_id")
    return hardware_id


def campaign_public(campaign: dict[str, Any]) -> dict[str, Any]:
    """A campaign without its VIN list (member-only), with how many VINs it names."""
    shown = {k: v for k, v in campaign.items() if k != "vins"}
    return {**shown, "vins": len(campaign["vins"])}


def add_software_routes(app: FastAPI, node: Node, tokens: TokenIssuer,
                        member_of: Callable[[str | None], dict[str, Any]]) -> None:
    """Register the software routes (all public reads; the token arguments keep the routes' shape)."""
    store = node.store

    def trust_of(org: str) -> dict[str, Any]:
        trust = node.read_state(trust_key(check_org(org)))
        if trust is None:
            raise NotFound(f"{org} has published no software trust metadata", code="no_trust")
        return dict(trust)

    def campaigns_of(org: str) -> list[dict[str, Any]]:
        found = []
        for key, _ in store.scan_index("swcampaign", f"{org}|"):
            campaign = node.read_state(campaign_key(key.partition("|")[2]))
            if campaign is not None:
                found.append(dict(campaign))
        return found

    @app.get("/v1/software/{org}", tags=["software"])
    def get_trust(org: str) -> dict[str, Any]:
        """A carmaker's TUF trust: the root chain and targets as signed, its hardware types with their
        release keys, threshold and latest catalogue, and its software campaigns."""
        trust = trust_of(org)
        hardware = []
        for hw, keys in sorted(trust["hardware"].items()):
            catalogue = node.read_state(release_key(org, hw))
            latest = catalogue["releases"][-1] if catalogue else None
            hardware.append({
                "hardware_id": hw, **keys,
                "sequence": catalogue["sequence"] if catalogue else None,
                "expires": catalogue["expires"] if catalogue else None,
                "latest_version": latest["version"] if latest else None,
                "releases": len(catalogue["releases"]) if catalogue else 0,
                # a catalogue signed before the hardware type's release keys changed needs re-signing
                "current": catalogue is not None
                and len(set(catalogue["signers"]) & set(keys["release_keys"])) >= keys["threshold"],
            })
        return {**trust, "hardware": hardware, "campaigns": [campaign_public(c) for c in campaigns_of(org)]}

    @app.get("/v1/software/{org}/{hardware_id}", tags=["software"])
    def get_catalogue(org: str, hardware_id: str) -> dict[str, Any]:
        """The latest release catalogue of one hardware type: the TUF document (JSON text) and its releases."""
        trust = trust_of(org)
        keys = trust["hardware"].get(check_hardware(hardware_id))
        if keys is None:
            raise NotFound(f"{org}'s targets delegate no release keys for {hardware_id}", code="unknown_hardware")
        catalogue = node.read_state(release_key(org, hardware_id))
        if catalogue is None:
            raise NotFound(f"{org} has released nothing for {hardware_id}", code="no_release")
        return {**catalogue, "release_keys": keys["release_keys"], "threshold": keys["threshold"]}

    @app.get("/v1/vehicles/{vin}/software", tags=["software"])
    def get_vehicle_software(vin: str) -> dict[str, Any]:
        """A vehicle's software per ECU, each against the latest release of its hardware type, and the
        manufacturer's software campaigns that name it (public, like a recall lookup)."""
        vin = canonical_vin(vin)
        record = node.read_state(f"vehicle/{vin}")
        if record is None:
            raise NotFound(f"no vehicle {vin} is registered", code="unknown_vehicle")
        maker = record["manufacturer"]
        software = record.get("software") or {}
        latest: dict[str, int | None] = {}
        ecus = []
        for ecu, installed in sorted(software.items()):
            hw = installed["hardware_id"]
            if hw not in latest:
                catalogue = node.read_state(release_key(maker, hw))
                latest[hw] = catalogue["releases"][-1]["version"] if catalogue else None
            ecus.append({"ecu": ecu, **installed, "latest_version": latest[hw],
                         "up_to_date": latest[hw] is not None and installed["version"] >= latest[hw]})
        campaigns = []
        for campaign in campaigns_of(maker):
            if vin not in campaign["vins"] and record["model"] not in campaign["models"]:
                continue
            versions = [e["version"] for e in ecus if e["hardware_id"] == campaign["hardware_id"]]
            done = bool(versions) and min(versions) >= campaign["version"]
            campaigns.append({**campaign_public(campaign), "status": "installed" if done else "pending"})
        return {"vin": vin, "manufacturer": maker, "model": record["model"], "year": record["year"],
                "ecus": ecus, "campaigns": campaigns}
