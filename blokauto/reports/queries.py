"""Read-side queries over committed vehicle records (never part of consensus).

Vehicle records live in the state table as canonical JSON under ``vehicle/<VIN>``. A page is in
VIN order from a cursor. Filters go through the ``facets`` index (field, value, key), kept by the
store at commit: the rarest filter drives a range scan of the index and each other filter is one
index lookup per candidate, so a page costs about what it returns even at a million vehicles (a
scan of the records with SQLite's JSON functions took 2-11 s there).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from blokauto.crypto import canonical
from blokauto.ledger import proofs
from blokauto.ledger.store import FACETS, Store, prefix_end

PREFIX = "vehicle/"
FILTERS = FACETS[PREFIX]
MAX_PAGE = 500
_SELECTIVITY_PROBE = 1_000   # index rows counted per filter to find the rarest


def list_vehicles(store: Store, filters: dict[str, str | int], after: str = "", limit: int = 50,
                  conn: sqlite3.Connection | None = None) -> dict[str, Any]:
    """One page of vehicle records in VIN order, and the cursor of the next page (or None)."""
    conn = conn or store.reader()
    start, end = f"{PREFIX}{after}", prefix_end(PREFIX)
    wanted = {name: str(value) for name, value in filters.items()
              if name in FILTERS and value is not None and value != ""}
    with proofs.read_snapshot(conn):
        if not wanted:
            rows = conn.execute("SELECT k, v FROM state WHERE k > ? AND k < ? ORDER BY k LIMIT ?",
                                (start, end, limit + 1)).fetchall()
        else:
            keys = _matching_keys(conn, wanted, start, end, limit + 1)
            marks = ",".join("?" * len(keys))
            found = dict(conn.execute(f"SELECT k, v FROM state WHERE k IN ({marks})", keys).fetchall()) if keys else {}
            rows = [(k, found[k]) for k in keys if k in found]
    items = [canonical.decode_trusted(bytes(v)) for _, v in rows[:limit]]
    cursor = items[-1]["vin"] if len(rows) > limit and items else None
    return {"items": [listing(item) for item in items], "next": cursor}


def _matching_keys(conn: sqlite3.Connection, wanted: dict[str, str], start: str, end: str, count: int) -> list[str]:
    def rows_after(name: str) -> int:
        return int(conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM facets WHERE facet = ? AND value = ? AND k > ? AND k < ? LIMIT ?)",
            (name, wanted[name], start, end, _SELECTIVITY_PROBE)).fetchone()[0])

    driver = min(sorted(wanted), key=rows_after)
    others = [(name, value) for name, value in sorted(wanted.items()) if name != driver]
    checks = "".join(" AND EXISTS (SELECT 1 FROM facets o WHERE o.facet = ? AND o.value = ? AND o.k = d.k)"
                     for _ in others)
    args: list[Any] = [driver, wanted[driver], start, end]
    for name, value in others:
        args += [name, value]
    args.append(count)
    return [str(r[0]) for r in conn.execute(
        f"SELECT d.k FROM facets d WHERE d.facet = ? AND d.value = ? AND d.k > ? AND d.k < ?{checks} "
        "ORDER BY d.k LIMIT ?", args)]


def listing(record: dict[str, Any]) -> dict[str, Any]:
    """What a list shows per vehicle: identity and status, no owner key."""
    return {k: record.get(k) for k in ("vin", "maker", "model", "year", "powertrain", "status", "manufacturer",
                                       "registered_ms", "odometer_km", "events")}
