"""Vehicle-data commands: crash records (fetched and checked against the ledger), telematics
batches and samples (each sample proven against its committed batch), policies, premiums, claims."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from blokauto.cli.common import DEFAULT_NODE, NodeOpt, PasswordEnv, load_signer, out, print_json, verifying
from blokauto.vin import canonical_vin

crash_app = typer.Typer(help="Crash (event data recorder) deposits and records.", no_args_is_help=True)
telematics_app = typer.Typer(help="Telematics batches and samples.", no_args_is_help=True)
insurance_app = typer.Typer(help="Usage-based insurance: policies, premiums, claims.", no_args_is_help=True)

KeyOpt = Annotated[Path, typer.Option(help="Keystore of the owner or an entitled member.")]


def _client(node: str, key: Path, password_env: str) -> Any:
    from blokauto.client import Client

    client = Client(node, load_signer(key, password_env))
    client.login()
    return client


@crash_app.command("show")
def crash_show(record_hash: str, key: KeyOpt, node: NodeOpt = DEFAULT_NODE,
               password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """A deposit: the summary, the device's signature and the vehicle's state at the crash."""
    with _client(node, key, password_env) as client:
        print_json(client.crash(record_hash))


@crash_app.command("fetch")
def crash_fetch(record_hash: str, key: KeyOpt,
                out_file: Annotated[Path, typer.Option("--out", help="Where to write the record.")],
                node: NodeOpt = DEFAULT_NODE, password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """Fetch a full crash record and check it here against the ledger's deposit (hash, device
    signature, summary). Exit 3 when any byte differs from what the vehicle signed."""
    with _client(node, key, password_env) as client, verifying():
        record = client.crash_record(record_hash)
    from blokauto.vehicledata.crash import encode_record

    out_file.write_bytes(encode_record(record))
    brake = "applied" if any(record.service_brake) else "not applied"
    out.print(f"[green]VALID[/] crash record {record_hash[:16]}… of {record.vin}: max delta-V "
              f"{record.max_delta_v_dkmh / 10} km/h at {record.time_max_delta_v_ms} ms, speed at impact "
              f"{record.speed_dkmh[-1] / 10} km/h, service brake {brake}; written to {out_file}")


@telematics_app.command("show")
def telematics_show(vin: str, key: KeyOpt, node: NodeOpt = DEFAULT_NODE,
                    password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """The vehicle's telematics chain and batches (owner, or an organisation with the owner's consent)."""
    with _client(node, key, password_env) as client:
        print_json(client.telematics(canonical_vin(vin)))


@telematics_app.command("sample")
def telematics_sample(vin: str, seq: int, index: int, key: KeyOpt, node: NodeOpt = DEFAULT_NODE,
                      password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """One sample, its Merkle proof checked here against the committed batch header."""
    with _client(node, key, password_env) as client, verifying():
        answer = client.sample(canonical_vin(vin), seq, index)
    print_json(answer["sample"])


@insurance_app.command("policy")
def policy(vin: str, key: KeyOpt, node: NodeOpt = DEFAULT_NODE,
           password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """The vehicle's policy (the insurer or the owner)."""
    with _client(node, key, password_env) as client:
        print_json(client.policy(canonical_vin(vin)))


@insurance_app.command("premium")
def premium(vin: str, period: int, key: KeyOpt, node: NodeOpt = DEFAULT_NODE,
            password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
            json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A closed period's premium, every term explained (computed by the contract)."""
    with _client(node, key, password_env) as client:
        result = client.premium(canonical_vin(vin), period)
    if json_out:
        print_json(result)
        return
    for term in result["terms"]:
        out.print(f"{term['cents'] / 100:>10.2f} {result['currency']}  {escape(term['text'])}")
    out.print(f"{result['total_cents'] / 100:>10.2f} {result['currency']}  total for period {period}")


@insurance_app.command("claim")
def claim(claim_id: str, key: KeyOpt, node: NodeOpt = DEFAULT_NODE,
          password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """A claim with its crash record link and the vehicle's state at the time."""
    with _client(node, key, password_env) as client:
        found = client.claim(claim_id)
    print_json(found)


def register_commands(app: typer.Typer) -> None:
    app.add_typer(crash_app, name="crash")
    app.add_typer(telematics_app, name="telematics")
    app.add_typer(insurance_app, name="insurance")

