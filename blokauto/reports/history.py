"""From verified leaves to the report's view: odometer series, owners, accidents, brands.

Computed only from what :func:`blokauto.reports.bundle.verify_bundle` has proven, so the
HTML and PDF show nothing a verifier could not recompute from the bundle. Owners appear as
"Owner 1, 2, ..." (durations only), never by key or name.
"""

from __future__ import annotations

from typing import Any

from blokauto.reports.bundle import VerifiedReport, leaf_tx_hash

DAY_MS = 86_400_000


def _payload(leaf: dict[str, Any]) -> dict[str, Any]:
    payload = leaf["tx"]["body"].get("payload", {})
    return payload if isinstance(payload, dict) else {}


def build_view(report: VerifiedReport, now_ms: int | None = None) -> dict[str, Any]:
    """The dict the HTML/PDF renderer and the JSON summary show."""
    record = report.record
    vin = report.vin
    readings: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    owners: list[dict[str, Any]] = []
    liens: dict[str, dict[str, Any]] = {}
    accidents: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    inspections: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    crashes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for leaf, (event, tx_hash) in zip(report.events, report.chain, strict=True):
        payload = _payload(leaf)
        kind, at, org = str(event.get("kind", "")), int(event.get("at_ms", 0)), event.get("org")
        events.append({"seq": event.get("seq"), "at_ms": at, "kind": kind, "org": org,
                       "tx": tx_hash, "height": leaf["height"]})
        if kind == "cluster_replaced":
            readings.append({"at_ms": at, "km": int(event["old_km"]), "source": kind,
                             "flagged": bool(event.get("flagged")), "rejected": False})
            clusters.append({"at_ms": at, "old_km": int(event["old_km"]), "new_km": int(event["new_km"])})
            readings.append({"at_ms": at, "km": int(event["new_km"]), "source": kind, "flagged": False,
                             "rejected": False})
        elif "odometer_km" in event:
            readings.append({"at_ms": at, "km": int(event["odometer_km"]), "source": kind,
                             "flagged": bool(event.get("flagged")), "rejected": False})
        if kind in ("first_sale", "transferred"):
            if owners:
                owners[-1]["to_ms"] = at
            owners.append({"n": len(owners) + 1, "from_ms": at, "to_ms": None, "days": 0})
        elif kind == "lien_recorded":
            liens[str(event["lien"])] = {"lender": str(event.get("lender")), "since_ms": at, "released_ms": None}
        elif kind == "lien_released" and str(event.get("lien")) in liens:
            liens[str(event["lien"])]["released_ms"] = at
        elif kind == "accident":
            accidents.append({"at_ms": at, "severity": str(payload.get("severity", event.get("severity", ""))),
                              "areas": list(payload.get("areas", [])),
                              "airbags_deployed": bool(payload.get("airbags_deployed", False)), "org": org or ""})
        elif kind == "service":
            services.append({"at_ms": at, "km": int(payload.get("odometer_km", 0)),
                             "operations": [str(o) for o in payload.get("operations", [])],
                             "parts": [str(p.get("part_number", "")) for p in payload.get("parts", [])
                                       if isinstance(p, dict)],
                             "org": org or ""})
        elif kind == "crash_recorded":
            crashes.append({"at_ms": at, "record_hash": str(event.get("record_hash", "")),
                            "max_delta_v_dkmh": int(event.get("max_delta_v_dkmh", 0)),
                            "airbags": bool(event.get("airbags")), "claim": event.get("claim")})
        elif kind in ("part_installed", "part_removed", "recall_remedied"):
            removed = event.get("removed", event.get("serials", []) if kind == "part_removed" else [])
            fitted = event.get("installed", event.get("serials", []) if kind == "part_installed" else [])
            parts.append({"at_ms": at, "km": event.get("odometer_km"), "kind": kind, "org": org or "",
                          "fitted": [str(s) for s in fitted], "removed": [str(s) for s in removed],
                          "part_numbers": [str(n) for n in event.get("part_numbers", [])],
                          "campaign": event.get("campaign"), "reason": event.get("reason")})
        elif kind == "inspection":
            items = [i for i in payload.get("items", []) if isinstance(i, dict)]
            inspections.append({"at_ms": at, "km": int(payload.get("odometer_km", 0)),
                                "passed": bool(event.get("passed")),
                                "failed_items": [str(i.get("code")) for i in items if not i.get("passed")],
                                "items": len(items), "org": org or ""})
    end_ms = now_ms if now_ms is not None else (events[-1]["at_ms"] if events else 0)
    if record.get("status") in ("destroyed", "exported") and owners and events:
        owners[-1]["to_ms"] = events[-1]["at_ms"]
    for owner in owners:
        until = owner["to_ms"] if owner["to_ms"] is not None else max(end_ms, owner["from_ms"])
        owner["days"] = (until - owner["from_ms"]) // DAY_MS
    rollbacks = 0
    for leaf in report.evidence:
        payload = _payload(leaf)
        if leaf["result"].get("code") == "odometer_rollback":
            rollbacks += 1
            km = payload.get("odometer_km", payload.get("old_km"))
            if isinstance(km, int):
                at = payload.get("at_ms")
                readings.append({"at_ms": int(at) if isinstance(at, int) else 0, "km": km,
                                 "source": leaf["tx"]["body"]["type"], "flagged": False, "rejected": True})
    readings.sort(key=lambda r: (r["at_ms"], r["rejected"]))
    evidence = [{"at_ms": int(_payload(leaf).get("at_ms") or 0), "kind": leaf["tx"]["body"]["type"],
                 "code": str(leaf["result"].get("code", "")), "message": str(leaf["result"].get("message", "")),
                 "tx": leaf_tx_hash(leaf)} for leaf in report.evidence]
    return {
        "vin": vin, "maker": record.get("maker", ""), "model": record.get("model", ""),
        "year": record.get("year", 0), "powertrain": record.get("powertrain", ""),
        "battery": record.get("battery"), "country": record.get("country", ""), "region": record.get("region", ""),
        "status": record.get("status", ""), "brands": list(record.get("brands", [])),
        "registered_ms": record.get("registered_ms", 0), "manufacturer": record.get("manufacturer") or "",
        "odometer": {
            "last_km": record.get("odometer_km"), "flagged": bool(record.get("odometer_flags")),
            "rollback_attempts": rollbacks, "readings": readings, "cluster_replacements": clusters,
            "offset_km": record.get("odometer_offset_km", 0),
        },
        "owners": {"count": int(record.get("owners", 0)), "timeline": owners},
        "liens": list(liens.values()),
        "accidents": accidents,
        "services": services,
        "inspections": inspections,
        "parts": parts,
        "crashes": crashes,
        "software": [{"ecu": ecu, **{k: sw.get(k) for k in ("hardware_id", "version", "name", "at_ms")}}
                     for ecu, sw in sorted((record.get("software") or {}).items())],
        "recalls": [],
        "events": events,
        "evidence": evidence,
        "checkpoint": {"origin": report.origin, "size": report.checkpoint_size, "height": report.height,
                       "signers": report.signers},
        "report_hash": report.report_hash,
    }


def public_summary(record: dict[str, Any] | None, vin: str,
                   recalls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The public VIN check: facts a buyer may see about any car, nothing about its owners.
    ``recalls`` are the vehicle's campaigns (:func:`blokauto.reports.parts.vehicle_recalls`)."""
    if record is None:
        return {"vin": vin, "registered": False}
    return {
        "vin": vin, "registered": True, "maker": record["maker"], "model": record["model"],
        "year": record["year"], "powertrain": record["powertrain"],
        "status": record["status"], "stolen": record["status"] == "stolen",
        "title_brands": list(record["brands"]),
        "odometer": "flagged" if record["odometer_flags"] else "consistent",
        "accidents": record["accidents"], "owners": record["owners"],
        "lien": bool(record["liens"]), "events": record["events"],
        "open_recalls": [{"campaign": r["campaign"], "title": r["title"], "remedy": r["remedy"]}
                         for r in recalls or [] if r["status"] == "open"],
    }
