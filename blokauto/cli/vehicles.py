"""Vehicle commands: VIN check, listing, history reports, offline report checks, share links."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from blokauto.cli.common import DEFAULT_NODE, NodeOpt, PasswordEnv, err, load_signer, out, print_json, verifying
from blokauto.errors import InputError
from blokauto.vin import canonical_vin

DAY_MS = 86_400_000
KeyOpt = Annotated[Path | None, typer.Option(help="Keystore of the owner or an entitled member.")]


def vin_check(vin: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """The public VIN check: registered, stolen, odometer consistent or flagged, accidents."""
    from blokauto.client import Client

    with Client(node) as client:
        print_json(client.vehicle_summary(canonical_vin(vin)))


def vehicles(
    node: NodeOpt = DEFAULT_NODE,
    key: KeyOpt = None,
    maker: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    year: Annotated[int | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option()] = None,
    powertrain: Annotated[str | None, typer.Option()] = None,
    manufacturer: Annotated[str | None, typer.Option(help="Organisation id of the registering manufacturer.")] = None,
    after: Annotated[str, typer.Option(help="Cursor: the last VIN of the previous page.")] = "",
    limit: Annotated[int, typer.Option()] = 50,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """List registered vehicles (needs a member keystore)."""
    from blokauto.client import Client

    if key is None:
        raise InputError("listing vehicles needs a member keystore (--key)", code="token_required")
    filters = {k: v for k, v in {"maker": maker, "model": model, "year": year, "status": status,
                                 "powertrain": powertrain, "manufacturer": manufacturer}.items() if v is not None}
    with Client(node, load_signer(key, password_env)) as client:
        client.login()
        print_json(client.vehicles(after=after, limit=limit, **filters))


def report(
    vin: str,
    node: NodeOpt = DEFAULT_NODE,
    key: KeyOpt = None,
    share: Annotated[str | None, typer.Option(help="A share link or its token, instead of a keystore.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json (the verifiable bundle) | html | pdf")] = "json",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Fetch a vehicle's history report (the owner's or an entitled member's key, or a share link)."""
    from blokauto.client import Client

    if fmt not in ("json", "html", "pdf"):
        raise InputError("--format is json, html or pdf", code="bad_format")
    if fmt == "pdf" and out_file is None:
        raise InputError("a PDF needs --out FILE", code="bad_format")
    token = share.rsplit("/", 1)[-1] if share else None
    with Client(node, load_signer(key, password_env) if key else None) as client:
        if key:
            client.login()
        result = client.vehicle_report(canonical_vin(vin), format=fmt, share=token)
    if fmt == "json":
        text = json.dumps(result, indent=2, sort_keys=True) + "\n"
        if out_file:
            out_file.write_text(text)
        else:
            sys.stdout.write(text)
    elif out_file:
        if isinstance(result, bytes):
            out_file.write_bytes(result)
        else:
            out_file.write_text(result)
    else:
        sys.stdout.write(result)
    if out_file:
        err.print(f"report written to {out_file}")


def check_report(
    bundle_file: Path,
    keys: Annotated[Path | None, typer.Option(help="Trusted checkpoint keys, one per line (GET /v1/checkpoint/keys). "
                                                   "Without it the keys inside the bundle are used.")] = None,
    quorum: Annotated[int | None, typer.Option(help="Organisation signatures required.")] = None,
    origin: Annotated[str | None, typer.Option(help="Expected chain id.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the verified view as JSON.")] = False,
) -> None:
    """Verify a report bundle offline, with no node: every proof, the checkpoint signatures, and that
    no event is missing. Exit 3 and name the first failing item when it does not verify."""
    from blokauto.reports.bundle import verify_bundle
    from blokauto.reports.history import build_view

    try:
        bundle = json.loads(bundle_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{bundle_file} is not JSON: {exc}", code="bad_report") from None
    if keys is not None:
        trusted = [line.strip() for line in keys.read_text().splitlines() if line.strip()]
    else:
        trusted = bundle.get("keys", []) if isinstance(bundle, dict) else []
        err.print("[yellow]note[/] no --keys given: trusting the checkpoint keys inside the bundle, which proves "
                  "the bundle is consistent, not who signed it")
    need = quorum if quorum is not None else int(bundle.get("quorum", 1)) if isinstance(bundle, dict) else 1
    with verifying():
        verified = verify_bundle(bundle, trusted, need, origin)
    view = build_view(verified)
    if json_out:
        print_json(view)
        return
    odometer = view["odometer"]
    out.print(f"[green]VALID[/] report of {view['vin']} ({view['maker']} {view['model']} {view['year']}): "
              f"{len(verified.events)} events, complete up to tree size {verified.checkpoint_size} "
              f"(block {verified.height}), checkpoint signed by {', '.join(verified.signers)}")
    out.print(f"  status {view['status']}; brands {', '.join(view['brands']) or 'none'}; "
              f"owners {view['owners']['count']}; accidents {len(view['accidents'])}; "
              f"odometer {odometer['last_km']} km "
              f"({'flagged' if odometer['flagged'] else 'consistent'}; {odometer['rollback_attempts']} refused "
              f"rollback attempt(s)); report hash {verified.report_hash}")


def share(
    vin: str,
    key: Annotated[Path, typer.Option(help="The owner's keystore.")],
    node: NodeOpt = DEFAULT_NODE,
    days: Annotated[int, typer.Option(min=1, max=90, help="Days the link stays valid.")] = 7,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Make an expiring link to the vehicle's full report, signed by the owner's key."""
    from blokauto.client import Client

    with Client(node, load_signer(key, password_env)) as client:
        sys.stdout.write(client.share_link(canonical_vin(vin), valid_ms=days * DAY_MS) + "\n")


def register(app: typer.Typer) -> None:
    for name, command in (("vin-check", vin_check), ("vehicles", vehicles), ("report", report),
                          ("check-report", check_report), ("share", share)):
        app.command(name)(command)
