"""Report rendering: the HTML and PDF show every section from a realistic view, hostile ledger strings stay
text, the odometer chart and QR code are well-formed for any number of readings, and WeasyPrint lays the
page out without a single warning (an unsupported CSS property would silently change the PDF)."""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest
import segno

from blokauto.reports.render import QR_PREFIX, odometer_chart_svg, qr_svg, render_html, render_pdf

SVG_NS = "{http://www.w3.org/2000/svg}"
DAY_MS = 86_400_000
HOSTILE = '<script>alert("x")</script>'


def ms(y: int, m: int, d: int, hh: int = 10) -> int:
    return int(datetime(y, m, d, hh, tzinfo=UTC).timestamp()) * 1000


def tx(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def sample_view() -> dict[str, Any]:
    """A 2016 e-Golf over eight years: 3 owners, 12 services, 4 inspections, a flagged reading, a refused
    rollback, an instrument cluster replacement (count restarts at 0), a severe accident, salvage."""
    services = [
        (ms(2016, 11, 2), 14_850, ["annual_service", "cabin_filter"], ["1K0-819-644-B"]),
        (ms(2017, 6, 20), 27_400, ["tyre_change"], []),
        (ms(2017, 12, 5), 38_120, ["annual_service"], ["5Q0-819-653"]),
        (ms(2018, 7, 14), 49_900, ["brake_fluid"], ["B000750M3"]),
        (ms(2019, 1, 22), 58_760, ["annual_service", "wiper_blades"], []),
        (ms(2019, 9, 3), 66_010, ["tyre_change"], []),
        (ms(2020, 8, 17), 77_300, ["annual_service", "12v_battery"], ["5QE-915-105"]),
        (ms(2021, 5, 11), 83_950, ["brake_discs", "brake_pads"], ["5Q0-615-301-F", "5Q0-698-151-AD"]),
        (ms(2022, 4, 6), 9_830, ["annual_service"], []),
        (ms(2022, 11, 29), 17_650, ["tyre_change"], []),
        (ms(2023, 6, 8), 26_400, ["front_bumper", "headlight_left", "airbag_module"], ["5GE-807-221"]),
        (ms(2024, 3, 19), 33_180, ["annual_service"], []),
    ]
    inspections = [
        (ms(2019, 3, 12), 60_200, True, []),
        (ms(2021, 3, 2), 82_700, False, ["brake_discs", "headlight_alignment"]),
        (ms(2021, 4, 9), 83_100, True, []),
        (ms(2023, 3, 1), 24_900, True, []),
    ]
    readings: list[dict[str, Any]] = [
        {"at_ms": ms(2016, 3, 15), "km": 12, "source": "maker.vw", "flagged": False, "rejected": False},
    ]
    readings += [
        {"at_ms": at, "km": km, "source": "garage.autohaus-nord", "flagged": False, "rejected": False}
        for at, km, *_ in services
    ]
    readings += [
        {"at_ms": at, "km": km, "source": "inspect.tuev-sued", "flagged": False, "rejected": False}
        for at, km, *_ in inspections
    ]
    readings += [
        {"at_ms": ms(2018, 2, 1), "km": 45_300, "source": "fleet.telematics", "flagged": True, "rejected": False},
        {"at_ms": ms(2020, 5, 20), "km": 41_000, "source": "garage.quick-fix", "flagged": False, "rejected": True},
        # a cluster replacement lists the old cluster's last figure and the new one at the same instant
        {"at_ms": ms(2021, 9, 10), "km": 84_200, "source": "cluster_replaced", "flagged": False, "rejected": False},
        {"at_ms": ms(2021, 9, 10), "km": 0, "source": "cluster_replaced", "flagged": False, "rejected": False},
    ]
    readings.sort(key=lambda r: r["at_ms"])
    events = [
        {"seq": i, "at_ms": r["at_ms"], "kind": "odometer.record", "org": r["source"], "tx": tx(f"r{i}"),
         "height": 100 + i * 37}
        for i, r in enumerate(readings)
    ]
    events.insert(0, {"seq": -1, "at_ms": ms(2016, 3, 15, 9), "kind": "vehicle.register", "org": "maker.vw",
                      "tx": tx("reg"), "height": 99})
    events.append({"seq": 999, "at_ms": ms(2023, 2, 2), "kind": "title.brand", "org": None, "tx": tx("brand"),
                   "height": 9_100})
    owner_periods = [(ms(2016, 3, 15), ms(2019, 6, 1)), (ms(2019, 6, 1), ms(2022, 2, 10)), (ms(2022, 2, 10), None)]
    as_of = ms(2024, 5, 1)
    return {
        "vin": "WVWZZZAUZGW912345",
        "maker": "Volkswagen",
        "model": "e-Golf",
        "year": 2016,
        "powertrain": "bev",
        "battery": {"chemistry": "NMC", "capacity_wh": 35_800},
        "country": "DE",
        "region": "Bayern",
        "status": "salvage",
        "brands": ["stolen_recovered", "salvage"],
        "registered_ms": ms(2016, 3, 15),
        "manufacturer": "maker.vw",
        "odometer": {
            "last_km": 33_180,
            "flagged": True,
            "rollback_attempts": 1,
            "readings": readings,
            "cluster_replacements": [{"at_ms": ms(2021, 9, 10), "old_km": 84_200, "new_km": 0}],
        },
        "owners": {
            "count": 3,
            "timeline": [
                {"n": n, "from_ms": a, "to_ms": b, "days": ((b or as_of) - a) // DAY_MS}
                for n, (a, b) in enumerate(owner_periods, start=1)
            ],
        },
        "liens": [
            {"lender": "bank.vw-financial", "since_ms": ms(2016, 3, 15), "released_ms": ms(2019, 5, 30)},
            {"lender": "bank.sparkasse-muc", "since_ms": ms(2022, 2, 10), "released_ms": None},
        ],
        "accidents": [
            {"at_ms": ms(2023, 1, 14), "severity": "severe", "areas": ["front", "front_left"],
             "airbags_deployed": True, "org": "insurer.allianz-de"},
        ],
        "services": [
            {"at_ms": at, "km": km, "operations": ops, "parts": parts, "org": "garage.autohaus-nord"}
            for at, km, ops, parts in services
        ],
        "inspections": [
            {"at_ms": at, "km": km, "passed": ok, "failed_items": failed, "items": 42, "org": "inspect.tuev-sued"}
            for at, km, ok, failed in inspections
        ],
        "recalls": [
            {"campaign": "93R7", "title": "High-voltage battery module insulation", "status": "open"},
            {"campaign": "69BF", "title": "Charging flap actuator software", "status": "remedied"},
        ],
        "events": events,
        "evidence": [
            {"at_ms": ms(2020, 5, 20), "kind": "odometer.record", "code": "odometer_rollback",
             "message": "41000 km is below the recorded 66010 km", "tx": tx("rollback")},
        ],
        "checkpoint": {"origin": "blokauto.eu/ledger/main", "size": 128_441, "height": 9_212,
                       "signers": ["authority.kba", "insurer.allianz-de", "maker.vw"]},
        "report_hash": tx("report"),
    }


def empty_view() -> dict[str, Any]:
    """Everything a freshly registered vehicle lacks: no readings, owners, history; unknown last km."""
    v = sample_view()
    v.update(status="active", brands=[], battery=None, powertrain="ice", liens=[], accidents=[], services=[],
             inspections=[], recalls=[], events=[], evidence=[])
    v["odometer"] = {"last_km": None, "flagged": False, "rollback_attempts": 0, "readings": [],
                     "cluster_replacements": []}
    v["owners"] = {"count": 0, "timeline": []}
    v["checkpoint"] = {"origin": "blokauto.eu/ledger/main", "size": 1, "height": 1, "signers": []}
    return v


def chart_of(html: str) -> str:
    m = re.search(r'<svg[^>]*class="odometer-chart".*?</svg>', html, re.S)
    assert m, "odometer chart missing"
    return m.group(0)


def svg_root(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    return root


def marks(svg: str) -> list[str]:
    return re.findall(r'<g class="pt (\w+)"', svg)


def qr_modules(svg: str) -> set[tuple[int, int]]:
    """Dark modules (row, col) read back from segno's path: 'M x y' then relative 'h n' runs and 'm dx dy' moves,
    each run drawn as a stroke centred on row y - 0.5."""
    path = svg_root(svg).find(f"{SVG_NS}path[@class='qrline']")
    assert path is not None
    x = y = 0.0
    dark: set[tuple[int, int]] = set()
    for cmd, a, b in re.findall(r"([MmHh])\s*(-?[\d.]+)(?:[\s,]+(-?[\d.]+))?", path.attrib["d"]):
        if cmd == "M":
            x, y = float(a), float(b)
        elif cmd == "m":
            x, y = x + float(a), y + float(b)
        else:
            n = float(a) if cmd == "h" else float(a) - x
            dark.update((int(y), int(x) + i) for i in range(int(n)))
            x += n
    return dark


# ------------------------------------------------------------------------------------------------ HTML


def test_html_has_every_section_and_the_figures() -> None:
    v = sample_view()
    html = render_html(v)
    for section in ("status", "vehicle", "odometer", "ownership", "accidents", "liens", "history", "recalls",
                    "evidence", "verification", "events"):
        assert f'<section id="{section}"' in html, section
    assert re.search(r'data-figure="owners"><span class="value">3</span>', html)
    assert re.search(r'data-figure="accidents"><span class="value">1</span>', html)
    assert re.search(r'data-figure="rollbacks"><span class="value">1</span>', html)
    assert re.search(r'data-figure="services"><span class="value">12</span>', html)
    assert re.search(r'data-figure="odometer"><span class="value">33,180</span>', html)
    # identity
    for text in ("WVWZZZAUZGW912345", "Volkswagen", "e-Golf", "2016", "Battery electric (BEV)", "35.8 kWh", "NMC",
                 "Bayern", "maker.vw"):
        assert text in html, text
    # title brands shown as warnings, status prominent
    assert 'class="banner danger" data-status="salvage"' in html
    assert "Status: Salvage" in html
    assert 'data-brand="salvage">Salvage title<' in html
    assert 'data-brand="stolen_recovered">Stolen, recovered<' in html
    # dates and km
    assert "2016-03-15" in html and "2024-03-19" in html
    assert "33,180 km" in html and "84,200 km" in html
    assert "128,441" in html and "9,212" in html
    # ownership: anonymous, with start, end (or present) and duration in days and years
    for n in (1, 2, 3):
        assert f"<b>Owner {n}</b>" in html
    assert "2019-06-01" in html and "2022-02-10" in html and "present" in html
    days = v["owners"]["timeline"][0]["days"]
    assert f"{days:,} days" in html and f"{days / 365.25:.1f} years" in html
    # accident, liens, history, recalls, evidence
    assert "2023-01-14" in html and "Severe" in html and "Front left" in html and "Deployed" in html
    assert "insurer.allianz-de" in html
    assert "bank.sparkasse-muc" in html and ">Active<" in html
    assert "Inspection · fail" in html and "Headlight alignment" in html and "42 items checked" in html
    assert "Brake discs, Brake pads" in html and "5Q0-615-301-F" in html
    assert "93R7" in html and "No open recalls recorded" not in html
    assert "odometer_rollback" in html and "41000 km is below the recorded 66010 km" in html
    assert "instrument cluster replaced" in html.lower()
    assert html.count('<tr class="cluster-old">') == html.count('<tr class="cluster-new">') == 1
    assert html.count('<tr class="refused">') == 2  # the refused reading, and its evidence row
    # verification block
    assert "blokauto.eu/ledger/main" in html
    for signer in v["checkpoint"]["signers"]:
        assert f'<li class="mono">{signer}</li>' in html
    assert v["report_hash"] in html


def test_html_chart_has_one_mark_per_reading_and_breaks_at_the_cluster_replacement() -> None:
    v = sample_view()
    chart = chart_of(render_html(v))
    svg_root(chart)
    kinds = marks(chart)
    assert len(kinds) == len(v["odometer"]["readings"]) == 21
    assert kinds.count("rejected") == 1 and kinds.count("flagged") == 1
    assert chart.count('<polyline class="segment"') == 2
    assert chart.count('<g class="cluster">') == 1
    for year in range(2016, 2025):
        assert f">{year}</text>" in chart
    charts = re.findall(r'<svg[^>]*class="odometer-chart".*?</svg>', render_html(v), re.S)
    assert len(charts) == 2  # A4/desktop proportions, and a narrow one the phone stylesheet swaps in
    assert marks(charts[1]) == kinds and charts[1].count('<polyline class="segment"') == 2


def test_html_embeds_qr_of_report_hash_and_fetches_nothing() -> None:
    v = sample_view()
    html = render_html(v)
    text = f"blokauto:report:sha256:{v['report_hash']}"
    assert QR_PREFIX + v["report_hash"] == text
    assert qr_svg(text) in html
    assert not re.search(r"\b(?:src|href)\s*=", html)
    assert "url(" not in html and "@import" not in html and "<script" not in html
    assert '<meta name="viewport"' in html and "@page" in html and "size: A4" in html


def test_hostile_strings_are_escaped_everywhere() -> None:
    v = sample_view()
    v["model"] = HOSTILE
    v["maker"] = '"><img src=x onerror=alert(1)>'
    v["brands"] = ["salvage", "<b>x</b>"]
    v["accidents"][0]["areas"] = ["</td><script>bad()</script>"]
    v["odometer"]["readings"][3]["source"] = HOSTILE
    v["recalls"][0]["title"] = "{{ 7*7 }}"
    v["evidence"][0]["message"] = "<iframe src=//evil>"
    v["checkpoint"]["signers"] = ['x" onmouseover="alert(1)']
    html = render_html(v)
    assert "<script" not in html and "<img" not in html and "<iframe" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "{{ 7*7 }}" in html  # data is not a template
    assert 'onmouseover="' not in html
    svg_root(chart_of(html))  # the tooltip text inside the chart is escaped too: still well-formed XML


def test_no_open_recalls_and_empty_view() -> None:
    v = empty_view()
    html = render_html(v)
    assert "No open recalls recorded" in html
    assert "No accidents recorded" in html and "No liens recorded" in html
    assert "No services, inspections or part changes recorded" in html and "No ownership recorded" in html
    assert "No title brands recorded" in html and 'class="banner ok"' in html
    assert "No odometer readings recorded" in chart_of(html)
    assert re.search(r'data-figure="odometer"><span class="value">—</span>', html)
    remedied = sample_view()
    remedied["recalls"] = [{"campaign": "69BF", "title": "Charging flap", "status": "remedied"}]
    assert "No open recalls recorded" in render_html(remedied)


def test_bad_report_hash_is_refused() -> None:
    v = sample_view()
    v["report_hash"] = "zz" * 32
    with pytest.raises(ValueError, match="report_hash"):
        render_html(v)


def test_dates_are_utc_days() -> None:
    v = sample_view()
    v["registered_ms"] = ms(2020, 2, 29, 23) + 59 * 60_000  # 23:59 UTC on a leap day
    v["accidents"][0]["at_ms"] = ms(2021, 1, 1, 0)
    html = render_html(v)
    assert "2020-02-29" in html and "2021-01-01" in html


# ------------------------------------------------------------------------------------------------ chart


def test_chart_without_readings() -> None:
    svg = odometer_chart_svg([])
    root = svg_root(svg)
    assert root.attrib["viewBox"] == "0 0 640 220"
    assert marks(svg) == [] and "<polyline" not in svg
    assert "No odometer readings recorded" in svg


def test_chart_with_one_reading() -> None:
    svg = odometer_chart_svg([{"at_ms": ms(2020, 6, 1), "km": 0, "source": "maker", "flagged": False,
                               "rejected": False}])
    svg_root(svg)
    assert marks(svg) == ["ok"]
    assert "<polyline" not in svg  # one point is a mark, not a line
    assert ">2020</text>" in svg and ">2021</text>" in svg


def test_chart_with_many_readings_stays_inside_the_frame() -> None:
    start = ms(1995, 1, 1)
    readings = [
        {"at_ms": start + i * 55 * DAY_MS, "km": i * 1_234, "source": "s", "flagged": i % 50 == 7,
         "rejected": i % 70 == 3}
        for i in range(200)
    ]
    svg = odometer_chart_svg(readings, width=800, height=300)
    root = svg_root(svg)
    assert len(marks(svg)) == 200
    polylines = root.findall(f"{SVG_NS}polyline")
    assert len(polylines) == 1
    pts = [tuple(map(float, p.split(","))) for p in polylines[0].attrib["points"].split()]
    assert len(pts) == 200 - sum(r["rejected"] for r in readings)
    assert all(0 <= x <= 800 and 0 <= y <= 300 for x, y in pts)
    assert [x for x, _ in pts] == sorted(x for x, _ in pts)
    assert [y for _, y in pts] == sorted((y for _, y in pts), reverse=True)  # km up, SVG y down
    year_labels = re.findall(r">(\d{4})</text>", svg)
    assert 2 <= len(year_labels) <= 11
    assert ">250,000</text>" in svg  # axis top just above the highest reading, with thousands separators


def test_chart_breaks_on_a_drop_even_without_replacement_record() -> None:
    base = ms(2019, 1, 1)
    readings = [{"at_ms": base + i * 90 * DAY_MS, "km": km, "source": "s", "flagged": False, "rejected": False}
                for i, km in enumerate([100, 5_000, 9_000, 20, 3_000])]
    svg = odometer_chart_svg(readings)
    assert svg.count("<polyline") == 2
    replaced = odometer_chart_svg(readings[:3], cluster_replacements=[{"at_ms": base + DAY_MS, "old_km": 200,
                                                                       "new_km": 4_000}])
    assert replaced.count("<polyline") == 1 and replaced.count('<g class="cluster">') == 1


def test_chart_break_at_a_replacement_listed_with_its_old_and_new_figures() -> None:
    """The view lists the old cluster's last figure and the new one at the replacement's instant: the old figure
    ends the first segment, the new one starts the second, even when a used cluster reads higher."""
    base, swap = ms(2019, 1, 1), ms(2020, 1, 1)
    for old_km, new_km in ((50_000, 0), (50_000, 120_000)):
        readings = [
            {"at_ms": base, "km": 40_000, "source": "s", "flagged": False, "rejected": False},
            {"at_ms": swap, "km": old_km, "source": "cluster_replaced", "flagged": False, "rejected": False},
            {"at_ms": swap, "km": new_km, "source": "cluster_replaced", "flagged": False, "rejected": False},
            {"at_ms": swap + 90 * DAY_MS, "km": new_km + 3_000, "source": "s", "flagged": False, "rejected": False},
        ]
        swapped = [readings[0], readings[2], readings[1], readings[3]]  # new figure listed first: same chart
        for order in (readings, swapped):
            svg = odometer_chart_svg(order, cluster_replacements=[{"at_ms": swap, "old_km": old_km,
                                                                   "new_km": new_km}])
            segments = svg_root(svg).findall(f"{SVG_NS}polyline")
            assert [len(p.attrib["points"].split()) for p in segments] == [2, 2]


# ------------------------------------------------------------------------------------------------ QR


def test_qr_svg_is_segno_qr_of_exact_text() -> None:
    text = QR_PREFIX + tx("report")
    svg = qr_svg(text)
    root = svg_root(svg)
    qr = segno.make(text, error="m", micro=False)
    size = qr.symbol_size(border=4)[0]
    assert root.attrib["viewBox"] == f"0 0 {size} {size}"
    expected = {(r + 4, c + 4) for r, row in enumerate(qr.matrix) for c, bit in enumerate(row) if bit}
    assert qr_modules(svg) == expected
    assert qr_modules(qr_svg(text[:-1] + "0")) != expected
    hostile = svg_root(qr_svg(HOSTILE))  # the text is also the SVG <title>: escaped
    assert hostile.find(f"{SVG_NS}title").text == HOSTILE  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ PDF


def test_pdf_renders_without_weasyprint_warnings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        pdf = render_pdf(sample_view())
        empty = render_pdf(empty_view())
    # Font subsetting through fontTools instead of libharfbuzz-subset is about the machine, not the report.
    problems = [r.getMessage() for r in caplog.records
                if r.name.startswith("weasyprint") and "HarfBuzz-Subset" not in r.getMessage()]
    assert problems == []
    for doc in (pdf, empty):
        assert doc.startswith(b"%PDF-") and doc.rstrip().endswith(b"%%EOF")
    assert len(pdf) > 10_000


def test_pdf_is_a4_and_paginates() -> None:
    weasyprint = pytest.importorskip("weasyprint")
    doc = weasyprint.HTML(string=render_html(sample_view())).render()
    assert len(doc.pages) >= 2
    page = doc.pages[0]
    assert (round(page.width * 25.4 / 96), round(page.height * 25.4 / 96)) == (210, 297)


def test_view_is_not_modified() -> None:
    v = sample_view()
    before = copy.deepcopy(v)
    render_html(v)
    assert v == before


def test_templates_ship_with_the_package() -> None:
    templates = resources.files("blokauto.reports") / "templates"
    assert (templates / "report.html").is_file() and (templates / "report.css").is_file()
