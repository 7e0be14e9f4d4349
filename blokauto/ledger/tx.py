"""The transaction envelope: canonical JSON body, one signature per signer, one hash.

Wire form (canonical JSON): ``{"body": {chain, type, signer, nonce, payload, [cosigners]},
"signatures": [base64, ...]}`` where signature ``i`` is by ``[signer, *cosigners][i]`` over
``DOMAIN_TX + canonical(body)``. The transaction hash is SHA-256 of ``canonical(body)``, so it
does not depend on the signatures' bytes and a replayed body keeps its hash.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_TX, Signer, b64, public_key_from_did, unb64, verify_signature
from blokauto.errors import InputError

MAX_TX_BYTES = 64 * 1024
# Bulk types (a parts maker's 20,000-part batch) may be larger; every other type keeps the 64 KiB
# limit. Filled by the contract registry (``contract(..., bulk=True)``).
MAX_BULK_TX_BYTES = 960 * 1024   # under NATS's default 1 MiB message limit, with room for headers
BULK_TYPES: set[str] = set()
MAX_COSIGNERS = 16
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,47}$")
_BODY_FIELDS = frozenset({"chain", "type", "signer", "nonce", "payload", "cosigners"})


class SignedTx(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A parsed, canonical transaction. ``raw`` is exactly the bytes that were submitted.

    A msgspec Struct (not a dataclass) so that checked batches cross from the worker processes as
    msgpack, which encodes and decodes several times faster than pickled dataclasses; ``gc=False``
    because it holds no cycles and the GC need not scan the thousands waiting in a queue.
    """

    raw: bytes
    body_bytes: bytes
    hash: bytes
    chain: str
    type: str
    signer: str
    nonce: int
    payload: dict[str, Any]
    cosigners: tuple[str, ...]
    signatures: tuple[bytes, ...]

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def signers(self) -> tuple[str, ...]:
        return (self.signer, *self.cosigners)


def tx_hash(body_bytes: bytes) -> bytes:
    return hashlib.sha256(body_bytes).digest()


def build_body(
    chain: str, tx_type: str, signer: str, nonce: int, payload: dict[str, Any], cosigners: Sequence[str] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {"chain": chain, "type": tx_type, "signer": signer, "nonce": nonce, "payload": payload}
    if cosigners:
        body["cosigners"] = list(cosigners)
    return body


def sign_tx(
    chain: str,
    tx_type: str,
    signer: Signer,
    nonce: int,
    payload: dict[str, Any],
    cosigners: Sequence[Signer] = (),
) -> bytes:
    """Build and sign a transaction; returns its canonical wire bytes."""
    body = build_body(chain, tx_type, signer.did, nonce, payload, [c.did for c in cosigners])
    body_bytes = canonical.encode(body)
    signatures = [b64(key.sign(DOMAIN_TX, body_bytes)) for key in (signer, *cosigners)]
    return canonical.encode({"body": body, "signatures": signatures})


def body_signing_bytes(body: dict[str, Any]) -> bytes:
    """What each signer signs (after the domain tag): for offline cosigning workflows."""
    return canonical.encode(body)


def add_signature(raw: bytes, cosigner: Signer) -> bytes:
    """Fill in ``cosigner``'s signature in a partially signed envelope (cosigning workflow)."""
    envelope = canonical.decode(raw)
    body = envelope["body"]
    order = [body["signer"], *body.get("cosigners", [])]
    if cosigner.did not in order:
        raise InputError(f"{cosigner.did} is not a signer of this transaction", code="not_a_cosigner")
    signatures = list(envelope.get("signatures", []))
    signatures += [""] * (len(order) - len(signatures))
    signatures[order.index(cosigner.did)] = b64(cosigner.sign(DOMAIN_TX, canonical.encode(body)))
    return canonical.encode({"body": body, "signatures": signatures})


def parse_tx(raw: bytes, chain: str) -> SignedTx:
    """Stateless checks of a submitted transaction: size, canonical form, schema, chain id.

    Signatures are checked separately by :func:`verify_tx_signatures` so callers can batch
    them on worker threads (PyNaCl releases the GIL).
    """
    if len(raw) > MAX_BULK_TX_BYTES:
        raise InputError(f"transaction larger than {MAX_BULK_TX_BYTES} bytes", code="too_large", http_status=413)
    envelope = canonical.decode(raw, walk=False)
    if type(envelope) is not dict or set(envelope) != {"body", "signatures"}:
        raise InputError("envelope must be an object with exactly 'body' and 'signatures'", code="bad_schema")
    body = envelope["body"]
    if type(body) is not dict:
        raise InputError("body must be an object", code="bad_schema")
    if not body.keys() <= _BODY_FIELDS or not {"chain", "type", "signer", "nonce", "payload"} <= body.keys():
        raise InputError(
            "body needs exactly chain, type, signer, nonce, payload and optional cosigners", code="bad_schema"
        )
    tx_chain, tx_type, signer, nonce, payload = (
        body["chain"], body["type"], body["signer"], body["nonce"], body["payload"]
    )
    if not raw.isascii():
        canonical.check_value(envelope)
    if type(tx_chain) is not str or tx_chain != chain:
        raise InputError(f"wrong chain id {tx_chain!r}; this ledger is {chain!r}", code="wrong_chain")
    if type(tx_type) is not str or not TYPE_PATTERN.match(tx_type):
        raise InputError("type must look like 'domain.action'", code="bad_schema")
    if len(raw) > MAX_TX_BYTES and tx_type not in BULK_TYPES:
        raise InputError(f"a {tx_type} transaction is larger than {MAX_TX_BYTES} bytes", code="too_large",
                         http_status=413)
    if type(nonce) is not int or not 1 <= nonce <= canonical.MAX_SAFE_INTEGER:
        raise InputError("nonce must be an integer from 1 to 2**53-1", code="bad_schema")
    if type(payload) is not dict:
        raise InputError("payload must be an object", code="bad_schema")
    canonical.check_value(payload)  # the only free-form part: integer range, ASCII keys
    if type(signer) is not str:
        raise InputError("signer must be a did:key", code="bad_did")
    public_key_from_did(signer)
    cosigners: tuple[str, ...] = ()
    if "cosigners" in body:
        raw_cosigners = body["cosigners"]
        if type(raw_cosigners) is not list or not 1 <= len(raw_cosigners) <= MAX_COSIGNERS:
            raise InputError(f"cosigners must be a list of 1..{MAX_COSIGNERS} did:keys", code="bad_schema")
        for did in raw_cosigners:
            if type(did) is not str:
                raise InputError("cosigners must be did:keys", code="bad_did")
            public_key_from_did(did)
        cosigners = tuple(raw_cosigners)
        if len(set(cosigners)) != len(cosigners) or signer in cosigners:
            raise InputError("signer and cosigners must all be different keys", code="bad_schema")
    sigs = envelope["signatures"]
    if type(sigs) is not list or len(sigs) != 1 + len(cosigners):
        raise InputError("one signature is needed per signer and cosigner", code="bad_signature", http_status=401)
    signatures = []
    for sig in sigs:
        if type(sig) is not str or len(sig) != 88:
            raise InputError("a signature is 64 bytes in base64", code="bad_signature", http_status=401)
        try:
            signatures.append(unb64(sig, size=64, what="signature"))
        except InputError as exc:
            raise InputError(exc.message, code="bad_signature", http_status=401) from None
    body_bytes = canonical.encode_trusted(body)
    return SignedTx(
        raw=raw,
        body_bytes=body_bytes,
        hash=tx_hash(body_bytes),
        chain=tx_chain,
        type=tx_type,
        signer=signer,
        nonce=nonce,
        payload=payload,
        cosigners=cosigners,
        signatures=tuple(signatures),
    )


_batch_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(list[SignedTx])


def encode_batch(txs: list[SignedTx]) -> bytes:
    """Checked transactions as msgpack, to send between processes (see :class:`SignedTx`)."""
    return _batch_encoder.encode(txs)


def decode_batch(data: bytes) -> list[SignedTx]:
    """Inverse of :func:`encode_batch`; only for bytes a trusted worker of this node produced."""
    return _batch_decoder.decode(data)


def verify_tx_signatures(tx: SignedTx) -> None:
    for did, signature in zip(tx.signers, tx.signatures, strict=True):
        if not verify_signature(did, DOMAIN_TX, tx.body_bytes, signature):
            raise InputError(f"signature of {did} does not verify", code="bad_signature", http_status=401)


def parse_and_verify(raw: bytes, chain: str) -> SignedTx:
    tx = parse_tx(raw, chain)
    verify_tx_signatures(tx)
    return tx
