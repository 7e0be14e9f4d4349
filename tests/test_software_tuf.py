"""Software releases: k-of-n release keys on the ledger, exported as TUF that an unmodified ngclient trusts.

The interoperability tests serve the exported directory with ``http.server`` and point a stock
``tuf.ngclient.Updater`` at it, bootstrapped from the exported ``1.root.json``: if ngclient
downloads the image, the bytes the release keys signed on the ledger are what TUF verifies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater

from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_TX, Signer, verify_signature
from blokauto.errors import BlokError, InputError, Rejected, VerificationError
from blokauto.software.releases import (
    Release,
    ReleaseDocument,
    TufSigner,
    build_release_metadata,
    check_install,
    check_successor,
    did_from_tuf_key,
    keyid_of,
    metadata_bytes,
    next_release_metadata,
    releases_by_image,
    sign_release,
    tuf_key,
    verify_release,
)
from blokauto.software.tuf_export import (
    build_root,
    export_repository,
    release_key_sets,
    sign_metadata,
    sign_trust_metadata,
    verify_targets,
)
from tests.static_server import serve_directory

HW = "brake-ecu-v2"
OTHER_HW = "engine-ecu-v1"
FUTURE = datetime(2040, 1, 1, tzinfo=UTC)
RELEASE_KEYS = [Signer.deterministic(f"brake release key {i}") for i in range(3)]
ENGINE_KEYS = [Signer.deterministic(f"engine release key {i}") for i in range(3)]
ROOT_KEYS = [Signer.deterministic(f"carmaker root key {i}") for i in range(2)]
TARGETS_KEY = Signer.deterministic("carmaker targets key")
ONLINE_KEY = Signer.generate()
OUTSIDER = Signer.deterministic("outsider")
IMAGE_1 = b"brake firmware 1.0.0\n" * 300
IMAGE_2 = b"brake firmware 1.1.0\n" * 400


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dids(signers: Sequence[Signer]) -> list[str]:
    return [s.did for s in signers]


R1 = Release(HW, 1, _sha(IMAGE_1), len(IMAGE_1), "brake-fw-1.0.0.bin")
R2 = Release(HW, 2, _sha(IMAGE_2), len(IMAGE_2), "brake-fw-1.1.0.bin", min_previous=1)


def _verify(document: bytes, *, keys: Sequence[Signer] = RELEASE_KEYS, threshold: int = 2,
            hardware_id: str = HW) -> ReleaseDocument:
    return verify_release(document, _dids(keys), threshold, hardware_id=hardware_id)


def _raises(kind: type[BlokError], code: str) -> Any:
    return pytest.raises(kind, check=lambda e: e.code == code)


@dataclass(frozen=True)
class Published:
    catalogue_1: ReleaseDocument  # R1, signed by release keys 0 and 1
    catalogue_2: ReleaseDocument  # R1 + R2, signed by release keys 0 and 2
    root: bytes
    targets: bytes


@pytest.fixture(scope="module")
def published() -> Published:
    first = _verify(sign_release(next_release_metadata(None, R1, expires=FUTURE), RELEASE_KEYS[:2]))
    second = _verify(sign_release(next_release_metadata(first, R2, expires=FUTURE), RELEASE_KEYS[::2]))
    assert check_successor(None, first) == (R1,)
    assert check_successor(first, second) == (R2,)
    root, targets = sign_trust_metadata(
        root_signers=ROOT_KEYS, targets_signers=[TARGETS_KEY], online_keys=[ONLINE_KEY.did],
        release_keys_by_hw={HW: _dids(RELEASE_KEYS), OTHER_HW: _dids(ENGINE_KEYS)},
        threshold_by_hw={HW: 2, OTHER_HW: 2}, root_expires=FUTURE, targets_expires=FUTURE)
    return Published(first, second, root, targets)


def _export(published: Published, out: Path, *, catalogue: bytes | None = None, version: int = 1,
            images: dict[str, Any] | None = None, roots: Sequence[bytes] | None = None,
            online: Signer = ONLINE_KEY) -> list[str]:
    return export_repository(
        out, roots=roots or [published.root], targets=published.targets,
        releases={HW: catalogue or published.catalogue_2.document},
        images={R1.sha256: IMAGE_1, R2.sha256: IMAGE_2} if images is None else images,
        online_signer=online, version=version, snapshot_expires=FUTURE, timestamp_expires=FUTURE)


_serve = serve_directory


def _updater(repo: Path, base_url: str, client: Path) -> Updater:
    """A stock ngclient whose only trust anchor is the exported 1.root.json."""
    (client / "metadata").mkdir(parents=True, exist_ok=True)
    (client / "targets").mkdir(exist_ok=True)
    return Updater(str(client / "metadata"), f"{base_url}/metadata/", str(client / "targets"),
                   f"{base_url}/targets/", bootstrap=(repo / "metadata" / "1.root.json").read_bytes())


def _served_image(repo: Path, release: Release) -> Path:
    return repo / "targets" / HW / str(release.version) / f"{release.sha256}.{release.name}"


# --- ngclient interoperability -------------------------------------------------------------------


def test_ngclient_verifies_and_downloads_released_images(published: Published, tmp_path: Path) -> None:
    repo, client = tmp_path / "repo", tmp_path / "client"
    written = _export(published, repo, catalogue=published.catalogue_1.document, images={R1.sha256: IMAGE_1})
    assert set(written) == {"metadata/1.root.json", "metadata/1.targets.json", f"metadata/1.release-{HW}.json",
                            "metadata/1.snapshot.json", "metadata/timestamp.json",
                            f"targets/{HW}/1/{R1.sha256}.{R1.name}"}
    with _serve(repo) as url:
        updater = _updater(repo, url, client)
        updater.refresh()
        info = updater.get_targetinfo(R1.path)
        assert info is not None and info.custom == {"blokauto": {"hardware_id": HW, "version": 1, "min_previous": 0}}
        assert Path(updater.download_target(info)).read_bytes() == IMAGE_1
        assert updater.get_targetinfo(R2.path) is None

        # The second release: a new catalogue and a new export (version = e.g. ledger height).
        # The same client state moves forward through ngclient's own rollback checks.
        _export(published, repo, version=2)
        updater = _updater(repo, url, client)
        updater.refresh()
        for release, image in ((R1, IMAGE_1), (R2, IMAGE_2)):
            info = updater.get_targetinfo(release.path)
            assert info is not None and info.hashes == {"sha256": release.sha256}
            path = updater.download_target(info)
            assert Path(path).read_bytes() == image
            assert updater.find_cached_target(info) == path
        assert updater.get_targetinfo(f"{HW}/3/brake-fw-9.bin") is None

        # A node cannot roll the catalogue back, even with a newer snapshot/timestamp.
        _export(published, repo, catalogue=published.catalogue_1.document, version=3, images={})
        with pytest.raises(tuf_exceptions.BadVersionNumberError):
            _updater(repo, url, client).refresh()


def test_ngclient_refuses_an_altered_image(published: Published, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _export(published, repo)
    served = _served_image(repo, R2)
    flipped = bytearray(IMAGE_2)
    flipped[100] ^= 1
    with _serve(repo) as url:
        served.write_bytes(bytes(flipped))
        updater = _updater(repo, url, tmp_path / "client")
        info = updater.get_targetinfo(R2.path)
        assert info is not None
        with pytest.raises(tuf_exceptions.LengthOrHashMismatchError):
            updater.download_target(info)
        served.write_bytes(IMAGE_2 + b"\0")
        with pytest.raises(tuf_exceptions.DownloadLengthMismatchError):
            updater.download_target(info)
        assert not list((tmp_path / "client" / "targets").iterdir())


def test_ngclient_and_ledger_refuse_a_release_signed_by_one_of_three(published: Published, tmp_path: Path) -> None:
    one_of_three = sign_release(next_release_metadata(published.catalogue_1, R2, expires=FUTURE), RELEASE_KEYS[1:2])
    assert canonical.decode(one_of_three)["signed"] == canonical.decode(published.catalogue_2.document)["signed"]
    with _raises(VerificationError, "below_threshold"):
        _verify(one_of_three)
    with _raises(VerificationError, "below_threshold"):
        _export(published, tmp_path / "refused", catalogue=one_of_three)

    repo = tmp_path / "repo"
    _export(published, repo)
    (repo / "metadata" / f"2.release-{HW}.json").write_bytes(one_of_three)  # a node bypassing its own checks
    with _serve(repo) as url:
        updater = _updater(repo, url, tmp_path / "client")
        updater.refresh()  # snapshot and timestamp are fine: the online key is not what fails
        with pytest.raises(tuf_exceptions.UnsignedMetadataError):
            updater.get_targetinfo(R2.path)


def test_ngclient_and_ledger_refuse_a_release_resigned_by_outsiders(published: Published, tmp_path: Path) -> None:
    evil = b"not brake firmware\n" * 400
    swapped = replace(R2, sha256=_sha(evil), length=len(evil))
    forged_md = build_release_metadata(HW, [R1, swapped], sequence=2, expires=FUTURE)
    # One stolen release key plus outsiders: the outsiders (and the other hardware's keys) count as nothing.
    forged = sign_release(forged_md, [OUTSIDER, ENGINE_KEYS[0], RELEASE_KEYS[0]])
    with _raises(VerificationError, "below_threshold"):
        _verify(forged)

    repo = tmp_path / "repo"
    _export(published, repo)
    (repo / "metadata" / f"2.release-{HW}.json").write_bytes(forged)
    evil_path = repo / "targets" / HW / "2" / f"{swapped.sha256}.{swapped.name}"
    evil_path.write_bytes(evil)
    with _serve(repo) as url:
        updater = _updater(repo, url, tmp_path / "client")
        updater.refresh()
        with pytest.raises(tuf_exceptions.UnsignedMetadataError):
            updater.get_targetinfo(R2.path)


def test_ngclient_follows_a_root_rotation(published: Published, tmp_path: Path) -> None:
    """New root keys: 2.root.json is signed by the old threshold and the new one; clients walk to it."""
    new_root_keys = [Signer.deterministic(f"carmaker root key {i} (2041)") for i in range(3)]
    root_2 = build_root(root_keys=_dids(new_root_keys), root_threshold=2, targets_keys=[TARGETS_KEY.did],
                        targets_threshold=1, online_keys=[ONLINE_KEY.did], expires=FUTURE, version=2)
    root_2_bytes = sign_metadata(root_2, [*ROOT_KEYS, *new_root_keys[:2]])
    repo, client = tmp_path / "repo", tmp_path / "client"
    _export(published, repo, roots=[published.root, root_2_bytes])
    with _serve(repo) as url:
        updater = _updater(repo, url, client)
        info = updater.get_targetinfo(R2.path)
        assert info is not None and Path(updater.download_target(info)).read_bytes() == IMAGE_2
    assert (client / "metadata" / "root.json").read_bytes() == root_2_bytes
    only_new_keys = sign_metadata(Metadata(root_2.signed), new_root_keys)
    with _raises(VerificationError, "below_threshold"):  # new keys alone cannot rotate root
        _export(published, tmp_path / "refused", roots=[published.root, only_new_keys])


# --- the signed bytes -----------------------------------------------------------------------------


def test_release_keys_sign_the_bytes_tuf_verifies_and_the_ledger_stores(published: Published) -> None:
    catalogue = published.catalogue_2
    value = canonical.decode(catalogue.document)  # the stored document is RFC 8785 canonical
    md: Metadata[Any] = Metadata.from_bytes(catalogue.document)  # ...and plain TUF metadata
    assert md.signed_bytes == canonical.encode(value["signed"])  # TUF canonical JSON == ledger canonical JSON
    assert catalogue.signed_digest == _sha(md.signed_bytes)
    assert catalogue.signers == {RELEASE_KEYS[0].did, RELEASE_KEYS[2].did}
    assert catalogue.latest == R2 and catalogue.find(R1.sha256) == R1 and catalogue.find("0" * 64) is None
    assert catalogue.expires == "2040-01-01T00:00:00Z"
    for keyid, sig in md.signatures.items():  # python-tuf's own check, as ngclient runs it
        tuf_key(next(d for d in _dids(RELEASE_KEYS) if keyid_of(d) == keyid)).verify_signature(sig, md.signed_bytes)
    assert _verify(catalogue.document) == catalogue  # normalised form is a fixed point
    # Delegations in the top-level targets point at exactly these keys and threshold.
    root_md: Metadata[Any] = Metadata.from_bytes(published.root)
    sets = release_key_sets(verify_targets(published.targets, root_md.signed).signed)
    assert sets[HW] == (tuple(sorted(_dids(RELEASE_KEYS))), 2)


def test_co_signing_passes_bytes_between_key_holders() -> None:
    first = sign_release(next_release_metadata(None, R1, expires=FUTURE), RELEASE_KEYS[:1])
    both = sign_release(first, RELEASE_KEYS[2:])
    assert _verify(both).signers == {RELEASE_KEYS[0].did, RELEASE_KEYS[2].did}


def test_tuf_signer_is_domain_separated() -> None:
    signer = TufSigner(RELEASE_KEYS[0])
    assert did_from_tuf_key(signer.public_key) == RELEASE_KEYS[0].did
    with pytest.raises(ValueError, match="TUF"):
        signer.sign(DOMAIN_TX + b"{}")
    payload = b'{"_type":"targets"}'
    sig = signer.sign(payload)
    signer.public_key.verify_signature(sig, payload)
    assert not verify_signature(RELEASE_KEYS[0].did, DOMAIN_TX, payload[len(DOMAIN_TX):], bytes.fromhex(sig.signature))


_POOL = ["r0", "r1", "r2", "bad-r0", "bad-r1", "outsider", "engine"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_POOL), max_size=10))
def test_each_release_key_counts_once(picks: list[str]) -> None:
    md = build_release_metadata(HW, [R1], sequence=1, expires=FUTURE)
    payload = md.signed_bytes
    signers = {"r0": RELEASE_KEYS[0], "r1": RELEASE_KEYS[1], "r2": RELEASE_KEYS[2], "outsider": OUTSIDER,
               "engine": ENGINE_KEYS[1]}

    def entry(pick: str) -> dict[str, str]:
        if pick.startswith("bad-"):  # a release key's keyid with a signature that does not verify
            return {"keyid": keyid_of(signers[pick[4:]].did), "sig": "ab" * 64}
        return {"keyid": keyid_of(signers[pick].did), "sig": signers[pick].sign(b"", payload).hex()}

    document = canonical.encode({"signatures": [entry(p) for p in picks], "signed": md.signed.to_dict()})
    valid = {signers[p].did for p in picks if p in ("r0", "r1", "r2")}
    if len(valid) < 2:
        with _raises(VerificationError, "below_threshold"):
            _verify(document)
        return
    result = _verify(document)
    assert result.signers == valid
    assert len(canonical.decode(result.document)["signatures"]) == len(valid)  # duplicates, outsiders dropped


def test_keys_of_another_hardware_type_count_as_nothing(published: Published) -> None:
    by_engine = sign_release(build_release_metadata(HW, [R1], sequence=1, expires=FUTURE), ENGINE_KEYS)
    with _raises(VerificationError, "below_threshold"):
        _verify(by_engine)
    with _raises(InputError, "wrong_hardware"):  # brake releases cannot pass as engine releases
        _verify(published.catalogue_2.document, keys=ENGINE_KEYS, hardware_id=OTHER_HW)


def _mutated(document: bytes, change: Any) -> bytes:
    value = canonical.decode(document)
    change(value)
    return canonical.encode(value)


def _set_custom_version(value: dict[str, Any]) -> None:
    value["signed"]["targets"][R1.path]["custom"]["blokauto"]["version"] = 5


@pytest.mark.parametrize(("change", "kind", "code"), [
    (lambda v: v["signed"].update(extra=1), InputError, "bad_release"),
    (lambda v: v["signed"].update(delegations={"keys": {}, "roles": []}), InputError, "bad_release"),
    (lambda v: v["signed"].update(spec_version="1.0.30"), InputError, "bad_release"),
    (lambda v: v["signed"].update(expires="2040-1-1T00:00:00Z"), InputError, "bad_release"),
    (lambda v: v["signed"].update(targets={}), InputError, "bad_release"),
    (_set_custom_version, InputError, "bad_release"),
    (lambda v: v["signed"]["targets"][R1.path].update(length=R1.length + 1), VerificationError, "below_threshold"),
    (lambda v: v["signed"].update(version=7), VerificationError, "below_threshold"),
    (lambda v: v["signatures"].append({"keyid": "x"}), InputError, "bad_release"),
    (lambda v: v.update(extra=1), InputError, "bad_release"),
    (lambda v: v["signatures"].extend([{"keyid": "x", "sig": "y"}] * 64), InputError, "bad_release"),
])
def test_verify_release_refuses_malformed_or_tampered(published: Published, change: Any,
                                                      kind: type[BlokError], code: str) -> None:
    with _raises(kind, code):
        _verify(_mutated(published.catalogue_1.document, change))


def test_verify_release_refuses_bad_inputs(published: Published) -> None:
    document = published.catalogue_1.document
    pretty = Metadata.from_bytes(document).to_bytes(JSONSerializer(compact=False))  # valid TUF, not the one form
    with _raises(InputError, "non_canonical"):
        _verify(pretty)
    with _raises(InputError, "too_large"):
        _verify(b" " * 1_000_001)
    with _raises(InputError, "bad_threshold"):
        _verify(document, threshold=4)
    with _raises(InputError, "bad_threshold"):
        _verify(document, threshold=0)
    with _raises(InputError, "bad_threshold"):  # a key listed twice is still one key
        verify_release(document, [RELEASE_KEYS[0].did] * 2, 2, hardware_id=HW)
    with _raises(InputError, "bad_hardware_id"):
        _verify(document, hardware_id="Brake ECU")
    other = sign_release(build_release_metadata(OTHER_HW, [replace(R1, hardware_id=OTHER_HW)], sequence=1,
                                                expires=FUTURE), RELEASE_KEYS)
    with _raises(InputError, "wrong_hardware"):
        _verify(other)


@pytest.mark.parametrize(("fields", "code"), [
    ({"hardware_id": "BRAKE"}, "bad_hardware_id"),
    ({"hardware_id": "brake/ecu"}, "bad_hardware_id"),
    ({"version": 0}, "bad_release"),
    ({"version": True}, "bad_release"),
    ({"version": 2**53}, "bad_release"),
    ({"length": 0}, "bad_release"),
    ({"min_previous": 1}, "bad_release"),  # not below its own version 1
    ({"min_previous": -1}, "bad_release"),
    ({"sha256": "A" * 64}, "bad_release"),
    ({"name": "../x"}, "bad_release"),
    ({"name": "a*b"}, "bad_release"),
])
def test_release_fields_are_validated(fields: dict[str, Any], code: str) -> None:
    with _raises(InputError, code):
        replace(R1, **fields)


def test_catalogue_building_refusals() -> None:
    with _raises(InputError, "duplicate_version"):
        build_release_metadata(HW, [R1, replace(R2, version=1, min_previous=0)], sequence=1, expires=FUTURE)
    with _raises(InputError, "duplicate_image"):
        build_release_metadata(HW, [R1, replace(R2, sha256=R1.sha256)], sequence=1, expires=FUTURE)
    with _raises(InputError, "wrong_hardware"):
        build_release_metadata(OTHER_HW, [R1], sequence=1, expires=FUTURE)
    with _raises(InputError, "bad_sequence"):
        build_release_metadata(HW, [R1], sequence=0, expires=FUTURE)
    with _raises(InputError, "bad_expiry"):
        build_release_metadata(HW, [R1], sequence=1, expires=datetime(2040, 1, 1))  # naive


# --- ledger rules ---------------------------------------------------------------------------------


def _catalogue(releases: Sequence[Release], sequence: int) -> ReleaseDocument:
    md = build_release_metadata(HW, releases, sequence=sequence, expires=FUTURE)
    return _verify(sign_release(md, RELEASE_KEYS[:2]))


def test_check_successor(published: Published) -> None:
    first, second = published.catalogue_1, published.catalogue_2
    with _raises(Rejected, "bad_sequence"):
        check_successor(None, second)
    with _raises(Rejected, "bad_sequence"):
        check_successor(first, _catalogue([R1, R2], 3))
    with _raises(Rejected, "history_rewritten"):
        check_successor(first, _catalogue([R2], 2))
    with _raises(Rejected, "history_rewritten"):
        check_successor(first, _catalogue([replace(R1, name="renamed.bin"), R2], 2))
    r5 = replace(R2, version=5)
    late = Release(HW, 3, "1" * 64, 9, "late.bin")  # a version below the newest, published after it
    with _raises(Rejected, "version_not_increasing"):
        check_successor(_catalogue([R1, r5], 1), _catalogue([R1, r5, late], 2))
    engine = _verify(sign_release(build_release_metadata(OTHER_HW, [replace(R1, hardware_id=OTHER_HW)], sequence=2,
                                                         expires=FUTURE), ENGINE_KEYS[:2]),
                     keys=ENGINE_KEYS, hardware_id=OTHER_HW)
    with _raises(Rejected, "wrong_hardware"):
        check_successor(first, engine)
    renewed = _catalogue([R1, R2], 3)  # expiry renewal: next sequence, nothing new
    assert check_successor(second, renewed) == ()


def test_check_install_rules(published: Published) -> None:
    releases = releases_by_image({HW: published.catalogue_2})[R2.sha256]
    assert check_install(releases, R2.sha256, HW, 1) == R2
    assert check_install(releases, R2.sha256, HW, 2) == R2  # reflash of the same version
    with _raises(Rejected, "unknown_image"):
        check_install(published.catalogue_2.releases, _sha(b"never released"), HW, 1)
    with _raises(Rejected, "wrong_hardware"):
        check_install(releases, R2.sha256, OTHER_HW, 1)
    with _raises(Rejected, "rollback"):
        check_install(published.catalogue_2.releases, R1.sha256, HW, 2)
    with _raises(Rejected, "below_min_previous"):
        check_install(releases, R2.sha256, HW, 0)
    with _raises(InputError, "bad_version"):
        check_install(releases, R2.sha256, HW, -1)


@settings(max_examples=200, deadline=None)
@given(version=st.integers(1, 50), min_previous=st.integers(0, 49), installed=st.integers(0, 60))
def test_install_rule_property(version: int, min_previous: int, installed: int) -> None:
    release = Release(HW, version, R1.sha256, R1.length, R1.name, min(min_previous, version - 1))
    if release.version < installed:
        with _raises(Rejected, "rollback"):
            check_install([release], R1.sha256, HW, installed)
    elif installed < release.min_previous:
        with _raises(Rejected, "below_min_previous"):
            check_install([release], R1.sha256, HW, installed)
    else:
        assert check_install([release], R1.sha256, HW, installed) is release


# --- export refusals ------------------------------------------------------------------------------


def test_export_refuses_what_a_client_would_refuse(published: Published, tmp_path: Path) -> None:
    with _raises(VerificationError, "image_mismatch"):
        _export(published, tmp_path / "a", images={R2.sha256: IMAGE_1[: len(IMAGE_2)]})
    with _raises(InputError, "unknown_image"):
        _export(published, tmp_path / "b", images={_sha(b"stray"): b"stray"})
    with _raises(InputError, "not_online_key"):
        _export(published, tmp_path / "c", online=OUTSIDER)
    image_file = tmp_path / "image.bin"
    image_file.write_bytes(IMAGE_2)
    written = _export(published, tmp_path / "d", images={R2.sha256: str(image_file)})
    assert f"targets/{HW}/2/{R2.sha256}.{R2.name}" in written

    engine_doc = sign_release(build_release_metadata("unlisted-ecu", [replace(R1, hardware_id="unlisted-ecu")],
                                                     sequence=1, expires=FUTURE), RELEASE_KEYS)
    with _raises(InputError, "unknown_hardware"):
        export_repository(tmp_path / "e", roots=[published.root], targets=published.targets,
                          releases={"unlisted-ecu": engine_doc}, images={}, online_signer=ONLINE_KEY, version=1,
                          snapshot_expires=FUTURE, timestamp_expires=FUTURE)

    root_md = build_root(root_keys=_dids(ROOT_KEYS), root_threshold=2, targets_keys=[TARGETS_KEY.did],
                         targets_threshold=1, online_keys=[ONLINE_KEY.did], expires=FUTURE)
    half_signed_root = sign_metadata(root_md, ROOT_KEYS[:1])
    with _raises(VerificationError, "below_threshold"):
        _export(published, tmp_path / "f", roots=[half_signed_root])

    targets_md: Metadata[Any] = Metadata.from_bytes(published.targets)
    forged_targets = sign_metadata(Metadata(targets_md.signed), [OUTSIDER])
    root_signed: Any = Metadata.from_bytes(published.root).signed
    with _raises(VerificationError, "below_threshold"):
        verify_targets(forged_targets, root_signed)
    role = targets_md.signed.delegations.roles[f"release-{HW}"]
    role.paths = ["*/*/*"]  # brake keys must not be trusted for other hardware's paths
    with _raises(InputError, "bad_metadata"):
        release_key_sets(targets_md.signed)
    role.paths, role.terminating = [f"{HW}/*/*"], False  # a non-terminating search could fall through
    with _raises(InputError, "bad_metadata"):
        release_key_sets(targets_md.signed)
    assert not (tmp_path / "f").exists()


def test_metadata_bytes_are_canonical(published: Published) -> None:
    md: Metadata[Any] = Metadata.from_bytes(published.root)
    assert metadata_bytes(md) == published.root
    assert canonical.decode(published.root)["signed"]["consistent_snapshot"] is True
