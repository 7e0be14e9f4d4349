"""Read-side answers about parts and recalls: authenticity checks, part certificates, affected
vehicles, campaign figures, a vehicle's open recalls (never part of consensus).

They read the committed state and the consensus index (``ix``) that the parts and recall
contracts keep: ``serial`` (serial -> batch id and leaf), ``fitted`` (part number | lot | VIN |
serial, for recall lists), ``vparts`` (VIN | serial), ``campaignpart``, ``vcampaign``, ``remedied``.

A part certificate is the offline proof of a part: the state proof of its batch record, the
part's leaf and its RFC 9162 inclusion path up to the batch root the maker signed, and the state
proof of the part's current record (or of its absence: never moved, still with its maker).
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from threading import Lock
from typing import Any

from blokauto.contracts.parts import COUNTERFEIT_CODES, batch_leaves, part_leaf, unmoved_record
from blokauto.contracts.recalls import part_affected, vehicle_in_scope
from blokauto.crypto import canonical
from blokauto.crypto.keys import b64, unb64
from blokauto.crypto.merkle import inclusion_path, leaf_hash, tree_levels, verify_inclusion
from blokauto.crypto.note import KnownKeys
from blokauto.errors import InputError, NotFound, StorageError, VerificationError
from blokauto.ledger import proofs
from blokauto.ledger.store import Store

CERTIFICATE_FORMAT = "blokauto/part-certificate/v1"
MAX_SIGNALS = 50


def _state(store: Store, key: str, conn: sqlite3.Connection) -> Any | None:
    encoded = store.get_state(key, conn)
    return None if encoded is None else canonical.decode_trusted(encoded)


def locate(store: Store, serial: str, conn: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(part record, batch record)`` of a registered serial; an unmoved part's record is implied."""
    record = _state(store, f"part/{serial}", conn)
    if record is not None:
        return record, _state(store, f"partbatch/{record['batch']}", conn) or {}
    entry = store.get_index_many("serial", [serial], conn).get(serial)
    if entry is None:
        return None
    bid, _, leaf = entry.partition(":")
    batch = _state(store, f"partbatch/{bid}", conn)
    if batch is None:
        raise StorageError(f"serial {serial} names batch {bid}, which is missing", code="corrupt_store")
    return unmoved_record(serial, bid, int(leaf), batch), batch


def locate_registered(store: Store, serial: str, conn: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`locate`, or ``unknown_part`` (404) for a serial nobody registered."""
    found = locate(store, serial, conn)
    if found is None:
        raise NotFound(f"no part with serial {serial} is registered", code="unknown_part")
    return found


def counterfeit_signals(store: Store, serial: str, conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Refused attempts to fit this serial that suggest a fake or a clone (kept in the log)."""
    signals = []
    indexes = store.subject_leaves(f"serial:{serial}", conn, limit=2_000)
    for index, (_, _, leaf) in sorted(store.get_leaves(indexes, conn).items()):
        decoded = canonical.decode_trusted(leaf)
        result = decoded["result"]
        if result.get("status") == "rejected" and result.get("code") in COUNTERFEIT_CODES \
                and result.get("subject", serial) == serial:
            body = decoded["tx"]["body"]
            signals.append({"code": result["code"], "leaf_index": index, "height": decoded["height"],
                            "vin": body["payload"].get("vin"), "signer": body["signer"]})
            if len(signals) >= MAX_SIGNALS:
                break
    return signals


def open_campaigns_for(store: Store, part_number: str, lot: str, conn: sqlite3.Connection) -> list[dict[str, Any]]:
    names = [key.rsplit("|", 1)[1] for prefix in (f"{part_number}|{lot}|", f"{part_number}|*|")
             for key, _ in store.scan_index("campaignpart", prefix, conn)]
    found = []
    for name in sorted(set(names)):
        campaign = _state(store, f"recall/{name}", conn)
        if campaign is not None and campaign["status"] == "open":
            found.append(campaign)
    return found


def authenticity(store: Store, serial: str, *, member: bool = False,
                 conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """Anyone's check of a serial: genuine or not, where it is, whether it is recalled.

    ``member`` readers also see which vehicle a fitted part is in."""
    conn = conn or store.reader()
    with proofs.read_snapshot(conn):
        found = locate(store, serial, conn)
        signals = counterfeit_signals(store, serial, conn)
        if found is None:
            return {"serial": serial, "registered": False, "genuine": False, "verdict": "not_registered",
                    "reason": "no approved maker registered this serial", "counterfeit_signals": signals}
        record, batch = found
        number = _state(store, f"partno/{record['part_number']}", conn) or {}
        maker = _state(store, f"id/org/{record['maker']}", conn) or {}
        recalls = open_campaigns_for(store, record["part_number"], record["lot"], conn)
    verdict = "genuine"
    if record["status"] in ("recycled",):
        verdict = "recycled"
    elif signals:
        verdict = "genuine_with_signals"
    location: dict[str, Any] = {"status": record["status"], "holder": record.get("holder"),
                                "since_ms": record.get("since_ms")}
    if record["status"] == "installed":
        location["in_vehicle"] = True
        if member:
            location["vin"] = record["vin"]
    return {
        "serial": serial, "registered": True, "genuine": record["status"] != "recycled", "verdict": verdict,
        "part_number": record["part_number"], "description": number.get("description", ""),
        "category": number.get("category", ""), "safety": bool(number.get("safety")),
        "maker": {"id": record["maker"], "name": maker.get("name", "")}, "lot": record["lot"],
        "plant": batch.get("plant", ""), "produced_ms": batch.get("produced_ms"), "batch": record["batch"],
        "battery": bool(batch.get("battery")), "location": location, "reused": bool(record.get("reused")),
        "flags": list(record.get("flags", [])), "installs": record.get("installs", 0),
        "events": record.get("events", 0),
        "recalls": [{"campaign": c["campaign"], "title": c["title"], "remedy": c["remedy"]} for c in recalls],
        "recalled": bool(recalls), "counterfeit_signals": signals,
    }


def part_history(store: Store, serial: str, conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """A part's events newest first, found by following each event's ``prev`` link from the head its
    record holds back to the first move, then its batch's registration: complete by construction."""
    conn = conn or store.reader()
    with proofs.read_snapshot(conn):
        record, batch = locate_registered(store, serial, conn)
        events: list[dict[str, Any]] = []
        tx = record.get("head")
        while tx:
            leaf = store.find_leaf(bytes.fromhex(tx), conn)
            if leaf is None:
                raise NotFound(f"event {tx} of part {serial} is missing from the log", code="broken_chain")
            index, height, raw = leaf
            decoded = canonical.decode_trusted(raw)
            event = next(e for e in decoded["result"]["events"] if e["type"] == "part.event")
            link = next(p for p in event["parts"] if p[0] == serial)
            body = decoded["tx"]["body"]
            extra = {k: v for k, v in event.items() if k not in ("type", "parts", "kind", "org")}
            events.append({"seq": link[1], "kind": event["kind"], "org": event["org"], "tx": tx,
                           "leaf_index": index, "height": height, "type": body["type"], **extra})
            tx = link[2]
        registration = store.find_leaf(bytes.fromhex(batch["tx"]), conn) if batch else None
    if registration is not None:
        events.append({"seq": 0, "kind": "registered", "org": batch["maker"], "tx": batch["tx"],
                       "leaf_index": registration[0], "height": registration[1], "type": "part.register_batch",
                       "lot": batch["lot"], "plant": batch["plant"], "produced_ms": batch["produced_ms"]})
    return {"serial": serial, "part": record, "batch": batch, "events": events}


# -- certificates ------------------------------------------------------------------------------


class _LevelCache:
    """Merkle levels of recently certified batches: a 20,000-part batch costs ~40 ms to rehash."""

    def __init__(self, size: int = 8) -> None:
        self._items: OrderedDict[str, tuple[list[list[bytes]], list[bytes]]] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def get(self, store: Store, batch: dict[str, Any],
            conn: sqlite3.Connection) -> tuple[list[list[bytes]], list[bytes]]:
        root = batch["root"]
        with self._lock:
            hit = self._items.get(root)
            if hit is not None:
                self._items.move_to_end(root)
                return hit
        found = store.find_leaf(bytes.fromhex(batch["tx"]), conn)
        if found is None:
            raise NotFound(f"the registration of batch {root} is not in the log", code="unknown_tx")
        payload = canonical.decode_trusted(found[2])["tx"]["body"]["payload"]
        leaves = batch_leaves(payload["part_number"], payload["serials"], payload.get("passports"))
        entry = (tree_levels([leaf_hash(leaf) for leaf in leaves]), leaves)
        with self._lock:
            self._items[root] = entry
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return entry


LEVELS = _LevelCache()


def build_certificate(store: Store, serial: str, conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """A part's offline proof of origin and current state (see the module docstring)."""
    conn = conn or store.reader()
    with proofs.read_snapshot(conn):
        record, batch = locate_registered(store, serial, conn)
        levels, leaves = LEVELS.get(store, batch, conn)
        index = int(record["leaf"])
        batch_proof = proofs._build_state_proof(store, f"partbatch/{record['batch']}", conn)
        part_proof = proofs._build_state_proof(store, f"part/{serial}", conn)
    return {
        "format": CERTIFICATE_FORMAT, "serial": serial,
        "leaf": canonical.decode_trusted(leaves[index]), "leaf_index": index, "batch_size": len(leaves),
        "path": [b64(h) for h in inclusion_path(levels, index)],
        "batch": batch_proof, "part": part_proof,
    }


@dataclass(frozen=True)
class VerifiedPart:
    serial: str
    part_number: str
    maker: str
    lot: str
    batch: dict[str, Any]
    record: dict[str, Any] | None      # None: never moved, with its maker
    passport: dict[str, Any] | None
    checkpoint_height: int


def verify_certificate(cert: Any, known: KnownKeys | Iterable[str], quorum: int = 1) -> VerifiedPart:
    """Check a part certificate offline against the consortium's checkpoint keys."""
    if not isinstance(cert, dict) or cert.get("format") != CERTIFICATE_FORMAT:
        raise VerificationError(f"not a {CERTIFICATE_FORMAT} certificate", code="bad_certificate")
    serial, leaf, index, size = cert.get("serial"), cert.get("leaf"), cert.get("leaf_index"), cert.get("batch_size")
    if not isinstance(serial, str) or not isinstance(leaf, dict) or type(index) is not int or type(size) is not int:
        raise VerificationError("certificate needs serial, leaf, leaf_index and batch_size", code="bad_certificate")
    batch_key, batch = proofs.verify_state_proof_object(cert.get("batch"), known, quorum)
    part_key, record = proofs.verify_state_proof_object(cert.get("part"), known, quorum)
    if cert["batch"].get("checkpoint") != cert["part"].get("checkpoint"):
        raise VerificationError("the two state proofs are for different checkpoints", code="bad_certificate")
    if part_key != f"part/{serial}" or not isinstance(batch, dict) or batch_key != f"partbatch/{batch.get('id')}" \
            or str(batch.get("root", "")).find(str(batch.get("id"))) != 0:
        raise VerificationError("the state proofs are not about this part and a batch", code="bad_certificate")
    if leaf.get("serial") != serial or leaf.get("part_number") != batch.get("part_number") \
            or set(leaf) - {"serial", "part_number", "battery"}:
        raise VerificationError("the leaf names another part", code="bad_certificate")
    try:
        leaf_bytes = part_leaf(leaf["part_number"], serial, leaf.get("battery"))
        path = [unb64(h, size=32, what="path hash") for h in cert.get("path", [])]
        root = bytes.fromhex(str(batch["root"]))
    except (InputError, ValueError, TypeError) as exc:
        raise VerificationError(f"malformed certificate: {exc}", code="bad_certificate") from None
    if size != batch.get("count"):
        raise VerificationError("batch size differs from the batch record", code="bad_certificate")
    verify_inclusion(index, size, leaf_hash(leaf_bytes), path, root)
    if record is not None and (record.get("batch") != batch["id"] or record.get("serial") != serial):
        raise VerificationError("the part's record belongs to another batch", code="bad_certificate")
    return VerifiedPart(serial=serial, part_number=batch["part_number"], maker=batch["maker"], lot=batch["lot"],
                        batch=batch, record=record, passport=leaf.get("battery"),
                        checkpoint_height=int(cert["batch"]["height"]))


# -- recalls -----------------------------------------------------------------------------------


def _owners_from_records(vins: list[str], conn: sqlite3.Connection) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(vins), 500):
        keys = [f"vehicle/{v}" for v in vins[start:start + 500]]
        marks = ",".join("?" * len(keys))
        for key, owner in conn.execute(
                f"SELECT k, json_extract(CAST(v AS TEXT), '$.owner') FROM state WHERE k IN ({marks})", keys):
            found[key[8:]] = owner or ""
    return found


def _vehicles_by_criteria(store: Store, campaign: dict[str, Any],
                          conn: sqlite3.Connection) -> dict[str, tuple[list[str], str]]:
    """A campaign without parts: the vehicles its VIN ranges, models and years select."""
    selected: list[str] = []
    scope = campaign["scope"]
    if campaign["vin_ranges"]:
        for r in campaign["vin_ranges"]:
            rows = conn.execute(
                "SELECT k, json_extract(CAST(v AS TEXT), '$.manufacturer'), json_extract(CAST(v AS TEXT), '$.model'),"
                " json_extract(CAST(v AS TEXT), '$.year') FROM state WHERE k >= ? AND k <= ?",
                (f"vehicle/{r['first']}", f"vehicle/{r['last']}"))
            selected.extend(key[8:] for key, manufacturer, model, year in rows
                            if vehicle_in_scope(campaign, key[8:], manufacturer, model, int(year)))
    else:
        prefixes = [f"{scope}|{m}|" for m in campaign["models"]] if scope and campaign["models"] else (
            [f"{scope}|"] if scope else [""])
        for prefix in prefixes:
            for key, _ in store.scan_index("vmodel", prefix, conn):
                manufacturer, model, year, vin = key.split("|")
                if vehicle_in_scope(campaign, vin, manufacturer, model, int(year)):
                    selected.append(vin)
    owners = _owners_from_records(selected, conn)
    return {vin: ([], owners.get(vin, "")) for vin in selected}


def _vehicles_by_parts(store: Store, campaign: dict[str, Any],
                       conn: sqlite3.Connection) -> dict[str, tuple[list[str], str]]:
    """Vehicles carrying one of the campaign's parts now (a repair that fitted one counts, a removal
    ends it), within its vehicle criteria: VIN -> (affected serials, owner's key or "")."""
    found: dict[str, tuple[list[str], str]] = {}
    scope = campaign["scope"]
    by_scope_only = not (campaign["vin_ranges"] or campaign["models"] or campaign["year_from"]
                         or campaign["year_to"])
    scope_prefix = f"{scope}|"
    for criterion in campaign["parts"]:
        number = criterion["part_number"]
        prefixes = [f"{number}|{lot}|" for lot in criterion["lots"]] or [f"{number}|"]
        for prefix in prefixes:
            cut = len(prefix)
            for key, vehicle in store.scan_index("fitted", prefix, conn):
                if by_scope_only:   # the common case: no per-vehicle criteria beyond the maker
                    if scope is not None and not vehicle.startswith(scope_prefix):
                        continue
                    rest = key[cut:]
                    if not criterion["lots"]:
                        rest = rest.partition("|")[2]     # drop the lot
                    vin, _, serial = rest.partition("|")
                    owner = vehicle.rpartition("|")[2]
                else:
                    _, lot, vin, serial = key.split("|")
                    manufacturer, model, year, owner = vehicle.split("|")
                    if not (part_affected(campaign, number, lot)
                            and vehicle_in_scope(campaign, vin, manufacturer, model, int(year))):
                        continue
                hit = found.get(vin)
                if hit is None:
                    found[vin] = ([serial], owner)
                else:
                    hit[0].append(serial)
    return found


def campaign_report(store: Store, name: str, *, vehicles: bool = True,
                    conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """A campaign with its figures and (for members) every affected vehicle and its owner's key."""
    conn = conn or store.reader()
    with proofs.read_snapshot(conn):
        campaign = _state(store, f"recall/{name}", conn)
        if campaign is None:
            raise NotFound(f"no campaign {name}", code="unknown_campaign")
        if campaign["parts"]:
            affected = _vehicles_by_parts(store, campaign, conn)
        else:
            affected = _vehicles_by_criteria(store, campaign, conn)
        remedied = dict(store.scan_index("remedied", f"{name}|", conn))
        remedied_vins = {key.partition("|")[2]: tx for key, tx in remedied.items()}
        open_vins = sorted(vin for vin in affected if vin not in remedied_vins)
    total = len(open_vins) + len(remedied_vins)
    report: dict[str, Any] = {
        "campaign": campaign, "affected": total, "remedied": len(remedied_vins), "open": len(open_vins),
        "completion_permille": 1000 * len(remedied_vins) // total if total else 0,
    }
    if vehicles:
        report["vehicles"] = [{"vin": vin, "owner": affected[vin][1] or None, "serials": affected[vin][0]}
                              for vin in open_vins]
        report["remedies"] = [{"vin": vin, "tx": tx} for vin, tx in sorted(remedied_vins.items())]
    return report


def list_campaigns(store: Store, conn: sqlite3.Connection | None = None) -> list[dict[str, Any]]:
    conn = conn or store.reader()
    return [canonical.decode_trusted(v) for _, v in store.iter_state("recall/", conn)]


def vehicle_recalls(store: Store, record: dict[str, Any],
                    conn: sqlite3.Connection | None = None) -> list[dict[str, Any]]:
    """The campaigns that apply to one vehicle: open (affected, not remedied) or remedied."""
    conn = conn or store.reader()
    vin = record["vin"]
    with proofs.read_snapshot(conn):
        names: set[str] = set()
        for _, value in store.scan_index("vparts", f"{vin}|", conn):
            number, _, lot = value.partition("|")
            for prefix in (f"{number}|{lot}|", f"{number}|*|"):
                names.update(key.rsplit("|", 1)[1] for key, _ in store.scan_index("campaignpart", prefix, conn))
        for prefix in (f"{record['manufacturer']}|", "*|"):
            names.update(key.partition("|")[2] for key, _ in store.scan_index("vcampaign", prefix, conn))
        remedied = {key.partition("|")[2]: tx for key, tx in store.scan_index("vremedied", f"{vin}|", conn)}
        names.update(remedied)
        found = []
        for name in sorted(names):
            campaign = _state(store, f"recall/{name}", conn)
            if campaign is None or not vehicle_in_scope(campaign, vin, record["manufacturer"], record["model"],
                                                        record["year"]):
                continue
            status = "remedied" if name in remedied else ("open" if campaign["status"] == "open" else "closed")
            found.append({"campaign": name, "title": campaign["title"], "remedy": campaign["remedy"],
                          "status": status, "opened_by": campaign["opened_by"], "remedy_tx": remedied.get(name)})
    return found
