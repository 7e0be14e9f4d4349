"""The SDK's software methods (mixed into :class:`blokauto.client.Client`).

Release keys and the carmaker's offline keys never touch a node: this side builds and signs
catalogues, the node only checks and stores them. Reads that matter for trust (the export, the
previous catalogue a release extends) are re-verified here against the root chain, so a node
cannot make the SDK publish or export what the carmaker's keys did not sign.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blokauto.errors import BlokError, InputError

if TYPE_CHECKING:
    from blokauto.crypto.keys import Signer
    from blokauto.software.releases import Release, ReleaseDocument

ImageSource = bytes | str | os.PathLike[str]

__all__ = ["SoftwareClient", "VerifiedSoftware", "describe_image", "find_images", "sha256_file"]


@dataclass(frozen=True)
class VerifiedSoftware:
    """A carmaker's trust and latest catalogues as a node served them, checked locally."""

    org: str
    roots: tuple[bytes, ...]
    targets: bytes
    key_sets: dict[str, tuple[tuple[str, ...], int]]   # hardware id -> (release keys, threshold)
    catalogues: dict[str, ReleaseDocument]             # hardware id -> latest verified catalogue

    def releases(self) -> list[Release]:
        return [r for doc in self.catalogues.values() for r in doc.releases]


def _text(document: bytes | str) -> str:
    return document.decode("utf-8") if isinstance(document, bytes) else document


def describe_image(hardware_id: str, image: ImageSource, version: int, *, name: str | None = None,
                   min_previous: int = 0) -> Release:
    """The :class:`Release` of an image file or bytes (sha256 and length computed here)."""
    from blokauto.software.releases import Release
    from blokauto.software.tuf_export import image_digest

    sha256, length = image_digest(image)
    if name is None:
        if isinstance(image, bytes):
            raise InputError("an image given as bytes needs a name", code="bad_release")
        name = Path(image).name
    return Release(hardware_id, version, sha256, length, name, min_previous)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed: images can be larger than memory should hold."""
    from blokauto.software.tuf_export import image_digest

    return image_digest(Path(path))[0]


def find_images(directory: str | os.PathLike[str], releases: Sequence[Release]) -> dict[str, Path]:
    """Image files for ``releases`` in ``directory``: ``<sha256>``, ``<sha256>.<name>``,
    ``<hardware id>/<name>`` or ``<name>``, first match wins. A file found by name is used only if
    its hash is the release's (two hardware types may name images alike); one found by hash is
    checked when exported. Releases with no file are left out (listed in TUF, not hosted)."""
    root = Path(directory)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", code="bad_images_dir")
    found: dict[str, Path] = {}
    for release in releases:
        if release.sha256 in found:
            continue
        for candidate in (root / release.sha256, root / f"{release.sha256}.{release.name}"):
            if candidate.is_file():
                found[release.sha256] = candidate
                break
        else:
            for candidate in (root / release.hardware_id / release.name, root / release.name):
                if candidate.is_file() and sha256_file(candidate) == release.sha256:
                    found[release.sha256] = candidate
                    break
    return found


class SoftwareClient:
    """Software releases, vehicles' installed software, TUF export."""

    if TYPE_CHECKING:
        key: Signer | None

        def _json(self, method: str, path: str, **kwargs: Any) -> Any: ...

        def submit(self, tx_type: str, payload: dict[str, Any], *, cosigners: Sequence[Signer] = (),
                   wait: bool = True) -> dict[str, Any]: ...

        def status(self) -> dict[str, Any]: ...

    # -- carmaker: trust, releases, campaigns --------------------------------------------------

    def publish_software_trust(self, targets: bytes | str, roots: Sequence[bytes | str] = (), *,
                               wait: bool = True) -> dict[str, Any]:
        """``software.trust``: root versions continuing the published chain (1.root.json first) and
        the top-level targets.json, as the carmaker's offline keys signed them."""
        return self.submit("software.trust", {"roots": [_text(r) for r in roots], "targets": _text(targets)},
                           wait=wait)

    def publish_release(self, hardware_id: str, document: bytes | str, *, wait: bool = True) -> dict[str, Any]:
        """``software.release``: a catalogue already signed by the release keys (see :meth:`sign_release`)."""
        return self.submit("software.release", {"hardware_id": hardware_id, "document": _text(document)},
                           wait=wait)

    def sign_release(self, org: str, hardware_id: str, new: Release | Sequence[Release],
                     release_keys: Sequence[Signer], *, expires: datetime) -> bytes:
        """The next catalogue of ``hardware_id`` after the node's latest, with ``new`` added (``()``
        renews the expiry), signed by ``release_keys``. Co-signers add theirs with
        :func:`blokauto.software.releases.sign_release` on the returned bytes."""
        from blokauto.software.releases import next_release_metadata, parse_release, sign_release

        trust = self.software_trust(org)
        keys = next((h for h in trust["hardware"] if h["hardware_id"] == hardware_id), None)
        if keys is None:
            raise InputError(f"{org}'s targets delegate no release keys for {hardware_id}", code="unknown_hardware")
        strangers = sorted(s.did for s in release_keys if s.did not in keys["release_keys"])
        if strangers:
            raise InputError(f"{strangers[0]} is not a release key of {hardware_id}", code="not_release_key")
        previous = None
        if keys["sequence"] is not None:
            # the ledger verified it when published; its releases are what the release keys now re-sign
            previous = parse_release(self.software_catalogue(org, hardware_id)["document"].encode(),
                                     hardware_id=hardware_id)
        metadata = next_release_metadata(previous, new, expires=expires, hardware_id=hardware_id)
        return sign_release(metadata, release_keys)

    def release_software(self, org: str, hardware_id: str, new: Release | Sequence[Release],
                         release_keys: Sequence[Signer], *, expires: datetime, wait: bool = True) -> dict[str, Any]:
        """Build, sign and publish the next catalogue in one go (all release keys at hand)."""
        document = self.sign_release(org, hardware_id, new, release_keys, expires=expires)
        return self.publish_release(hardware_id, document, wait=wait)

    def open_software_campaign(self, campaign: str, hardware_id: str, version: int, title: str, *,
                               models: Sequence[str] = (), vins: Sequence[str] = (),
                               wait: bool = True) -> dict[str, Any]:
        """``software.campaign``: assign a released version to vehicles by model and/or VIN."""
        return self.submit("software.campaign", {"campaign": campaign, "hardware_id": hardware_id,
                                                 "version": version, "title": title, "models": list(models),
                                                 "vins": list(vins)}, wait=wait)

    # -- vehicle: installation attestations ----------------------------------------------------

    def attest_install(self, vin: str, ecu: str, hardware_id: str, image_sha256: str, *,
                       at_ms: int | None = None, wait: bool = True) -> dict[str, Any]:
        """``software.installed``, signed by this client's key: the vehicle's device key."""
        payload: dict[str, Any] = {"vin": vin, "ecu": ecu, "hardware_id": hardware_id, "image_sha256": image_sha256}
        if at_ms is not None:
            payload["at_ms"] = at_ms
        return self.submit("software.installed", payload, wait=wait)

    # -- reads -------------------------------------------------------------------------------

    def software_trust(self, org: str) -> dict[str, Any]:
        """A carmaker's trust: root chain and targets (JSON text), hardware types, campaigns."""
        result: dict[str, Any] = self._json("GET", f"/v1/software/{org}")
        return result

    def software_catalogue(self, org: str, hardware_id: str) -> dict[str, Any]:
        """The latest catalogue of one hardware type (``document`` is the signed TUF JSON text)."""
        result: dict[str, Any] = self._json("GET", f"/v1/software/{org}/{hardware_id}")
        return result

    def vehicle_software(self, vin: str) -> dict[str, Any]:
        """A vehicle's software per ECU and the software campaigns that name it."""
        result: dict[str, Any] = self._json("GET", f"/v1/vehicles/{vin}/software")
        return result

    def verified_software(self, org: str) -> VerifiedSoftware:
        """Trust and catalogues from the node, verified here: root chain, targets against the latest
        root, each catalogue against the release keys the verified targets delegate."""
        from blokauto.software.releases import verify_release
        from blokauto.software.tuf_export import release_key_sets, verify_root_chain, verify_targets

        trust = self.software_trust(org)
        roots = tuple(r.encode() for r in trust["roots"])
        targets = trust["targets"].encode()
        root = verify_root_chain(roots)
        key_sets = release_key_sets(verify_targets(targets, root.signed).signed)
        catalogues = {}
        for entry in trust["hardware"]:
            hw = entry["hardware_id"]
            if entry["sequence"] is None or hw not in key_sets:
                continue
            keys, threshold = key_sets[hw]
            document = self.software_catalogue(org, hw)["document"].encode()
            try:
                catalogues[hw] = verify_release(document, keys, threshold, hardware_id=hw)
            except BlokError as exc:
                raise type(exc)(f"catalogue of {hw}: {exc.message} (after a change of release keys, publish the "
                                "next catalogue signed by the new keys)", code=exc.code) from None
        return VerifiedSoftware(org, roots, targets, key_sets, catalogues)

    def export_software(self, org: str, out_dir: str | os.PathLike[str], *, online_key: Signer,
                        images: Mapping[str, ImageSource] | str | os.PathLike[str] | None = None,
                        version: int | None = None, snapshot_expires: datetime | None = None,
                        timestamp_expires: datetime | None = None) -> list[str]:
        """Write a TUF repository of ``org``'s releases from what the ledger holds (verified here).

        ``images`` maps sha256 to bytes or a file, or is a directory searched by
        :func:`find_images` (none: the metadata only). ``version`` numbers snapshot and timestamp (default: the node's
        height, which only grows). ``online_key`` must be a snapshot/timestamp key of the root;
        expiries default to 7 days (snapshot) and 1 day (timestamp) from now.
        """
        from blokauto.software.tuf_export import export_repository

        software = self.verified_software(org)
        if images is None:
            sources: Mapping[str, ImageSource] = {}
        elif isinstance(images, str | os.PathLike):
            sources = find_images(images, software.releases())
        else:
            sources = dict(images)
        now = datetime.now(UTC)
        return export_repository(
            out_dir, roots=software.roots, targets=software.targets,
            releases={hw: doc.document for hw, doc in software.catalogues.items()}, images=sources,
            online_signer=online_key, version=int(self.status()["height"]) if version is None else version,
            snapshot_expires=snapshot_expires or now + timedelta(days=7),
            timestamp_expires=timestamp_expires or now + timedelta(days=1))
