"""Software releases as TUF delegated targets metadata, signed k-of-n by per-hardware release keys.

Design (Uptane's image repository, kept on the ledger):

* Each ECU hardware type ``hw`` has a set of release keys (Ed25519 ``did:key``) and a threshold k.
  The top-level TUF ``targets.json`` delegates the paths ``hw/*/*`` to the role ``release-<hw>``
  with exactly those keys and that threshold (see :mod:`blokauto.software.tuf_export`).
* The *release catalogue* of ``hw`` is that role's metadata: a TUF ``Targets`` document listing
  every image released for ``hw`` at path ``hw/<version>/<name>`` with its sha256, length and a
  ``custom`` field ``{"blokauto": {"hardware_id", "version", "min_previous"}}``. Publishing a
  release means signing the next catalogue (TUF version = previous + 1, all earlier releases kept).
  A catalogue per hardware type (not a role per release) keeps ``targets.json`` unchanged while
  releases come and go: the offline targets keys are needed only when release keys change.
* The bytes the release keys sign are TUF's canonical JSON of ``signed``; for the restricted
  content allowed here (printable ASCII, integers) this is also the ledger's RFC 8785 form, so
  the ledger stores one byte string that both :func:`verify_release` and python-tuf's ngclient
  verify. Any node can therefore export a repository an unmodified TUF client accepts, holding
  no private key except an online one for snapshot/timestamp (freshness, not authenticity).
* Versions are integers: comparison is one ``<`` that every node computes identically, TUF's own
  versions are integers, and the canonical-JSON subset bounds them. SemVer needs a parser whose
  precedence rules (pre-releases, ignored build metadata: distinct strings comparing equal) all
  nodes would have to agree on. A human version string can live in the image name.

Nothing here reads a clock: ``expires`` is chosen by the publisher and only the TUF client
(on the vehicle) compares it with the time; contracts stay deterministic.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.signer import Key, SecretsHandler, Signature, SSlibKey
from securesystemslib.signer import Signer as SslibSigner
from tuf.api.metadata import Metadata, TargetFile, Targets

from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer, did_from_public_key, public_key_from_did
from blokauto.errors import InputError, Rejected, VerificationError

SPEC_VERSION = "1.0.31"  # pinned: a python-tuf upgrade must not change the bytes of signed releases
ROLE_PREFIX = "release-"
CUSTOM_FIELD = "blokauto"
MAX_SAFE_INTEGER = canonical.MAX_SAFE_INTEGER
MAX_DOCUMENT_BYTES = 1_000_000
MAX_SIGNATURES = 64  # bounds the verification work one submitted document can cause
TUF_PAYLOAD_PREFIX = b'{"_type":'

_HARDWARE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_SIGNATURE_HEX = re.compile(r"[0-9a-f]{128}\Z")

__all__ = [
    "CUSTOM_FIELD",
    "ROLE_PREFIX",
    "SPEC_VERSION",
    "Release",
    "ReleaseDocument",
    "TufSigner",
    "build_release_metadata",
    "check_hardware_id",
    "check_install",
    "check_release_keys",
    "check_successor",
    "delegation_paths",
    "did_from_tuf_key",
    "keyid_of",
    "metadata_bytes",
    "next_release_metadata",
    "parse_release",
    "releases_by_image",
    "role_name",
    "sign_release",
    "tuf_expiry",
    "tuf_key",
    "verify_release",
]


# --- names and keys -------------------------------------------------------------------------------


def check_hardware_id(hardware_id: str) -> str:
    """A hardware id becomes a path segment and a role file name, so only a safe charset is allowed."""
    if not isinstance(hardware_id, str) or not _HARDWARE_ID.match(hardware_id):
        raise InputError(f"bad hardware id {str(hardware_id)[:80]!r}: use [a-z0-9._-], 1-63 chars",
                         code="bad_hardware_id")
    return hardware_id


def role_name(hardware_id: str) -> str:
    """TUF delegated role holding the release catalogue of one hardware type."""
    return ROLE_PREFIX + check_hardware_id(hardware_id)


def delegation_paths(hardware_id: str) -> list[str]:
    """Path patterns delegated to the hardware type's release keys (``hw/<version>/<name>``).

    python-tuf matches each ``/``-separated segment separately, so two ``*`` segments are needed.
    """
    return [f"{check_hardware_id(hardware_id)}/*/*"]


@lru_cache(maxsize=4096)
def tuf_key(did: str) -> SSlibKey:
    """The TUF ed25519 key of a ``did:key``, with securesystemslib's default keyid."""
    return SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(public_key_from_did(did)))


def keyid_of(did: str) -> str:
    return tuf_key(did).keyid


def did_from_tuf_key(key: Key) -> str:
    """Back from a TUF key (in root or a delegation) to the ledger's identity; Ed25519 only."""
    public = key.keyval.get("public") if isinstance(key.keyval, dict) else None
    if key.keytype != "ed25519" or key.scheme != "ed25519" or not isinstance(public, str):
        raise InputError(f"TUF key {key.keyid[:16]} is not an ed25519 key", code="bad_key")
    try:
        raw = bytes.fromhex(public)
    except ValueError:
        raise InputError(f"TUF key {key.keyid[:16]} is not hex", code="bad_key") from None
    return did_from_public_key(raw)


def check_release_keys(release_keys: Iterable[str], threshold: int) -> tuple[str, ...]:
    """Distinct, valid release-key dids (sorted); the threshold must be reachable and at least 1."""
    dids = tuple(sorted(set(release_keys)))
    for did in dids:
        public_key_from_did(did)  # raises bad_did
    if type(threshold) is not int or not 1 <= threshold <= len(dids):
        raise InputError(f"threshold must be between 1 and {len(dids)} distinct keys", code="bad_threshold")
    return dids


class TufSigner(SslibSigner):
    """A securesystemslib ``Signer`` backed by a Blok Auto :class:`Signer` (in-memory key).

    TUF signs the canonical JSON of ``signed`` with no domain tag. That cannot be replayed as a
    Blok Auto signature: those always cover ``b"blokauto/..." + message`` while this adapter only
    signs payloads starting with ``{"_type":``, so the two message sets never intersect.
    """

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._key = tuf_key(signer.did)

    @property
    def public_key(self) -> Key:
        return self._key

    @property
    def did(self) -> str:
        return self._signer.did

    def sign(self, payload: bytes) -> Signature:
        if not payload.startswith(TUF_PAYLOAD_PREFIX):
            raise ValueError("TufSigner only signs TUF canonical metadata")
        return Signature(self._key.keyid, self._signer.sign(b"", payload).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> TufSigner:
        raise ValueError("TufSigner wraps an in-memory blokauto Signer; it has no private key URI")


def metadata_bytes(metadata: Metadata[Any]) -> bytes:
    """The one byte form of a TUF document: RFC 8785 JSON, signatures sorted by keyid."""
    value = metadata.to_dict()
    value["signatures"] = sorted(value["signatures"], key=lambda s: (s["keyid"], s["sig"]))
    return canonical.encode(value)


# --- releases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """One image released for one hardware type. Validated on construction."""

    hardware_id: str
    version: int
    sha256: str
    length: int
    name: str
    min_previous: int = 0

    def __post_init__(self) -> None:
        check_hardware_id(self.hardware_id)
        for field, low in (("version", 1), ("length", 1), ("min_previous", 0)):
            value = getattr(self, field)
            if type(value) is not int or not low <= value <= MAX_SAFE_INTEGER:
                raise InputError(f"release {field} must be an integer >= {low}", code="bad_release")
        if self.min_previous >= self.version:
            raise InputError("min_previous must be below the release's own version", code="bad_release")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise InputError("sha256 must be 64 lowercase hex digits", code="bad_release")
        if not isinstance(self.name, str) or not _IMAGE_NAME.match(self.name):
            raise InputError("image name must be 1-128 of [A-Za-z0-9._+-]", code="bad_release")

    @property
    def path(self) -> str:
        """TUF target path; the version segment keeps paths unique within a catalogue."""
        return f"{self.hardware_id}/{self.version}/{self.name}"

    def target_file(self) -> TargetFile:
        custom = {"hardware_id": self.hardware_id, "version": self.version, "min_previous": self.min_previous}
        return TargetFile(self.length, {"sha256": self.sha256}, self.path, {"custom": {CUSTOM_FIELD: custom}})


@dataclass(frozen=True)
class ReleaseDocument:
    """A verified release catalogue: what the ledger stores (``document``) and what it means."""

    hardware_id: str
    sequence: int  # the TUF version of the role metadata
    expires: str  # TUF form, e.g. "2030-01-01T00:00:00Z"; checked by TUF clients, never by contracts
    releases: tuple[Release, ...]  # ascending version
    signers: frozenset[str]  # release-key dids whose valid signature was counted
    document: bytes  # normalised: only the counted signatures, one per key, sorted by keyid
    signed_digest: str  # sha256 of the bytes the release keys signed

    @property
    def latest(self) -> Release:
        return self.releases[-1]

    def find(self, sha256: str) -> Release | None:
        return next((r for r in self.releases if r.sha256 == sha256), None)


def tuf_expiry(expires: datetime) -> datetime:
    """TUF expiries are whole seconds in UTC; a naive datetime would be a silent guess, so it is refused."""
    if not isinstance(expires, datetime) or expires.utcoffset() is None:
        raise InputError("expires must be a timezone-aware datetime", code="bad_expiry")
    return expires.astimezone(UTC).replace(microsecond=0)


def build_release_metadata(hardware_id: str, releases: Sequence[Release], *, sequence: int,
                           expires: datetime) -> Metadata[Targets]:
    """The unsigned catalogue document; :func:`verify_release` accepts only exactly this form."""
    check_hardware_id(hardware_id)
    if type(sequence) is not int or not 1 <= sequence <= MAX_SAFE_INTEGER:
        raise InputError("sequence must be a positive integer", code="bad_sequence")
    if not releases:
        raise InputError("a release catalogue lists at least one release", code="bad_release")
    for release in releases:
        if not isinstance(release, Release):
            raise InputError("releases must be Release objects", code="bad_release")
        if release.hardware_id != hardware_id:
            raise InputError(f"release {release.path} is not for {hardware_id}", code="wrong_hardware")
    if len({r.version for r in releases}) != len(releases):
        raise InputError("two releases share a version", code="duplicate_version")
    if len({r.sha256 for r in releases}) != len(releases):
        raise InputError("the same image is released twice for one hardware type", code="duplicate_image")
    ordered = sorted(releases, key=lambda r: r.version)
    signed = Targets(version=sequence, spec_version=SPEC_VERSION, expires=tuf_expiry(expires),
                     targets={r.path: r.target_file() for r in ordered}, delegations=None)
    return Metadata(signed)


def next_release_metadata(previous: ReleaseDocument | None, new: Release | Sequence[Release], *,
                          expires: datetime, hardware_id: str | None = None) -> Metadata[Targets]:
    """The catalogue following ``previous`` with ``new`` added (pass ``()`` only to renew expiry)."""
    added = [new] if isinstance(new, Release) else list(new)
    if previous is None:
        hw = hardware_id or (added[0].hardware_id if added else "")
        return build_release_metadata(hw, added, sequence=1, expires=expires)
    if hardware_id is not None and hardware_id != previous.hardware_id:
        raise InputError("previous catalogue is for another hardware type", code="wrong_hardware")
    return build_release_metadata(previous.hardware_id, [*previous.releases, *added],
                                  sequence=previous.sequence + 1, expires=expires)


def _load(document: bytes) -> dict[str, Any]:
    if not isinstance(document, bytes):
        raise InputError("a release document is bytes", code="bad_release")
    if len(document) > MAX_DOCUMENT_BYTES:
        raise InputError(f"release document over {MAX_DOCUMENT_BYTES} bytes", code="too_large")
    value = canonical.decode(document)
    if type(value) is not dict or set(value) != {"signatures", "signed"} or type(value["signed"]) is not dict:
        raise InputError("a release document is {signatures, signed}", code="bad_release")
    signatures = value["signatures"]
    if type(signatures) is not list or len(signatures) > MAX_SIGNATURES:
        raise InputError(f"signatures must be a list of at most {MAX_SIGNATURES}", code="bad_release")
    for entry in signatures:
        if type(entry) is not dict or set(entry) != {"keyid", "sig"} or not all(
                type(v) is str for v in entry.values()):
            raise InputError("a signature is {keyid, sig} strings", code="bad_release")
    return cast(dict[str, Any], value)


def sign_release(document: Metadata[Targets] | bytes, signers: Iterable[Signer]) -> bytes:
    """Add release-key signatures (co-signers can pass the bytes on); returns canonical bytes."""
    if isinstance(document, bytes):
        try:
            metadata: Metadata[Any] = Metadata.from_dict(_load(document))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"not TUF metadata: {exc}", code="bad_release") from None
    else:
        metadata = document
    if not isinstance(metadata.signed, Targets):
        raise InputError("a release document is TUF targets metadata", code="bad_release")
    for signer in signers:
        metadata.sign(TufSigner(signer), append=True)
    return metadata_bytes(metadata)


def _release_from_target(hardware_id: str, path: str, target: TargetFile) -> Release:
    custom = target.custom
    fields = custom.get(CUSTOM_FIELD) if isinstance(custom, dict) else None
    if type(fields) is not dict or set(fields) != {"hardware_id", "version", "min_previous"}:
        raise InputError(f"target {path[:80]!r} lacks the blokauto release fields", code="bad_release")
    if fields["hardware_id"] != hardware_id or not path.startswith(hardware_id + "/"):
        raise InputError(f"target {path[:80]!r} is not for {hardware_id}", code="wrong_hardware")
    hashes = target.hashes
    if set(hashes) != {"sha256"}:
        raise InputError("a release image is identified by sha256 only", code="bad_release")
    name = path.rpartition("/")[2]
    return Release(hardware_id, fields["version"], hashes["sha256"], target.length, name, fields["min_previous"])


def _parse_release(document: bytes, hardware_id: str) -> tuple[dict[str, Any], tuple[Release, ...], int, bytes]:
    """Everything but the signatures: (decoded document, releases, TUF version, the signed bytes)."""
    value = _load(document)
    signed_dict = value["signed"]
    try:
        parsed = Targets.from_dict(copy.deepcopy(signed_dict))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"not TUF targets metadata: {exc}", code="bad_release") from None
    if parsed.delegations is not None:
        raise InputError("a release catalogue cannot delegate further", code="bad_release")
    releases = [_release_from_target(hardware_id, path, t) for path, t in parsed.targets.items()]
    expected = build_release_metadata(hardware_id, releases, sequence=parsed.version, expires=parsed.expires)
    payload = expected.signed_bytes
    if payload != canonical.encode_trusted(signed_dict):
        raise InputError("signed part is not in the exact release-catalogue form", code="bad_release")
    return value, tuple(sorted(releases, key=lambda r: r.version)), parsed.version, payload


def parse_release(document: bytes, *, hardware_id: str) -> ReleaseDocument:
    """A catalogue's form and content with no signature counted (``signers`` is empty).

    For checks that need no keys (a node refusing a malformed document before it is ordered) and
    for reading back a catalogue the ledger already verified (to build or check its successor,
    also after the hardware type's release keys changed). Never a substitute for
    :func:`verify_release`.
    """
    check_hardware_id(hardware_id)
    value, releases, sequence, payload = _parse_release(document, hardware_id)
    return ReleaseDocument(hardware_id=hardware_id, sequence=sequence, expires=value["signed"]["expires"],
                           releases=releases, signers=frozenset(), document=document,
                           signed_digest=hashlib.sha256(payload).hexdigest())


def verify_release(document: bytes, release_keys: Iterable[str], threshold: int, *,
                   hardware_id: str) -> ReleaseDocument:
    """Check a catalogue of ``hardware_id`` against that type's release keys and threshold.

    ``hardware_id`` is required because TUF metadata does not name its own role: the caller picks
    the key set by hardware id, and a document for another type must not pass with those keys.
    Signatures by keys outside ``release_keys`` (including other types' release keys), invalid
    ones and repeats of one key count as nothing; fewer than ``threshold`` distinct valid keys is
    ``below_threshold``. The signed part must be exactly what :func:`build_release_metadata`
    produces, so it has one byte form and carries nothing a TUF client would read unchecked.
    """
    check_hardware_id(hardware_id)
    keys = {keyid_of(did): did for did in check_release_keys(release_keys, threshold)}
    value, releases, sequence, payload = _parse_release(document, hardware_id)
    signed_dict = value["signed"]

    counted: dict[str, str] = {}
    for entry in value["signatures"]:
        keyid, sig = entry["keyid"], entry["sig"]
        if keyid in counted or keyid not in keys or not _SIGNATURE_HEX.match(sig):
            continue
        try:
            tuf_key(keys[keyid]).verify_signature(Signature(keyid, sig), payload)
        except (sslib_exceptions.UnverifiedSignatureError, sslib_exceptions.VerificationError):
            continue
        counted[keyid] = sig
    if len(counted) < threshold:
        raise VerificationError(f"release for {hardware_id} has {len(counted)} valid release-key signatures,"
                                f" {threshold} needed", code="below_threshold")
    normalised = canonical.encode_trusted({
        "signatures": [{"keyid": k, "sig": counted[k]} for k in sorted(counted)],
        "signed": signed_dict,
    })
    return ReleaseDocument(
        hardware_id=hardware_id,
        sequence=sequence,
        expires=signed_dict["expires"],
        releases=releases,
        signers=frozenset(keys[k] for k in counted),
        document=normalised,
        signed_digest=hashlib.sha256(payload).hexdigest(),
    )


# --- ledger rules (pure) --------------------------------------------------------------------------


def check_successor(previous: ReleaseDocument | None, new: ReleaseDocument) -> tuple[Release, ...]:
    """A new catalogue extends the previous one: next sequence, history kept, newer versions only.

    Returns the releases it adds. Append-only history means an image once released stays
    fetchable, and TUF's snapshot rollback check then protects exactly what the ledger holds.
    """
    if previous is None:
        if new.sequence != 1:
            raise Rejected("the first release catalogue has sequence 1", code="bad_sequence")
        return new.releases
    if new.hardware_id != previous.hardware_id:
        raise Rejected("catalogues are for different hardware types", code="wrong_hardware")
    if new.sequence != previous.sequence + 1:
        raise Rejected(f"next catalogue must have sequence {previous.sequence + 1}", code="bad_sequence")
    by_version = {r.version: r for r in new.releases}
    for old in previous.releases:
        if by_version.get(old.version) != old:
            raise Rejected(f"release {old.path} was removed or changed", code="history_rewritten")
    newest = previous.latest.version
    known = set(previous.releases)
    added = tuple(r for r in new.releases if r not in known)
    for release in added:
        if release.version <= newest:
            raise Rejected(f"release version {release.version} is not above {newest}", code="version_not_increasing")
    return added


def check_install(releases: Iterable[Release], image_sha256: str, hardware_id: str,
                  installed_version: int) -> Release:
    """The release a vehicle may install on an ECU of ``hardware_id`` now running ``installed_version``.

    ``installed_version`` 0 means nothing installed. Re-installing the same version is allowed
    (a reflash); going lower is a rollback; ``min_previous`` demands a migration path first.
    """
    if type(installed_version) is not int or not 0 <= installed_version <= MAX_SAFE_INTEGER:
        raise InputError("installed version must be a non-negative integer", code="bad_version")
    candidates = [r for r in releases if r.sha256 == image_sha256]
    if not candidates:
        raise Rejected("this image was never released", code="unknown_image")
    release = next((r for r in candidates if r.hardware_id == hardware_id), None)
    if release is None:
        raise Rejected(f"image is released for {sorted({r.hardware_id for r in candidates})}, not {hardware_id}",
                       code="wrong_hardware")
    if release.version < installed_version:
        raise Rejected(f"version {release.version} is below installed {installed_version}", code="rollback")
    if installed_version < release.min_previous:
        raise Rejected(f"version {release.version} needs at least {release.min_previous} installed first",
                       code="below_min_previous")
    return release


def releases_by_image(documents: Mapping[str, ReleaseDocument]) -> dict[str, list[Release]]:
    """Index catalogues (by hardware id) by image hash, e.g. to feed :func:`check_install`."""
    index: dict[str, list[Release]] = {}
    for doc in documents.values():
        for release in doc.releases:
            index.setdefault(release.sha256, []).append(release)
    return index
