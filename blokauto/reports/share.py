"""Expiring share links: an owner lets a buyer or a workshop read the vehicle's full report.

The token is signed offline by the owner's key (``DOMAIN_SHARE``), so any node of the
consortium can honour it without shared secrets or server-side sessions, and it dies on its own:
at its expiry, or at once when the vehicle changes hands (the signer must still be the owner).
Form: ``base64url(canonical {"by", "chain", "exp_ms", "vin"}) "." base64url(signature)``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_SHARE, Signer, verify_signature
from blokauto.errors import InputError, Unauthorized

MAX_SHARE_MS = 90 * 86_400_000
MAX_TOKEN_CHARS = 1_000


@dataclass(frozen=True, slots=True)
class ShareGrant:
    vin: str
    by: str           # the owner's did:key
    exp_ms: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_share_token(owner: Signer, chain: str, vin: str, exp_ms: int) -> str:
    body = canonical.encode({"by": owner.did, "chain": chain, "exp_ms": exp_ms, "vin": vin})
    return f"{_b64url(body)}.{_b64url(owner.sign(DOMAIN_SHARE, body))}"


def open_share_token(token: str, chain: str, now_ms: int) -> ShareGrant:
    """Check form, signature, chain and expiry; the caller checks that ``by`` still owns the vehicle."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise InputError("malformed share token", code="bad_share_token")
    body_text, sig_text = token.split(".")
    try:
        body, signature = _unb64url(body_text), _unb64url(sig_text)
        claims = canonical.decode(body)
    except (binascii.Error, ValueError, InputError):
        raise InputError("malformed share token", code="bad_share_token") from None
    if not isinstance(claims, dict) or set(claims) != {"by", "chain", "exp_ms", "vin"} \
            or type(claims["exp_ms"]) is not int or not isinstance(claims["by"], str):
        raise InputError("malformed share token", code="bad_share_token")
    try:
        valid = verify_signature(claims["by"], DOMAIN_SHARE, body, signature)
    except InputError:
        valid = False
    if not valid:
        raise Unauthorized("the share token's signature does not verify", code="bad_share_token")
    if claims["chain"] != chain:
        raise Unauthorized("the share token is for another ledger", code="bad_share_token")
    if claims["exp_ms"] < now_ms:
        raise Unauthorized("the share link has expired", code="share_expired")
    if claims["exp_ms"] > now_ms + MAX_SHARE_MS:
        raise Unauthorized("share links last at most 90 days", code="bad_share_token")
    return ShareGrant(vin=str(claims["vin"]), by=claims["by"], exp_ms=claims["exp_ms"])
