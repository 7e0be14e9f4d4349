"""The ``blokauto`` command line. One error boundary: a BlokError prints its code and message
to stderr and exits 1; usage errors exit 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from blokauto.cli import network, parts, software, vehicledata, vehicles
from blokauto.cli.common import (
    DEFAULT_NODE,
    DataOpt,
    NodeOpt,
    PasswordEnv,
    err,
    load_signer,
    out,
    password_from,
    print_json,
)
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.crypto.keystore import keystore_info, read_keystore, write_keystore
from blokauto.errors import BlokError, InputError

app = typer.Typer(help="Blok Auto: the shared, verifiable ledger of every vehicle's life.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Create and inspect encrypted Ed25519 keystores.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

# -- keys ---------------------------------------------------------------------------------------


@keys_app.command("new")
def keys_new(
    out_file: Annotated[Path, typer.Option("--out", help="Keystore file to create (never overwritten).")],
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
    strength: Annotated[str, typer.Option(help="interactive | moderate | sensitive (argon2id cost).")] = "moderate",
) -> None:
    """Create a new Ed25519 key in an encrypted keystore file and print its did:key."""
    if strength not in ("interactive", "moderate", "sensitive"):
        raise InputError("strength is interactive, moderate or sensitive", code="bad_strength")
    signer = Signer.generate()
    write_keystore(out_file, signer.signing_key, password_from(password_env, confirm=True),
                   strength=strength)  # type: ignore[arg-type]
    out.print(f"[green]created[/] {out_file}")
    sys.stdout.write(signer.did + "\n")


@keys_app.command("show")
def keys_show(path: Path) -> None:
    """Print a keystore's public information (no password needed)."""
    print_json(keystore_info(path))


# -- node ---------------------------------------------------------------------------------------


@app.command()
def init(
    data: DataOpt,
    demo: Annotated[bool, typer.Option("--demo", help="Create the nine-organisation demo consortium.")] = False,
    genesis: Annotated[Path | None, typer.Option(help="Genesis document (JSON) of a real consortium.")] = None,
    org: Annotated[str | None, typer.Option(help="With --genesis: the organisation running this node.")] = None,
    node_key: Annotated[Path | None, typer.Option(help="With --genesis: keystore of this node's key.")] = None,
    joining: Annotated[bool, typer.Option(help="With --genesis: an organisation admitted after genesis.")] = False,
    from_snapshot: Annotated[Path | None, typer.Option(
        help="With --genesis: start from another node's snapshot (blokauto snapshot), audited in full first, "
             "instead of from block 0.")] = None,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
    fleet: Annotated[int, typer.Option("--fleet", min=0,
                                       help="With --demo: sample vehicles with a history (0: none).")] = 300,
) -> None:
    """Create a ledger in DATA: block 0 from a genesis document (or the demo consortium)."""
    from blokauto import demo as demo_mod
    from blokauto.node import init_ledger

    if demo == (genesis is not None):
        raise InputError("give exactly one of --demo or --genesis", code="usage")
    if demo:
        doc = demo_mod.demo_genesis()
        init_ledger(data, doc, demo_mod.OPERATOR_ORG, demo_mod.demo_node_key(demo_mod.OPERATOR_ORG).signing_key)
        demo_mod.write_demo_keystores(data / "keys")
        seeded = demo_mod.seed_demo(data, fleet=fleet)
        orgs = len(doc["orgs"]) + (len(demo_mod.LATER_ORGS) if fleet > 0 else 0)   # the parts story admits two
        out.print(f"[green]demo ledger created[/] in {data}: {orgs} organisations, "
                  f"{seeded} sample transactions, keystores in {data / 'keys'} (password '{demo_mod.DEMO_PASSWORD}')")
        return
    assert genesis is not None
    if org is None or node_key is None:
        raise InputError("--genesis needs --org and --node-key", code="usage")
    try:
        doc = canonical.decode(canonical.encode(json.loads(genesis.read_text())))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read genesis {genesis}: {exc}", code="bad_genesis") from None
    signing_key = read_keystore(node_key, password_from(password_env))
    if from_snapshot is not None:
        from rich.progress import Progress

        from blokauto.node import init_from_snapshot

        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("auditing the snapshot", total=None)
            head = init_from_snapshot(data, from_snapshot, doc, org, signing_key, joining=joining,
                                      progress=lambda h, top: bar.update(task, completed=h + 1, total=top + 1))
        out.print(f"[green]ledger created[/] in {data} for {org} from the snapshot: height {head['height']}, "
                  f"{head['log_size']} transactions, every block re-executed and compared; a network node "
                  f"continues from stream position {head['stream_seq']}")
        return
    init_ledger(data, doc, org, signing_key, joining=joining)
    out.print(f"[green]ledger created[/] in {data} for {org}")


@app.command()
def snapshot(
    data: DataOpt,
    out_file: Annotated[Path, typer.Option("--out", help="The snapshot file to write (must not exist).")],
) -> None:
    """Copy a node's ledger (also while it runs) for another node to start from: blokauto init --from-snapshot."""
    from blokauto.node import write_snapshot

    head = write_snapshot(data, out_file)
    out.print(f"[green]snapshot written[/] to {out_file}: height {head['height']}, {head['log_size']} transactions, "
              f"stream position {head['stream_seq']}")


@app.command()
def serve(
    data: DataOpt,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    synchronous: Annotated[str, typer.Option(help="SQLite synchronous: NORMAL (survives kill -9) or FULL "
                                                  "(also power loss).")] = "NORMAL",
    network: Annotated[Path | None, typer.Option(help="Network file (JSON): order through the consortium's "
                                                      "JetStream cluster and cosign checkpoints.")] = None,
) -> None:
    """Run a node: the HTTP API (docs at /docs), pages and the committer."""
    import uvicorn

    from blokauto.api.app import create_app
    from blokauto.logs import configure_logging
    from blokauto.node import Node, NodeConfig

    if synchronous.upper() not in ("NORMAL", "FULL"):
        raise InputError("--synchronous is NORMAL or FULL", code="usage")
    configure_logging()
    from blokauto.runtime import tune_process

    tune_process()
    net = None
    if network is not None:
        from blokauto.network.config import load_network_config

        net = load_network_config(network)
    with Node(data, NodeConfig(synchronous=synchronous.upper(), network=net)) as node:
        err.print(f"[green]serving[/] {node.chain} (height {node.ledger.head.height}) on http://{host}:{port} "
                  f"— docs at http://{host}:{port}/docs")
        uvicorn.run(create_app(node), host=host, port=port, log_config=None, access_log=False)


@app.command()
def verify(
    data: DataOpt,
    genesis: Annotated[Path | None, typer.Option(help="Trusted genesis file to compare with.")] = None,
) -> None:
    """Audit the whole ledger from genesis: hashes, signatures, links, log root, state root."""
    from rich.progress import Progress

    from blokauto.contracts import governance
    from blokauto.contracts.registry import load_all
    from blokauto.crypto.note import verifier_key
    from blokauto.ledger.audit import audit
    from blokauto.ledger.store import Store
    from blokauto.node import NODE_KEY_FILE, genesis_known_keys, read_node_key, state_node_keys

    store = Store(data, random_access=False)   # the audit reads the whole file: read-ahead helps it
    try:
        stored = store.get_meta("genesis")
        trusted = json.loads(genesis.read_text()) if genesis else None
        doc = trusted or (canonical.decode(stored) if stored else {})
        keys = genesis_known_keys(doc)
        if (data / NODE_KEY_FILE).exists():   # this node's own key signed its checkpoints, also before its admission
            signer = read_node_key(data)[1]
            keys.append(verifier_key(signer.name, bytes(signer.key.verify_key)))
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("replaying blocks", total=None)

            def tick(height: int, head: int) -> None:
                progress.update(task, completed=height + 1, total=head + 1)

            report = audit(store, load_all(), governance.apply_genesis, keys, progress=tick, genesis=trusted,
                           keys_in_state=state_node_keys)
    finally:
        store.close()
    if report.ok:
        out.print(f"[green]OK[/]: {report.blocks} blocks, {report.transactions} transactions re-executed; "
                  "every hash, signature, link, log root and state root matches")
        return
    err.print(f"[red]INCONSISTENT[/] from height {report.first_bad_height}")
    for problem in report.problems:
        err.print(f"  - {problem}")
    raise typer.Exit(3)


# -- client -------------------------------------------------------------------------------------


def _read_payload(payload: str) -> Any:
    text = Path(payload[1:]).read_text() if payload.startswith("@") else payload
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"payload is not JSON: {exc}", code="malformed_json") from None


@app.command()
def submit(
    tx_type: Annotated[str, typer.Option("--type", help="Transaction type, e.g. notary.anchor.")],
    payload: Annotated[str, typer.Option(help="Payload JSON, or @file.json.")],
    key: Annotated[Path, typer.Option(help="Signer's keystore.")],
    cosign: Annotated[list[Path] | None, typer.Option(help="Cosigner keystore (repeatable).")] = None,
    node: NodeOpt = DEFAULT_NODE,
    wait: Annotated[bool, typer.Option(help="Wait for the committed receipt.")] = True,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Sign a transaction and submit it; prints the receipt."""
    from blokauto.client import Client

    signer = load_signer(key, password_env)
    cosigners = [load_signer(p, password_env) for p in cosign or []]
    with Client(node, signer) as client:
        receipt = client.submit(tx_type, _read_payload(payload), cosigners=cosigners, wait=wait)
    print_json(receipt)
    if receipt.get("status") == "rejected":
        reason = escape(f"[{receipt.get('code')}]: {receipt.get('message')}")
        err.print(f"[yellow]rejected[/] {reason} (kept in the log)")
        raise typer.Exit(4)


@app.command()
def tx(
    tx_hash: str,
    node: NodeOpt = DEFAULT_NODE,
    key: Annotated[Path | None, typer.Option(help="Member keystore, for records that need a token.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the proof object here.")] = None,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Fetch a transaction's receipt and inclusion proof."""
    from blokauto.client import Client

    with Client(node, load_signer(key, password_env) if key else None) as client:
        if key:
            client.login()
        record = client.tx(tx_hash)
    if out_file:
        out_file.write_text(json.dumps(record["proof"], indent=2) + "\n")
        err.print(f"proof written to {out_file}")
    print_json(record)


@app.command("check-proof")
def check_proof(
    proof_file: Path,
    keys: Annotated[Path, typer.Option(help="Trusted checkpoint keys, one per line (GET /v1/checkpoint/keys).")],
    quorum: Annotated[int, typer.Option(help="Organisation signatures required.")] = 1,
    origin: Annotated[str | None, typer.Option(help="Expected chain id.")] = None,
) -> None:
    """Verify a record or state proof offline: no node needed."""
    from blokauto.ledger import proofs

    obj = json.loads(proof_file.read_text())
    trusted = [line.strip() for line in keys.read_text().splitlines() if line.strip()]
    if "proof" in obj and "key" in obj:
        key, value = proofs.verify_state_proof_object(obj, trusted, quorum, origin)
        out.print(f"[green]VALID[/] state proof: {key} = {json.dumps(value) if value is not None else 'absent'}")
        return
    proof = obj.get("proof", obj) if isinstance(obj, dict) else obj
    leaf = proofs.verify_record_proof(proof, trusted, quorum, origin)
    body = leaf["tx"]["body"]
    out.print(f"[green]VALID[/]: {body['type']} by {body['signer']} at height {leaf['height']}, "
              f"result {leaf['result']['status']}, leaf {proof['leaf_index']} of {proof['tree_size']}")


@app.command()
def state(
    key_name: Annotated[str, typer.Argument(metavar="KEY")],
    node: NodeOpt = DEFAULT_NODE,
    proof: Annotated[bool, typer.Option("--proof", help="Include the state proof.")] = False,
    key: Annotated[Path | None, typer.Option(help="Member keystore, for member-only keys.")] = None,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Read a state key (and its proof)."""
    from blokauto.client import Client

    with Client(node, load_signer(key, password_env) if key else None) as client:
        if key:
            client.login()
        print_json(client.state(key_name, proof=proof))


@app.command()
def checkpoint(node: NodeOpt = DEFAULT_NODE) -> None:
    """Print the node's latest signed checkpoint."""
    from blokauto.client import Client

    with Client(node) as client:
        sys.stdout.write(client.checkpoint())


@app.command()
def status(node: NodeOpt = DEFAULT_NODE) -> None:
    """Print a node's height, roots and queue depth."""
    from blokauto.client import Client

    with Client(node) as client:
        print_json(client.status())


@app.command()
def bench(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    transactions: Annotated[int, typer.Option("--n", min=100, help="Transactions to commit.")] = 50_000,
    quick: Annotated[bool, typer.Option(help="A short run (for smoke tests).")] = False,
    reports: Annotated[bool, typer.Option(help="Also measure vehicle reports on a committed fleet.")] = True,
    report_vehicles: Annotated[int, typer.Option(min=10, help="Vehicles in the reports ledger.")] = 1_000,
    report_events: Annotated[int, typer.Option(min=1, help="Events per vehicle after its registration.")] = 49,
    reports_data: Annotated[Path | None, typer.Option(
        help="Keep the reports ledger in this directory: built (or resumed) once, measured on every run. "
             "The target is stated at 1,000,000 vehicles and 20,000,000 events (--report-vehicles 1000000 "
             "--report-events 19: ~45 GB).")] = None,
    report_seed: Annotated[int | None, typer.Option(
        help="Seed that picks the vehicles to measure (default: a fresh one, so a kept ledger is read cold).")] = None,
    network: Annotated[bool | None, typer.Option(help="Also measure a local 3-node network (default: on, "
                                                      "off with --quick).")] = None,
    network_n: Annotated[int, typer.Option(min=1_000, help="Transactions for the network run.")] = 20_000,
    parts: Annotated[bool, typer.Option(help="Also measure parts: bulk registration, authenticity checks, "
                                             "recall lists.")] = True,
    parts_n: Annotated[int, typer.Option(min=20_000, help="Parts to register.")] = 400_000,
    parts_index_vehicles: Annotated[int, typer.Option(
        min=1_000, help="Vehicles (30 fitted parts each) in the full-scale recall index; the target is stated at "
             "1,000,000 (~3 GB, ~10 min to write).")] = 100_000,
    vehicle_data: Annotated[bool, typer.Option(help="Also measure telematics ingestion, sample proofs and "
                                                    "crash deposits through the HTTP API.")] = True,
    telematics_n: Annotated[int, typer.Option(min=57_600, help="Telematics samples to ingest.")] = 2_000_000,
) -> None:
    """Measure committed tx/s through the real path beside same-run baselines, then report speed."""
    from blokauto.bench import run_bench

    say = None if json_out else err.print
    results = run_bench(2_000 if quick else transactions, log=say)
    if reports:
        from blokauto.bench_reports import run_report_bench

        results["reports"] = run_report_bench(50 if quick else report_vehicles, 9 if quick else report_events,
                                              samples=40 if quick else 300, log=say, data_dir=reports_data,
                                              seed=report_seed)
    if parts:
        from blokauto.bench_parts import run_parts_bench

        results["parts"] = run_parts_bench(40_000 if quick else parts_n, fleet=100 if quick else 1_000,
                                           index_vehicles=2_000 if quick else parts_index_vehicles,
                                           samples=40 if quick else 200, log=say)
    if vehicle_data:
        from blokauto.bench_vehicledata import run_vehicledata_bench

        results["vehicle_data"] = run_vehicledata_bench(57_600 if quick else telematics_n,
                                                        crashes=10 if quick else 100, log=say)
    if network if network is not None else not quick:
        from blokauto.bench_network import run_network_bench

        net = run_network_bench(network_n, log=say)
        single = results["blokauto"]["tx_per_s"]
        net["lines"] = [
            f"network, 3 JetStream servers + 3 nodes on this machine, to final (quorum-signed) checkpoints: "
            f"{net['tx_per_s']:,.0f} tx/s",
            f"ratio network / single node (same run, {single:,.0f} tx/s): {net['tx_per_s'] / single:.2f} "
            "(target >= 0.5)",
            f"submission -> final checkpoint at a steady {net['steady_rate']:,.0f} tx/s: "
            f"p50 {net['final_latency_p50_s'] * 1000:,.0f} ms, p99 {net['final_latency_p99_s'] * 1000:,.0f} ms "
            f"over {net['probes']} probes (target p99 <= 1 s); all nodes same state root: {net['converged']}",
        ]
        single_cpu, net_cpu = results["blokauto"].get("cpu_us_per_tx"), net.get("cpu_us_per_tx")
        cores = os.cpu_count()
        if single_cpu and net_cpu and cores:
            ceiling = cores / (net_cpu / 1e6)
            net["lines"].append(
                f"CPU per committed transaction, whole machine (/proc/stat): single node {single_cpu:,.0f} us, "
                f"network {net_cpu:,.0f} us ({net_cpu / single_cpu:.1f}x: every node verifies and executes every "
                f"transaction); at that cost {cores} cores allow at most {ceiling:,.0f} tx/s, a ratio of "
                f"{ceiling / single:.2f}")
        results["network"] = net
    if json_out:
        print_json(results)
        return
    for line in [*results["lines"], *results.get("reports", {}).get("lines", []),
                 *results.get("parts", {}).get("lines", []), *results.get("vehicle_data", {}).get("lines", []),
                 *results.get("network", {}).get("lines", [])]:
        sys.stdout.write(line + "\n")


vehicles.register(app)
network.register(app)
parts.register_commands(app)
software.register_commands(app)
vehicledata.register_commands(app)


def main() -> None:
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except BlokError as exc:
        err.print(f"[red]error[/] {escape(f'[{exc.code}]: {exc.message}')}")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except OSError as exc:
        err.print(f"[red]error[/] {escape(f'[os_error]: {exc}')}")
        sys.exit(1)
    except Exception as exc:  # usage errors from typer's (vendored) click: show them, exit 2
        show = getattr(exc, "show", None)
        if callable(show) and hasattr(exc, "exit_code"):
            show()
            sys.exit(int(exc.exit_code))
        raise


if __name__ == "__main__":
    main()
