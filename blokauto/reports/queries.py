"""Read-side queries over committed vehicle records (never part of consensus).

Vehicle records live in the state table as canonical JSON under ``vehicle/<VIN>``; filters use
SQLite's JSON functions over that range, paginated by VIN so a page costs what it returns
(plus the rows it skips for selective filters).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from blokauto.crypto import canonical
from blokauto.ledger.store import Store

FILTERS = ("maker", "model", "year", "status", "powertrain", "manufacturer")
MAX_PAGE = 500


def list_vehicles(store: Store, filters: dict[str, str | int], after: str = "", limit: int = 50,
                  conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """One page of vehicle records in VIN order, and the cursor of the next page (or None)."""
    clauses = ["k > ?", "k < ?"]
    args: list[Any] = [f"vehicle/{after}", "vehicle0"]
    for name in FILTERS:
        value = filters.get(name)
        if value is None or value == "":
            continue
        clauses.append(f"json_extract(CAST(v AS TEXT), '$.{name}') = ?")
        args.append(value)
    args.append(limit + 1)
    rows = (conn or store.reader()).execute(
        f"SELECT k, v FROM state WHERE {' AND '.join(clauses)} ORDER BY k LIMIT ?", args).fetchall()
    items = [canonical.decode_trusted(bytes(v)) for _, v in rows[:limit]]
    cursor = items[-1]["vin"] if len(rows) > limit and items else None
    return {"items": [listing(item) for item in items], "next": cursor}


def listing(record: dict[str, Any]) -> dict[str, Any]:
    """What a list shows per vehicle: identity and status, no owner key."""
    return {k: record.get(k) for k in ("vin", "maker", "model", "year", "powertrain", "status", "manufacturer",
                                       "registered_ms", "odometer_km", "events")}
