"""The vehicle commands of the ``blokauto`` CLI against a live node, as a buyer and an owner use them:
VIN check, share link, report download in three formats, offline check of the bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from blokauto.client import Client
from blokauto.demo import DEMO_PASSWORD, demo_admin
from blokauto.vin import with_check_digit
from tests.test_vehicle_api import DEVICE, OWNER

BIN = [sys.executable, "-m", "blokauto.cli.main"]
ENV = {**os.environ, "BLOKAUTO_PASSWORD": DEMO_PASSWORD}
VIN = with_check_digit("1HGCM82603A004352")     # a North-American Honda: the check digit is enforced
DAY = 86_400_000


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIN, *args], capture_output=True, text=True, env=ENV, timeout=120)


def test_vehicle_commands(live_node: str, tmp_path: Path) -> None:
    start = int(time.time() * 1000) - 3 * 365 * DAY
    with Client(live_node, demo_admin("nordwerk")) as maker, Client(live_node, OWNER) as owner, \
            Client(live_node, demo_admin("autohaus-lenz")) as dealer, Client(live_node, DEVICE) as device:
        assert maker.submit("vehicle.register", {"vin": VIN, "model": "Accord", "year": 2003, "powertrain": "ice",
                                                 "device_key": DEVICE.did, "at_ms": start})["status"] == "ok"
        assert dealer.submit("title.first_sale", {"vin": VIN, "owner": OWNER.did, "odometer_km": 5, "at_ms": start},
                             cosigners=[OWNER])["status"] == "ok"
        assert device.submit("vehicle.odometer", {"vin": VIN, "odometer_km": 42_000})["status"] == "ok"
        link = owner.share_link(VIN, valid_ms=DAY)

    check = cli("vin-check", VIN.lower(), "--node", live_node)
    assert check.returncode == 0, check.stderr
    summary = json.loads(check.stdout)
    assert summary["registered"] is True and summary["maker"] == "Honda" and summary["odometer"] == "consistent"
    bad = cli("vin-check", VIN[:8] + ("0" if VIN[8] != "0" else "1") + VIN[9:], "--node", live_node)
    assert bad.returncode == 1 and "bad_vin" in bad.stderr
    unknown = cli("vin-check", with_check_digit("1HGCM82603A999999"), "--node", live_node)
    assert unknown.returncode == 1 and "unknown_vehicle" in unknown.stderr

    bundle, page, pdf = tmp_path / "r.json", tmp_path / "r.html", tmp_path / "r.pdf"
    for fmt, path in (("json", bundle), ("html", page), ("pdf", pdf)):
        result = cli("report", VIN, "--node", live_node, "--share", link, "--format", fmt, "--out", str(path))
        assert result.returncode == 0, result.stderr
    assert json.loads(bundle.read_text())["vin"] == VIN
    assert VIN in page.read_text() and pdf.read_bytes().startswith(b"%PDF")
    denied = cli("report", VIN, "--node", live_node)
    assert denied.returncode == 1 and "token_required" in denied.stderr

    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(Client(live_node).checkpoint_keys()[0]) + "\n")
    good = cli("check-report", str(bundle), "--keys", str(keys))
    assert good.returncode == 0 and "VALID" in good.stdout and "3 events" in good.stdout, good.stdout + good.stderr
    tampered = json.loads(bundle.read_text())
    tampered["state"]["value"]["odometer_km"] = 4_000
    bundle.write_text(json.dumps(tampered))
    bad_report = cli("check-report", str(bundle), "--keys", str(keys))
    assert bad_report.returncode == 3 and "state" in bad_report.stderr

    shared = cli("share", VIN, "--key", str(tmp_path / "missing.json"), "--node", live_node)
    assert shared.returncode == 1
