"""Vehicle history report rendering: a report view (plain dict) to an HTML page or an A4 PDF.

The view is computed elsewhere from verified ledger events; every string in it came from ledger data that
a member organisation wrote, so it is treated as hostile: Jinja2 autoescapes everything, and the two pieces
of markup built here (the odometer chart and the QR code) escape the few strings they embed themselves.
The output is self-contained (inline CSS and SVG, no fonts, images or scripts fetched) so that a report
can be archived, mailed or printed and still look the same, and WeasyPrint is never allowed to fetch a URL.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import segno
from markupsafe import Markup, escape

__all__ = ["odometer_chart_svg", "qr_svg", "render_html", "render_pdf"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
QR_PREFIX = "blokauto:report:sha256:"
DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HEX64 = re.compile(r"[0-9a-f]{64}")

# Chart palette, kept in sync with the CSS colours of report.css (SVG presentation attributes, not classes,
# because WeasyPrint's SVG renderer does not apply the page's stylesheet to inline SVG).
_INK = "#0f172a"
_MUTED = "#64748b"
_GRID = "#e2e8f0"
_LINE = "#2563eb"
_FLAG = "#d97706"
_REJECT = "#dc2626"
_CLUSTER = "#7c3aed"
_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"

STATUS_LABELS = {
    "active": "Active",
    "stolen": "Reported stolen",
    "total_loss": "Total loss",
    "salvage": "Salvage",
    "exported": "Exported",
    "destroyed": "Destroyed",
}
BRAND_LABELS = {
    "salvage": "Salvage title",
    "stolen": "Reported stolen",
    "stolen_recovered": "Stolen, recovered",
    "total_loss": "Total loss",
    "exported": "Exported",
    "destroyed": "Destroyed",
    "rebuilt": "Rebuilt",
    "flood": "Flood damage",
}
POWERTRAIN_LABELS = {
    "ice": "Internal combustion (ICE)",
    "hev": "Hybrid (HEV)",
    "phev": "Plug-in hybrid (PHEV)",
    "bev": "Battery electric (BEV)",
    "fcev": "Fuel cell electric (FCEV)",
}


# --------------------------------------------------------------------------------------------------------------
# Formatting helpers (also registered as Jinja filters)


def _utc(ms: int) -> datetime:
    """Integer arithmetic from the epoch, so that no float rounding can move a date across midnight."""
    return _EPOCH + timedelta(milliseconds=ms)


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def fmt_date(ms: int | None) -> str:
    """YYYY-MM-DD in UTC: the ledger's clock, the same for every reader of the report wherever they are."""
    return "—" if ms is None else _utc(ms).strftime("%Y-%m-%d")


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_km(n: int | None) -> str:
    return "—" if n is None else f"{n:,} km"


def fmt_years(days: int) -> str:
    years = days / 365.25
    return f"{years:.1f} year" if f"{years:.1f}" == "1.0" else f"{years:.1f} years"


def fmt_kwh(wh: int) -> str:
    return f"{wh / 1000:,.1f} kWh"


def humanize(code: str) -> str:
    """``front_left`` → ``Front left``: ledger codes read as words without a lookup table per code."""
    text = code.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def label(value: str, table: dict[str, str]) -> str:
    return table.get(value) or humanize(value)


# --------------------------------------------------------------------------------------------------------------
# Odometer chart


def _nice_step(raw: float) -> int:
    """The smallest 1/2/2.5/5 × 10ⁿ step at least ``raw``: tick labels a reader can add up in their head."""
    magnitude = 1
    while magnitude * 10 <= raw:
        magnitude *= 10
    for mult in (1, 2, 2.5, 5, 10):
        step = int(mult * magnitude)
        if step >= raw:
            return max(step, 1)
    return magnitude * 10  # pragma: no cover - the loop always returns


def _km_axis(max_km: int) -> tuple[int, int]:
    """(axis top, tick step): five or six gridlines, the top one just above the highest reading."""
    top = max(max_km, 1000)
    step = _nice_step(top / 5)
    ticks = -(-top // step)
    if ticks * step == top:  # a reading exactly on the top line would sit on the frame
        ticks += 1
    return ticks * step, step


def _epoch(reading: dict[str, Any], replacements: list[dict[str, Any]]) -> int:
    """How many cluster replacements precede the reading. At a replacement's own instant the old cluster's final
    figure comes before it and any other figure after it, whatever order the view lists them in."""
    at = reading["at_ms"]
    return sum(1 for c in replacements if c["at_ms"] < at or (c["at_ms"] == at and reading["km"] != c["old_km"]))


def _in_order(readings: list[dict[str, Any]], replacements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(readings, key=lambda r: (r["at_ms"], _epoch(r, replacements)))


def _segments(accepted: list[dict[str, Any]], replacements: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split the accepted readings where the odometer legitimately restarted.

    A cluster replacement starts a new count, so the line must break there instead of drawing a plunge that
    looks like a rollback (or a leap, for a used cluster that reads higher). A reading belongs after a
    replacement if it is later, or at the same instant and is not the old cluster's final figure (the view
    lists the old and new figures at the replacement's time). Accepted readings can only go down after a
    replacement (rollbacks are refused), so a drop also starts a new segment even if the record is missing.
    """
    segments: list[list[dict[str, Any]]] = []
    prev: dict[str, Any] | None = None
    for r in accepted:
        if prev is None or r["km"] < prev["km"] or _epoch(r, replacements) != _epoch(prev, replacements):
            segments.append([])
        segments[-1].append(r)
        prev = r
    return segments


def _svg_text(x: float, y: float, text: str, *, size: int = 10, anchor: str = "start", fill: str = _MUTED,
              weight: str = "normal") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-family="{_FONT}" font-size="{size}" fill="{fill}" '
        f'text-anchor="{anchor}" font-weight="{weight}">{escape(text)}</text>'
    )


def _marker(kind: str, x: float, y: float, tip: str, dot: float = 3.0) -> str:
    """One reading's mark: each kind differs in shape as well as colour so it survives greyscale printing.
    ``dot`` is the radius of an ordinary reading, smaller when readings are dense so the line stays visible."""
    title = f"<title>{escape(tip)}</title>"
    if kind == "rejected":
        d = 4.5
        shape = (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="#ffffff" stroke="{_REJECT}" stroke-width="1.2"/>'
            f'<line x1="{x - d / 1.6:.1f}" y1="{y - d / 1.6:.1f}" x2="{x + d / 1.6:.1f}" y2="{y + d / 1.6:.1f}" '
            f'stroke="{_REJECT}" stroke-width="1.8"/>'
            f'<line x1="{x - d / 1.6:.1f}" y1="{y + d / 1.6:.1f}" x2="{x + d / 1.6:.1f}" y2="{y - d / 1.6:.1f}" '
            f'stroke="{_REJECT}" stroke-width="1.8"/>'
        )
    elif kind == "flagged":
        d = 5.0
        shape = (
            f'<polygon points="{x:.1f},{y - d:.1f} {x + d:.1f},{y:.1f} {x:.1f},{y + d:.1f} {x - d:.1f},{y:.1f}" '
            f'fill="{_FLAG}" stroke="#ffffff" stroke-width="1"/>'
        )
    else:
        ring = 'stroke="#ffffff" stroke-width="1"' if dot >= 2.5 else 'stroke="none"'  # a ring on a dense line dots it
        shape = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{dot:.1f}" fill="{_LINE}" {ring}/>'
    return f'<g class="pt {kind}">{title}{shape}</g>'


_LEGEND_ROW = 14.0


def _legend_width(text: str) -> float:
    """Estimated width of one legend item (no font metrics without a browser), on the generous side."""
    return 22 + 6.0 * len(text)


def _legend_rows(items: list[tuple[str, str]], available: float) -> list[list[tuple[str, str]]]:
    """Items in as few rows as fit the width: a narrow (phone) chart gets a two-row legend, not an overlap."""
    rows: list[list[tuple[str, str]]] = [[]]
    used = 0.0
    for item in items:
        w = _legend_width(item[1])
        if rows[-1] and used + w > available:
            rows.append([])
            used = 0.0
        rows[-1].append(item)
        used += w
    return rows


def _legend(rows: list[list[tuple[str, str]]], right: float, y0: float) -> str:
    """Right-aligned legend rows, each symbol drawn like its mark on the chart."""
    out: list[str] = []
    for i, row in enumerate(rows):
        y = y0 + i * _LEGEND_ROW
        x = right - sum(_legend_width(text) for _, text in row)
        for kind, text in row:
            cx = x + 6
            if kind == "line":
                out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 12:.1f}" y2="{y:.1f}" stroke="{_LINE}" '
                           f'stroke-width="2"/>')
                out.append(f'<circle cx="{cx:.1f}" cy="{y:.1f}" r="3" fill="{_LINE}"/>')
            elif kind == "flagged":
                out.append(f'<polygon points="{cx:.1f},{y - 4.5:.1f} {cx + 4.5:.1f},{y:.1f} {cx:.1f},{y + 4.5:.1f} '
                           f'{cx - 4.5:.1f},{y:.1f}" fill="{_FLAG}"/>')
            elif kind == "rejected":
                out.append(f'<line x1="{cx - 3.5:.1f}" y1="{y - 3.5:.1f}" x2="{cx + 3.5:.1f}" y2="{y + 3.5:.1f}" '
                           f'stroke="{_REJECT}" stroke-width="1.8"/>')
                out.append(f'<line x1="{cx - 3.5:.1f}" y1="{y + 3.5:.1f}" x2="{cx + 3.5:.1f}" y2="{y - 3.5:.1f}" '
                           f'stroke="{_REJECT}" stroke-width="1.8"/>')
            else:
                out.append(f'<line x1="{cx:.1f}" y1="{y - 6:.1f}" x2="{cx:.1f}" y2="{y + 6:.1f}" '
                           f'stroke="{_CLUSTER}" stroke-width="1.5" stroke-dasharray="3 2"/>')
            out.append(_svg_text(x + 17, y + 3.5, text, size=10))
            x += _legend_width(text)
    return "".join(out)


def odometer_chart_svg(
    readings: list[dict[str, Any]],
    width: int = 640,
    height: int = 220,
    *,
    cluster_replacements: list[dict[str, Any]] | None = None,
) -> str:
    """Odometer readings over time as a standalone SVG line chart (plain elements, no script, no CSS).

    x is time on whole calendar years (UTC), y is km from zero. Accepted readings are joined by a line that
    breaks at cluster replacements; flagged readings are amber diamonds on the line; refused readings
    (rollback attempts kept as evidence) are red crosses off the line. Every reading is one ``<g class="pt
    …">`` so the number of marks equals the number of readings. Plain SVG so that WeasyPrint draws it too.
    """
    replacements = cluster_replacements or []
    points = _in_order(readings, replacements)
    legend: list[tuple[str, str]] = [("line", "Reading")]
    if any(r["flagged"] and not r["rejected"] for r in points):
        legend.append(("flagged", "Flagged"))
    if any(r["rejected"] for r in points):
        legend.append(("rejected", "Refused rollback"))
    if replacements:
        legend.append(("cluster", "Cluster replaced"))
    left, right, bottom = 62.0, 14.0, 26.0
    legend_rows = _legend_rows(legend, width - right - 30)  # 30: room for the "km" unit at the top left
    top = 28.0 + _LEGEND_ROW * (len(legend_rows) - 1)
    plot_w, plot_h = width - left - right, height - top - bottom
    x_end, y_base = left + plot_w, top + plot_h
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" class="odometer-chart" role="img" aria-label="Odometer readings over time">',
        "<title>Odometer readings over time</title>",
    ]
    if not points:
        out.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{plot_w:.1f}" height="{plot_h:.1f}" fill="#f8fafc" '
                   f'stroke="{_GRID}"/>')
        out.append(_svg_text(left + plot_w / 2, top + plot_h / 2 + 4, "No odometer readings recorded",
                             size=12, anchor="middle"))
        out.append("</svg>")
        return "".join(out)

    times = [r["at_ms"] for r in points] + [c["at_ms"] for c in replacements]
    first_year, last_year = _utc(min(times)).year, _utc(max(times)).year + 1
    t0 = _ms(datetime(first_year, 1, 1, tzinfo=UTC))
    t1 = _ms(datetime(last_year, 1, 1, tzinfo=UTC))
    km_top, km_step = _km_axis(max([r["km"] for r in points] + [c["old_km"] for c in replacements]))

    def px(at_ms: int) -> float:
        return left + (at_ms - t0) / (t1 - t0) * plot_w

    def py(km: int) -> float:
        return y_base - km / km_top * plot_h

    # Grid and axes: horizontal km lines, vertical lines at each 1 January, labels thinned to about ten.
    for km in range(0, km_top + 1, km_step):
        y = py(km)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{x_end:.1f}" y2="{y:.1f}" stroke="{_GRID}" '
                   f'stroke-width="1"/>')
        out.append(_svg_text(left - 6, y + 3.5, f"{km:,}", anchor="end"))
    out.append(_svg_text(left - 6, top - 12, "km", anchor="end", fill=_INK, weight="bold"))
    span = last_year - first_year
    max_labels = min(10.0, plot_w / 40)  # a year label is ~25 px wide at 10 px type: keep them apart
    label_every = next((k for k in (1, 2, 5, 10, 20, 50, 100) if span / k <= max_labels), 1000)
    for year in range(first_year, last_year + 1):
        if span > 30 and year % label_every:
            continue
        x = px(_ms(datetime(year, 1, 1, tzinfo=UTC)))
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{y_base + 4:.1f}" stroke="{_GRID}" '
                   f'stroke-width="1"/>')
        if year % label_every == 0 or label_every == 1:
            out.append(_svg_text(x, y_base + 16, str(year), anchor="middle"))
    out.append(f'<line x1="{left:.1f}" y1="{y_base:.1f}" x2="{x_end:.1f}" y2="{y_base:.1f}" stroke="{_MUTED}" '
               f'stroke-width="1"/>')

    # Cluster replacements: a dashed vertical rule where the count restarted.
    for c in replacements:
        x = px(c["at_ms"])
        tip = f"{fmt_date(c['at_ms'])}: instrument cluster replaced, {fmt_km(c['old_km'])} → {fmt_km(c['new_km'])}"
        anchor, dx = ("end", -4) if x > left + plot_w * 0.75 else ("start", 4)
        out.append(f'<g class="cluster"><title>{escape(tip)}</title>'
                   f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{y_base:.1f}" stroke="{_CLUSTER}" '
                   f'stroke-width="1.5" stroke-dasharray="4 3"/>'
                   + _svg_text(x + dx, top + 10, "cluster replaced", size=9, anchor=anchor, fill=_CLUSTER)
                   + "</g>")

    # The line: one polyline (with a faint area under it) per segment of accepted readings.
    accepted = [r for r in points if not r["rejected"]]
    for seg in _segments(accepted, replacements):
        coords = " ".join(f"{px(r['at_ms']):.1f},{py(r['km']):.1f}" for r in seg)
        if len(seg) > 1:
            area = f"{coords} {px(seg[-1]['at_ms']):.1f},{y_base:.1f} {px(seg[0]['at_ms']):.1f},{y_base:.1f}"
            out.append(f'<polygon points="{area}" fill="{_LINE}" fill-opacity="0.08" stroke="none"/>')
            out.append(f'<polyline class="segment" points="{coords}" fill="none" stroke="{_LINE}" '
                       f'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"/>')

    # Marks last, so that they sit above lines: normal, then flagged, then refused on top of all.
    order = {"ok": 0, "flagged": 1, "rejected": 2}
    marks: list[tuple[int, str]] = []
    dot = max(1.2, min(3.0, plot_w / len(points) / 2))
    for r in points:
        kind = "rejected" if r["rejected"] else "flagged" if r["flagged"] else "ok"
        what = {"ok": "", "flagged": " (flagged)", "rejected": " (refused: rollback attempt)"}[kind]
        tip = f"{fmt_date(r['at_ms'])}: {fmt_km(r['km'])}, {r['source']}{what}"
        marks.append((order[kind], _marker(kind, px(r["at_ms"]), py(r["km"]), tip, dot)))
    out.extend(m for _, m in sorted(marks, key=lambda m: m[0]))

    out.append(_legend(legend_rows, x_end, 10))
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# QR code


def qr_svg(text: str) -> str:
    """The QR code of ``text`` as inline SVG (with its namespace, so it is also valid standalone XML).

    Error level M with segno's boost: the code is printed on paper that gets folded and photocopied. Sized by
    viewBox only; the stylesheet gives it a physical size. A white quiet zone is part of the image so that it
    scans even on a dark background.
    """
    qr = segno.make(text, error="m", micro=False)
    buff = io.BytesIO()
    qr.save(buff, kind="svg", xmldecl=False, svgns=True, omitsize=True, nl=False, border=4,
            dark=_INK, light="#ffffff", svgclass="qr", title=text)
    return buff.getvalue().decode("utf-8")


# --------------------------------------------------------------------------------------------------------------
# HTML and PDF


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    """One environment per process: templates are compiled once. Autoescape on for every template, whatever
    its extension, because every value comes from the ledger; StrictUndefined so a renamed view key fails
    loudly instead of printing an empty cell."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters: dict[str, Callable[..., str]] = {
        "date": fmt_date,
        "num": fmt_int,
        "km": fmt_km,
        "years": fmt_years,
        "kwh": fmt_kwh,
        "humanize": humanize,
        "or_dash": lambda v: "—" if v is None or v == "" else v,
        "status_label": lambda v: label(v, STATUS_LABELS),
        "brand_label": lambda v: label(v, BRAND_LABELS),
        "powertrain_label": lambda v: label(v, POWERTRAIN_LABELS),
    }
    env.filters.update(filters)
    return env


def _reading_rows(readings: list[dict[str, Any]], replacements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Readings in date order, each with the note its table row shows (and styles itself by)."""
    old = {(c["at_ms"], c["old_km"]) for c in replacements}
    new = {(c["at_ms"], c["new_km"]) for c in replacements}
    rows = []
    for r in _in_order(readings, replacements):
        key = (r["at_ms"], r["km"])
        note = ("refused" if r["rejected"] else "flagged" if r["flagged"] else "cluster-new" if key in new
                else "cluster-old" if key in old else "")
        rows.append({**r, "note": note})
    return rows


def _count(items: Iterable[Any]) -> int:
    return sum(1 for _ in items)


def _context(view: dict[str, Any]) -> dict[str, Any]:
    """Figures the template shows that are derived from the view (counts, merged history, chart, QR)."""
    report_hash = view["report_hash"]
    if not isinstance(report_hash, str) or not _HEX64.fullmatch(report_hash):
        raise ValueError("report_hash must be 64 lowercase hex characters")
    odo = view["odometer"]
    owners = view["owners"]["timeline"]
    total_days = sum(max(o["days"], 0) for o in owners)
    owner_bar = [
        {"n": o["n"], "pct": (max(o["days"], 0) / total_days * 100) if total_days else 100 / len(owners)}
        for o in owners
    ]
    history: list[dict[str, Any]] = [{"type": "service", **s} for s in view["services"]]
    history += [{"type": "inspection", **i} for i in view["inspections"]]
    history += [{"type": "parts", **p} for p in view.get("parts", [])]
    history.sort(key=lambda h: h["at_ms"])
    open_recalls = [r for r in view["recalls"] if r["status"] == "open"]
    other_recalls = [r for r in view["recalls"] if r["status"] != "open"]
    event_times = [e["at_ms"] for e in view["events"]]
    return {
        "v": view,
        "chart": Markup(odometer_chart_svg(odo["readings"], cluster_replacements=odo["cluster_replacements"])),
        # Phones get their own proportions rather than the A4 chart shrunk until its labels are unreadable.
        "chart_narrow": Markup(odometer_chart_svg(odo["readings"], 360, 260,
                                                  cluster_replacements=odo["cluster_replacements"])),
        "qr": Markup(qr_svg(QR_PREFIX + report_hash)),
        "qr_text": QR_PREFIX + report_hash,
        "readings": _reading_rows(odo["readings"], odo["cluster_replacements"]),
        "owner_bar": owner_bar,
        "history": history,
        "open_recalls": open_recalls,
        "other_recalls": other_recalls,
        "active_liens": _count(li for li in view["liens"] if li["released_ms"] is None),
        "airbag_accidents": _count(a for a in view["accidents"] if a["airbags_deployed"]),
        "as_of_ms": max(event_times) if event_times else None,
        "status_ok": view["status"] == "active",
    }


def render_vin_check(vin: str, summary: dict[str, Any] | None, error: str = "") -> str:
    """The public VIN check page (a form, and the summary when a VIN was given)."""
    return _env().get_template("vin_check.html").render(vin=vin, summary=summary, error=error)


def render_html(view: dict[str, Any]) -> str:
    """The full report as one self-contained HTML5 document (screen, phone and print)."""
    return _env().get_template("report.html").render(_context(view))


def _refuse_fetch(url: str, *args: Any, **kwargs: Any) -> NoReturn:
    """Fetcher for WeasyPrint releases before ``URLFetcher`` objects (< 66): a plain callable."""
    raise ValueError(f"external resource refused: {url[:80]}")


def _no_fetcher(weasyprint: Any) -> Any:
    """A WeasyPrint URL fetcher that fetches nothing. The report is self-contained, and a URL that somehow got
    into the page (it cannot, through autoescaping, but defence in depth) must not reach the network or disk."""
    fetcher_class = getattr(weasyprint, "URLFetcher", None)
    if fetcher_class is None:
        return _refuse_fetch
    return fetcher_class(allowed_protocols=(), fail_on_errors=False)


def render_pdf(view: dict[str, Any]) -> bytes:
    """The report as A4 PDF bytes, laid out by WeasyPrint from the same HTML (print stylesheet applies)."""
    import weasyprint  # deferred: loading Pango/cairo bindings costs time that HTML-only callers need not pay

    html = weasyprint.HTML(string=render_html(view), base_url=None, url_fetcher=_no_fetcher(weasyprint))
    pdf = html.write_pdf()
    assert pdf is not None  # write_pdf returns bytes when no target is given
    return bytes(pdf)
