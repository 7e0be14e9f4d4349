"""The parts and recall commands of the ``blokauto`` CLI against a live node, as a parts maker, a
carmaker and anybody holding a part use them: batch files (good and malformed), checks,
certificates verified offline, campaigns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from blokauto.client import Client
from blokauto.crypto.keystore import write_keystore
from blokauto.demo import DEMO_PASSWORD, demo_admin

BIN = [sys.executable, "-m", "blokauto.cli.main"]
ENV = {**os.environ, "BLOKAUTO_PASSWORD": DEMO_PASSWORD}
MAKER, CARMAKER = demo_admin("kestrel-parts"), demo_admin("nordwerk")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIN, *args], capture_output=True, text=True, env=ENV, timeout=180)


def test_part_commands(live_node: str, tmp_path: Path) -> None:
    maker_key, carmaker_key = tmp_path / "maker.json", tmp_path / "carmaker.json"
    write_keystore(maker_key, MAKER.signing_key, DEMO_PASSWORD, strength="interactive")
    write_keystore(carmaker_key, CARMAKER.signing_key, DEMO_PASSWORD, strength="interactive")
    with Client(live_node, MAKER) as maker:
        for number, extra in (("KP-PAD-1", {"category": "brakes"}),
                              ("KP-BAT-1", {"category": "battery", "battery": True})):
            assert maker.submit("part.define", {"part_number": number, "description": "test part",
                                                **extra})["status"] == "ok"
    common = ["--node", live_node, "--key", str(maker_key), "--plant", "Stuttgart", "--produced", "2026-10-01"]

    # a CSV of 25,000 serials: two batches, each under its own root
    csv_file = tmp_path / "pads.csv"
    csv_file.write_text("serial,note\n" + "".join(f"PAD-{i:06d},x\n" for i in range(25_000)))
    done = cli("part", "register", str(csv_file), "--part-number", "KP-PAD-1", "--lot", "L1", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("batch ") == 2 and "registered 25,000 parts of KP-PAD-1 lot L1" in done.stdout

    # malformed files are refused before anything is sent, naming the line
    for content, expected in (
        ("part,note\nA-1,x\n", ":1: the header needs a \"serial\" column"),
        ("serial\nB-1\nB-2\nB-1\n", ":4: serial B-1 repeats (first at:2)"),
        ("serial\nC-1\nbad serial\n", ":3: bad serial 'bad serial'"),
        ("serial\n", "no serials"),
    ):
        bad_file = tmp_path / "bad.csv"
        bad_file.write_text(content)
        refused = cli("part", "register", str(bad_file), "--part-number", "KP-PAD-1", "--lot", "L2", *common)
        assert refused.returncode == 1 and "bad_batch_file" in refused.stderr and expected in refused.stderr, \
            refused.stderr
    again = cli("part", "register", str(csv_file), "--part-number", "KP-PAD-1", "--lot", "L9", *common)
    assert again.returncode == 1 and "serial_registered" in again.stderr + again.stdout
    bad_date = cli("part", "register", str(csv_file), "--part-number", "KP-PAD-1", "--lot", "L9", "--node",
                   live_node, "--key", str(maker_key), "--plant", "S", "--produced", "1st of May")
    assert bad_date.returncode == 1 and "bad_date" in bad_date.stderr

    # batteries from JSON, with their passports
    battery = {"serials": ["BAT-1", "BAT-2"], "passports": [
        {"chemistry": "LFP", "rated_capacity_wh": 60_000, "carbon_g_per_kwh": 55_000, "soh_permille": 1000}] * 2}
    json_file = tmp_path / "packs.json"
    json_file.write_text(json.dumps(battery))
    packs = cli("part", "register", str(json_file), "--part-number", "KP-BAT-1", "--lot", "B1", *common)
    assert packs.returncode == 0, packs.stderr

    # anybody checks a serial; a serial nobody registered exits 3
    genuine = cli("part", "check", "PAD-024999", "--node", live_node)
    assert genuine.returncode == 0 and "GENUINE PAD-024999: KP-PAD-1" in genuine.stdout, genuine.stdout
    fake = cli("part", "check", "PAD-999999", "--node", live_node)
    assert fake.returncode == 3 and "NOT REGISTERED" in fake.stdout
    assert cli("part", "check", "bad/serial", "--node", live_node).returncode == 1

    # a certificate verifies offline; a changed byte does not
    cert = tmp_path / "cert.json"
    made = cli("part", "certificate", "BAT-2", "--key", str(carmaker_key), "--node", live_node, "--out", str(cert))
    assert made.returncode == 0, made.stderr
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(Client(live_node).checkpoint_keys()[0]) + "\n")
    valid = cli("part", "verify", str(cert), "--keys", str(keys))
    assert valid.returncode == 0 and "VALID BAT-2: KP-BAT-1 lot B1 registered by kestrel-parts" in valid.stdout
    doc = json.loads(cert.read_text())
    doc["leaf"]["battery"]["soh_permille"] = 999
    cert.write_text(json.dumps(doc))
    invalid = cli("part", "verify", str(cert), "--keys", str(keys))
    assert invalid.returncode == 3 and "INVALID" in invalid.stderr

    # campaigns: figures for anyone, the vehicle list needs a key
    with Client(live_node, CARMAKER) as carmaker:
        receipt = carmaker.submit("recall.open", {"campaign": "T-1", "title": "Pads", "remedy": "Replace",
                                                  "parts": [{"part_number": "KP-PAD-1", "lots": ["L1"]}]})
        assert receipt["status"] == "ok"
    listed = cli("recall", "list", "--node", live_node)
    assert listed.returncode == 0 and "T-1 [open] Pads: 0 affected, 0 remedied (0.0%)" in listed.stdout
    assert "token_required" in cli("recall", "show", "T-1", "--vehicles", "--node", live_node).stderr
    shown = cli("recall", "show", "T-1", "--vehicles", "--key", str(carmaker_key), "--node", live_node)
    assert shown.returncode == 0 and json.loads(shown.stdout)["vehicles"] == []
