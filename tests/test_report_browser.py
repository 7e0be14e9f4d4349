"""The report page in a real browser (Debian's Chromium through Playwright), opened the way a buyer
opens it: from the owner's share link, served by a real node over HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from blokauto.client import Client
from blokauto.demo import demo_admin
from tests.test_vehicle_api import DEVICE, OWNER, VIN

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DAY = 86_400_000


def ok(receipt: dict[str, Any]) -> None:
    assert receipt["status"] == "ok", receipt


def test_buyer_opens_the_shared_report(live_node: str, tmp_path: Path) -> None:
    start = int(time.time() * 1000) - 5 * 365 * DAY
    with Client(live_node, demo_admin("nordwerk")) as maker, Client(live_node, demo_admin("autohaus-lenz")) as dealer, \
            Client(live_node, demo_admin("werkstatt-berg")) as shop, Client(live_node, OWNER) as owner, \
            Client(live_node, demo_admin("alpina-insurance")) as insurer:
        ok(maker.submit("vehicle.register", {"vin": VIN, "model": "320d <script>alert(1)</script>", "year": 2019,
                                              "powertrain": "ice", "device_key": DEVICE.did, "at_ms": start}))
        ok(dealer.submit("title.first_sale", {"vin": VIN, "owner": OWNER.did, "odometer_km": 10, "at_ms": start + DAY},
                         cosigners=[OWNER]))
        for year in range(1, 5):
            ok(shop.submit("vehicle.service", {"vin": VIN, "odometer_km": 17_000 * year,
                                               "at_ms": start + year * 365 * DAY, "operations": ["oil change"]}))
        assert shop.submit("vehicle.service", {"vin": VIN, "odometer_km": 9_000, "at_ms": start + 4 * 365 * DAY + 1,
                                               "operations": ["oil change"]})["code"] == "odometer_rollback"
        ok(insurer.submit("vehicle.accident", {"vin": VIN, "severity": "severe", "areas": ["front"],
                                               "airbags_deployed": True, "at_ms": start + 4 * 365 * DAY + 2}))
        link = owner.share_link(VIN, valid_ms=2 * DAY)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            response = page.goto(link)
            assert response is not None and response.status == 200
            text = page.inner_text("body")
            assert VIN in text
            assert "<script>alert(1)</script>" in text     # shown as text, never run
            assert dialogs == []
            assert "Owner 1" in text
            assert page.locator("svg").count() >= 2        # the odometer chart and the QR code
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert (tmp_path / "report.png").stat().st_size > 10_000
            # the public VIN check page, as a buyer types the VIN on a phone (lower case)
            page.goto(live_node + "/")
            page.click("text=VIN check")
            page.fill("input[name=vin]", VIN.lower())
            page.click("button[type=submit]")
            assert page.inner_text("#accidents") == "1"
            assert page.inner_text("#odometer").strip().lower() == "consistent"
            assert "owner" not in page.inner_text("#vehicle").lower()
            # the PDF of the same report
            pdf = page.request.get(link + "?format=pdf")
            assert pdf.status == 200 and pdf.body().startswith(b"%PDF")
        finally:
            browser.close()
