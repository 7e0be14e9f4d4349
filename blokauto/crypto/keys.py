"""Ed25519 identities shown as W3C ``did:key``, and domain-separated signatures.

A signature made for one purpose (a transaction, a login challenge, a checkpoint) can never
be replayed as another: each purpose prepends its own domain tag to the signed bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from blokauto.errors import InputError

ED25519_MULTICODEC = b"\xed\x01"
DID_PREFIX = "did:key:z"

DOMAIN_TX = b"blokauto/tx/v1\n"
DOMAIN_AUTH = b"blokauto/auth/v1\n"
DOMAIN_SHARE = b"blokauto/share/v1\n"


def did_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise InputError("an Ed25519 public key has 32 bytes", code="bad_key")
    return DID_PREFIX + base58.b58encode(ED25519_MULTICODEC + public_key).decode("ascii")


@lru_cache(maxsize=65536)
def public_key_from_did(did: str) -> bytes:
    if not isinstance(did, str) or not did.startswith(DID_PREFIX) or len(did) > 64:
        raise InputError(f"not an Ed25519 did:key: {str(did)[:80]!r}", code="bad_did")
    try:
        raw = base58.b58decode(did[len(DID_PREFIX):])
    except ValueError:
        raise InputError("did:key is not valid base58btc", code="bad_did") from None
    if len(raw) != 34 or raw[:2] != ED25519_MULTICODEC:
        raise InputError("did:key does not hold an Ed25519 public key", code="bad_did")
    if did_from_public_key(raw[2:]) != did:
        raise InputError("did:key is not in canonical form", code="bad_did")
    return raw[2:]


@lru_cache(maxsize=65536)
def _verify_key(did: str) -> VerifyKey:
    return VerifyKey(public_key_from_did(did))


def verify_signature(did: str, domain: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is the holder of ``did`` signing ``domain + message``."""
    if len(signature) != 64:
        return False
    try:
        _verify_key(did).verify(domain + message, signature)
    except BadSignatureError:
        return False
    return True


class Signer:
    """An Ed25519 signing key with its did:key identity."""

    __slots__ = ("_key", "did", "public_key")

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.public_key = bytes(key.verify_key)
        self.did = did_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        return cls(SigningKey(seed))

    @classmethod
    def deterministic(cls, label: str) -> Signer:
        """A key derived from a label: for demos and tests only, never for real members."""
        return cls(SigningKey(hashlib.sha256(b"blokauto-demo-key\n" + label.encode()).digest()))

    @property
    def signing_key(self) -> SigningKey:
        return self._key

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return self._key.sign(domain + message).signature

    def __repr__(self) -> str:
        return f"Signer({self.did})"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, *, size: int | None = None, what: str = "value") -> bytes:
    """Strict standard base64 (padding required, canonical), optionally of a fixed size."""
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (ValueError, TypeError):
        raise InputError(f"{what} is not valid base64", code="bad_encoding") from None
    if binascii.b2a_base64(raw, newline=False).decode("ascii") != text:
        raise InputError(f"{what} is not canonical base64", code="bad_encoding")
    if size is not None and len(raw) != size:
        raise InputError(f"{what} must be {size} bytes", code="bad_encoding")
    return raw


def auth_message(chain: str, challenge: str, did: str) -> bytes:
    """What a member signs (after ``DOMAIN_AUTH``) to log in: bound to chain, challenge and key."""
    from blokauto.crypto import canonical

    return canonical.encode({"chain": chain, "challenge": challenge, "did": did})
