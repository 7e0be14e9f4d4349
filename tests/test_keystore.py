"""Encrypted key files: round trip, wrong password, tampering, permissions, no silent overwrite."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from blokauto.crypto.keys import did_from_public_key
from blokauto.crypto.keystore import keystore_info, read_keystore, write_keystore
from blokauto.errors import InputError, NotFound, StorageError

PASSWORD = "correct horse battery staple"


@pytest.fixture()
def key() -> SigningKey:
    return SigningKey(bytes(range(32)))


@pytest.fixture()
def keyfile(tmp_path: Path, key: SigningKey) -> Path:
    path = tmp_path / "member.key"
    write_keystore(path, key, PASSWORD, strength="interactive")
    return path


def _edit(path: Path, **changes: object) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_round_trip(keyfile: Path, key: SigningKey) -> None:
    assert bytes(read_keystore(keyfile, PASSWORD)) == bytes(key)


def test_file_format(keyfile: Path, key: SigningKey) -> None:
    text = keyfile.read_text(encoding="utf-8")
    record = json.loads(text)
    assert list(record) == sorted(record)
    assert record["version"] == 1 and record["kdf"] == "argon2id"
    assert base64.b64decode(record["public_key"]) == bytes(key.verify_key)
    assert record["did"] == did_from_public_key(bytes(key.verify_key))
    assert len(base64.b64decode(record["salt"])) == 16
    assert len(base64.b64decode(record["box"])) == 24 + 32 + 16
    assert base64.b64encode(bytes(key)).decode() not in text


def test_info_needs_no_password(keyfile: Path, key: SigningKey) -> None:
    info = keystore_info(keyfile)
    assert info["did"] == did_from_public_key(bytes(key.verify_key))
    assert base64.b64decode(info["public_key"]) == bytes(key.verify_key)
    assert "salt" not in info and "box" not in info


def test_two_writes_use_fresh_salt(tmp_path: Path, key: SigningKey) -> None:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    write_keystore(a, key, PASSWORD, strength="interactive")
    write_keystore(b, key, PASSWORD, strength="interactive")
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["salt"] != rb["salt"] and ra["box"] != rb["box"]


def test_wrong_password(keyfile: Path) -> None:
    with pytest.raises(InputError) as exc:
        read_keystore(keyfile, PASSWORD + "!")
    assert exc.value.code == "bad_password"
    with pytest.raises(InputError) as exc:
        read_keystore(keyfile, "")
    assert exc.value.code == "bad_password"


def test_password_unicode_normalised(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "k.key"
    write_keystore(path, key, "caf\u00e9", strength="interactive")  # precomposed é
    assert bytes(read_keystore(path, "cafe\u0301")) == bytes(key)  # e + combining acute


def test_tampered_ciphertext(keyfile: Path) -> None:
    box = bytearray(base64.b64decode(json.loads(keyfile.read_text())["box"]))
    box[30] ^= 1
    _edit(keyfile, box=base64.b64encode(bytes(box)).decode())
    with pytest.raises(InputError) as exc:
        read_keystore(keyfile, PASSWORD)
    assert exc.value.code == "bad_password"  # libsodium cannot tell tampering from a wrong password


def test_tampered_public_part(keyfile: Path) -> None:
    other = bytes(SigningKey(b"\x09" * 32).verify_key)
    _edit(keyfile, public_key=base64.b64encode(other).decode(), did=did_from_public_key(other))
    keystore_info(keyfile)  # still well-formed: only the password reveals the lie
    with pytest.raises(InputError) as exc:
        read_keystore(keyfile, PASSWORD)
    assert exc.value.code == "bad_keystore"


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 2},
        {"version": True},
        {"version": 1.0},
        {"kdf": "scrypt"},
        {"opslimit": 0},
        {"memlimit": 2**42},  # would make us allocate 4 TiB
        {"opslimit": "3"},
        {"salt": "not base64!"},
        {"salt": base64.b64encode(b"short").decode()},
        {"box": base64.b64encode(b"x" * 10).decode()},
        {"public_key": 5},
        {"did": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"},
        {"extra": 1},
    ],
)
def test_corrupt_file(keyfile: Path, changes: dict[str, object]) -> None:
    _edit(keyfile, **changes)
    for call in (lambda: keystore_info(keyfile), lambda: read_keystore(keyfile, PASSWORD)):
        with pytest.raises(InputError) as exc:
            call()
        assert exc.value.code == "bad_keystore"


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b"\xff\xfe", b"{" + b" " * 70000 + b"}"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        keystore_info(path)
    assert exc.value.code == "bad_keystore"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_keystore(tmp_path / "nope.key", PASSWORD)


def test_file_permissions(tmp_path: Path, key: SigningKey) -> None:
    old = os.umask(0)  # even with a permissive umask the file is owner-only
    try:
        path = tmp_path / "k.key"
        write_keystore(path, key, PASSWORD, strength="interactive")
        write_keystore(path, key, PASSWORD, strength="interactive", overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_no_overwrite(keyfile: Path) -> None:
    before = keyfile.read_bytes()
    with pytest.raises(InputError) as exc:
        write_keystore(keyfile, SigningKey.generate(), "other", strength="interactive")
    assert exc.value.code == "keystore_exists"
    assert keyfile.read_bytes() == before


def test_overwrite_when_asked(keyfile: Path) -> None:
    new = SigningKey.generate()
    write_keystore(keyfile, new, "other", strength="interactive", overwrite=True)
    assert bytes(read_keystore(keyfile, "other")) == bytes(new)
    assert [p.name for p in keyfile.parent.iterdir()] == [keyfile.name]  # no temp file left


def test_missing_directory(tmp_path: Path, key: SigningKey) -> None:
    with pytest.raises(StorageError):
        write_keystore(tmp_path / "no" / "k.key", key, PASSWORD, strength="interactive")


def test_bad_strength_and_password(tmp_path: Path, key: SigningKey) -> None:
    with pytest.raises(InputError):
        write_keystore(tmp_path / "k.key", key, PASSWORD, strength="weak")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        write_keystore(tmp_path / "k.key", key, "", strength="interactive")
    assert not (tmp_path / "k.key").exists()
