"""The report page in a real browser (Debian's Chromium through Playwright), opened the way a buyer
opens it: from the owner's share link, served by a real node over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import sync_playwright

from blokauto.api.app import create_app
from blokauto.client import Client
from blokauto.demo import OPERATOR_ORG, demo_admin, demo_genesis, demo_node_key
from blokauto.node import Node, init_ledger
from tests.test_vehicle_api import DEVICE, OWNER, VIN

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DAY = 86_400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[str]:
    data = tmp_path / "node"
    init_ledger(data, demo_genesis(), OPERATOR_ORG, demo_node_key(OPERATOR_ORG).signing_key)
    port = free_port()
    with Node(data) as node:
        server = uvicorn.Server(uvicorn.Config(create_app(node), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "the node did not start serving"
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


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
            # the PDF of the same report
            pdf = page.request.get(link + "?format=pdf")
            assert pdf.status == 200 and pdf.body().startswith(b"%PDF")
        finally:
            browser.close()
