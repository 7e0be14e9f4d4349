"""Software releases and updates: Uptane's image repository kept on the ledger, exported as TUF.

A carmaker's offline keys sign TUF trust metadata: a root chain and a top-level ``targets.json``
that delegates each ECU hardware type to a set of release keys with a threshold k. Publishing it
on the ledger (``software.trust``) tells every node who may release what. A release is the next
*catalogue* of one hardware type (a TUF delegated-targets document listing every image ever
released for it), signed k-of-n by that type's release keys (``software.release``). Vehicles'
device keys attest what they installed (``software.installed``); the ledger refuses an image the
vehicle's manufacturer never released, one for other hardware, and rollbacks. The documents the
ledger stores are the bytes the offline keys signed, so any node can export a repository that an
unmodified TUF client verifies (:mod:`blokauto.software.tuf_export`).

State:

* ``swtrust/<org>``: the carmaker's root chain and targets (JSON text as signed), and what they
  mean: per hardware type its release keys and threshold; the online keys for snapshot/timestamp.
* ``swrelease/<org>/<hardware id>``: the latest catalogue of one hardware type (the normalised
  document: only the counted signatures) and its releases.
* ``swimage/<org>/<sha256>``: the releases of one image (normally one; the same bytes may be
  released for two hardware types): what an installation is checked against, with a state proof.
* ``swcampaign/<campaign>``: a released version assigned to vehicles by model and/or VIN; index
  ``swcampaign`` (``<org>|<campaign>`` -> hardware id) lists a carmaker's campaigns.
* ``vehicle/<VIN>``'s ``software`` map: ECU -> hardware id, version, sha256, name, when, tx.

No clock is read: expiries are compared with the block time only, to refuse documents already
dead when published; TUF clients compare them with their own clocks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from tuf.api.metadata import Root, Targets

from blokauto.contracts.registry import Payload, contract
from blokauto.contracts.vehicle import Digest, Event, Text, Vin, append_event, event_time, load, vehicle_key
from blokauto.crypto import canonical
from blokauto.errors import BlokError, InputError
from blokauto.ledger.state import ANYONE, Context, Rejection, StateReader, require
from blokauto.software.releases import (
    MAX_DOCUMENT_BYTES,
    Release,
    check_hardware_id,
    check_install,
    check_successor,
    did_from_tuf_key,
    parse_release,
    verify_release,
)
from blokauto.software.tuf_export import load_metadata, release_key_sets, verify_root_chain, verify_targets
from blokauto.vin import parse_vin

MAX_ROOTS = 16            # root versions one trust transaction may add
MAX_CAMPAIGN_VINS = 1_000
MAX_CAMPAIGN_MODELS = 50
MAX_ECUS = 64             # ECUs a vehicle's software map may name (a device key cannot bloat the record)
HARDWARE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"     # as blokauto.software.releases.check_hardware_id
ECU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$"
CAMPAIGN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{2,39}$"

HardwareId = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]   # checked in full by validate()
EcuName = Annotated[str, msgspec.Meta(pattern=ECU_PATTERN)]
CampaignId = Annotated[str, msgspec.Meta(pattern=CAMPAIGN_PATTERN)]
Version = Annotated[int, msgspec.Meta(ge=1, le=canonical.MAX_SAFE_INTEGER)]
Document = Annotated[str, msgspec.Meta(min_length=2, max_length=MAX_DOCUMENT_BYTES)]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- payloads ----------------------------------------------------------------------------------


def document_bytes(text: str, what: str) -> bytes:
    """A signed document as the ledger keeps it: canonical JSON (one byte form, no floats)."""
    data = text.encode("utf-8", errors="surrogatepass")
    try:
        canonical.decode(data)
    except InputError as exc:
        raise InputError(f"{what}: {exc.message}", code=exc.code) from None
    return data


class Trust(Payload, kw_only=True):
    """Root versions continuing the stored chain (from 1 the first time) and the top-level targets."""

    roots: Annotated[list[Document], msgspec.Meta(max_length=MAX_ROOTS)] = msgspec.field(default_factory=list)
    targets: Document

    def validate(self) -> None:
        """Form only (parsable TUF of the right type, consecutive root versions, only release
        delegations): signatures need the stored chain and are checked by the contract."""
        versions = [root_version(document_bytes(text, f"roots[{i}]"), f"roots[{i}]")
                    for i, text in enumerate(self.roots)]
        if versions and versions != list(range(versions[0], versions[0] + len(versions))):
            raise InputError(f"root versions {versions} are not consecutive", code="bad_metadata")
        targets = load_metadata(document_bytes(self.targets, "targets"), Targets, "targets")
        release_key_sets(targets.signed)


class PublishRelease(Payload, kw_only=True):
    hardware_id: HardwareId
    document: Document

    def validate(self) -> None:
        """The exact catalogue form for this hardware type; the release keys are checked in the contract."""
        check_hardware_id(self.hardware_id)
        parse_release(document_bytes(self.document, "document"), hardware_id=self.hardware_id)


class Campaign(Payload, kw_only=True):
    campaign: CampaignId
    hardware_id: HardwareId
    version: Version
    title: Text
    models: Annotated[list[Text], msgspec.Meta(max_length=MAX_CAMPAIGN_MODELS)] = msgspec.field(
        default_factory=list)
    vins: Annotated[list[Vin], msgspec.Meta(max_length=MAX_CAMPAIGN_VINS)] = msgspec.field(default_factory=list)

    def validate(self) -> None:
        check_hardware_id(self.hardware_id)
        if not (self.models or self.vins):
            raise InputError("a software campaign names models or VINs", code="empty_campaign")
        for vin in self.vins:
            parse_vin(vin)
        if len(set(self.vins)) != len(self.vins) or len(set(self.models)) != len(self.models):
            raise InputError("a VIN or model is named twice", code="bad_payload")


class Installed(Event, kw_only=True):
    ecu: EcuName
    hardware_id: HardwareId
    image_sha256: Digest

    def validate(self) -> None:
        super().validate()
        check_hardware_id(self.hardware_id)


# -- keys and helpers --------------------------------------------------------------------------


def trust_key(org: str) -> str:
    return f"swtrust/{org}"


def release_key(org: str, hardware_id: str) -> str:
    return f"swrelease/{org}/{hardware_id}"


def image_key(org: str, sha256: str) -> str:
    return f"swimage/{org}/{sha256}"


def campaign_key(campaign: str) -> str:
    return f"swcampaign/{campaign}"


def root_version(data: bytes, what: str) -> int:
    return int(load_metadata(data, Root, what).signed.version)


def expiry_ms(when: datetime) -> int:
    """Milliseconds since 1970 by integer arithmetic (TUF expiries are whole seconds in UTC)."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)


def tuf_time_ms(text: str) -> int:
    return expiry_ms(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def checked(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a library check inside a contract: its refusal becomes this transaction's, code kept.

    The library raises :class:`VerificationError` for signatures, which a contract must turn
    into a rejection (a leaf with the code), not a contract error."""
    try:
        return call(*args, **kwargs)
    except BlokError as exc:
        raise Rejection(exc.message, code=exc.code) from None


def release_entry(release: Release) -> dict[str, Any]:
    return {"hardware_id": release.hardware_id, "version": release.version, "sha256": release.sha256,
            "length": release.length, "name": release.name, "min_previous": release.min_previous}


def release_of(entry: dict[str, Any]) -> Release:
    return Release(entry["hardware_id"], entry["version"], entry["sha256"], entry["length"], entry["name"],
                   entry["min_previous"])


def vehicle_device(state: StateReader, signer: str, payload: dict[str, Any]) -> str:
    """Admission for installation attestations: only the vehicle's own device key (member keys are
    admitted by role before this, and refused by the contract unless they are the device key)."""
    vin = payload.get("vin") if isinstance(payload, dict) else None
    record = state.get(vehicle_key(vin)) if isinstance(vin, str) and len(vin) == 17 else None
    if record is None:
        return "only members may send transactions about an unregistered vehicle"
    if signer == record.get("device_key"):
        return ""
    return "an installation is attested by the vehicle's own device key"


# -- contracts ---------------------------------------------------------------------------------


@contract("software.trust", payload=Trust, roles={"manufacturer"}, public=True, bulk=True)
def publish_trust(ctx: Context, p: Trust) -> None:
    """A carmaker publishes its TUF root chain and top-level targets: who may release for which hardware."""
    org = str(ctx.org)
    stored = ctx.get(trust_key(org))
    stored_roots: list[str] = [] if stored is None else list(stored["roots"])
    if p.roots:
        first = root_version(p.roots[0].encode(), "roots[0]")
        require(first == len(stored_roots) + 1, "bad_root_version",
                f"the next root is version {len(stored_roots) + 1}, not {first}")
    else:
        require(stored is not None, "bad_root_version", "the first trust publication starts with 1.root.json")
    chain = [*stored_roots, *p.roots]
    root = checked(verify_root_chain, [text.encode() for text in chain]).signed
    targets = checked(verify_targets, p.targets.encode(), root).signed
    sets = checked(release_key_sets, targets)
    if stored is not None:
        if p.targets == stored["targets"]:
            require(p.roots, "nothing_new", "these roots and targets are already published")
        else:
            require(targets.version > stored["targets_version"], "stale_targets",
                    f"targets version {targets.version} is not above the published {stored['targets_version']}")
    for what, expires in (("root", root.expires), ("targets", targets.expires)):
        require(expiry_ms(expires) > ctx.time_ms, "already_expired", f"the {what} metadata has expired")
    hardware = {hw: {"release_keys": list(keys), "threshold": threshold}
                for hw, (keys, threshold) in sorted(sets.items())}
    before = {} if stored is None else stored["hardware"]
    rekeyed = sorted(hw for hw in hardware if hw in before and before[hw] != hardware[hw])
    online = sorted(did_from_tuf_key(root.keys[k]) for k in root.roles["timestamp"].keyids)
    ctx.put(trust_key(org), {
        "org": org, "roots": chain, "root_version": len(chain), "targets": p.targets,
        "targets_version": targets.version, "online_keys": online, "hardware": hardware,
        "tx": ctx.tx_hash, "updated_ms": ctx.time_ms,
    })
    ctx.emit("software.trust", org=org, root_version=len(chain), targets_version=targets.version,
             hardware=sorted(hardware), rekeyed=rekeyed)


@contract("software.release", payload=PublishRelease, roles={"manufacturer"}, public=True, bulk=True)
def publish_release(ctx: Context, p: PublishRelease) -> None:
    """The next release catalogue of one hardware type, signed by a threshold of its release keys."""
    org = str(ctx.org)
    trust = ctx.get(trust_key(org))
    require(trust is not None, "no_trust", f"{org} has published no software trust metadata (software.trust)")
    assert trust is not None
    keys = trust["hardware"].get(p.hardware_id)
    require(keys is not None, "unknown_hardware", f"{org}'s targets delegate no release keys for {p.hardware_id}")
    new = checked(verify_release, p.document.encode(), keys["release_keys"], keys["threshold"],
                  hardware_id=p.hardware_id)
    stored = ctx.get(release_key(org, p.hardware_id))
    # the stored catalogue was verified when published (possibly under release keys since replaced)
    previous = None if stored is None else parse_release(stored["document"].encode(), hardware_id=p.hardware_id)
    added = checked(check_successor, previous, new)
    require(tuf_time_ms(new.expires) > ctx.time_ms, "already_expired", "the catalogue has expired")
    for release in added:
        image = ctx.get(image_key(org, release.sha256))
        entries = [] if image is None else list(image["releases"])
        ctx.put(image_key(org, release.sha256), {"sha256": release.sha256,
                                                 "releases": [*entries, release_entry(release)]})
    ctx.put(release_key(org, p.hardware_id), {
        "org": org, "hardware_id": p.hardware_id, "sequence": new.sequence, "expires": new.expires,
        "document": new.document.decode(), "releases": [release_entry(r) for r in new.releases],
        "signers": sorted(new.signers), "signed_digest": new.signed_digest, "tx": ctx.tx_hash,
        "published_ms": ctx.time_ms,
    })
    ctx.emit("software.released", org=org, hardware_id=p.hardware_id, sequence=new.sequence,
             added=[{"version": r.version, "sha256": r.sha256, "name": r.name} for r in added],
             signers=sorted(new.signers))


@contract("software.campaign", payload=Campaign, roles={"manufacturer"})
def open_campaign(ctx: Context, p: Campaign) -> None:
    """A carmaker assigns a released version of one hardware type to its vehicles (by model and/or VIN)."""
    org = str(ctx.org)
    require(ctx.get(campaign_key(p.campaign)) is None, "campaign_exists", f"campaign {p.campaign} already exists")
    trust = ctx.get(trust_key(org))
    require(trust is not None and p.hardware_id in trust["hardware"], "unknown_hardware",
            f"{org}'s targets delegate no release keys for {p.hardware_id}")
    catalogue = ctx.get(release_key(org, p.hardware_id))
    release = None if catalogue is None else next(
        (r for r in catalogue["releases"] if r["version"] == p.version), None)
    require(release is not None, "unreleased_version", f"version {p.version} of {p.hardware_id} was never released")
    assert release is not None
    for vin in p.vins:
        record = ctx.get(vehicle_key(vin))
        require(record is not None, "unknown_vehicle", f"no vehicle {vin} is registered", vin)
        assert record is not None
        require(record["manufacturer"] == org, "not_manufacturer", f"{vin} was not registered by {org}", vin)
    ctx.put(campaign_key(p.campaign), {
        "campaign": p.campaign, "org": org, "title": p.title, "hardware_id": p.hardware_id, "version": p.version,
        "sha256": release["sha256"], "name": release["name"], "models": sorted(p.models), "vins": sorted(p.vins),
        "opened_ms": ctx.time_ms, "tx": ctx.tx_hash,
    })
    ctx.index_put("swcampaign", f"{org}|{p.campaign}", p.hardware_id)
    ctx.emit("software.campaign", campaign=p.campaign, org=org, hardware_id=p.hardware_id, version=p.version,
             models=len(p.models), vins=len(p.vins))


@contract("software.installed", payload=Installed, roles={ANYONE}, admit=vehicle_device)
def installed(ctx: Context, p: Installed) -> None:
    """The vehicle's device key attests an image installed on one ECU (never released, wrong hardware,
    rollbacks refused)."""
    record = load(ctx, p)
    require(ctx.signer == record["device_key"], "not_device",
            "an installation is attested by the vehicle's own device key")
    at = event_time(ctx, record, p.at_ms)
    software = dict(record.get("software") or {})
    current = software.get(p.ecu)
    require(current is not None or len(software) < MAX_ECUS, "too_many_ecus",
            f"the vehicle already reports {MAX_ECUS} ECUs")
    # a replaced ECU of another hardware type starts again from nothing installed
    installed_version = current["version"] if current is not None and current["hardware_id"] == p.hardware_id else 0
    image = ctx.get(image_key(record["manufacturer"], p.image_sha256))
    candidates = [] if image is None else [release_of(entry) for entry in image["releases"]]
    release = check_install(candidates, p.image_sha256, p.hardware_id, installed_version)
    software[p.ecu] = {"hardware_id": p.hardware_id, "version": release.version, "sha256": release.sha256,
                       "name": release.name, "at_ms": at, "tx": ctx.tx_hash}
    record["software"] = software
    append_event(ctx, record, "software_installed", at, ecu=p.ecu, hardware_id=p.hardware_id,
                 version=release.version, sha256=release.sha256, name=release.name,
                 previous_version=None if current is None else current["version"])
