"""Software releases on the ledger, end to end through the SDK and the CLI: a carmaker's TUF trust,
catalogues signed 2-of-3 by release keys, campaigns, a vehicle's device key attesting installs, and
a TUF repository exported from what the ledger holds that an unmodified ``tuf.ngclient.Updater``
(bootstrapped only from the carmaker's offline-signed 1.root.json) verifies and downloads from.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from blokauto.client import Client
from blokauto.contracts import governance
from blokauto.contracts.registry import load_all
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.crypto.keystore import write_keystore
from blokauto.demo import DEMO_PASSWORD
from blokauto.errors import BlokError
from blokauto.ledger.audit import audit
from blokauto.node import genesis_known_keys
from blokauto.software.releases import (
    Release,
    build_release_metadata,
    next_release_metadata,
    parse_release,
    sign_release,
)
from blokauto.software.tuf_export import build_root, build_targets, sign_metadata, sign_trust_metadata
from tests.conftest import Env
from tests.static_server import serve_directory
from tests.worlds import BMW_VIN, DEVICE, MAKER, STRANGER, WORKSHOP, World, registration

ORG = "nordwerk"
BRAKE, ENGINE = "brake-ecu-v2", "engine-ecu-v1"
FUTURE = datetime(2040, 1, 1, tzinfo=UTC)
ROOT_KEYS = [Signer.deterministic(f"tests/software/root {i}") for i in range(2)]
TARGETS_KEY = Signer.deterministic("tests/software/targets")
ONLINE_KEY = Signer.deterministic("tests/software/online")
BRAKE_KEYS = [Signer.deterministic(f"tests/software/brake release {i}") for i in range(3)]
ENGINE_KEYS = [Signer.deterministic(f"tests/software/engine release {i}") for i in range(3)]
OUTSIDER = Signer.deterministic("tests/software/outsider")

IMAGE_1 = b"brake firmware 1.0.0\n" * 300
IMAGE_2 = b"brake firmware 1.1.0\n" * 400
ENGINE_IMAGE = b"engine firmware 7\n" * 200


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


R1 = Release(BRAKE, 1, _sha(IMAGE_1), len(IMAGE_1), "brake-fw-1.0.0.bin")
R2 = Release(BRAKE, 2, _sha(IMAGE_2), len(IMAGE_2), "brake-fw-1.1.0.bin", min_previous=1)
E1 = Release(ENGINE, 1, _sha(ENGINE_IMAGE), len(ENGINE_IMAGE), "engine-fw-7.bin")


def _trust(**overrides: Any) -> tuple[bytes, bytes]:
    """1.root.json and 1.targets.json, signed offline by the carmaker's keys."""
    args: dict[str, Any] = {
        "root_signers": ROOT_KEYS, "targets_signers": [TARGETS_KEY], "online_keys": [ONLINE_KEY.did],
        "release_keys_by_hw": {BRAKE: [s.did for s in BRAKE_KEYS], ENGINE: [s.did for s in ENGINE_KEYS]},
        "threshold_by_hw": {BRAKE: 2, ENGINE: 2}, "root_expires": FUTURE, "targets_expires": FUTURE,
    }
    return sign_trust_metadata(**{**args, **overrides})


ROOT_1, TARGETS_1 = _trust()


_serve = serve_directory


def _fetch(repo: Path, client_dir: Path, path: str) -> bytes | None:
    """What a vehicle's stock TUF client gets for ``path``: it trusts only the carmaker's 1.root.json."""
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(exist_ok=True)
    with _serve(repo) as url:
        updater = Updater(str(client_dir / "metadata"), f"{url}/metadata/", str(client_dir / "targets"),
                          f"{url}/targets/", bootstrap=ROOT_1)
        updater.refresh()
        info = updater.get_targetinfo(path)
        return None if info is None else Path(updater.download_target(info)).read_bytes()


def _unchanged(world: World, *keys: str) -> tuple[Any, ...]:
    return tuple(world.state(k) for k in keys)


def _audit(env: Env) -> None:
    """Replaying the ledger from genesis gives every stored byte again: the contracts are deterministic."""
    store = env.node.store
    genesis = store.get_meta("genesis")
    assert genesis is not None
    report = audit(store, load_all(), governance.apply_genesis, genesis_known_keys(canonical.decode(genesis)))
    assert report.ok, report.problems


# -- the scenario the issue demands ----------------------------------------------------------------


def test_releases_installs_and_an_exported_repository_ngclient_trusts(world: World, tmp_path: Path) -> None:
    maker = world.client(MAKER)

    # 1. the carmaker publishes its offline-signed trust: who may release for which hardware
    receipt = maker.publish_software_trust(TARGETS_1, [ROOT_1])
    assert receipt["status"] == "ok", receipt
    event = next(e for e in receipt["events"] if e["type"] == "software.trust")
    assert event == {"type": "software.trust", "org": ORG, "root_version": 1, "targets_version": 1,
                     "hardware": [BRAKE, ENGINE], "rekeyed": []}

    # 2. two releases of the brake ECU, each signed 2-of-3; the second by two key holders in turn
    assert maker.release_software(ORG, BRAKE, R1, BRAKE_KEYS[:2], expires=FUTURE)["status"] == "ok"
    one_of_three = maker.sign_release(ORG, BRAKE, R2, BRAKE_KEYS[1:2], expires=FUTURE)
    before = _unchanged(world, f"swrelease/{ORG}/{BRAKE}", f"swimage/{ORG}/{R2.sha256}")
    refused = maker.publish_release(BRAKE, one_of_three)
    assert refused["status"] == "rejected" and refused["code"] == "below_threshold", refused
    assert _unchanged(world, f"swrelease/{ORG}/{BRAKE}", f"swimage/{ORG}/{R2.sha256}") == before
    first_holder = maker.sign_release(ORG, BRAKE, R2, BRAKE_KEYS[:1], expires=FUTURE)
    receipt = maker.publish_release(BRAKE, sign_release(first_holder, BRAKE_KEYS[2:]))
    assert receipt["status"] == "ok", receipt
    released = next(e for e in receipt["events"] if e["type"] == "software.released")
    assert released["sequence"] == 2 and released["added"] == [{"version": 2, "sha256": R2.sha256, "name": R2.name}]
    assert released["signers"] == sorted([BRAKE_KEYS[0].did, BRAKE_KEYS[2].did])
    assert maker.release_software(ORG, ENGINE, E1, ENGINE_KEYS[1:], expires=FUTURE)["status"] == "ok"

    catalogue = world.env.client().software_catalogue(ORG, BRAKE)   # public, no token
    assert catalogue["sequence"] == 2 and [r["version"] for r in catalogue["releases"]] == [1, 2]
    assert catalogue["threshold"] == 2 and len(catalogue["release_keys"]) == 3
    assert parse_release(catalogue["document"].encode(), hardware_id=BRAKE).releases == (R1, R2)
    overview = world.env.client().software_trust(ORG)
    assert [(h["hardware_id"], h["latest_version"], h["current"]) for h in overview["hardware"]] == [
        (BRAKE, 2, True), (ENGINE, 1, True)]
    assert overview["roots"] == [ROOT_1.decode()] and overview["online_keys"] == [ONLINE_KEY.did]

    # 3. a campaign assigns brake version 2 to a model; an unreleased version is refused
    world.register()
    world.rejected(MAKER, "software.campaign", {"campaign": "NW-SW-9", "hardware_id": BRAKE, "version": 3,
                                                "title": "Brake ECU 1.2", "models": ["Kestrel 3"]},
                   "unreleased_version")
    assert maker.open_software_campaign("NW-SW-2026-01", BRAKE, 2, "Brake ECU 1.1",
                                        models=["Kestrel 3"])["status"] == "ok"
    assert world.env.client().vehicle_software(BMW_VIN)["campaigns"][0]["status"] == "pending"

    # 4. the vehicle's device key attests its installs
    install = {"vin": BMW_VIN, "ecu": "brake-front", "hardware_id": BRAKE}
    world.rejected(DEVICE, "software.installed", {**install, "image_sha256": R2.sha256}, "below_min_previous")
    receipt = world.ok(DEVICE, "software.installed", {**install, "image_sha256": R1.sha256})
    vehicle_event = next(e for e in receipt["events"] if e["type"] == "vehicle.event")
    assert vehicle_event["kind"] == "software_installed" and vehicle_event["version"] == 1
    assert vehicle_event["previous_version"] is None
    assert world.client(DEVICE).attest_install(BMW_VIN, "brake-front", BRAKE, R2.sha256)["status"] == "ok"
    world.rejected(DEVICE, "software.installed", {**install, "image_sha256": R1.sha256}, "rollback")
    world.rejected(DEVICE, "software.installed", {**install, "image_sha256": E1.sha256}, "wrong_hardware")
    world.rejected(DEVICE, "software.installed", {**install, "image_sha256": _sha(b"never released")},
                   "unknown_image")
    world.rejected(WORKSHOP, "software.installed", {**install, "image_sha256": R2.sha256}, "not_device")
    world.refused(STRANGER, "software.installed", {**install, "image_sha256": R2.sha256}, "forbidden", 403)
    world.ok(DEVICE, "software.installed", {**install, "ecu": "engine", "hardware_id": ENGINE,
                                            "image_sha256": E1.sha256})

    record = world.record(BMW_VIN)
    assert record is not None
    assert {ecu: (s["hardware_id"], s["version"], s["sha256"], s["name"]) for ecu, s in record["software"].items()} \
        == {"brake-front": (BRAKE, 2, R2.sha256, R2.name), "engine": (ENGINE, 1, E1.sha256, E1.name)}
    software = world.env.client().vehicle_software(BMW_VIN)
    assert [(e["ecu"], e["version"], e["up_to_date"]) for e in software["ecus"]] == [
        ("brake-front", 2, True), ("engine", 1, True)]
    assert software["campaigns"][0]["status"] == "installed" and software["campaigns"][0]["vins"] == 0
    # the installs are links of the vehicle's event chain: its report still verifies
    report = world.reader.verify_vehicle_report(BMW_VIN)
    assert report is not None

    # 5. export from what the ledger holds, by a client holding no key but the online one
    images = tmp_path / "images"
    (images / ENGINE).mkdir(parents=True)
    (images / R1.sha256).write_bytes(IMAGE_1)            # by hash
    (images / R2.name).write_bytes(IMAGE_2)              # by name
    (images / ENGINE / E1.name).write_bytes(ENGINE_IMAGE)
    (images / "stray.bin").write_bytes(b"not released")
    repo = tmp_path / "repo"
    written = world.env.client().export_software(ORG, repo, online_key=ONLINE_KEY, images=images)
    assert f"metadata/2.release-{BRAKE}.json" in written and f"metadata/1.release-{ENGINE}.json" in written
    assert f"targets/{BRAKE}/2/{R2.sha256}.{R2.name}" in written
    assert (repo / "metadata" / f"2.release-{BRAKE}.json").read_text() == catalogue["document"]

    # 6. an unmodified TUF client, trusting only the carmaker's 1.root.json, verifies and downloads
    assert _fetch(repo, tmp_path / "vehicle", R2.path) == IMAGE_2
    assert _fetch(repo, tmp_path / "vehicle", E1.path) == ENGINE_IMAGE
    assert _fetch(repo, tmp_path / "vehicle", f"{BRAKE}/3/brake-fw-9.bin") is None
    _audit(world.env)


# -- bad input and refusals ------------------------------------------------------------------------


def test_malformed_documents_are_refused_before_ordering(world: World) -> None:
    valid = sign_release(next_release_metadata(None, R1, expires=FUTURE), BRAKE_KEYS[:2])
    pretty = Metadata.from_bytes(valid).to_bytes(JSONSerializer(compact=False)).decode()
    extra = canonical.decode(valid)
    extra["signed"]["note"] = "x"
    release_payloads: list[tuple[dict[str, str], str]] = [
        ({"hardware_id": BRAKE, "document": '{"signed": '}, "malformed_json"),
        ({"hardware_id": BRAKE, "document": pretty}, "non_canonical"),
        ({"hardware_id": BRAKE, "document": canonical.encode(extra).decode()}, "bad_release"),
        ({"hardware_id": BRAKE, "document": '{"signatures":[],"signed":1.5}'}, "bad_encoding"),
        ({"hardware_id": ENGINE, "document": valid.decode()}, "wrong_hardware"),   # a brake catalogue as engine's
        ({"hardware_id": "Brake ECU", "document": valid.decode()}, "bad_hardware_id"),
        ({"hardware_id": BRAKE}, "bad_payload"),
    ]
    for payload, code in release_payloads:
        world.refused(MAKER, "software.release", payload, code)
    targets_doc = TARGETS_1.decode()
    for trust_payload, code in (
        ({"roots": ["[]"], "targets": targets_doc}, "bad_metadata"),
        ({"roots": [targets_doc], "targets": targets_doc}, "bad_metadata"),             # targets posing as root
        ({"roots": [ROOT_1.decode()], "targets": ROOT_1.decode()}, "bad_metadata"),
        ({"roots": [ROOT_1.decode(), ROOT_1.decode()], "targets": targets_doc}, "bad_metadata"),  # 1, 1
        ({"roots": [ROOT_1.decode() + " "], "targets": targets_doc}, "non_canonical"),
    ):
        world.refused(MAKER, "software.trust", trust_payload, code)
    world.refused(MAKER, "software.campaign", {"campaign": "NW-SW-1", "hardware_id": BRAKE, "version": 1,
                                               "title": "t"}, "empty_campaign")
    world.refused(DEVICE, "software.installed", {"vin": BMW_VIN, "ecu": "x", "hardware_id": "BRAKE",
                                                 "image_sha256": R1.sha256}, "bad_hardware_id")
    world.refused(WORKSHOP, "software.release", {"hardware_id": BRAKE, "document": valid.decode()}, "forbidden", 403)
    world.refused(STRANGER, "software.installed", {"vin": BMW_VIN, "ecu": "x", "hardware_id": BRAKE,
                                                   "image_sha256": R1.sha256}, "forbidden", 403)   # no such vehicle
    # over the largest transaction a node takes: refused with a code before anything is parsed
    before = world.env.snapshot(MAKER.did)
    raw = world.client(MAKER).build("software.release", {"hardware_id": BRAKE, "document": "x" * 1_000_000})
    response = world.env.post(raw)
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert world.env.snapshot(MAKER.did) == before


def test_contract_refusals_change_nothing(world: World, tmp_path: Path) -> None:
    maker = world.client(MAKER)
    anyone = world.env.client()
    first = sign_release(next_release_metadata(None, R1, expires=FUTURE), BRAKE_KEYS[:2])
    world.rejected(MAKER, "software.release", {"hardware_id": BRAKE, "document": first.decode()}, "no_trust")
    with pytest.raises(BlokError, check=lambda e: e.code == "no_trust" and e.http_status == 404):
        anyone.software_trust(ORG)
    world.rejected(MAKER, "software.trust", {"targets": TARGETS_1.decode()}, "bad_root_version")

    # trust signed by too few root keys, or targets by an outsider: refused, nothing stored
    root_md = build_root(root_keys=[s.did for s in ROOT_KEYS], root_threshold=2, targets_keys=[TARGETS_KEY.did],
                         targets_threshold=1, online_keys=[ONLINE_KEY.did], expires=FUTURE)
    half_root = sign_metadata(root_md, ROOT_KEYS[:1])
    world.rejected(MAKER, "software.trust", {"roots": [half_root.decode()], "targets": TARGETS_1.decode()},
                   "below_threshold")
    forged_targets = sign_metadata(Metadata(Metadata.from_bytes(TARGETS_1).signed), [OUTSIDER])
    world.rejected(MAKER, "software.trust", {"roots": [ROOT_1.decode()], "targets": forged_targets.decode()},
                   "below_threshold")
    dead_root, dead_targets = _trust(targets_expires=datetime(2020, 1, 1, tzinfo=UTC))
    world.rejected(MAKER, "software.trust", {"roots": [dead_root.decode()], "targets": dead_targets.decode()},
                   "already_expired")
    assert world.state(f"swtrust/{ORG}") is None

    assert maker.publish_software_trust(TARGETS_1, [ROOT_1])["status"] == "ok"
    world.rejected(MAKER, "software.trust", {"targets": TARGETS_1.decode()}, "nothing_new")
    world.rejected(MAKER, "software.trust", {"roots": [ROOT_1.decode()], "targets": TARGETS_1.decode()},
                   "bad_root_version")
    # a changed delegation must carry a higher targets version (TUF clients would keep the old one)
    same_version = build_targets(release_keys_by_hw={BRAKE: [s.did for s in BRAKE_KEYS]}, threshold_by_hw={BRAKE: 3},
                                 expires=FUTURE)
    world.rejected(MAKER, "software.trust", {"targets": sign_metadata(same_version, [TARGETS_KEY]).decode()},
                   "stale_targets")
    # a root rotation signed by the new keys alone does not chain from the stored root
    new_keys = [Signer.deterministic(f"tests/software/root 2041 {i}") for i in range(2)]
    root_2 = build_root(root_keys=[s.did for s in new_keys], root_threshold=2, targets_keys=[TARGETS_KEY.did],
                        targets_threshold=1, online_keys=[ONLINE_KEY.did], expires=FUTURE, version=2)
    world.rejected(MAKER, "software.trust", {"roots": [sign_metadata(Metadata(root_2.signed), new_keys).decode()],
                                             "targets": TARGETS_1.decode()}, "below_threshold")
    rotated = sign_metadata(root_2, [*ROOT_KEYS, *new_keys])
    receipt = maker.publish_software_trust(TARGETS_1, [rotated])
    assert receipt["status"] == "ok" and anyone.software_trust(ORG)["root_version"] == 2

    # releases: undelegated hardware, sequence, history, versions, expiry
    radio = Release("radio-ecu", 1, R1.sha256, R1.length, R1.name)
    radio_doc = sign_release(build_release_metadata("radio-ecu", [radio], sequence=1, expires=FUTURE), BRAKE_KEYS)
    world.rejected(MAKER, "software.release", {"hardware_id": "radio-ecu", "document": radio_doc.decode()},
                   "unknown_hardware")
    second = sign_release(build_release_metadata(BRAKE, [R1], sequence=2, expires=FUTURE), BRAKE_KEYS[:2])
    world.rejected(MAKER, "software.release", {"hardware_id": BRAKE, "document": second.decode()}, "bad_sequence")
    expired = sign_release(build_release_metadata(BRAKE, [R1], sequence=1, expires=datetime(2021, 1, 1, tzinfo=UTC)),
                           BRAKE_KEYS[:2])
    world.rejected(MAKER, "software.release", {"hardware_id": BRAKE, "document": expired.decode()}, "already_expired")
    assert world.state(f"swrelease/{ORG}/{BRAKE}") is None and world.state(f"swimage/{ORG}/{R1.sha256}") is None
    r5 = replace(R2, version=5)
    assert maker.release_software(ORG, BRAKE, [R1, r5], BRAKE_KEYS[:2], expires=FUTURE)["status"] == "ok"
    late, r6 = replace(R2, version=3, sha256=_sha(b"3")), replace(R2, version=6, sha256=_sha(b"6"))
    for releases, code in (([R1, r5, late], "version_not_increasing"),
                           ([replace(R1, name="renamed.bin"), r5, r6], "history_rewritten")):
        document = sign_release(build_release_metadata(BRAKE, releases, sequence=2, expires=FUTURE), BRAKE_KEYS[:2])
        world.rejected(MAKER, "software.release", {"hardware_id": BRAKE, "document": document.decode()}, code)
    renewed = maker.release_software(ORG, BRAKE, (), BRAKE_KEYS[1:], expires=datetime(2041, 1, 1, tzinfo=UTC))
    assert renewed["status"] == "ok" and anyone.software_catalogue(ORG, BRAKE)["sequence"] == 2

    # new targets raise the brake threshold to 3: the stored catalogue (2 signatures) must be re-signed
    targets_2 = build_targets(release_keys_by_hw={BRAKE: [s.did for s in BRAKE_KEYS],
                                                  ENGINE: [s.did for s in ENGINE_KEYS]},
                              threshold_by_hw={BRAKE: 3, ENGINE: 2}, expires=FUTURE, version=2)
    receipt = maker.publish_software_trust(sign_metadata(targets_2, [TARGETS_KEY]))
    assert receipt["events"][0]["rekeyed"] == [BRAKE], receipt
    assert anyone.software_trust(ORG)["hardware"][0]["current"] is False
    with pytest.raises(BlokError, check=lambda e: e.code == "below_threshold"):
        anyone.export_software(ORG, tmp_path / "export", online_key=ONLINE_KEY)
    assert maker.release_software(ORG, BRAKE, (), BRAKE_KEYS, expires=FUTURE)["status"] == "ok"
    assert anyone.software_trust(ORG)["hardware"][0]["current"] is True
    assert anyone.verified_software(ORG).catalogues[BRAKE].sequence == 3

    # campaigns name vehicles that exist and are the carmaker's own
    world.rejected(MAKER, "software.campaign", {"campaign": "NW-SW-1", "hardware_id": BRAKE, "version": 5,
                                                "title": "t", "vins": [BMW_VIN]}, "unknown_vehicle")
    world.rejected(MAKER, "software.campaign", {"campaign": "NW-SW-1", "hardware_id": "radio-ecu", "version": 1,
                                                "title": "t", "models": ["Kestrel 3"]}, "unknown_hardware")

    # reads: stable codes for what is not there or malformed
    for path, status, code in ((f"/v1/software/{ORG}/radio-ecu", 404, "unknown_hardware"),
                               (f"/v1/software/{ORG}/{ENGINE}", 404, "no_release"),
                               (f"/v1/software/{ORG}/Radio%20ECU", 400, "bad_hardware_id"),
                               ("/v1/software/Nord_Werk", 400, "bad_org"),
                               ("/v1/software/kestrel-parts", 404, "no_trust"),
                               (f"/v1/vehicles/{BMW_VIN}/software", 404, "unknown_vehicle")):
        response = world.env.tc.get(path)
        assert (response.status_code, response.json()["code"]) == (status, code), (path, response.text)
    _audit(world.env)


def test_a_replaced_ecu_and_a_vehicle_without_software(world: World) -> None:
    """An ECU replaced by another hardware type starts again from nothing installed; the software
    read of a vehicle that never reported any is empty, and the device key of one vehicle cannot
    attest for another."""
    maker = world.client(MAKER)
    assert maker.publish_software_trust(TARGETS_1, [ROOT_1])["status"] == "ok"
    maker.release_software(ORG, BRAKE, [R1, R2], BRAKE_KEYS[:2], expires=FUTURE)
    maker.release_software(ORG, ENGINE, E1, ENGINE_KEYS[:2], expires=FUTURE)
    world.register()
    assert world.env.client().vehicle_software(BMW_VIN)["ecus"] == []
    install = {"vin": BMW_VIN, "ecu": "ecu-1"}
    world.ok(DEVICE, "software.installed", {**install, "hardware_id": BRAKE, "image_sha256": R1.sha256})
    world.ok(DEVICE, "software.installed", {**install, "hardware_id": BRAKE, "image_sha256": R2.sha256})
    receipt = world.ok(DEVICE, "software.installed", {**install, "hardware_id": ENGINE, "image_sha256": E1.sha256})
    assert next(e for e in receipt["events"] if e["type"] == "vehicle.event")["previous_version"] == 2
    other_device = Signer.deterministic("tests/software/device 2")
    other_vin = "WBA3A5C51CF256993"
    world.ok(MAKER, "vehicle.register", registration(other_vin, other_device))
    world.refused(other_device, "software.installed", {**install, "hardware_id": BRAKE, "image_sha256": R1.sha256},
                  "forbidden", 403)


# -- the CLI path ----------------------------------------------------------------------------------


def test_cli_signs_publishes_and_exports(live_node: str, tmp_path: Path) -> None:
    env = {**os.environ, "BLOKAUTO_PASSWORD": DEMO_PASSWORD, "BLOKAUTO_NODE": live_node}

    def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "blokauto.cli.main", "software", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=120)

    keys = tmp_path / "keys"
    keys.mkdir()
    stores: dict[str, Path] = {}
    for name, signer in (("maker", MAKER), ("root0", ROOT_KEYS[0]), ("root1", ROOT_KEYS[1]),
                         ("targets", TARGETS_KEY), ("online", ONLINE_KEY), ("b0", BRAKE_KEYS[0]),
                         ("b1", BRAKE_KEYS[1]), ("b2", BRAKE_KEYS[2])):
        stores[name] = keys / f"{name}.json"
        write_keystore(stores[name], signer.signing_key, DEMO_PASSWORD, strength="interactive")
    spec = tmp_path / "trust.json"
    spec.write_text(json.dumps({
        "root": {"root_keys": [str(stores["root0"]), str(stores["root1"])], "targets_keys": [TARGETS_KEY.did],
                 "online_keys": [ONLINE_KEY.did], "expires": "2040-01-01"},
        "targets": {"hardware": {BRAKE: {"release_keys": [s.did for s in BRAKE_KEYS], "threshold": 2}},
                    "expires": "2040-01-01"}}))
    trust_dir = tmp_path / "trust"
    done = cli("sign-trust", spec, "--out", trust_dir, "--root-key", stores["root0"], "--root-key", stores["root1"],
               "--targets-key", stores["targets"])
    assert done.returncode == 0, done.stderr
    root_1 = (trust_dir / "1.root.json").read_bytes()
    done = cli("trust", "--key", stores["maker"], "--root", trust_dir / "1.root.json",
               "--targets", trust_dir / "1.targets.json")
    assert done.returncode == 0 and "trust of nordwerk published" in done.stdout, done.stderr

    image = tmp_path / "images" / "brake-fw-1.0.0.bin"
    image.parent.mkdir()
    image.write_bytes(IMAGE_1)
    release: list[str | Path] = ["release", "--hardware-id", BRAKE, "--image", image, "--version", "1",
                                 "--expires", "2040-01-01"]
    refused = cli(*release, "--release-key", stores["b0"], "--key", stores["maker"])
    assert refused.returncode == 1 and "below_threshold" in refused.stderr, refused.stderr
    # two key holders in turn: the first writes the catalogue, the second co-signs and publishes
    half = tmp_path / "half.json"
    assert cli(*release, "--release-key", stores["b0"], "--org", ORG, "--out", half).returncode == 0
    done = cli("release", "--hardware-id", BRAKE, "--document", half, "--release-key", stores["b2"],
               "--key", stores["maker"])
    assert done.returncode == 0, done.stderr

    verified = cli("verify", ORG)
    assert verified.returncode == 0 and f"{BRAKE}: catalogue 1, latest version 1" in verified.stdout, verified.stdout
    shown = json.loads(cli("show", ORG, BRAKE).stdout)
    assert shown["signers"] == sorted([BRAKE_KEYS[0].did, BRAKE_KEYS[2].did])

    repo = tmp_path / "repo"
    done = cli("export", "--org", ORG, "--images", image.parent, "--online-key", stores["online"], "--out", repo)
    assert done.returncode == 0 and "1 image(s)" in done.stdout, done.stdout + done.stderr
    (tmp_path / "vehicle" / "metadata").mkdir(parents=True)
    (tmp_path / "vehicle" / "targets").mkdir()
    with _serve(repo) as url:
        updater = Updater(str(tmp_path / "vehicle" / "metadata"), f"{url}/metadata/",
                          str(tmp_path / "vehicle" / "targets"), f"{url}/targets/", bootstrap=root_1)
        info = updater.get_targetinfo(R1.path)
        assert info is not None and Path(updater.download_target(info)).read_bytes() == IMAGE_1

    # an online key the root does not list for snapshot/timestamp: refused before anything is written
    wrong = cli("export", "--org", ORG, "--online-key", stores["b1"], "--out", tmp_path / "other")
    assert wrong.returncode == 1 and "not_online_key" in wrong.stderr
    assert cli("show", "kestrel-parts").returncode == 1
    with Client(live_node) as anyone:
        assert anyone.software_catalogue(ORG, BRAKE)["sequence"] == 1
