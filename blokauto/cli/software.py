"""Software commands: sign and publish TUF trust, sign and publish releases (co-signing across key
holders), campaigns, device attestations, reads, and the TUF repository export.

Every private key stays in a keystore on the machine running the command: the carmaker's offline
root/targets keys (``sign-trust``), the release keys (``release``), the node's online key
(``export``). Exit codes: 1 on errors and refusals, 3 when a node's data fails verification.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from blokauto.cli.common import DEFAULT_NODE, NodeOpt, PasswordEnv, err, load_signer, out, print_json, verifying
from blokauto.errors import BlokError, InputError, VerificationError

software_app = typer.Typer(help="Software releases: TUF trust, signed catalogues, campaigns, installs, export.",
                           no_args_is_help=True)

KeyOpt = Annotated[Path, typer.Option("--key", help="The submitting keystore (a manufacturer's member key).")]
ReleaseKeysOpt = Annotated[list[Path] | None, typer.Option("--release-key", help="A release keystore (repeat).")]


def _client(node: str, key: Path | None = None, password_env: str = "BLOKAUTO_PASSWORD") -> Any:
    from blokauto.client import Client

    return Client(node, load_signer(key, password_env) if key else None)


def _expiry(text: str | None, days: int) -> dt.datetime:
    """A TUF expiry: a date (midnight UTC) or ``days`` from now."""
    if text is None:
        return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=days)
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"an expiry is a date like 2031-01-01, not {text!r}", code="bad_date") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}", code="bad_file") from None


def _did(value: str) -> str:
    """A did:key, or the did of a keystore file (its public part: no password needed)."""
    if value.startswith("did:key:"):
        return value
    from blokauto.crypto.keystore import keystore_info

    return str(keystore_info(Path(value))["did"])


def _org_of(client: Any) -> str:
    client.login()
    return str(client._json("GET", "/v1/me")["org"])


def _receipt(receipt: dict[str, Any], what: str) -> None:
    if receipt.get("status") != "ok":
        err.print(f"[red]refused[/] {escape(str(receipt.get('code', '')))}: {escape(str(receipt.get('message', '')))}"
                  f" (kept in the log, leaf {receipt.get('leaf_index')})")
        raise typer.Exit(1)
    out.print(f"{escape(what)}: tx {receipt['tx']} at height {receipt['height']}")


# -- offline: the carmaker's trust metadata ----------------------------------------------------


@software_app.command("sign-trust")
def sign_trust(
    spec_file: Annotated[Path, typer.Argument(help="JSON: {\"root\": {...}, \"targets\": {...}} (see docs).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for <v>.root.json and <v>.targets.json.")],
    root_key: Annotated[list[Path] | None, typer.Option("--root-key", help="Root keystore (repeat; for a "
                                                        "rotation both the old and the new keys).")] = None,
    targets_key: Annotated[list[Path] | None, typer.Option("--targets-key", help="Targets keystore (repeat).")] = None,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Sign root and/or top-level targets metadata offline (keys are did:key strings or keystore files)."""
    from blokauto.software.tuf_export import build_root, build_targets, sign_metadata

    try:
        spec = json.loads(_read(spec_file))
    except ValueError as exc:
        raise InputError(f"{spec_file} is not JSON: {exc}", code="bad_spec") from None
    if not isinstance(spec, dict) or not set(spec) <= {"root", "targets"} or not spec:
        raise InputError('the spec is {"root": {...}, "targets": {...}} (either or both)', code="bad_spec")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if "root" in spec:
            r = spec["root"]
            metadata: Any = build_root(
                root_keys=[_did(k) for k in r["root_keys"]],
                root_threshold=r.get("root_threshold", len(r["root_keys"])),
                targets_keys=[_did(k) for k in r["targets_keys"]],
                targets_threshold=r.get("targets_threshold", len(r["targets_keys"])),
                online_keys=[_did(k) for k in r["online_keys"]], expires=_expiry(r.get("expires"), 365),
                version=r.get("version", 1))
            signers = [load_signer(p, password_env) for p in root_key or []]
            path = out_dir / f"{metadata.signed.version}.root.json"
            path.write_bytes(sign_metadata(metadata, signers))
            out.print(f"{path}: root version {metadata.signed.version}, {len(signers)} signature(s)")
        if "targets" in spec:
            t = spec["targets"]
            hardware = t["hardware"]
            metadata = build_targets(
                release_keys_by_hw={hw: [_did(k) for k in h["release_keys"]] for hw, h in hardware.items()},
                threshold_by_hw={hw: h["threshold"] for hw, h in hardware.items()},
                expires=_expiry(t.get("expires"), 365), version=t.get("version", 1))
            signers = [load_signer(p, password_env) for p in targets_key or []]
            path = out_dir / f"{metadata.signed.version}.targets.json"
            path.write_bytes(sign_metadata(metadata, signers))
            out.print(f"{path}: targets version {metadata.signed.version}, {len(hardware)} hardware type(s), "
                      f"{len(signers)} signature(s)")
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{spec_file}: missing or malformed field {exc}", code="bad_spec") from None


@software_app.command("trust")
def trust(
    key: KeyOpt,
    targets: Annotated[Path, typer.Option("--targets", help="The signed top-level targets.json.")],
    root: Annotated[list[Path] | None, typer.Option("--root", help="Signed root files, in version order "
                                                    "(those already published are skipped).")] = None,
    node: NodeOpt = DEFAULT_NODE,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Publish the carmaker's root chain and targets (software.trust)."""
    roots = [_read(p) for p in root or []]
    with _client(node, key, password_env) as client:
        org = _org_of(client)
        published: list[str] = []
        try:
            published = client.software_trust(org)["roots"]
        except BlokError as exc:  # no trust yet: the normal first case
            if exc.code != "no_trust":
                raise
        for number, data in enumerate(roots[:len(published)], start=1):
            if data.decode("utf-8", errors="replace") != published[number - 1]:
                raise InputError(f"root {number} differs from the one {org} published", code="root_mismatch")
        _receipt(client.publish_software_trust(_read(targets), roots[len(published):]),
                 f"trust of {org} published")


@software_app.command("release")
def release(
    hardware_id: Annotated[str, typer.Option("--hardware-id", help="The ECU hardware type.")],
    release_key: ReleaseKeysOpt = None,
    image: Annotated[Path | None, typer.Option(help="The image file to release.")] = None,
    version: Annotated[int | None, typer.Option(help="Its version (an integer above the latest).")] = None,
    name: Annotated[str | None, typer.Option(help="Image name in the catalogue (default: the file name).")] = None,
    min_previous: Annotated[int, typer.Option(help="Version that must be installed first (0: none).")] = 0,
    renew: Annotated[bool, typer.Option(help="No new image: re-sign the catalogue with a new expiry.")] = False,
    document: Annotated[Path | None, typer.Option(help="Co-sign this catalogue (from another key holder's "
                                                  "--out) instead of building one.")] = None,
    expires: Annotated[str | None, typer.Option(help="Catalogue expiry, YYYY-MM-DD (default: in 365 days).")] = None,
    org: Annotated[str | None, typer.Option(help="The carmaker (default: the --key's organisation).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the signed catalogue here for more "
                                                  "signatures instead of publishing it.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="The manufacturer keystore that publishes.")] = None,
    node: NodeOpt = DEFAULT_NODE,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Sign the next release catalogue of a hardware type with release keys, and publish it (software.release)."""
    from blokauto.client.software import describe_image
    from blokauto.software.releases import sign_release

    if out_file is None and key is None:
        raise InputError("give --key to publish, or --out to write the catalogue for co-signing", code="bad_usage")
    signers = [load_signer(p, password_env) for p in release_key or []]
    with _client(node, key, password_env) as client:
        if document is not None:
            signed = sign_release(_read(document), signers)
        else:
            if image is not None and version is not None:
                new: Any = describe_image(hardware_id, image, version, name=name, min_previous=min_previous)
            elif renew and image is None:
                new = ()
            else:
                raise InputError("give --image and --version (or --renew, or --document)", code="bad_usage")
            maker = org or (_org_of(client) if key else None)
            if maker is None:
                raise InputError("give --org (or --key) to find the latest catalogue", code="bad_usage")
            signed = client.sign_release(maker, hardware_id, new, signers, expires=_expiry(expires, 365))
        if out_file is not None:
            out_file.write_bytes(signed)
            out.print(f"catalogue of {escape(hardware_id)} signed by {len(signers)} key(s) written to {out_file}")
            return
        _receipt(client.publish_release(hardware_id, signed), f"release catalogue of {hardware_id} published")


@software_app.command("campaign")
def campaign(
    key: KeyOpt,
    campaign_id: Annotated[str, typer.Option("--campaign", help="Campaign id.")],
    hardware_id: Annotated[str, typer.Option("--hardware-id")],
    version: Annotated[int, typer.Option(help="A released version.")],
    title: Annotated[str, typer.Option()],
    model: Annotated[list[str] | None, typer.Option(help="A model (repeat).")] = None,
    vin: Annotated[list[str] | None, typer.Option(help="A VIN (repeat).")] = None,
    node: NodeOpt = DEFAULT_NODE,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Assign a released version to vehicles by model and/or VIN (software.campaign)."""
    with _client(node, key, password_env) as client:
        _receipt(client.open_software_campaign(campaign_id, hardware_id, version, title, models=model or [],
                                               vins=vin or []), f"campaign {campaign_id} opened")


@software_app.command("attest")
def attest(
    key: Annotated[Path, typer.Option("--key", help="The vehicle's device keystore.")],
    vin: Annotated[str, typer.Option()],
    ecu: Annotated[str, typer.Option()],
    hardware_id: Annotated[str, typer.Option("--hardware-id")],
    image: Annotated[Path | None, typer.Option(help="The installed image (hashed here).")] = None,
    sha256: Annotated[str | None, typer.Option(help="Or its sha256.")] = None,
    node: NodeOpt = DEFAULT_NODE,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Attest, with the vehicle's device key, an image installed on an ECU (software.installed)."""
    from blokauto.client.software import sha256_file
    from blokauto.vin import canonical_vin

    if (image is None) == (sha256 is None):
        raise InputError("give --image or --sha256", code="bad_usage")
    digest = sha256_file(image) if image is not None else str(sha256)
    with _client(node, key, password_env) as client:
        _receipt(client.attest_install(canonical_vin(vin), ecu, hardware_id, digest),
                 f"{ecu} of {vin} runs {digest[:16]}")


@software_app.command("show")
def show(
    org: str,
    hardware_id: Annotated[str | None, typer.Argument(help="A hardware type: its latest catalogue.")] = None,
    node: NodeOpt = DEFAULT_NODE,
) -> None:
    """A carmaker's trust and hardware types, or one hardware type's latest catalogue (JSON)."""
    with _client(node) as client:
        print_json(client.software_trust(org) if hardware_id is None else client.software_catalogue(org, hardware_id))


@software_app.command("vehicle")
def vehicle(vin: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """A vehicle's software per ECU and the campaigns that name it."""
    from blokauto.vin import canonical_vin

    with _client(node) as client:
        print_json(client.vehicle_software(canonical_vin(vin)))


@software_app.command("verify")
def verify(org: str, node: NodeOpt = DEFAULT_NODE) -> None:
    """Check a carmaker's trust and catalogues locally, as a TUF client would. Exit 3 when they fail."""
    with _client(node) as client, verifying(VerificationError, InputError):
        software = client.verified_software(org)
    out.print(f"[green]VALID[/] {escape(org)}: root version {len(software.roots)}, "
              f"{len(software.key_sets)} hardware type(s)")
    for hw, doc in sorted(software.catalogues.items()):
        out.print(f"  {escape(hw)}: catalogue {doc.sequence}, latest version {doc.latest.version} "
                  f"({escape(doc.latest.name)}), expires {doc.expires}, {len(doc.signers)} release-key signature(s)")


@software_app.command("export")
def export(
    org: Annotated[str, typer.Option(help="The carmaker whose releases to export.")],
    online_key: Annotated[Path, typer.Option("--online-key", help="A snapshot/timestamp keystore listed in root.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Repository directory (metadata/, targets/).")],
    images: Annotated[Path | None, typer.Option(help="Directory of images: <sha256>, <sha256>.<name>, "
                                                "<hardware id>/<name> or <name>.")] = None,
    version: Annotated[int | None, typer.Option(help="Snapshot/timestamp version (default: node height).")] = None,
    snapshot_days: Annotated[int, typer.Option(help="Snapshot lifetime in days.")] = 7,
    timestamp_days: Annotated[int, typer.Option(help="Timestamp lifetime in days.")] = 1,
    node: NodeOpt = DEFAULT_NODE,
    password_env: PasswordEnv = "BLOKAUTO_PASSWORD",
) -> None:
    """Write a TUF repository of a carmaker's releases from the ledger (verified first). Exit 3 when the
    node's data or an image fails verification."""
    signer = load_signer(online_key, password_env)
    with _client(node) as client, verifying():
        written = client.export_software(
            org, out_dir, online_key=signer, images=images, version=version,
            snapshot_expires=_expiry(None, snapshot_days), timestamp_expires=_expiry(None, timestamp_days))
    hosted = [p for p in written if p.startswith("targets/")]
    out.print(f"exported {org} to {out_dir}: {len(written) - len(hosted)} metadata file(s), {len(hosted)} image(s)")
    for path in written:
        out.print(f"  {escape(path)}")


def register_commands(app: typer.Typer) -> None:
    """Add the ``software`` command group."""
    app.add_typer(software_app, name="software")
