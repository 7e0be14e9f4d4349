"""Authenticated reads: a member proves key possession once and gets a short-lived token.

Flow: ``POST /v1/auth/challenge`` returns a random challenge; the member signs
``DOMAIN_AUTH + canonical({"chain", "challenge", "did"})`` and posts it to
``/v1/auth/token``; the node answers a bearer token (HMAC with a per-process secret, so a
restart logs everybody out) valid for ``TOKEN_TTL_S``. Every use re-checks that the key is
still active, so a revocation takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Any

from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_AUTH, auth_message, b64, unb64, verify_signature
from blokauto.errors import InputError, Unauthorized

CHALLENGE_TTL_S = 120
TOKEN_TTL_S = 900
MAX_CHALLENGES = 10_000


class TokenIssuer:
    def __init__(self, chain: str) -> None:
        self.chain = chain
        self._secret = secrets.token_bytes(32)
        self._challenges: dict[str, float] = {}
        self._lock = threading.Lock()

    def new_challenge(self) -> dict[str, Any]:
        challenge = b64(secrets.token_bytes(32))
        now = time.monotonic()
        with self._lock:
            if len(self._challenges) >= MAX_CHALLENGES:
                self._challenges = {c: t for c, t in self._challenges.items() if t > now}
            if len(self._challenges) >= MAX_CHALLENGES:
                raise Unauthorized("too many open challenges; try again shortly", code="busy", http_status=429)
            self._challenges[challenge] = now + CHALLENGE_TTL_S
        return {"challenge": challenge, "expires_in": CHALLENGE_TTL_S, "chain": self.chain,
                "sign": "Ed25519 over 'blokauto/auth/v1\\n' + canonical JSON {chain, challenge, did}"}

    def issue(self, did: str, challenge: str, signature: str) -> dict[str, Any]:
        with self._lock:
            expires = self._challenges.pop(challenge, None)
        if expires is None or expires < time.monotonic():
            raise Unauthorized("unknown or expired challenge", code="bad_challenge")
        sig = unb64(signature, size=64, what="signature")
        if not verify_signature(did, DOMAIN_AUTH, auth_message(self.chain, challenge, did), sig):
            raise Unauthorized("challenge signature does not verify", code="bad_signature")
        exp = int(time.time()) + TOKEN_TTL_S
        body = canonical.encode({"did": did, "exp": exp})
        token = f"{b64(body)}.{b64(self._mac(body))}"
        return {"token": token, "token_type": "Bearer", "expires_in": TOKEN_TTL_S, "did": did}

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()

    def did_of(self, authorization: str | None) -> str:
        """The did:key a bearer token was issued to; raises :class:`Unauthorized`."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("this read needs a member token (POST /v1/auth/challenge, then /v1/auth/token)",
                               code="token_required")
        token = authorization[len("Bearer "):].strip()
        try:
            body_text, mac_text = token.split(".")
            body = unb64(body_text, what="token")
            mac = unb64(mac_text, size=32, what="token")
        except (ValueError, InputError):
            raise Unauthorized("malformed token", code="bad_token") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise Unauthorized("token was not issued by this node", code="bad_token")
        claims = canonical.decode(body)
        if int(claims["exp"]) < time.time():
            raise Unauthorized("token expired", code="token_expired")
        return str(claims["did"])
