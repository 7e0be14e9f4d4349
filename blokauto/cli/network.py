"""``blokauto network``: run, inspect and break a local consortium (JetStream cluster + one node per org).

The network directory's state file is the record of what runs, so every command takes the same
``--dir`` and any terminal can stop what another started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from blokauto.cli.common import err, out, print_json

DEFAULT_DIR = Path("data/network")
DirOpt = Annotated[Path, typer.Option("--dir", help="The network directory (state, data, configs, logs).")]

network_app = typer.Typer(help="A local consortium on 127.0.0.1: nats servers and one node per organisation.",
                          no_args_is_help=True)


def _final_checkpoint(network: Any) -> str:
    """The latest final checkpoint from ``GET /v1/network`` (absent on nodes that do not serve it)."""
    if not isinstance(network, dict):
        return "—"
    final = network.get("final", network.get("final_checkpoint"))
    if isinstance(final, dict):
        height, signers = final.get("height"), final.get("signers")
    else:
        height, signers = network.get("final_height", final), network.get("final_signers")
    if height is None:
        return "none yet"
    text = str(height)
    if isinstance(signers, list):
        text += f" ({len(signers)} signed)"
    conflicts = network.get("conflicts")
    if conflicts:
        text += f" [red]{len(conflicts) if isinstance(conflicts, list) else conflicts} conflict(s)[/]"
    return text


def _liveness(row: dict[str, Any]) -> str:
    if not row["alive"]:
        return "[red]down[/]"
    return "[green]up[/]" if row["reachable"] else "[yellow]up, not answering[/]"


@network_app.command("up")
def up(
    directory: DirOpt = DEFAULT_DIR,
    orgs: Annotated[int, typer.Option("--orgs", min=1, max=9, help="Demo organisations, each with a node.")] = 3,
    servers: Annotated[int, typer.Option("--servers", min=1, max=9, help="nats servers in the cluster.")] = 3,
    fleet: Annotated[int, typer.Option("--fleet", min=0, help="Sample vehicles to submit (needs --orgs 9).")] = 0,
    base_port: Annotated[int | None, typer.Option("--base-port", help="nats on B.., routes B+10.., APIs B+20.. "
                                                                      "(default: free ports).")] = None,
) -> None:
    """Create and start a network in DIR, or start a stopped one again with its data."""
    from blokauto.network.local import network_up, read_state

    again = read_state(directory) is not None
    err.print(f"{'restarting' if again else 'starting'} the network in {directory} ...")
    state = network_up(directory, orgs=orgs, servers=servers, base_port=base_port, fleet=fleet)
    for node in state["nodes"]:
        out.print(f"{node['org']:<18} {node['api_url']}")
    out.print(f"{'nats':<18} {','.join(s['url'] for s in state['nats'])}")
    if "fleet" in state and not again:
        f = state["fleet"]
        out.print(f"fleet: {f['vehicles']} vehicles, {f['accepted']} accepted, {f['rejected']} rejected, "
                  f"{f['refused']} refused")
    err.print(f"[green]up[/]: {len(state['nodes'])} nodes, {len(state['nats'])} nats servers; logs in "
              f"{directory / 'logs'}; stop with `blokauto network down --dir {directory}`")


@network_app.command("status")
def status(
    directory: DirOpt = DEFAULT_DIR,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Ask every node of the network for its height, state root and final checkpoint."""
    from blokauto.network.local import network_status

    rows = network_status(directory)
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"network {directory}")
    for column in ("org", "url", "alive", "height", "state root", "final checkpoint"):
        table.add_column(column, no_wrap=column in ("org", "url", "state root"))
    for row in rows:
        if row["kind"] != "node":
            continue
        root = row["state_root"]
        table.add_row(escape(row["org"]), row["api_url"], _liveness(row),
                      "—" if row["height"] is None else str(row["height"]),
                      "—" if root is None else escape(root[:12]), _final_checkpoint(row["network"]))
    out.print(table)
    servers = [f"{r['name']} {r['url']} {'[green]up[/]' if r['alive'] else '[red]down[/]'}"
               for r in rows if r["kind"] == "nats"]
    out.print("nats: " + ", ".join(servers))


@network_app.command("down")
def down(directory: DirOpt = DEFAULT_DIR) -> None:
    """Stop the nodes, then the nats servers (data stays: `up` starts them again)."""
    from blokauto.network.local import network_down

    stopped = network_down(directory)
    out.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@network_app.command("stop")
def stop(name: Annotated[str, typer.Argument(help="A node (its org id) or a nats server (n1, n2...).")],
         directory: DirOpt = DEFAULT_DIR) -> None:
    """Stop one process of the network (a fault drill)."""
    from blokauto.network.local import stop_process

    out.print(f"stopped {name}" if stop_process(directory, name) else f"{name} was not running")


@network_app.command("start")
def start(name: Annotated[str, typer.Argument(help="A node (its org id) or a nats server (n1, n2...).")],
          directory: DirOpt = DEFAULT_DIR) -> None:
    """Start one stopped process again with its data and ports."""
    from blokauto.network.local import start_process

    record = start_process(directory, name)
    out.print(f"started {name} (pid {record['pid']}) at {record.get('api_url') or record.get('url')}")


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
