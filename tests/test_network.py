"""The consortium network with real processes: a 3-server JetStream cluster and one node process per
organisation, as `blokauto network up` starts them. Convergence, cosigned finality, a server and a
node killed under load (no acknowledged transaction lost, catch-up), a forged message published
straight into the stream, and a node whose state was tampered with, detected and named."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from blokauto.client import Client
from blokauto.demo import demo_admin
from blokauto.errors import BlokError
from blokauto.ledger.proofs import verify_record_proof
from blokauto.ledger.tx import sign_tx
from blokauto.network import local
from blokauto.ordering.jetstream import stream_id

pytestmark = pytest.mark.slow
ORGS = ["nordwerk", "kestrel-parts", "autohaus-lenz"]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("network")
    state = local.network_up(directory, orgs=3, servers=3)
    try:
        yield {"dir": directory, "state": state, "urls": {n["org"]: n["api_url"] for n in state["nodes"]}}
    finally:
        local.network_down(directory)


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def anchor(client: Client, label: str) -> dict[str, Any]:
    return client.submit("notary.anchor", {"digest": digest(label), "kind": "invoice"})


def views(net: dict[str, Any], orgs: list[str] | None = None) -> dict[str, tuple[int, str, int | None]]:
    out = {}
    for org, url in net["urls"].items():
        if orgs is not None and org not in orgs:
            continue
        with Client(url) as c:
            status, info = c.status(), c._json("GET", "/v1/network")
        out[org] = (status["height"], status["state_root"], (info["final"] or {}).get("height"))
    return out


def converge(net: dict[str, Any], orgs: list[str] | None = None, timeout_s: float = 30) -> tuple[int, str]:
    """Wait until the given nodes sit at the same height and state root, final at that height."""
    deadline = time.time() + timeout_s
    while True:
        seen = views(net, orgs)
        heads = {(h, root) for h, root, _ in seen.values()}
        if len(heads) == 1 and all(final == h for h, _, final in seen.values()):
            return next(iter(heads))
        if time.time() > deadline:
            raise AssertionError(f"nodes did not converge: {seen}")
        time.sleep(0.2)


def test_nodes_converge_and_cosign(network: dict[str, Any]) -> None:
    clients = [Client(network["urls"][org], demo_admin(org)) for org in ORGS]
    receipts = [anchor(clients[i % 3], f"converge {i}") for i in range(30)]
    assert all(r["status"] == "ok" for r in receipts)
    converge(network)
    keys, quorum = clients[0].checkpoint_keys()
    assert quorum == 2 and len(keys) == 3
    # a receipt proven against a quorum-signed checkpoint, fetched from another node than the submitter
    reader = Client(network["urls"]["autohaus-lenz"], demo_admin("autohaus-lenz"))
    reader.login()
    record = reader.tx(receipts[0]["tx"])
    assert record["final"] is True
    assert verify_record_proof(record["proof"], keys, quorum)["result"]["status"] == "ok"


def test_a_server_and_a_node_die_under_load_and_nothing_acknowledged_is_lost(network: dict[str, Any]) -> None:
    directory, acked, stop = network["dir"], [], threading.Event()

    def load(org: str) -> None:
        client, n = Client(network["urls"][org], demo_admin(org)), 0
        while not stop.is_set():
            n += 1
            try:
                acked.append(anchor(client, f"load {org} {n} {time.time()}")["tx"])
            except BlokError:
                time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(org,)) for org in ("nordwerk", "autohaus-lenz")]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        assert local.stop_process(directory, "n2")
        assert local.stop_process(directory, "kestrel-parts")
        during = len(acked)
        final_before = views(network, ["nordwerk"])["nordwerk"][2] or 0
        # with a quorum up the network keeps committing, and two of three organisations keep finalising
        # (a client of the dead server reconnects within seconds; how fast is not what this asserts)
        deadline = time.time() + 60
        while len(acked) <= during + 20 or (views(network, ["nordwerk"])["nordwerk"][2] or 0) <= final_before:
            assert time.time() < deadline, "the network stopped committing with a quorum up"
            time.sleep(0.2)
    finally:
        local.start_process(directory, "n2")
        local.start_process(directory, "kestrel-parts")
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
    converge(network, timeout_s=60)
    restarted = Client(network["urls"]["kestrel-parts"], demo_admin("kestrel-parts"))
    restarted.login()
    missing = [h for h in acked if "receipt" not in restarted._json("GET", f"/v1/tx/{h}")]
    assert missing == []


def test_a_forged_message_in_the_stream_is_dropped_by_every_node(network: dict[str, Any]) -> None:
    chain = network["state"]["chain"]
    good = sign_tx(chain, "notary.anchor", demo_admin("nordwerk"), 10_000_000,
                   {"digest": digest("forged"), "kind": "invoice"})
    forged = good.replace(b'"signatures":["', b'"signatures":["A', 1).replace(b'A==', b'==', 1)
    before = views(network)

    async def publish() -> None:
        nc = await nats.connect(network["state"]["nats"][0]["url"])
        js = nc.jetstream()
        await js.publish(f"blokauto.{stream_id(chain)}.tx", forged)
        await js.publish(f"blokauto.{stream_id(chain)}.tx", b"not even json")
        await nc.close()

    asyncio.run(publish())
    anchor(Client(network["urls"]["nordwerk"], demo_admin("nordwerk")), "after the forgery")
    height, _ = converge(network)
    assert height == max(h for h, _, _ in before.values()) + 1      # only the honest transaction made a block
    reader = Client(network["urls"]["kestrel-parts"], demo_admin("kestrel-parts"))
    reader.login()
    with pytest.raises(BlokError) as absent:
        reader.tx(hashlib.sha256(b"x").hexdigest())
    assert absent.value.code == "unknown_tx"


def test_crash_records_are_held_by_every_member_and_forgeries_dropped(network: dict[str, Any]) -> None:
    from blokauto.crypto.keys import Signer
    from blokauto.vehicledata import crash as edr
    from blokauto.vin import with_check_digit

    vin, device = with_check_digit("1HGCV1F30RC777001"), Signer.deterministic("tests/network/device")
    maker = Client(network["urls"]["nordwerk"], demo_admin("nordwerk"))
    assert maker.submit("vehicle.register", {"vin": vin, "model": "Kestrel 3", "year": 2024, "powertrain": "ice",
                                             "device_key": device.did})["status"] == "ok"
    converge(network)
    record = edr.sample_record(vin, device, int(time.time() * 1000), braking=True, impact_kmh=35, seed=5)
    signed = edr.sign_record(device, record)
    # the car deposits and uploads through one member's node ...
    assert Client(network["urls"]["kestrel-parts"], device).deposit_crash(signed)["status"] == "ok"
    # ... and the carmaker reads it from another member's node, checked against that node's ledger
    reader = Client(network["urls"]["autohaus-lenz"], demo_admin("nordwerk"))
    reader.login()
    deadline = time.time() + 30
    while True:
        try:
            got = reader.crash_record(signed.record_hash)
            break
        except BlokError as exc:
            if exc.code not in ("record_not_stored", "unknown_crash") or time.time() > deadline:
                raise
            time.sleep(0.2)
    assert edr.encode_record(got) == signed.record
    # a second crash is deposited without its record; an altered copy published straight into the
    # stream under its hash is checked by every node against its own ledger and dropped
    chain = network["state"]["chain"]
    other = edr.sign_record(device, edr.sample_record(vin, device, int(time.time() * 1000) + 1_000, braking=True,
                                                      impact_kmh=20, seed=6))
    second = Client(network["urls"]["kestrel-parts"], device).deposit_crash(other, upload=False)
    assert second["status"] == "ok", (second.get("code"), second.get("message"))
    converge(network)
    forged = edr.encode_record(msgspec.structs.replace(edr.decode_record(other.record), service_brake=[False] * 11))
    refused_before = {org: Client(url)._json("GET", "/v1/network")["offchain"]["refused"]
                      for org, url in network["urls"].items()}

    async def publish() -> None:
        nc = await nats.connect(network["state"]["nats"][0]["url"])
        js = nc.jetstream()
        await js.publish(f"blokauto.{stream_id(chain)}.blob", forged, headers={
            "Nats-Msg-Id": f"forged:{other.record_hash}", "Blokauto-Kind": "crash",
            "Blokauto-Name": other.record_hash})
        await nc.close()

    asyncio.run(publish())
    deadline = time.time() + 15
    for org, url in network["urls"].items():
        while Client(url)._json("GET", "/v1/network")["offchain"]["refused"] <= refused_before[org]:
            assert time.time() < deadline, f"{org} did not refuse the forged record"
            time.sleep(0.2)
        with Client(url, demo_admin("nordwerk")) as c:
            c.login()
            with pytest.raises(BlokError) as absent:
                c.crash_record(other.record_hash)
            assert absent.value.code == "record_not_stored"
            assert edr.encode_record(c.crash_record(signed.record_hash)) == signed.record


def test_a_tampered_node_is_detected_and_named(network: dict[str, Any]) -> None:
    directory, victim = network["dir"], "autohaus-lenz"
    honest = Client(network["urls"]["nordwerk"], demo_admin("nordwerk"))
    assert anchor(honest, "the invoice")["status"] == "ok"
    converge(network)
    # the victim's operator deletes a record behind the ledger's back
    local.stop_process(directory, victim)
    db = sqlite3.connect(directory / "nodes" / victim / "ledger.sqlite")
    with db:
        assert db.execute("DELETE FROM state WHERE k = ?", (f"notary/{digest('the invoice')}",)).rowcount == 1
    db.close()
    local.start_process(directory, victim)
    # the same document again: honest nodes refuse it, the tampered node accepts it -> different roots
    assert anchor(honest, "the invoice")["code"] == "already_anchored"
    deadline = time.time() + 30
    while True:
        info = Client(network["urls"]["nordwerk"])._json("GET", "/v1/network")
        named = {c["signer"] for c in info["conflicts"]}
        if any(victim in name for name in named):
            break
        assert time.time() < deadline, f"no conflict recorded: {info}"
        time.sleep(0.2)
    converge(network, ["nordwerk", "kestrel-parts"])                # the honest two still finalise
    status = views(network)
    assert status[victim][1] != status["nordwerk"][1]
    # outvoted by a quorum, the tampered node knows it is the one that diverged and stops committing
    deadline = time.time() + 30
    while True:
        with Client(network["urls"][victim]) as c:
            info, stopped = c._json("GET", "/v1/network"), c.status()
        if info["diverged"] is not None and not stopped["healthy"]:
            break
        assert time.time() < deadline, f"the tampered node did not stop: {info['diverged']}, {stopped}"
        time.sleep(0.2)
    signers = info["diverged"]["signers"]
    assert len(signers) == 2 and {org for org in ("nordwerk", "kestrel-parts") for n in signers if org in n} == \
        {"nordwerk", "kestrel-parts"}
    with pytest.raises(BlokError) as refused:
        anchor(Client(network["urls"][victim], demo_admin(victim)), "on a diverged node")
    assert refused.value.code == "node_failed"
    assert anchor(honest, "after the divergence")["status"] == "ok"   # the others go on without it
    converge(network, ["nordwerk", "kestrel-parts"])
    assert views(network)[victim][0] < views(network)["nordwerk"][0]


def admit(network: dict[str, Any], joiner: str, voters: list[str]) -> None:
    """The consortium admits a demo organisation with its node key: proposed by nordwerk, voted by ``voters``."""
    from blokauto.crypto.keys import b64
    from blokauto.demo import DEMO_ORGS, demo_node_key, node_key_name

    spec, chain = next(o for o in DEMO_ORGS if o["id"] == joiner), network["state"]["chain"]
    proposal = Client(network["urls"]["nordwerk"], demo_admin("nordwerk")).submit("gov.propose", {"action": {
        "kind": "admit_org", "org": {
            "id": joiner, "name": spec["name"], "roles": spec["roles"], "admins": [demo_admin(joiner).did],
            "node": {"name": node_key_name(chain, joiner), "public_key": b64(demo_node_key(joiner).public_key)}}}})
    assert proposal["status"] == "ok", proposal
    for voter in voters:
        vote = Client(network["urls"]["nordwerk"], demo_admin(voter)).submit("gov.vote", {"proposal": proposal["tx"]})
        assert vote["status"] == "ok", vote
    assert Client(network["urls"]["nordwerk"], demo_admin("nordwerk")).state(f"id/node/{joiner}")["value"], \
        "the organisation was not admitted"


@contextlib.contextmanager
def joined_node(network: dict[str, Any], joiner: str) -> Iterator[Path]:
    """Run the node in ``nodes/<joiner>`` (its ledger made by the caller) on the consortium's network."""
    import msgspec

    from blokauto.network.config import load_network_config, write_network_config

    directory = network["dir"]
    data = directory / "nodes" / joiner
    template = load_network_config(directory / "nodes" / "nordwerk" / "network.json")
    write_network_config(data / "network.json", msgspec.structs.replace(template, org=joiner, api_url=None))
    port = local._free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "blokauto.cli.main", "serve", "--data", str(data), "--port",
                             str(port), "--network", str(data / "network.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    network["urls"][joiner] = f"http://127.0.0.1:{port}"
    try:
        yield data
    finally:
        del network["urls"][joiner]
        proc.terminate()
        proc.wait(timeout=30)


def catches_up_cosigns_and_verifies(network: dict[str, Any], joiner: str, data: Path) -> int:
    """The joined node reaches the others' height and root, its signature is on the next final
    checkpoint, and its own ledger passes the full audit (blocks it signed before its admission
    included). Returns the height it caught up at."""
    from blokauto.demo import node_key_name

    deadline = time.time() + 60
    while True:
        try:
            # (the tampered node of an earlier test stays apart)
            height, _ = converge(network, ["nordwerk", "kestrel-parts", joiner], timeout_s=5)
            break
        except (AssertionError, BlokError):
            assert time.time() < deadline, f"{joiner}'s node did not catch up"
    nordwerk = Client(network["urls"]["nordwerk"], demo_admin("nordwerk"))
    assert anchor(nordwerk, f"cosigned by {joiner}")["status"] == "ok"
    name, deadline = node_key_name(network["state"]["chain"], joiner), time.time() + 30
    while True:
        info = Client(network["urls"]["nordwerk"])._json("GET", "/v1/network")
        if info["final"] and info["final"]["height"] > height and name in info["final"]["signers"]:
            break
        assert time.time() < deadline, info
        time.sleep(0.2)
    audited = subprocess.run([sys.executable, "-m", "blokauto.cli.main", "verify", "--data", str(data)],
                             capture_output=True, text=True, timeout=300)
    assert audited.returncode == 0 and "OK" in audited.stdout, audited.stderr
    return height


def test_a_new_organisation_joins_syncs_and_cosigns(network: dict[str, Any]) -> None:
    """It replays and checks the whole history from the stream, then cosigns."""
    import json

    from blokauto.demo import demo_node_key
    from blokauto.node import init_ledger

    joiner = "werkstatt-berg"
    admit(network, joiner, ["kestrel-parts"])
    # the new organisation's node: the consortium's genesis, its own key, the same network
    init_ledger(network["dir"] / "nodes" / joiner, json.loads((network["dir"] / "genesis.json").read_text()), joiner,
                demo_node_key(joiner).signing_key, joining=True)
    with joined_node(network, joiner) as data:
        catches_up_cosigns_and_verifies(network, joiner, data)


def test_a_new_organisation_starts_from_a_snapshot(network: dict[str, Any],
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """A joining node need not replay the stream from its start: it starts from a member's snapshot
    (taken while that node runs), audited in full, goes on from the snapshot's stream position, and
    cosigns with the others."""
    import json

    from blokauto.demo import demo_node_key
    from blokauto.node import init_from_snapshot, write_snapshot

    directory, joiner = network["dir"], "alpina-insurance"
    nordwerk = Client(network["urls"]["nordwerk"], demo_admin("nordwerk"))
    admit(network, joiner, ["kestrel-parts", "werkstatt-berg"])   # a majority of the four organisations now
    assert anchor(nordwerk, "before the snapshot")["status"] == "ok"
    converge(network, ["nordwerk", "kestrel-parts"])
    snap = tmp_path_factory.mktemp("snapshot") / "nordwerk.sqlite"
    head = write_snapshot(directory / "nodes" / "nordwerk", snap)   # nordwerk's node keeps running
    assert head["stream_seq"] > 0
    genesis = json.loads((directory / "genesis.json").read_text())
    started = init_from_snapshot(directory / "nodes" / joiner, snap, genesis, joiner,
                                 demo_node_key(joiner).signing_key, joining=True)
    assert started == head
    with joined_node(network, joiner) as data:
        assert anchor(nordwerk, "after the snapshot")["status"] == "ok"
        assert catches_up_cosigns_and_verifies(network, joiner, data) > head["height"]


def test_a_node_behind_a_purged_stream_comes_back_from_a_snapshot(
        network: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A node down while the stream dropped what it had not read (a retention limit, a purge) refuses
    to go on with a hole in its history; a member's snapshot, audited in full, brings it back."""
    import json

    from blokauto.demo import demo_node_key
    from blokauto.node import init_from_snapshot, write_snapshot

    directory, chain, member = network["dir"], network["state"]["chain"], "kestrel-parts"
    assert local.stop_process(directory, member)
    proposer = Client(network["urls"]["nordwerk"], demo_admin("nordwerk"))
    for i in range(3):
        assert anchor(proposer, f"while {member} is down {i}")["status"] == "ok"

    async def purge() -> None:      # keep only the newest message, as a retention limit would
        nc = await nats.connect(network["state"]["nats"][0]["url"])
        await nc.jetstream().purge_stream(f"BLOKAUTO_{stream_id(chain)}", keep=1)
        await nc.close()

    asyncio.run(purge())
    with pytest.raises(BlokError) as lost:
        local.start_process(directory, member)
    assert "ordering_history_lost" in lost.value.message
    data = directory / "nodes" / member
    for stale in [*data.glob("ledger.sqlite*"), data / "node.key"]:
        stale.unlink()
    snap = tmp_path_factory.mktemp("restore") / "nordwerk.sqlite"
    head = write_snapshot(directory / "nodes" / "nordwerk", snap)
    init_from_snapshot(data, snap, json.loads((directory / "genesis.json").read_text()), member,
                       demo_node_key(member).signing_key)
    local.start_process(directory, member)
    assert anchor(proposer, f"{member} is back")["status"] == "ok"
    height, _ = converge(network, ["nordwerk", member], timeout_s=60)
    assert height > head["height"]
