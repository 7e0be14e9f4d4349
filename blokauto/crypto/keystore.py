"""Password-encrypted Ed25519 key files.

A keystore is one small JSON file (UTF-8, sorted keys)::

    {"version": 1, "kdf": "argon2id", "opslimit": 3, "memlimit": 268435456,
     "salt": b64, "box": b64(nonce || ciphertext of the 32-byte seed),
     "public_key": b64, "did": "did:key:z..."}

The seed is sealed with libsodium's SecretBox (XSalsa20-Poly1305) under a key that argon2id
derives from the password and a random salt. The public key and did stay in clear so
``keys show`` needs no password; after decryption they are checked against the seed, so an
edited public part is caught as a corrupt file instead of silently naming the wrong member.

Errors: a wrong password (or a tampered box, which libsodium cannot tell apart) raises
``InputError`` code ``bad_password``; a malformed or inconsistent file ``bad_keystore``; an
existing target ``keystore_exists``; a missing file ``NotFound``; a failed write ``StorageError``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Literal

import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from blokauto.crypto.keys import did_from_public_key
from blokauto.errors import InputError, NotFound, StorageError

__all__ = ["KEYSTORE_VERSION", "Strength", "keystore_info", "read_keystore", "write_keystore"]

KEYSTORE_VERSION = 1
Strength = Literal["interactive", "moderate", "sensitive"]

_LIMITS: dict[str, tuple[int, int]] = {
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
# A file may not ask for more work than "sensitive": a planted keystore must not be able to
# make us allocate terabytes or spin for hours before the password is even checked.
_MAX_OPS, _MAX_MEM = _LIMITS["sensitive"]
_MAX_FILE_BYTES = 64 * 1024
_FIELDS = {"version", "kdf", "opslimit", "memlimit", "salt", "box", "public_key", "did"}
_BOX_SIZE = nacl.secret.SecretBox.NONCE_SIZE + 32 + nacl.secret.SecretBox.MACBYTES


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _password_bytes(password: str) -> bytes:
    """NFC-normalised UTF-8, so the same typed password works whatever the keyboard's encoding."""
    if not isinstance(password, str) or not password:
        raise InputError("a keystore password must be a non-empty string", code="bad_password")
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _derive(password: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, _password_bytes(password), salt,
                        opslimit=opslimit, memlimit=memlimit)


def _corrupt(why: str) -> InputError:
    return InputError(f"corrupt keystore: {why}", code="bad_keystore")


def write_keystore(
    path: Path,
    signing_key: SigningKey,
    password: str,
    *,
    strength: Strength = "moderate",
    overwrite: bool = False,
) -> None:
    """Encrypt ``signing_key`` under ``password`` into a new file readable only by its owner (0600).

    An existing file is refused unless ``overwrite``, so a typo cannot destroy a member's key;
    an overwrite replaces the file atomically, never leaving half a keystore behind.
    """
    if strength not in _LIMITS:
        raise InputError(f"unknown keystore strength {strength!r}", code="bad_input")
    opslimit, memlimit = _LIMITS[strength]
    salt = nacl.utils.random(argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(password, salt, opslimit, memlimit))
    public_key = bytes(signing_key.verify_key)
    record = {
        "version": KEYSTORE_VERSION,
        "kdf": "argon2id",
        "opslimit": opslimit,
        "memlimit": memlimit,
        "salt": _b64(salt),
        "box": _b64(bytes(box.encrypt(bytes(signing_key)))),
        "public_key": _b64(public_key),
        "did": did_from_public_key(public_key),
    }
    data = (json.dumps(record, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    path = Path(path)
    try:
        if overwrite:
            _replace_atomically(path, data)
        else:
            _create_exclusively(path, data)
    except FileExistsError:
        raise InputError(f"keystore {path} already exists", code="keystore_exists") from None
    except OSError as exc:
        raise StorageError(f"cannot write keystore {path}: {exc.strerror or exc}") from exc


def _create_exclusively(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, data)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _write_all(fd: int, data: bytes) -> None:
    """Write, force mode 0600 (whatever the umask) and fsync, then close ``fd``."""
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _write_all(fd, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load(path: Path) -> dict[str, Any]:
    """Read and validate every field except the box's contents."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFound(f"no keystore at {path}") from None
    except IsADirectoryError:
        raise _corrupt(f"{path} is a directory") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise _corrupt("file is too large")
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt("not UTF-8 JSON") from None
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise _corrupt(f"expected exactly the fields {sorted(_FIELDS)}")
    if type(record["version"]) is not int or record["version"] != KEYSTORE_VERSION:
        raise _corrupt(f"unsupported version {record['version']!r}")
    if record["kdf"] != "argon2id":
        raise _corrupt(f"unsupported kdf {record['kdf']!r}")
    for field, low, high in (("opslimit", argon2id.OPSLIMIT_MIN, _MAX_OPS),
                             ("memlimit", argon2id.MEMLIMIT_MIN, _MAX_MEM)):
        value = record[field]
        if type(value) is not int or not low <= value <= high:
            raise _corrupt(f"{field} out of range")
    for field, size in (("salt", argon2id.SALTBYTES), ("box", _BOX_SIZE), ("public_key", 32)):
        value = record[field]
        try:
            decoded = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except (AttributeError, ValueError, UnicodeEncodeError):
            raise _corrupt(f"{field} is not base64") from None
        if len(decoded) != size:
            raise _corrupt(f"{field} must be {size} bytes")
        record[field] = decoded
    if record["did"] != did_from_public_key(record["public_key"]):
        raise _corrupt("did does not match public_key")
    return record


def read_keystore(path: Path, password: str) -> SigningKey:
    """Decrypt the signing key; check it matches the public key the file advertises."""
    record = _load(path)
    box = nacl.secret.SecretBox(_derive(password, record["salt"], record["opslimit"], record["memlimit"]))
    try:
        seed = box.decrypt(record["box"])
    except CryptoError:
        raise InputError("wrong password (or the keystore was tampered with)", code="bad_password") from None
    signing_key = SigningKey(seed)
    if bytes(signing_key.verify_key) != record["public_key"]:
        raise _corrupt("encrypted key does not match public_key")
    return signing_key


def keystore_info(path: Path) -> dict[str, Any]:
    """The public fields (no salt, no ciphertext), readable without the password."""
    record = _load(path)
    return {
        "version": record["version"],
        "kdf": record["kdf"],
        "opslimit": record["opslimit"],
        "memlimit": record["memlimit"],
        "public_key": _b64(record["public_key"]),
        "did": record["did"],
    }
