"""C2SP signed notes and tlog checkpoints, Ed25519 only (pure functions, no I/O).

Byte-for-byte compatible with c2sp.org/signed-note, c2sp.org/tlog-checkpoint and Go's
``golang.org/x/mod/sumdb/note``, so a Blok Auto checkpoint can be checked by any transparency-log
tool (and a Go sumdb checkpoint by us). A signed note is::

    <text, ending in "\\n">
    <blank line>
    — <key name> base64(4-byte key hash || 64-byte Ed25519 signature of the text)
    — <another key name> ...

Keys travel as Go-style *verifier keys*, ``name+<8 hex key hash>+base64(0x01 || public key)``,
where the key hash is ``SHA-256(name || "\\n" || 0x01 || public key)[:4]``.

Signing: each organisation calls :func:`sign_note` (or :func:`sign_checkpoint`) on the same text
and gets back one signature *line*; :func:`format_note` joins the text and any set of lines into
the note (lines deduplicated and sorted, so the bytes do not depend on who signed first), and
:func:`cosign_note` adds one more line to an existing note.

Verifying::

    known = known_keys("log.example+1a2b3c4d+AV...", "witness.example+...")
    text, signers = verify_note(note, known)         # signers: known names whose signature verified
    cp, signers = open_checkpoint(note, known, quorum=2, origin="log.example")

As the spec requires, signatures from unknown keys (name or key hash not both known) are ignored,
a known key with a bad signature rejects the whole note (:class:`VerificationError`), and a note
with no verified signature is rejected. Malformed notes, keys and checkpoints raise
:class:`InputError`. Deliberately stricter than Go in one way: base64 must be canonical
(no stray padding bits, no embedded newlines), so one signature has exactly one spelling.
Identical repeated signature lines are accepted (as Go does) but never count twice, and
quorums count distinct signer *names*, so two keys of one organisation are one vote.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from blokauto.errors import InputError, VerificationError

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Checkpoint",
    "KnownKeys",
    "NoteSignature",
    "cosign_note",
    "format_note",
    "key_hash",
    "known_keys",
    "open_checkpoint",
    "parse_note",
    "parse_signer_key",
    "parse_verifier_key",
    "require_quorum",
    "sign_checkpoint",
    "sign_note",
    "signer_key",
    "verifier_key",
    "verify_note",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100  # Go's cap; the spec asks for at least 16
MAX_TREE_SIZE = 2**64 - 1  # checkpoints elsewhere parse the size as a uint64

SIG_PREFIX = "— "  # em dash U+2014, space
_ED25519_SIG_SIZE = 64
_KEY_SIZE = 32
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")

KnownKeys = Mapping[tuple[str, bytes], bytes]
"""Trusted keys: ``(name, 4-byte key hash) -> 32-byte Ed25519 public key``."""


# ---------------------------------------------------------------- names, keys, base64


def _valid_name(name: str) -> bool:
    """Spec rule: non-empty UTF-8 with no Unicode space and no '+'; control characters too,
    since a note containing them could never be opened."""
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(ch.isspace() or ch < " " for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise InputError(f"invalid key name {name!r}: must be non-empty, without spaces or '+'",
                         code="bad_key_name")


def _check_public_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != _KEY_SIZE:
        raise InputError("an Ed25519 public key has 32 bytes", code="bad_key")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Strict, canonical standard base64, or None: one value has exactly one spelling."""
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError):
        return None
    return raw if _b64(raw) == text else None


def key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID: ``SHA-256(name || "\\n" || 0x01 || public key)[:4]``."""
    _check_public_key(public_key)
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + bytes(public_key)
    return hashlib.sha256(data).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The public verifier key ``name+hash+base64(0x01||key)`` that verifiers configure."""
    _check_name(name)
    _check_public_key(public_key)
    return f"{name}+{key_hash(name, public_key).hex()}+{_b64(bytes([ALG_ED25519]) + bytes(public_key))}"


def signer_key(name: str, seed: bytes) -> str:
    """Go's secret ``PRIVATE+KEY+name+hash+base64(0x01||seed)`` form, for interop tests only."""
    _check_name(name)
    if not isinstance(seed, bytes | bytearray) or len(seed) != _KEY_SIZE:
        raise InputError("an Ed25519 seed has 32 bytes", code="bad_key")
    public_key = bytes(SigningKey(bytes(seed)).verify_key)
    return (f"PRIVATE+KEY+{name}+{key_hash(name, public_key).hex()}+"
            f"{_b64(bytes([ALG_ED25519]) + bytes(seed))}")


def _split_key(key: str, what: str, code: str) -> tuple[str, bytes, bytes]:
    """Split ``name+hash+keydata`` (keydata may itself contain '+') and check its syntax."""
    name, _, rest = key.partition("+")
    hash16, _, key64 = rest.partition("+")
    raw = _unb64(key64)
    if not _valid_name(name) or not _HEX8.fullmatch(hash16) or not raw:
        raise InputError(f"malformed {what}", code=code)
    if raw[0] != ALG_ED25519:
        raise InputError(f"{what} uses unknown algorithm {raw[0]:#04x}; only Ed25519 (0x01)", code=code)
    if len(raw) != 1 + _KEY_SIZE:
        raise InputError(f"malformed {what}: Ed25519 key data has 32 bytes", code=code)
    return name, bytes.fromhex(hash16), raw[1:]


def parse_verifier_key(vkey: str) -> tuple[str, bytes]:
    """Parse a verifier key into ``(name, 32-byte public key)``.

    Malformed keys raise :class:`InputError` (``bad_verifier_key``); a key whose hash does not
    match its name and key raises :class:`VerificationError` (``key_hash_mismatch``).
    """
    if not isinstance(vkey, str):
        raise InputError("a verifier key is a string", code="bad_verifier_key")
    name, khash, public_key = _split_key(vkey, "verifier key", "bad_verifier_key")
    if key_hash(name, public_key) != khash:
        raise VerificationError(f"verifier key hash does not match key for {name!r}",
                                code="key_hash_mismatch")
    return name, public_key


def parse_signer_key(skey: str) -> tuple[str, SigningKey]:
    """Parse Go's ``PRIVATE+KEY+...`` signer key (interop tests only) into ``(name, key)``."""
    if not isinstance(skey, str) or not skey.startswith("PRIVATE+KEY+"):
        raise InputError("malformed signer key", code="bad_signer_key")
    name, khash, seed = _split_key(skey[len("PRIVATE+KEY+"):], "signer key", "bad_signer_key")
    signing_key = SigningKey(seed)
    if key_hash(name, bytes(signing_key.verify_key)) != khash:
        raise VerificationError(f"signer key hash does not match key for {name!r}",
                                code="key_hash_mismatch")
    return name, signing_key


def known_keys(*vkeys: str) -> dict[tuple[str, bytes], bytes]:
    """Build :data:`KnownKeys` from verifier-key strings.

    Two different keys with the same name and key hash are refused: Go calls that an ambiguous
    key, and it can only mean a tampered trust configuration.
    """
    known: dict[tuple[str, bytes], bytes] = {}
    for vkey in vkeys:
        name, public_key = parse_verifier_key(vkey)
        ident = (name, key_hash(name, public_key))
        if known.setdefault(ident, public_key) != public_key:
            raise InputError(f"ambiguous key {name}+{ident[1].hex()}", code="bad_verifier_key")
    return known


def _as_known(known: KnownKeys | Iterable[str] | str) -> KnownKeys:
    if isinstance(known, str):
        return known_keys(known)
    if isinstance(known, Mapping):
        return known
    return known_keys(*known)


# ---------------------------------------------------------------- notes


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key hash, and the raw signature after the hash."""

    name: str
    key_hash: bytes
    signature: bytes

    def to_line(self) -> str:
        """The line as it appears in a note, newline included."""
        return f"{SIG_PREFIX}{self.name} {_b64(self.key_hash + self.signature)}\n"


def _check_note_chars(data: str, what: str) -> None:
    """Spec: valid UTF-8 and no ASCII control character other than newline."""
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid UTF-8", code="malformed_note") from None
    for ch in data:
        if ch < " " and ch != "\n":
            raise InputError(f"{what} contains control character {ch!r}", code="malformed_note")


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise InputError("note text must end with a newline", code="malformed_note")
    _check_note_chars(text, "note text")


def _parse_sig_line(line: str) -> NoteSignature:
    """Parse one line (without its newline) of the signature block."""
    if not line.startswith(SIG_PREFIX):
        raise InputError("signature line must start with an em dash and a space", code="malformed_note")
    name, _, b64 = line[len(SIG_PREFIX):].partition(" ")
    raw = _unb64(b64)
    if not _valid_name(name) or raw is None or len(raw) < 5:
        raise InputError(f"malformed signature line {line[:120]!r}", code="malformed_note")
    return NoteSignature(name=name, key_hash=raw[:4], signature=raw[4:])


def sign_note(text: str, name: str, signing_key: SigningKey) -> str:
    """Sign ``text`` and return only the signature line, so each organisation adds its own."""
    _check_text(text)
    _check_name(name)
    khash = key_hash(name, bytes(signing_key.verify_key))
    signature = signing_key.sign(text.encode("utf-8")).signature
    return NoteSignature(name, khash, signature).to_line()


def format_note(text: str, sig_lines: Iterable[str]) -> str:
    """Join the text and signature lines into a note.

    Lines may omit their final newline. Identical lines are merged and the rest sorted, so the
    note's bytes do not depend on signing order; two different signatures by one key (same name
    and key hash) are refused, since at most one of them can be right.
    """
    _check_text(text)
    sigs: dict[tuple[str, bytes], NoteSignature] = {}
    for line in sig_lines:
        if not isinstance(line, str):
            raise InputError("signature lines are strings", code="malformed_note")
        body = line.removesuffix("\n")
        if "\n" in body:
            raise InputError("one signature per line", code="malformed_note")
        _check_note_chars(body, "signature line")
        sig = _parse_sig_line(body)
        if sigs.setdefault((sig.name, sig.key_hash), sig) != sig:
            raise InputError(f"two different signatures by key {sig.name}+{sig.key_hash.hex()}",
                             code="malformed_note")
    if not sigs:
        raise InputError("a note needs at least one signature", code="malformed_note")
    if len(sigs) > MAX_SIGNATURES:
        raise InputError(f"more than {MAX_SIGNATURES} signatures", code="malformed_note")
    return text + "\n" + "".join(sorted(sig.to_line() for sig in sigs.values()))


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and signatures, without verifying anything.

    Strict per spec: UTF-8, no control characters but newline, text separated from the
    signature block by the last blank line, every block line a well-formed signature, at most
    :data:`MAX_SIGNATURES` lines. Identical repeated lines are returned once.
    """
    if isinstance(note, bytes | bytearray):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("note is not valid UTF-8", code="malformed_note") from None
    if not isinstance(note, str):
        raise InputError("a note is text", code="malformed_note")
    _check_note_chars(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise InputError("note has no blank line before its signatures", code="malformed_note")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise InputError("note must end with a signature line and a newline", code="malformed_note")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InputError(f"more than {MAX_SIGNATURES} signatures", code="malformed_note")
    sigs: list[NoteSignature] = []
    for line in lines:
        sig = _parse_sig_line(line)
        if sig not in sigs:
            sigs.append(sig)
    return text, sigs


def verify_note(note: str | bytes, known: KnownKeys | Iterable[str] | str) -> tuple[str, list[str]]:
    """Verify a note against trusted keys; return ``(text, names of known keys that signed)``.

    ``known`` is a :data:`KnownKeys` mapping, or verifier-key strings (one string or many).
    Every signature by a known key is checked: one bad signature rejects the note
    (``bad_signature``), and so does a note with no verified signature (``unverified_note``).
    Unknown keys are ignored, as the spec requires. Names are distinct, in note order.
    """
    known = _as_known(known)
    text, sigs = parse_note(note)
    message = text.encode("utf-8")
    signers: list[str] = []
    for sig in sigs:
        public_key = known.get((sig.name, sig.key_hash))
        if public_key is None:
            continue
        if key_hash(sig.name, public_key) != sig.key_hash:
            raise InputError(f"trusted key for {sig.name!r} does not match its key hash",
                             code="bad_verifier_key")
        try:
            if len(sig.signature) != _ED25519_SIG_SIZE:
                raise BadSignatureError("wrong signature length")
            VerifyKey(bytes(public_key)).verify(message, sig.signature)
        except BadSignatureError:
            raise VerificationError(f"invalid signature for key {sig.name}+{sig.key_hash.hex()}",
                                    code="bad_signature") from None
        if sig.name not in signers:
            signers.append(sig.name)
    if not signers:
        raise VerificationError("note has no signature from a trusted key", code="unverified_note")
    return text, signers


def cosign_note(note: str | bytes, name: str, signing_key: SigningKey) -> str:
    """Add (or refresh) this key's signature on an existing note; other lines are kept unchecked."""
    text, sigs = parse_note(note)
    mine = _parse_sig_line(sign_note(text, name, signing_key).removesuffix("\n"))
    others = [s.to_line() for s in sigs if (s.name, s.key_hash) != (mine.name, mine.key_hash)]
    return format_note(text, [*others, mine.to_line()])


def require_quorum(signers: Iterable[str], allowed_names: Iterable[str], quorum: int) -> list[str]:
    """Return the distinct allowed names among ``signers`` (sorted), or raise if fewer than ``quorum``."""
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise InputError("quorum must be a positive integer", code="bad_quorum")
    allowed = set(allowed_names)
    counted = sorted(set(signers) & allowed)
    if len(counted) < quorum:
        raise VerificationError(f"{len(counted)} of the required {quorum} trusted signers signed",
                                code="quorum_not_met")
    return counted


# ---------------------------------------------------------------- checkpoints


def _check_line(line: str, what: str) -> None:
    if not isinstance(line, str) or not line or "\n" in line:
        raise InputError(f"checkpoint {what} must be one non-empty line", code="bad_checkpoint")
    try:
        _check_note_chars(line, f"checkpoint {what}")
    except InputError as exc:
        raise InputError(exc.message, code="bad_checkpoint") from None


@dataclass(frozen=True)
class Checkpoint:
    """A log's signed tree head (c2sp.org/tlog-checkpoint): origin, tree size, RFC 6962 root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        size = self.size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
            raise InputError("checkpoint size must be an integer in [0, 2**64)", code="bad_checkpoint")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise InputError("checkpoint root hash has 32 bytes", code="bad_checkpoint")
        if not isinstance(self.extensions, tuple):
            raise InputError("checkpoint extensions are a tuple of lines", code="bad_checkpoint")
        for ext in self.extensions:
            _check_line(ext, "extension line")

    def to_text(self) -> str:
        """The note text: origin, size, base64 root, then extension lines, each ending in newline."""
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), _b64(self.root),
                                                *self.extensions))

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse checkpoint text strictly; ``to_text`` gives back exactly the same string."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise InputError("checkpoint text must end with a newline", code="bad_checkpoint")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise InputError("checkpoint needs origin, size and root hash lines", code="bad_checkpoint")
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
            raise InputError(f"bad checkpoint size {size_text[:40]!r}", code="bad_checkpoint")
        root = _unb64(root_text)
        if root is None or len(root) != 32:
            raise InputError("checkpoint root must be canonical base64 of 32 bytes", code="bad_checkpoint")
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, name: str, signing_key: SigningKey) -> str:
    """A complete note carrying ``cp`` signed by one key; add witnesses with :func:`cosign_note`."""
    text = cp.to_text()
    return format_note(text, [sign_note(text, name, signing_key)])


def open_checkpoint(
    note: str | bytes,
    known: KnownKeys | Iterable[str] | str,
    quorum: int = 1,
    *,
    origin: str | None = None,
) -> tuple[Checkpoint, list[str]]:
    """Verify a checkpoint note and return it with the sorted names of its trusted signers.

    At least ``quorum`` distinct trusted names must have signed (``quorum_not_met``); if
    ``origin`` is given the checkpoint must be for that log (``wrong_origin``), which stops a
    checkpoint of one log being passed off as another's by a shared key.
    """
    known = _as_known(known)
    text, signers = verify_note(note, known)
    cp = Checkpoint.from_text(text)
    if origin is not None and cp.origin != origin:
        raise VerificationError(f"checkpoint is for log {cp.origin!r}, not {origin!r}", code="wrong_origin")
    counted = require_quorum(signers, {name for name, _ in known}, quorum)
    return cp, counted
