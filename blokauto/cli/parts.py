"""Parts and recall commands: register batches from a file, check a serial, histories, offline
certificates, campaigns and a vehicle's recalls."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from blokauto.cli.common import DEFAULT_NODE, NodeOpt, PasswordEnv, err, load_signer, out, print_json, verifying
from blokauto.errors import InputError
from blokauto.vin import canonical_vin

part_app = typer.Typer(help="Parts: register batches, check a serial, histories and certificates.",
                       no_args_is_help=True)
recall_app = typer.Typer(help="Recall campaigns: figures, affected vehicles, a vehicle's recalls.",
                         no_args_is_help=True)

KeyOpt = Annotated[Path | None, typer.Option(help="A member keystore (shows more).")]
SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PASSPORT_INTS = ("rated_capacity_wh", "soh_permille", "carbon_g_per_kwh", "recycled_cobalt_permille",
                 "recycled_lithium_permille", "recycled_nickel_permille", "recycled_lead_permille")
MAX_BATCH = 20_000


def _client(node: str, key: Path | None, password_env: str, *, login: bool = False) -> Any:
    from blokauto.client import Client

    client = Client(node, load_signer(key, password_env) if key else None)
    if key and login:
        client.login()
    return client


# -- batch files -------------------------------------------------------------------------------


def _bad(path: Path, where: str, message: str) -> InputError:
    return InputError(f"{path}{where}: {message}", code="bad_batch_file")


def read_batch_file(path: Path) -> tuple[list[str], list[dict[str, Any]] | None, dict[str, Any]]:
    """Serials (and battery passports) from a CSV (a ``serial`` column, optional passport columns)
    or a JSON file (``{"serials": [...], "passports": [...], ...}``); every error names its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, "", f"cannot read it ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise _bad(path, "", f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("serials"), list):
            raise _bad(path, "", 'a JSON batch file is an object with a "serials" list')
        serials, passports = doc["serials"], doc.get("passports")
        extra = {k: v for k, v in doc.items() if k not in ("serials", "passports")}
        where = [f" item {i + 1}" for i in range(len(serials))]
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "serial" not in reader.fieldnames:
            raise _bad(path, ":1", 'the header needs a "serial" column')
        rows = list(reader)
        serials = [(row.get("serial") or "").strip() for row in rows]
        where = [f":{i + 2}" for i in range(len(rows))]
        passports = None
        if "chemistry" in reader.fieldnames:
            passports = []
            for row, at in zip(rows, where, strict=True):
                passport: dict[str, Any] = {"chemistry": (row.get("chemistry") or "").strip()}
                for name in PASSPORT_INTS:
                    value = (row.get(name) or "").strip()
                    if value:
                        if not value.isdigit():
                            raise _bad(path, at, f"{name} must be a whole number, not {value!r}")
                        passport[name] = int(value)
                passports.append(passport)
        extra = {}
    if not serials:
        raise _bad(path, "", "no serials")
    seen: dict[str, str] = {}
    for serial, at in zip(serials, where, strict=True):
        if not isinstance(serial, str) or not SERIAL.fullmatch(serial):
            raise _bad(path, at, f"bad serial {serial!r} (1-64 letters, digits and . _ -)")
        if serial in seen:
            raise _bad(path, at, f"serial {serial} repeats (first at{seen[serial]})")
        seen[serial] = at
    if passports is not None and (not isinstance(passports, list) or len(passports) != len(serials)):
        raise _bad(path, "", "give one passport per serial")
    return serials, passports, extra


def _day_ms(text: str) -> int:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"--produced must be a date like 2026-11-01, not {text!r}", code="bad_date") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


@part_app.command("register")
def register(
    batch_file: Annotated[Path, typer.Argument(help="CSV (serial[,chemistry,rated_capacity_wh,...]) or JSON.")],
    key: Annotated[Path, typer.Option(help="The parts maker's keystore.")],
    part_number: Annotated[str, typer.Option(help="The part number (defined with part.define).")],
    lot: Annotated[str, typer.Option(help="Production lot or batch.")],
    plant: Annotated[str, typer.Option(help="Plant that made the parts.")],
    produced: Annotated[str, typer.Option(help="Production date, YYYY-MM-DD.")],
    node: NodeOpt = DEFAULT_NODE,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Register a file of parts in batches of up to 20,000, each under its Merkle root."""
    serials, passports, _ = read_batch_file(batch_file)
    produced_ms = _day_ms(produced)
    with _client(node, key, password_env) as client:
        total = 0
        for start in range(0, len(serials), MAX_BATCH):
            chunk = serials[start:start + MAX_BATCH]
            receipt = client.register_parts(
                part_number=part_number, lot=lot, plant=plant, produced_ms=produced_ms, serials=chunk,
                passports=None if passports is None else passports[start:start + MAX_BATCH])
            if receipt["status"] != "ok":
                err.print(f"[red]refused[/] {escape(receipt.get('code', ''))}: {escape(receipt.get('message', ''))}")
                raise typer.Exit(1)
            event = next(e for e in receipt["events"] if e["type"] == "part.batch")
            total += len(chunk)
            out.print(f"batch {event['batch']}: {len(chunk):,} parts, root {event['root']}, tx {receipt['tx']}")
        out.print(f"registered {total:,} parts of {part_number} lot {lot}")


@part_app.command("check")
def check(serial: str, node: NodeOpt = DEFAULT_NODE, key: KeyOpt = None,
          password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
          json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Is this part genuine, where is it, is it recalled? Exit 3 when it is not a genuine part."""
    with _client(node, key, password_env, login=True) as client:
        result = client.part(serial)
    if json_out:
        print_json(result)
    elif not result["registered"]:
        out.print(f"[red]NOT REGISTERED[/] {escape(serial)}: no approved maker registered this serial")
    else:
        where = result["location"]
        place = f"fitted to {where.get('vin', 'a vehicle')}" if where["status"] == "installed" else (
            f"{where['status'].replace('_', ' ')}, held by {where['holder']}")
        verdict = "[green]GENUINE[/]" if result["genuine"] else "[red]RECYCLED[/]"
        out.print(f"{verdict} {escape(serial)}: {escape(result['part_number'])} ({escape(result['description'])}) by "
                  f"{escape(result['maker']['name'] or result['maker']['id'])}, lot {escape(result['lot'])}; "
                  f"{escape(place)}")
        for recall in result["recalls"]:
            out.print(f"  [red]open recall[/] {escape(recall['campaign'])}: {escape(recall['title'])} — "
                      f"{escape(recall['remedy'])}")
    for signal in result["counterfeit_signals"]:
        if not json_out:
            out.print(f"  [yellow]signal[/] {signal['code']} at leaf {signal['leaf_index']} (vehicle {signal['vin']})")
    if not result["genuine"]:
        raise typer.Exit(3)


@part_app.command("history")
def history(serial: str, key: Annotated[Path, typer.Option(help="A member keystore.")], node: NodeOpt = DEFAULT_NODE,
            password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """Every event of a part, newest first, following its chain back to registration (members)."""
    with _client(node, key, password_env, login=True) as client:
        print_json(client.part_history(serial))


@part_app.command("certificate")
def certificate(serial: str, key: Annotated[Path, typer.Option(help="A member keystore.")],
                out_file: Annotated[Path, typer.Option("--out", help="Where to write the certificate.")],
                node: NodeOpt = DEFAULT_NODE, password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """Save a part's offline certificate (state proofs and the inclusion path to its batch root)."""
    with _client(node, key, password_env, login=True) as client:
        cert = client.part_certificate(serial)
    out_file.write_text(json.dumps(cert, indent=2, sort_keys=True) + "\n")
    err.print(f"certificate of {serial} written to {out_file}")


@part_app.command("verify")
def verify(cert_file: Path,
           keys: Annotated[Path, typer.Option(help="Trusted checkpoint keys, one per line (GET /v1/checkpoint/keys).")],
           quorum: Annotated[int, typer.Option(help="Organisation signatures required.")] = 1) -> None:
    """Verify a part certificate offline, with no node. Exit 3 when it does not verify."""
    from blokauto.reports.parts import verify_certificate

    try:
        cert = json.loads(cert_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{cert_file} is not a JSON certificate: {exc}", code="bad_certificate") from None
    trusted = [line.strip() for line in keys.read_text().splitlines() if line.strip()]
    with verifying():
        part = verify_certificate(cert, trusted, quorum)
    state = "never moved, with its maker" if part.record is None else (
        f"{part.record['status']}" + (f" in {part.record['vin']}" if part.record.get("vin") else ""))
    out.print(f"[green]VALID[/] {escape(part.serial)}: {escape(part.part_number)} lot {escape(part.lot)} registered "
              f"by {escape(part.maker)} in batch {part.batch['id']}; {escape(state)} (block {part.checkpoint_height})")


# -- recalls -----------------------------------------------------------------------------------


@recall_app.command("list")
def list_recalls(node: NodeOpt = DEFAULT_NODE) -> None:
    """Every campaign with its completion figures."""
    from blokauto.client import Client

    with Client(node) as client:
        for report in client.recalls():
            c = report["campaign"]
            status = escape(f"[{c['status']}]")
            out.print(f"{escape(c['campaign'])} {status} {escape(c['title'])}: {report['affected']:,} affected, "
                      f"{report['remedied']:,} remedied ({report['completion_permille'] / 10:.1f}%)")


@recall_app.command("show")
def show(campaign: str, node: NodeOpt = DEFAULT_NODE, key: KeyOpt = None,
         vehicles: Annotated[bool, typer.Option(help="List affected vehicles and owners' keys (opener, "
                                                     "regulators, registries).")] = False,
         password_env: PasswordEnv = "BLOKAUTO_PASSWORD") -> None:
    """A campaign, its figures and (with --vehicles) every affected vehicle."""
    if vehicles and key is None:
        raise InputError("--vehicles needs the keystore of the opener, a regulator or a registry (--key)",
                         code="token_required")
    with _client(node, key, password_env, login=True) as client:
        print_json(client.recall(campaign, vehicles=vehicles))


@recall_app.command("vin")
def vin_recalls(vin: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """The campaigns that apply to a vehicle, open or remedied (public)."""
    from blokauto.client import Client

    with Client(node) as client:
        recalls = client.vehicle_recalls(canonical_vin(vin))
    if not recalls:
        out.print(f"{vin}: no recalls")
    for r in recalls:
        colour = "red" if r["status"] == "open" else "green"
        out.print(f"{vin}: [{colour}]{r['status']}[/] {escape(r['campaign'])} {escape(r['title'])} — "
                  f"{escape(r['remedy'])}")


def register_commands(app: typer.Typer) -> None:
    app.add_typer(part_app, name="part")
    app.add_typer(recall_app, name="recall")

