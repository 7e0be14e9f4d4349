"""Write the ledger's releases out as a TUF repository that an unmodified ngclient accepts.

Who signs what:

* ``root.json`` — the carmaker's offline root keys. Lists the keys of every top-level role.
  Changes only on key rotation (``N+1.root.json`` signed by the old and the new root keys).
* ``targets.json`` — the carmaker's offline targets keys. Lists no image itself: it delegates
  ``<hw>/*/*`` to role ``release-<hw>`` with that hardware type's release keys and threshold.
  Changes only when release keys or thresholds change.
* ``<seq>.release-<hw>.json`` — the release catalogue, signed k-of-n by the release keys and
  stored on the ledger as is (:mod:`blokauto.software.releases`). Authenticity of every image
  rests on this threshold and nothing else.
* ``snapshot.json`` / ``timestamp.json`` — signed by an *online* key of the exporting node,
  declared in root for those two roles (threshold 1, so each node can have its own key). They
  give freshness and consistency (no mix-and-match, no rollback of catalogues), never authenticity:
  a node's key cannot make a client accept an image the release keys did not sign.

So a ledger node holding only its online key exports a complete repository from ledger data:
the pre-signed root chain and targets document, the latest catalogue per hardware type, and the
image blobs. :func:`export_repository` re-verifies all of it first, so it never publishes a
repository a client would refuse. Metadata and images use consistent snapshots
(``metadata/<version>.<role>.json``, ``targets/<hw>/<version>/<sha256>.<name>``); old files can
stay, which lets clients that are mid-update finish against the files they started with.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from securesystemslib.signer import Key
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from blokauto.crypto.keys import Signer
from blokauto.errors import InputError, VerificationError
from blokauto.software.releases import (
    ROLE_PREFIX,
    SPEC_VERSION,
    Release,
    ReleaseDocument,
    TufSigner,
    check_hardware_id,
    check_release_keys,
    delegation_paths,
    did_from_tuf_key,
    keyid_of,
    metadata_bytes,
    role_name,
    tuf_expiry,
    tuf_key,
    verify_release,
)

__all__ = [
    "build_root",
    "build_targets",
    "export_repository",
    "load_metadata",
    "release_key_sets",
    "sign_metadata",
    "sign_trust_metadata",
    "verify_root_chain",
    "verify_targets",
]

ImageSource = bytes | str | os.PathLike[str]


# --- carmaker side: offline keys, run when keys change --------------------------------------------


def _role(dids: Sequence[str], threshold: int) -> Role:
    return Role(sorted(keyid_of(d) for d in check_release_keys(dids, threshold)), threshold)


def build_root(*, root_keys: Sequence[str], root_threshold: int, targets_keys: Sequence[str],
               targets_threshold: int, online_keys: Sequence[str], expires: datetime,
               version: int = 1) -> Metadata[Root]:
    """Unsigned root: offline root and targets keys, online keys (any one) for snapshot and timestamp."""
    roles = {
        "root": _role(root_keys, root_threshold),
        "targets": _role(targets_keys, targets_threshold),
        "snapshot": _role(online_keys, 1),
        "timestamp": _role(online_keys, 1),
    }
    keys: dict[str, Key] = {keyid_of(d): tuf_key(d) for d in sorted({*root_keys, *targets_keys, *online_keys})}
    root = Root(version=version, spec_version=SPEC_VERSION, expires=tuf_expiry(expires), keys=keys, roles=roles,
                consistent_snapshot=True)
    return Metadata(root)


def build_targets(*, release_keys_by_hw: Mapping[str, Sequence[str]], threshold_by_hw: Mapping[str, int],
                  expires: datetime, version: int = 1) -> Metadata[Targets]:
    """Unsigned top-level targets: one terminating delegation per hardware type, no images."""
    if set(release_keys_by_hw) != set(threshold_by_hw):
        raise InputError("every hardware type needs both release keys and a threshold", code="bad_threshold")
    keys: dict[str, Key] = {}
    roles = {}
    for hw in sorted(release_keys_by_hw):
        dids = check_release_keys(release_keys_by_hw[hw], threshold_by_hw[hw])
        keys.update({keyid_of(d): tuf_key(d) for d in dids})
        roles[role_name(hw)] = DelegatedRole(role_name(hw), sorted(keyid_of(d) for d in dids), threshold_by_hw[hw],
                                             terminating=True, paths=delegation_paths(hw))
    targets = Targets(version=version, spec_version=SPEC_VERSION, expires=tuf_expiry(expires), targets={},
                      delegations=Delegations(keys=dict(sorted(keys.items())), roles=roles))
    return Metadata(targets)


def sign_metadata(metadata: Metadata[Any], signers: Iterable[Signer]) -> bytes:
    """Append signatures by Blok Auto keys to ``metadata`` (mutated); returns the canonical document bytes."""
    for signer in signers:
        metadata.sign(TufSigner(signer), append=True)
    return metadata_bytes(metadata)


def sign_trust_metadata(*, root_signers: Sequence[Signer], targets_signers: Sequence[Signer],
                        online_keys: Sequence[str], release_keys_by_hw: Mapping[str, Sequence[str]],
                        threshold_by_hw: Mapping[str, int], root_expires: datetime, targets_expires: datetime,
                        root_threshold: int | None = None, targets_threshold: int | None = None,
                        ) -> tuple[bytes, bytes]:
    """``1.root.json`` and ``1.targets.json`` signed by all given offline keys (thresholds default to all)."""
    root = build_root(root_keys=[s.did for s in root_signers],
                      root_threshold=len(root_signers) if root_threshold is None else root_threshold,
                      targets_keys=[s.did for s in targets_signers],
                      targets_threshold=len(targets_signers) if targets_threshold is None else targets_threshold,
                      online_keys=online_keys, expires=root_expires)
    targets = build_targets(release_keys_by_hw=release_keys_by_hw, threshold_by_hw=threshold_by_hw,
                            expires=targets_expires)
    return sign_metadata(root, root_signers), sign_metadata(targets, targets_signers)


# --- node side: no offline keys ----------------------------------------------------------------


def _parse(data: bytes, kind: type[Any], what: str) -> Metadata[Any]:
    if not isinstance(data, bytes):
        raise InputError(f"{what} must be bytes", code="bad_metadata")
    try:
        metadata: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as exc:  # python-tuf wraps every parse failure in it
        raise InputError(f"{what} is not TUF metadata: {exc}", code="bad_metadata") from None
    if not isinstance(metadata.signed, kind):
        raise InputError(f"{what} is not {kind.type} metadata", code="bad_metadata")
    return metadata


def load_metadata(data: bytes, kind: type[Any], what: str) -> Metadata[Any]:
    """Parse one TUF document of role type ``kind`` (no signature checked): ``bad_metadata`` otherwise."""
    return _parse(data, kind, what)


def verify_root_chain(roots: Sequence[bytes]) -> Metadata[Root]:
    """Root 1..N as a client walks them: each signed by a threshold of the previous and its own keys."""
    if not roots:
        raise InputError("at least 1.root.json is needed", code="bad_metadata")
    trusted: Root | None = None
    current: Metadata[Root] | None = None
    for number, data in enumerate(roots, start=1):
        current = cast(Metadata[Root], _parse(data, Root, f"root version {number}"))
        if current.signed.version != number:
            raise InputError(f"root {number} carries version {current.signed.version}", code="bad_metadata")
        try:
            if trusted is not None:
                trusted.verify_delegate(Root.type, current.signed_bytes, current.signatures)
            current.signed.verify_delegate(Root.type, current.signed_bytes, current.signatures)
        except UnsignedMetadataError as exc:
            raise VerificationError(f"root {number}: {exc}", code="below_threshold") from None
        trusted = current.signed
    assert current is not None
    if not current.signed.consistent_snapshot:
        raise InputError("export needs consistent snapshots in root", code="bad_metadata")
    return current


def verify_targets(data: bytes, root: Root) -> Metadata[Targets]:
    """Top-level targets signed by root's targets keys, delegating only release roles by path."""
    targets = cast(Metadata[Targets], _parse(data, Targets, "targets"))
    try:
        root.verify_delegate(Targets.type, targets.signed_bytes, targets.signatures)
    except UnsignedMetadataError as exc:
        raise VerificationError(f"targets: {exc}", code="below_threshold") from None
    release_key_sets(targets.signed)  # shape check
    return targets


def release_key_sets(targets: Targets) -> dict[str, tuple[tuple[str, ...], int]]:
    """Hardware id -> (release-key dids, threshold), read back from the delegations in ``targets``."""
    delegations = targets.delegations
    if targets.targets or delegations is None or delegations.roles is None:
        raise InputError("top-level targets must only delegate release roles", code="bad_metadata")
    sets = {}
    for name, role in delegations.roles.items():
        hw = name[len(ROLE_PREFIX):] if name.startswith(ROLE_PREFIX) else ""
        check_hardware_id(hw)
        if not role.terminating or role.paths != delegation_paths(hw):
            raise InputError(f"delegation {name} must be terminating with paths {delegation_paths(hw)}",
                             code="bad_metadata")
        dids = tuple(did_from_tuf_key(delegations.keys[k]) for k in role.keyids)
        if [keyid_of(d) for d in dids] != list(role.keyids) or len(set(dids)) != len(dids):
            # verify_release signs and counts under the default keyid of each key, once per key
            raise InputError(f"delegation {name} must use each key once, under its default keyid",
                             code="bad_metadata")
        sets[hw] = (check_release_keys(dids, role.threshold), role.threshold)
    return sets


def _write(path: Path, data: bytes) -> None:
    """Atomic replace: a client reading while the node re-exports never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def image_digest(source: ImageSource) -> tuple[str, int]:
    """SHA-256 (hex) and length of an image given as bytes or a path (read in 1 MiB chunks)."""
    digest, length = hashlib.sha256(), 0
    if isinstance(source, bytes):
        digest.update(source)
        length = len(source)
    else:
        with open(source, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                length += len(chunk)
    return digest.hexdigest(), length


def _copy_image(source: ImageSource, release: Release, dest: Path) -> None:
    """Copy an image after checking it is exactly the released bytes."""
    sha256, length = image_digest(source)
    if sha256 != release.sha256 or length != release.length:
        raise VerificationError(f"image for {release.path} does not match its release", code="image_mismatch")
    if isinstance(source, bytes):
        _write(dest, source)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_repository(out_dir: str | os.PathLike[str], *, roots: Sequence[bytes], targets: bytes,
                      releases: Mapping[str, bytes], images: Mapping[str, ImageSource], online_signer: Signer,
                      version: int, snapshot_expires: datetime, timestamp_expires: datetime) -> list[str]:
    """Write ``metadata/`` and ``targets/`` under ``out_dir``; returns the written paths (relative).

    ``roots`` is the root chain 1..N and ``targets`` the top-level targets document, both pre-signed
    offline; ``releases`` maps hardware id to its latest catalogue; ``images`` maps sha256 to bytes
    or a file (images not given are listed but not hosted). ``version`` numbers snapshot and
    timestamp: pass something that only grows, such as the ledger height, so re-exports never
    look like a rollback and two nodes at one height agree. Expiries are parameters (no clock).
    """
    if type(version) is not int or version < 1:
        raise InputError("export version must be a positive integer", code="bad_sequence")
    root_md = verify_root_chain(roots)
    root = root_md.signed
    online = TufSigner(online_signer)
    for role in (Snapshot.type, Timestamp.type):
        if online.public_key.keyid not in root.roles[role].keyids:
            raise InputError(f"online key is not a {role} key in root", code="not_online_key")
    targets_md = verify_targets(targets, root)
    key_sets = release_key_sets(targets_md.signed)

    documents: dict[str, ReleaseDocument] = {}
    for hw, document in sorted(releases.items()):
        if hw not in key_sets:
            raise InputError(f"no release keys are delegated for hardware {hw!r}", code="unknown_hardware")
        keys, threshold = key_sets[hw]
        documents[hw] = verify_release(document, keys, threshold, hardware_id=hw)

    by_image: dict[str, list[Release]] = {}
    for doc in documents.values():
        for release in doc.releases:
            by_image.setdefault(release.sha256, []).append(release)
    unknown = sorted(set(images) - set(by_image))
    if unknown:
        raise InputError(f"image {unknown[0][:16]} is not in any exported release", code="unknown_image")

    out = Path(out_dir)
    written: list[Path] = []
    # Order matters for clients reading during an export: images, then catalogues, snapshot, timestamp.
    for sha256, source in sorted(images.items()):
        for release in by_image[sha256]:
            parent, _, name = release.path.rpartition("/")
            dest = out / "targets" / parent / f"{sha256}.{name}"
            _copy_image(source, release, dest)
            written.append(dest)

    meta = out / "metadata"
    for number, data in enumerate(roots, start=1):
        written.append(meta / f"{number}.root.json")
        _write(written[-1], data)
    written.append(meta / f"{targets_md.signed.version}.targets.json")
    _write(written[-1], targets)
    snapshot_meta = {f"{Targets.type}.json": MetaFile(version=targets_md.signed.version)}
    for hw, doc in documents.items():
        role = role_name(hw)
        written.append(meta / f"{doc.sequence}.{role}.json")
        _write(written[-1], doc.document)
        snapshot_meta[f"{role}.json"] = MetaFile(version=doc.sequence)

    snapshot = Metadata(Snapshot(version=version, spec_version=SPEC_VERSION, expires=tuf_expiry(snapshot_expires),
                                 meta=snapshot_meta))
    snapshot_bytes = sign_metadata(snapshot, [online_signer])
    written.append(meta / f"{version}.snapshot.json")
    _write(written[-1], snapshot_bytes)
    snapshot_file = MetaFile(version=version, length=len(snapshot_bytes),
                             hashes={"sha256": hashlib.sha256(snapshot_bytes).hexdigest()})
    timestamp = Metadata(Timestamp(version=version, spec_version=SPEC_VERSION, expires=tuf_expiry(timestamp_expires),
                                   snapshot_meta=snapshot_file))
    written.append(meta / "timestamp.json")
    _write(written[-1], sign_metadata(timestamp, [online_signer]))
    return [p.relative_to(out).as_posix() for p in written]
