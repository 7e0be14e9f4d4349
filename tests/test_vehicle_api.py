"""Vehicle reads through the HTTP API and the SDK, the way a buyer, an owner and members use them:
the public VIN check, listings, the proven history report, who may read it, share links, and the
offline check of a report bundle (including tampered ones)."""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from blokauto.cli.main import app as cli_app
from blokauto.crypto.keys import Signer
from blokauto.errors import BlokError, VerificationError
from blokauto.ledger.proofs import verify_state_proof_object
from blokauto.reports.bundle import verify_bundle
from blokauto.reports.history import build_view
from blokauto.reports.share import make_share_token
from tests.conftest import PROBLEM, Env, demo_admin

VIN = "WBA3A5C51CF256985"
OTHER_VIN = "VF1RFB00X56789012"
UNKNOWN_VIN = "WVWZZZ1JZXW000001"
DAY = 86_400_000
OWNER = Signer.deterministic("tests/api/owner")
BUYER = Signer.deterministic("tests/api/buyer")
DEVICE = Signer.deterministic("tests/api/device")
DEVICE2 = Signer.deterministic("tests/api/device2")


def now_ms() -> int:
    return int(time.time() * 1000)


def ok(receipt: dict[str, Any]) -> dict[str, Any]:
    assert receipt["status"] == "ok", receipt
    return receipt


def build_history(env: Env) -> dict[str, Any]:
    """A BMW with six years of life: sale, services, a refused rollback, a lien, insurance, an accident."""
    start = now_ms() - 6 * 365 * DAY
    maker, dealer = env.client(demo_admin("nordwerk")), env.client(demo_admin("autohaus-lenz"))
    shop, bank = env.client(demo_admin("werkstatt-berg")), env.client(demo_admin("hanse-bank"))
    insurer, owner = env.client(demo_admin("alpina-insurance")), env.client(OWNER)
    ok(maker.submit("vehicle.register", {"vin": VIN, "model": "320d Touring", "year": 2019, "powertrain": "ice",
                                          "device_key": DEVICE.did, "at_ms": start}))
    ok(maker.submit("vehicle.register", {"vin": OTHER_VIN, "model": "Zoe", "year": 2020, "powertrain": "bev",
                                          "device_key": DEVICE2.did, "at_ms": start,
                                          "battery": {"chemistry": "NMC", "capacity_wh": 52000}}))
    ok(dealer.submit("title.first_sale", {"vin": VIN, "owner": OWNER.did, "odometer_km": 15, "at_ms": start + DAY},
                     cosigners=[OWNER]))
    for year in range(1, 5):
        ok(shop.submit("vehicle.service", {"vin": VIN, "odometer_km": 18_000 * year, "at_ms": start + year * 365 * DAY,
                                           "operations": ["oil and filter change"],
                                           "parts": [{"part_number": "11428575211"}]}))
    fraud = shop.submit("vehicle.service", {"vin": VIN, "odometer_km": 40_000, "at_ms": start + 4 * 365 * DAY + DAY,
                                            "operations": ["inspection"]})
    assert fraud["code"] == "odometer_rollback"
    lien = ok(bank.submit("lien.record", {"vin": VIN, "reference": "loan-77"}, cosigners=[OWNER]))
    ok(insurer.submit("vehicle.insure", {"vin": VIN}, cosigners=[OWNER]))
    ok(insurer.submit("vehicle.accident", {"vin": VIN, "severity": "moderate", "areas": ["front", "left"],
                                           "odometer_km": 80_000}))
    return {"maker": maker, "owner": owner, "shop": shop, "bank": bank, "lien": lien["tx"], "fraud": fraud["tx"]}


@pytest.fixture
def history(env: Env) -> dict[str, Any]:
    return build_history(env)


def problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == code, response.json()


def test_public_summary(env: Env, history: dict[str, Any]) -> None:
    summary = env.tc.get(f"/v1/vehicles/{VIN}/summary").json()
    assert summary == {
        "vin": VIN, "registered": True, "maker": "BMW", "model": "320d Touring", "year": 2019, "powertrain": "ice",
        "status": "active", "stolen": False, "title_brands": [], "odometer": "consistent", "accidents": 1,
        "owners": 1, "lien": True, "events": 9, "open_recalls": [],
    }
    assert "owner" not in json.dumps(summary).replace('"owners"', "")
    assert env.tc.get(f"/v1/vehicles/{VIN.lower()}/summary").json()["vin"] == VIN   # typed in lower case
    problem(env.tc.get("/v1/vehicles/WBA3A5C51CF25698/summary"), 400, "bad_vin")      # 16 characters
    problem(env.tc.get("/v1/vehicles/WBA3A5C51CF25698O/summary"), 400, "bad_vin")     # letter O
    problem(env.tc.get("/v1/vehicles/1HGCM82643A004352/summary"), 400, "bad_vin")     # check digit
    problem(env.tc.get(f"/v1/vehicles/{UNKNOWN_VIN}/summary"), 404, "unknown_vehicle")
    assert env.client().vehicle_summary(VIN)["accidents"] == 1


def test_vin_check_page(env: Env, history: dict[str, Any]) -> None:
    assert "17-character VIN" in env.tc.get("/vin").text
    page = env.tc.get("/vin", params={"vin": VIN.lower()})
    assert page.status_code == 200 and "320d Touring" in page.text and OWNER.did not in page.text
    bad = env.tc.get("/vin", params={"vin": "WBA3A5C51CF25698O"})
    assert bad.status_code == 400 and "I, O and Q" in bad.text
    unknown = env.tc.get("/vin", params={"vin": UNKNOWN_VIN})
    assert unknown.status_code == 404 and "No vehicle" in unknown.text


def test_listing_needs_a_member_and_filters(env: Env, history: dict[str, Any]) -> None:
    problem(env.tc.get("/v1/vehicles"), 401, "token_required")
    problem(env.tc.get("/v1/vehicles", headers=env.token(OWNER)), 403, "not_a_member")
    member = env.client(demo_admin("quickfix"))
    member.login()
    page = member.vehicles()
    assert [v["vin"] for v in page["items"]] == sorted([VIN, OTHER_VIN]) and page["next"] is None
    assert "owner" not in page["items"][0]
    assert [v["vin"] for v in member.vehicles(maker="Renault")["items"]] == [OTHER_VIN]
    assert [v["vin"] for v in member.vehicles(powertrain="bev", year=2020)["items"]] == [OTHER_VIN]
    assert member.vehicles(maker="BMW", status="stolen")["items"] == []
    first = member.vehicles(limit=1)
    assert len(first["items"]) == 1 and first["next"] == first["items"][0]["vin"]
    second = member.vehicles(limit=1, after=first["next"])
    assert second["items"][0]["vin"] != first["items"][0]["vin"] and second["next"] is None
    problem(env.tc.get("/v1/vehicles?limit=0", headers=env.token(demo_admin("quickfix"))), 400, "bad_request")


def test_member_record_with_state_proof(env: Env, history: dict[str, Any]) -> None:
    problem(env.tc.get(f"/v1/vehicles/{VIN}"), 401, "token_required")
    headers = env.token(demo_admin("quickfix"))
    body = env.tc.get(f"/v1/vehicles/{VIN}?proof=1", headers=headers).json()
    keys = env.node.checkpoint_keys()
    key, value = verify_state_proof_object(body["proof"], keys, 1, env.chain)
    assert key == f"vehicle/{VIN}" and value == body["vehicle"] and value["owner"] == OWNER.did
    problem(env.tc.get(f"/v1/vehicles/{UNKNOWN_VIN}", headers=headers), 404, "unknown_vehicle")
    assert env.tc.get(f"/v1/vehicles/{VIN}", headers=env.token(OWNER)).json()["vehicle"]["owner"] == OWNER.did
    problem(env.tc.get(f"/v1/vehicles/{OTHER_VIN}", headers=env.token(OWNER)), 403, "not_a_member")


def test_report_bundle_proves_every_event(env: Env, history: dict[str, Any]) -> None:
    owner = history["owner"]
    owner.login()
    verified = owner.verify_vehicle_report(VIN)
    kinds = [leaf["result"]["events"][0]["kind"] for leaf in verified.events]
    assert kinds == ["registered", "first_sale", "service", "service", "service", "service", "lien_recorded",
                     "insured", "accident"]
    assert [leaf["result"]["code"] for leaf in verified.evidence] == ["odometer_rollback"]
    view = build_view(verified)
    assert view["owners"]["count"] == 1 and len(view["accidents"]) == 1 and view["odometer"]["rollback_attempts"] == 1
    assert [r["km"] for r in view["odometer"]["readings"] if r["rejected"]] == [40_000]
    assert view["liens"][0]["lender"] == "hanse-bank" and view["liens"][0]["released_ms"] is None
    assert view["checkpoint"]["signers"] == ["blokauto.example/demo/nordwerk"]
    problem(env.tc.get(f"/v1/vehicles/{UNKNOWN_VIN}/report", headers=env.token(OWNER)), 404, "unknown_vehicle")
    problem(env.tc.get(f"/v1/vehicles/{VIN}/report?format=doc", headers=env.token(OWNER)), 400, "bad_request")


@pytest.mark.parametrize(("org", "allowed"), [
    ("nordwerk", True), ("kba-registry", True), ("alpina-insurance", True), ("hanse-bank", True),
    ("werkstatt-berg", False), ("quickfix", False), ("autohaus-lenz", False),
])
def test_who_reads_the_history(env: Env, history: dict[str, Any], org: str, allowed: bool) -> None:
    response = env.tc.get(f"/v1/vehicles/{VIN}/report", headers=env.token(demo_admin(org)))
    if allowed:
        assert response.status_code == 200, response.text
        assert response.json()["vin"] == VIN
    else:
        problem(response, 403, "not_entitled")


def test_history_transactions_follow_the_same_rule(env: Env, history: dict[str, Any]) -> None:
    fraud = history["fraud"]
    assert env.tc.get(f"/v1/tx/{fraud}", headers=env.token(demo_admin("werkstatt-berg"))).status_code == 200  # signer
    assert env.tc.get(f"/v1/tx/{fraud}", headers=env.token(OWNER)).json()["receipt"]["code"] == "odometer_rollback"
    problem(env.tc.get(f"/v1/tx/{fraud}", headers=env.token(demo_admin("quickfix"))), 403, "not_entitled")
    problem(env.tc.get(f"/v1/tx/{fraud}"), 401, "token_required")
    problem(env.tc.get(f"/v1/vehicles/{VIN}/report"), 401, "token_required")


def test_share_links(env: Env, history: dict[str, Any]) -> None:
    with pytest.raises(BlokError):
        env.client(OWNER).share_link(VIN, valid_ms=91 * DAY)
    link = env.client(OWNER).share_link(VIN, valid_ms=7 * DAY)
    token = link.rsplit("/", 1)[-1]
    assert link.startswith("http://testserver/v1/shared/")
    assert env.tc.get(f"/v1/vehicles/{VIN}/report", params={"share": token}).json()["vin"] == VIN
    page = env.tc.get(f"/v1/shared/{token}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and VIN in page.text
    problem(env.tc.get(f"/v1/vehicles/{OTHER_VIN}/report", params={"share": token}), 403, "bad_share_token")
    expired = make_share_token(OWNER, env.chain, VIN, now_ms() - 1)
    problem(env.tc.get(f"/v1/shared/{expired}"), 401, "share_expired")
    stranger = make_share_token(BUYER, env.chain, VIN, now_ms() + DAY)
    problem(env.tc.get(f"/v1/shared/{stranger}"), 403, "share_revoked")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    problem(env.tc.get(f"/v1/shared/{forged}"), 401, "bad_share_token")
    problem(env.tc.get("/v1/shared/not-a-token"), 400, "bad_share_token")
    other_chain = make_share_token(OWNER, "another/chain", VIN, now_ms() + DAY)
    problem(env.tc.get(f"/v1/shared/{other_chain}"), 401, "bad_share_token")
    # a sale ends every link the old owner made
    history["bank"].submit("lien.release", {"vin": VIN, "lien": history["lien"]})
    ok(history["owner"].submit("title.offer", {"vin": VIN, "buyer": BUYER.did}))
    ok(env.client(BUYER).submit("title.accept", {"vin": VIN}))
    problem(env.tc.get(f"/v1/shared/{token}"), 403, "share_revoked")
    assert env.tc.get(f"/v1/vehicles/{VIN}/report", headers=env.token(OWNER)).status_code == 403
    assert env.tc.get(f"/v1/vehicles/{VIN}/report", headers=env.token(BUYER)).status_code == 200


def bundle_of(env: Env) -> dict[str, Any]:
    response = env.tc.get(f"/v1/vehicles/{VIN}/report", headers=env.token(OWNER))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def flip_leaf_byte(proof: dict[str, Any], needle: bytes, replacement: bytes) -> None:
    leaf = base64.b64decode(proof["leaf"])
    assert needle in leaf
    proof["leaf"] = base64.b64encode(leaf.replace(needle, replacement, 1)).decode()


def test_tampered_bundles_name_the_failing_item(env: Env, history: dict[str, Any]) -> None:
    bundle = bundle_of(env)
    keys = env.node.checkpoint_keys()
    verify_bundle(bundle, keys, 1)

    def fails(mutate: Any, item: str, code: str | None = None) -> None:
        copy_ = copy.deepcopy(bundle)
        mutate(copy_)
        with pytest.raises(VerificationError) as caught:
            verify_bundle(copy_, keys, 1)
        assert str(caught.value.message).startswith(item), caught.value.message
        if code:
            assert caught.value.code == code, caught.value.code

    fails(lambda b: b["events"].pop(3), "events[3]", "broken_chain")           # a service left out
    fails(lambda b: b["events"].pop(), "events", "incomplete")                 # the latest event left out
    fails(lambda b: b["events"].reverse(), "events[0]")                        # reordered
    fails(lambda b: flip_leaf_byte(b["events"][2], b'"odometer_km":18000', b'"odometer_km":11000'), "events[2]")
    fails(lambda b: b["state"]["value"].update(accidents=0), "state")          # the record edited
    fails(lambda b: b["events"][1].update(checkpoint=b["events"][1]["checkpoint"].replace("\n\n", "\n\n\n")),
          "events[1]")
    fails(lambda b: b["evidence"].append(b["events"][0]), "evidence[1]")       # an accepted event as "evidence"
    fails(lambda b: b.update(format="something/else"), "format")
    with pytest.raises(BlokError):
        verify_bundle(bundle, ["other+00000000+AQ" + "A" * 42], 1)              # keys of another consortium


def test_cli_checks_a_bundle_offline(env: Env, history: dict[str, Any], tmp_path: Path) -> None:
    bundle = bundle_of(env)
    good, bad, keys = tmp_path / "report.json", tmp_path / "bad.json", tmp_path / "keys.txt"
    good.write_text(json.dumps(bundle))
    keys.write_text("\n".join(env.node.checkpoint_keys()) + "\n")
    runner = CliRunner()
    result = runner.invoke(cli_app, ["check-report", str(good), "--keys", str(keys)])
    assert result.exit_code == 0, result.output
    assert "VALID" in result.output and "9 events" in result.output and "1 refused" in result.output
    tampered = copy.deepcopy(bundle)
    del tampered["events"][4]
    bad.write_text(json.dumps(tampered))
    result = runner.invoke(cli_app, ["check-report", str(bad), "--keys", str(keys)])
    assert result.exit_code == 3 and "events[4]" in result.output
    result = runner.invoke(cli_app, ["check-report", str(good), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["vin"] == VIN
