"""The local consortium's plumbing: a real 3-server JetStream cluster that survives losing one
server, the network directory a node starts from, and the network file's error messages.

The node processes themselves (``serve --network``) are exercised by the network fault tests;
here only what does not need them is started.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig
from typer.testing import CliRunner

from blokauto.cli.network import network_app
from blokauto.demo import demo_node_key
from blokauto.errors import InputError
from blokauto.network import local
from blokauto.network.config import NetworkConfig, connect_options, load_network_config, write_network_config
from blokauto.network.local import (
    NETWORK_CHAIN,
    is_alive,
    nats_config_text,
    network_down,
    network_status,
    network_up,
    read_state,
    seed_fleet_via_api,
    start_nats_cluster,
    start_process,
    stop_process,
    write_network,
)
from blokauto.node import Node


@pytest.fixture
def net_dir(tmp_path: Path) -> Iterator[Path]:
    """A network directory whose processes are stopped even when the test fails half-way."""
    directory = tmp_path / "net"
    yield directory
    network_down(directory)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _publish_and_read(urls: list[str], subject: str, data: bytes) -> int:
    """Publish to the R3 stream through any live server, read the message back; returns its sequence."""
    nc = await nats.connect(urls, connect_timeout=1, reconnect_time_wait=0.1, max_reconnect_attempts=20)
    try:
        js = nc.jetstream(timeout=5)
        ack = await js.publish(subject, data)
        msg = await js.get_msg("NETTEST", ack.seq)
        assert msg.data == data
        return ack.seq
    finally:
        await nc.close()


async def _create_stream(urls: list[str]) -> dict[str, Any]:
    nc = await nats.connect(urls, connect_timeout=1)
    try:
        info = await nc.jsm(timeout=5).add_stream(StreamConfig(name="NETTEST", subjects=["nettest.>"],
                                                               num_replicas=3))
        assert info.cluster is not None
        return {"leader": info.cluster.leader, "replicas": [r.name for r in info.cluster.replicas or []]}
    finally:
        await nc.close()


async def _replica_current(urls: list[str], name: str) -> bool:
    nc = await nats.connect(urls, connect_timeout=1)
    try:
        info = await nc.jsm(timeout=5).stream_info("NETTEST")
        assert info.cluster is not None
        if info.cluster.leader == name:
            return True
        return any(r.name == name and r.current for r in info.cluster.replicas or [])
    finally:
        await nc.close()


@pytest.mark.slow
def test_nats_cluster_survives_a_server_and_network_dir_is_consistent(net_dir: Path) -> None:
    tmp_path = net_dir
    started = time.monotonic()
    servers = start_nats_cluster(tmp_path, 3)
    took = time.monotonic() - started
    assert [s["name"] for s in servers] == ["n1", "n2", "n3"]
    assert took < 30
    conf = (tmp_path / "nats" / "n1.conf").read_text()
    assert "cluster {" in conf and "server_name: n1" in conf and "jetstream" in conf
    urls = [s["url"] for s in servers]

    # a replicas-3 stream placed on all three servers takes and returns a message
    placement = asyncio.run(_create_stream(urls))
    assert sorted([placement["leader"], *placement["replicas"]]) == ["n1", "n2", "n3"]
    assert asyncio.run(_publish_and_read(urls, "nettest.a", b"one")) == 1

    # a running network is never started twice
    with pytest.raises(InputError) as caught:
        network_up(tmp_path)
    assert caught.value.code == "network_running"

    # one server down: the other two are still a Raft majority, publishes go on
    n2_pid = servers[1]["pid"]
    assert stop_process(tmp_path, "n2") is True
    assert _pid_gone(n2_pid)
    assert stop_process(tmp_path, "n2") is False
    assert asyncio.run(_publish_and_read(urls, "nettest.b", b"two")) == 2

    # back again with its store: it catches up and the stream keeps taking messages
    record = start_process(tmp_path, "n2")
    assert is_alive(record) and record["pid"] != n2_pid
    assert asyncio.run(_publish_and_read(urls, "nettest.c", b"three")) == 3
    deadline = time.monotonic() + 20
    while not asyncio.run(_replica_current(urls, "n2")):
        assert time.monotonic() < deadline, "n2 did not catch up"
        time.sleep(0.2)

    # the network directory the nodes start from
    nodes = write_network(tmp_path, 3)
    assert [n["org"] for n in nodes] == ["nordwerk", "kestrel-parts", "autohaus-lenz"]
    genesis = json.loads((tmp_path / "genesis.json").read_text())
    assert genesis["chain"] == NETWORK_CHAIN
    assert [o["id"] for o in genesis["orgs"]] == [n["org"] for n in nodes]
    assert genesis["policies"]["checkpoint.quorum"] == 2
    heads = set()
    for node in nodes:
        cfg = load_network_config(node["network_file"])
        assert (cfg.chain, cfg.org, cfg.servers, cfg.api_url) == (NETWORK_CHAIN, node["org"], urls, node["api_url"])
        connect_options(cfg)
        with Node(Path(node["data_dir"])) as ledger_node:
            assert ledger_node.org_id == node["org"] and ledger_node.chain == NETWORK_CHAIN
            assert ledger_node.checkpoint_quorum() == 2
            head = ledger_node.ledger.head
            heads.add((head.height, head.state_root, head.log_root))
        assert node["org"] in (Path(node["data_dir"]) / "node.key").read_text()
    assert len(heads) == 1, "every organisation's block 0 is the same"
    assert len({n["port"] for n in nodes} | {s["port"] for s in servers}) == 6
    with pytest.raises(InputError) as caught:
        write_network(tmp_path, 3)
    assert caught.value.code == "network_exists"

    state = read_state(tmp_path)
    assert state is not None and len(state["nodes"]) == 3 and len(state["nats"]) == 3
    rows = network_status(tmp_path)
    assert [r["alive"] for r in rows if r["kind"] == "nats"] == [True, True, True]
    assert not any(r["reachable"] for r in rows if r["kind"] == "node")

    # down stops everything it started, and only once
    pids = [s["pid"] for s in read_state(tmp_path)["nats"]]  # type: ignore[index]
    assert sorted(network_down(tmp_path)) == ["n1", "n2", "n3"]
    assert all(_pid_gone(pid) for pid in pids)
    assert network_down(tmp_path) == []
    assert not any(r["alive"] for r in network_status(tmp_path))
    assert time.monotonic() - started < 50


def test_single_server_config_has_no_cluster(tmp_path: Path) -> None:
    text = nats_config_text("n1", 4222, tmp_path / "js")
    assert "cluster" not in text and "listen: 127.0.0.1:4222" in text


def test_network_up_checks_arguments_first(tmp_path: Path) -> None:
    for kwargs in ({"orgs": 0}, {"orgs": 10}, {"servers": 0}, {"orgs": 3, "fleet": 5}):
        with pytest.raises(InputError):
            network_up(tmp_path / "net", **kwargs)
        assert not (tmp_path / "net" / "network.state.json").exists()


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "malformed"),
    ('{"org": "nordwerk", "servers": ["nats://127.0.0.1:4222"]}', "chain"),
    ('{"chain": "blokauto.example/network", "org": "nordwerk", "servers": []}', "servers"),
    ('{"chain": "blokauto.example/network", "org": "nordwerk", "servers": ["http://x:1"]}', "nats://"),
    ('{"chain": "blokauto.example/network", "org": "nordwerk", "servers": ["nats://x:1"], "cut_ms": 5}', "cut_ms"),
    ('{"chain": "blokauto.example/network", "org": "nordwerk", "servers": ["nats://x:1"], "max_block_txs": 0}',
     "max_block_txs"),
    ('{"chain": "blokauto.example/network", "org": "nordwerk", "servers": ["nats://x:1"], '
     '"tls": {"cert_file": "c.pem"}}', "key_file"),
])
def test_load_network_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "network.json"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_network_config(path)
    assert caught.value.code == "bad_network_config"
    assert fragment in caught.value.message.lower() or fragment in caught.value.message


def test_network_config_round_trip_and_connect_options(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_network_config(tmp_path / "missing.json")
    assert caught.value.code == "bad_network_config"
    cfg = NetworkConfig(chain=NETWORK_CHAIN, org="nordwerk", servers=["nats://127.0.0.1:4222"], replicas=3)
    write_network_config(tmp_path / "n.json", cfg)
    assert load_network_config(tmp_path / "n.json") == cfg
    options = connect_options(cfg)
    assert options["max_reconnect_attempts"] == -1 and "servers" not in options
    assert "tls" not in options and "user_credentials" not in options

    # relative files are next to the network file; missing ones are named
    (tmp_path / "n.json").write_text(json.dumps({"chain": NETWORK_CHAIN, "org": "nordwerk",
                                                 "servers": ["tls://127.0.0.1:4222"],
                                                 "credentials_file": "nordwerk.creds"}))
    loaded = load_network_config(tmp_path / "n.json")
    assert loaded.credentials_file == str(tmp_path / "nordwerk.creds")
    with pytest.raises(InputError) as caught:
        connect_options(loaded)
    assert caught.value.code == "bad_network_config" and "nordwerk.creds" in caught.value.message
    (tmp_path / "nordwerk.creds").write_text("creds")
    assert connect_options(loaded)["user_credentials"] == str(tmp_path / "nordwerk.creds")


def test_fleet_seeding_goes_through_the_api(live_node: str) -> None:
    summary = seed_fleet_via_api(live_node, 3)
    assert summary["vehicles"] == 3 and summary["refused"] == 0
    assert summary["accepted"] + summary["rejected"] == summary["transactions"] > 9


def test_demo_node_key_matches_network_genesis(tmp_path: Path) -> None:
    """A node started from write_network signs with the key its genesis names (no drift from demo.py)."""
    from blokauto.crypto.keys import b64
    from blokauto.network.local import network_genesis

    genesis = network_genesis(5, time_ms=0)
    assert genesis["policies"]["checkpoint.quorum"] == 3
    for org in genesis["orgs"]:
        assert org["node"]["public_key"] == b64(demo_node_key(org["id"]).public_key)


def test_block_cutting_is_fixed_by_genesis_not_by_a_node(tmp_path: Path) -> None:
    """Two nodes with different max_block_txs would cut different blocks: genesis fixes it for all."""
    from blokauto.contracts.governance import parse_genesis
    from blokauto.network.local import network_genesis
    from blokauto.node import NodeConfig, init_ledger

    genesis = network_genesis(3, time_ms=0)
    assert parse_genesis(genesis).ordering.max_block_txs == genesis["ordering"]["max_block_txs"] == 2000
    for bad in (0, 100_001, "2000"):
        with pytest.raises(InputError) as refused:
            parse_genesis({**genesis, "ordering": {"max_block_txs": bad}})
        assert refused.value.code == "bad_genesis"
    with pytest.raises(InputError):
        parse_genesis({**genesis, "ordering": {"max_block_txs": 10, "cut_every": 5}})

    init_ledger(tmp_path / "n", genesis, "nordwerk", demo_node_key("nordwerk").signing_key)
    cfg = NetworkConfig(chain=NETWORK_CHAIN, org="nordwerk", servers=["nats://127.0.0.1:1"], max_block_txs=7)
    with pytest.raises(InputError) as caught:
        Node(tmp_path / "n", NodeConfig(network=cfg))
    assert caught.value.code == "bad_network_config" and "genesis" in caught.value.message


@pytest.mark.slow
def test_node_processes_lifecycle(net_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """up / status / stop / start / down with real node processes and a single nats server.

    The nodes run plain ``serve`` (each its own solo ledger): what is checked is process handling,
    which does not depend on ``serve --network`` (the network tests of the node cover that)."""
    def start_solo(record: dict[str, Any]) -> None:
        record["pid"] = local._spawn([sys.executable, "-m", "blokauto.cli.main", "serve", "--data",
                                      record["data_dir"], "--port", str(record["port"])], Path(record["log"]))

    monkeypatch.setattr(local, "_start_node", start_solo)
    net = net_dir
    state = network_up(net, orgs=2, servers=1)
    assert [n["org"] for n in state["nodes"]] == ["nordwerk", "kestrel-parts"]
    rows = network_status(net)
    nodes = [r for r in rows if r["kind"] == "node"]
    assert all(r["alive"] and r["reachable"] and r["height"] == 0 for r in nodes)
    assert nodes[0]["state_root"] == nodes[1]["state_root"] and nodes[0]["network"]["mode"] == "solo"

    runner = CliRunner()
    result = runner.invoke(network_app, ["status", "--dir", str(net), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == ["nordwerk", "kestrel-parts", "n1"]
    result = runner.invoke(network_app, ["status", "--dir", str(net)])
    assert result.exit_code == 0 and "kestrel-parts" in result.stdout

    result = runner.invoke(network_app, ["stop", "kestrel-parts", "--dir", str(net)])
    assert result.exit_code == 0 and "stopped kestrel-parts" in result.stdout
    assert [r["reachable"] for r in network_status(net) if r["kind"] == "node"] == [True, False]
    with pytest.raises(InputError) as caught:
        network_up(net)
    assert caught.value.code == "network_running"
    start_process(net, "kestrel-parts")
    assert all(r["reachable"] for r in network_status(net) if r["kind"] == "node")

    assert sorted(network_down(net)) == ["kestrel-parts", "n1", "nordwerk"]
    assert not any(r["alive"] for r in network_status(net))
    state = network_up(net)     # a stopped network starts again with its data and ports
    assert all(r["alive"] for r in network_status(net))
    result = runner.invoke(network_app, ["down", "--dir", str(net)])
    assert result.exit_code == 0 and "nordwerk" in result.stdout
    with pytest.raises(InputError) as caught:
        stop_process(net, "n7")
    assert caught.value.code == "unknown_process"
