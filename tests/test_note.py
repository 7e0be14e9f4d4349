"""Signed notes and checkpoints, checked against Go's sumdb/note vectors and real sum.golang.org heads."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from blokauto.crypto.note import (
    Checkpoint,
    NoteSignature,
    cosign_note,
    format_note,
    key_hash,
    known_keys,
    open_checkpoint,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    require_quorum,
    sign_checkpoint,
    sign_note,
    signer_key,
    verifier_key,
    verify_note,
)
from blokauto.errors import BlokError, InputError, VerificationError

# --- golang.org/x/mod/sumdb/note note_test.go / package doc -------------------------------------
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
             "ngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = ("— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
             "ox33WWd1RvMc+QQ=\n")

# --- real sum.golang.org checkpoints, from google/trillian-examples
# witness/golang/cmd/addrwitness/README.md (two versions of that file) --------------------------
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_ORIGIN = "go.sum database tree"
SUMDB_NOTE_1 = (
    "go.sum database tree\n15067302\ngJyioq6dwR9n+NjEWORfYmH+ubeYm3kH42BBQ0bTpYI=\n\n"
    "— sum.golang.org "
    "Az3grp1rvWOs5NKlr/xR4GLN/CDyzzakmt1o61uSxYKpK1SerqOP2ClbX/peKUZjYnyomH5Xz7GZG3TpB7OeKn4E2ww=\n"
    "— test.example.com "
    "qTGhC/xIPQ0AXKHK6Y+9ypRfuvMZWPjRXM8NiOg5M1WREn07VQXyuIXM3NRNav3ieVFLUqDRK77PWDmL6w8w84UqeAw=\n"
)
SUMDB_NOTE_2 = (
    "go.sum database tree\n15081221\nBoMMe1wd25Tco0mYGROkyqxHZWx+hcSCtMV315Lu6Lg=\n\n"
    "— sum.golang.org "
    "Az3grilD7vQqTrv66jRgKM84Y80KTprrSt4bKmiOPxgmS5ZVBTeCl6dUvjYnN13R+C8j0jGY1WnUADGMkok3U0m2Zgo=\n"
    "— test.example.com "
    "qTGhC3917mAr6hGh+T55tNjxaej/D/GQivJZRIj7XGdAcQOTqfMWIPgp/v/904LEduN/h2sSRtHUJXUL4b9Gm7Bz4Qc=\n"
    "— test.example.com "
    "/Pa7Y/dUvWMAAAAAQVwkQVi81ArPV7BIaQYrMIxyzY0m8a4BdeeBhSKd3PviPK4/3Sd+NKSc5N7PDTCfAkUSVniN+R2oKIggA4iiDQ==\n"
)


def _peter() -> SigningKey:
    return parse_signer_key(PETER_SKEY)[1]


def _insert_at_byte(s: str, offset: int, extra: str) -> str:
    """Go slices strings by byte; the em dash is 3 bytes, so do the same here."""
    raw = s.encode()
    return (raw[:offset] + extra.encode() + raw[offset:]).decode()


# ---------------------------------------------------------------- keys


def test_go_verifier_key_parses_and_rebuilds() -> None:
    name, public_key = parse_verifier_key(PETER_VKEY)
    assert name == "PeterNeumann"
    assert key_hash(name, public_key) == bytes.fromhex("c74f20a3")
    assert verifier_key(name, public_key) == PETER_VKEY


def test_go_signer_key_round_trip() -> None:
    name, sk = parse_signer_key(PETER_SKEY)
    assert signer_key(name, bytes(sk)) == PETER_SKEY
    assert verifier_key(name, bytes(sk.verify_key)) == PETER_VKEY


def test_sumdb_verifier_key_with_plus_in_key_data() -> None:
    name, public_key = parse_verifier_key(SUMDB_VKEY)
    assert name == "sum.golang.org"
    assert verifier_key(name, public_key) == SUMDB_VKEY


@pytest.mark.parametrize(("key", "parse"), [(PETER_VKEY, parse_verifier_key), (PETER_SKEY, parse_signer_key)])
def test_go_key_manglings_rejected(key: str, parse: Callable[[str], object]) -> None:
    """Go's TestNewVerifier/TestNewSigner: every proper substring and every one-byte bump fails."""
    b = key.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(BlokError):
                    parse(b[i:j].decode())
    for i in range(len(b)):
        with pytest.raises(BlokError):
            parse((b[:i] + bytes([b[i] + 1]) + b[i + 1 :]).decode())


def test_go_bad_verifier_keys() -> None:
    with pytest.raises(InputError):  # wrong length key, with adjusted key hash
        parse_verifier_key("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(InputError):  # unknown algorithm, with adjusted key hash
        parse_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_wrong_key_hash_is_verification_error() -> None:
    with pytest.raises(VerificationError) as exc:
        parse_verifier_key(PETER_VKEY.replace("c74f20a3", "c74f20a4"))
    assert exc.value.code == "key_hash_mismatch"


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u3000b", "a\nb", "\x01"])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(InputError):
        verifier_key(name, b"\x00" * 32)
    with pytest.raises(InputError):
        sign_note(TEXT, name, _peter())


def test_generated_keys_are_self_consistent() -> None:
    sk = SigningKey.generate()
    vkey = verifier_key("example.com/log", bytes(sk.verify_key))
    assert parse_verifier_key(vkey) == ("example.com/log", bytes(sk.verify_key))
    name, sk2 = parse_signer_key(signer_key("example.com/log", bytes(sk)))
    assert name == "example.com/log" and bytes(sk2) == bytes(sk)


def test_known_keys_refuses_bad_entries() -> None:
    assert len(known_keys(PETER_VKEY, PETER_VKEY, ENOCH_VKEY)) == 2  # identical repeats are harmless
    with pytest.raises(InputError):
        known_keys("not a key")


# ---------------------------------------------------------------- signing


def test_go_sign_vector_byte_for_byte() -> None:
    line = sign_note(TEXT, "PeterNeumann", _peter())
    assert line == PETER_SIG
    assert format_note(TEXT, [line]) == TEXT + "\n" + PETER_SIG
    assert format_note(TEXT, [line.rstrip("\n")]) == TEXT + "\n" + PETER_SIG


def test_sign_rejects_bad_text() -> None:
    for text in ["abc", "", "a\rb\n", "tab\there\n", "\ud800\n"]:
        with pytest.raises(InputError):
            sign_note(text, "PeterNeumann", _peter())


def test_format_note_is_order_independent_and_deduplicates() -> None:
    a = format_note(TEXT, [PETER_SIG, ENOCH_SIG, PETER_SIG])
    b = format_note(TEXT, [ENOCH_SIG, PETER_SIG])
    assert a == b
    assert a.count("PeterNeumann") == 1
    assert verify_note(a, [PETER_VKEY, ENOCH_VKEY]) == (TEXT, ["EnochRoot", "PeterNeumann"])


def test_format_note_rejects_conflicting_and_malformed_lines() -> None:
    other = sign_note("other text\n", "PeterNeumann", _peter())
    with pytest.raises(InputError):
        format_note(TEXT, [PETER_SIG, other])  # same key, two different signatures
    with pytest.raises(InputError):
        format_note(TEXT, [])
    with pytest.raises(InputError):
        format_note(TEXT, ["- PeterNeumann AAAAAAAA\n"])
    with pytest.raises(InputError):
        format_note(TEXT, [PETER_SIG + ENOCH_SIG])


def test_cosign_adds_a_line_and_replaces_own() -> None:
    witness = SigningKey(b"\x07" * 32)
    wkey = verifier_key("witness.example", bytes(witness.verify_key))
    note = cosign_note(TEXT + "\n" + PETER_SIG, "witness.example", witness)
    assert verify_note(note, [PETER_VKEY, wkey])[1] == ["PeterNeumann", "witness.example"]
    assert cosign_note(note, "witness.example", witness) == note


# ---------------------------------------------------------------- opening (Go TestOpen)


def test_go_open_one_verified_one_unknown() -> None:
    msg = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(msg, [PETER_VKEY]) == (TEXT, ["PeterNeumann"])
    assert verify_note(msg.encode(), PETER_VKEY) == (TEXT, ["PeterNeumann"])
    assert verify_note(msg, [PETER_VKEY, ENOCH_VKEY]) == (TEXT, ["PeterNeumann", "EnochRoot"])
    assert verify_note(msg, known_keys(ENOCH_VKEY)) == (TEXT, ["EnochRoot"])


def test_go_open_parse_returns_signatures() -> None:
    text, sigs = parse_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG)
    assert text == TEXT
    raw = base64.b64decode(PETER_SIG.split()[-1])
    assert sigs[0] == NoteSignature("PeterNeumann", bytes.fromhex("c74f20a3"), raw[4:])
    assert sigs[1].name == "EnochRoot" and sigs[1].key_hash == bytes.fromhex("af0cfe78")
    assert [s.to_line() for s in sigs] == [PETER_SIG, ENOCH_SIG]


def test_go_open_no_known_signer() -> None:
    with pytest.raises(VerificationError) as exc:
        verify_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    assert exc.value.code == "unverified_note"


def test_go_open_too_many_signatures() -> None:
    for known in ([PETER_VKEY], []):
        with pytest.raises(InputError) as exc:
            verify_note(TEXT + "\n" + PETER_SIG * 101, known)
        assert exc.value.code == "malformed_note"
    assert verify_note(TEXT + "\n" + PETER_SIG * 100, [PETER_VKEY])[1] == ["PeterNeumann"]


def test_go_open_invalid_signature() -> None:
    bad = _insert_at_byte(PETER_SIG, 60, "ABCD")
    with pytest.raises(VerificationError) as exc:
        verify_note(TEXT + "\n" + bad, [PETER_VKEY])
    assert exc.value.code == "bad_signature"


def test_go_open_duplicated_signatures() -> None:
    enoch_abcd = _insert_at_byte(ENOCH_SIG, 60, "ABCD")
    msg = TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_abcd
    assert verify_note(msg, [PETER_VKEY]) == (TEXT, ["PeterNeumann"])
    _, sigs = parse_note(msg)
    assert [s.to_line() for s in sigs] == [PETER_SIG, ENOCH_SIG, enoch_abcd]


def test_duplicated_signatures_do_not_make_a_quorum() -> None:
    _, signers = verify_note(TEXT + "\n" + PETER_SIG * 3, [PETER_VKEY])
    assert signers == ["PeterNeumann"]
    with pytest.raises(VerificationError) as exc:
        require_quorum(signers, {"PeterNeumann", "EnochRoot"}, 2)
    assert exc.value.code == "quorum_not_met"


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        b"\xff" + (TEXT + "\n" + PETER_SIG).encode(),
        TEXT + "\n" + "— Bad Name " + PETER_SIG.split()[-1],
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        # and ours: bad base64, non-canonical base64, short signature, CR, wrong dash, surrogate
        TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"),
        TEXT + "\n" + PETER_SIG.replace("nAM=", "nAN="),
        TEXT + "\n" + "— PeterNeumann x08goA==\n",
        TEXT + "\n" + PETER_SIG.replace("\n", "\r\n"),
        TEXT + "\n" + PETER_SIG.replace("—", "-"),
        TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", "PeterNeumann  "),
        "\ud800" + TEXT + "\n" + PETER_SIG,
    ],
)
def test_go_open_malformed(msg: str | bytes) -> None:
    with pytest.raises(InputError) as exc:
        verify_note(msg, [PETER_VKEY])
    assert exc.value.code == "malformed_note"


def test_tampered_text_rejected() -> None:
    with pytest.raises(VerificationError) as exc:
        verify_note(TEXT.replace("problem", "Problem", 1) + "\n" + PETER_SIG, [PETER_VKEY])
    assert exc.value.code == "bad_signature"


def test_unknown_key_sharing_name_or_hash_is_ignored() -> None:
    impostor = SigningKey(b"\x01" * 32)
    line = sign_note(TEXT, "PeterNeumann", impostor)  # same name, other key hash
    assert verify_note(TEXT + "\n" + PETER_SIG + line, [PETER_VKEY])[1] == ["PeterNeumann"]


def test_wrong_key_hash_in_signature_line() -> None:
    raw = base64.b64decode(PETER_SIG.split()[-1])
    line = "— PeterNeumann " + base64.b64encode(b"\x00\x00\x00\x00" + raw[4:]).decode() + "\n"
    with pytest.raises(VerificationError) as exc:  # now it is just an unknown key
        verify_note(TEXT + "\n" + line, [PETER_VKEY])
    assert exc.value.code == "unverified_note"


def test_inconsistent_trusted_mapping_rejected() -> None:
    _, public_key = parse_verifier_key(ENOCH_VKEY)
    with pytest.raises(InputError):
        verify_note(TEXT + "\n" + PETER_SIG, {("PeterNeumann", bytes.fromhex("c74f20a3")): public_key})


def test_text_may_contain_blank_lines() -> None:
    sk = SigningKey(b"\x02" * 32)
    text = "para one\n\npara two\n\n"
    note = format_note(text, [sign_note(text, "n", sk)])
    assert verify_note(note, verifier_key("n", bytes(sk.verify_key))) == (text, ["n"])


# ---------------------------------------------------------------- quorum


def test_require_quorum() -> None:
    assert require_quorum(["b", "a", "b", "x"], ["a", "b", "c"], 2) == ["a", "b"]
    with pytest.raises(VerificationError):
        require_quorum(["a", "x"], ["a", "b"], 2)
    for bad in (0, -1, True):
        with pytest.raises(InputError):
            require_quorum(["a"], ["a"], bad)


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(("note", "size"), [(SUMDB_NOTE_1, 15067302), (SUMDB_NOTE_2, 15081221)])
def test_real_sumdb_checkpoint(note: str, size: int) -> None:
    cp, signers = open_checkpoint(note, [SUMDB_VKEY], 1, origin=SUMDB_ORIGIN)
    assert signers == ["sum.golang.org"]
    assert cp.origin == SUMDB_ORIGIN and cp.size == size and cp.extensions == ()
    assert cp.to_text() == note.split("\n\n")[0] + "\n"
    with pytest.raises(VerificationError) as exc:
        open_checkpoint(note, [SUMDB_VKEY], 2)
    assert exc.value.code == "quorum_not_met"
    with pytest.raises(VerificationError) as exc:
        open_checkpoint(note, [SUMDB_VKEY], 1, origin="sum.golang.org")
    assert exc.value.code == "wrong_origin"


def test_real_sumdb_checkpoint_tampered() -> None:
    tampered = SUMDB_NOTE_1.replace("15067302", "15067303")
    with pytest.raises(VerificationError):
        open_checkpoint(tampered, [SUMDB_VKEY], 1)


def test_checkpoint_quorum_of_distinct_names() -> None:
    cp = Checkpoint("blokauto.example/log", 7, bytes(range(32)), ("ext one",))
    log_key, w1, w2, w1_rotated = (SigningKey(bytes([i]) * 32) for i in (10, 11, 12, 13))
    note = sign_checkpoint(cp, "blokauto.example/log", log_key)
    note = cosign_note(note, "w1.example", w1)
    note = cosign_note(note, "w1.example", w1_rotated)  # second key, same organisation
    known = [verifier_key("blokauto.example/log", bytes(log_key.verify_key)),
             verifier_key("w1.example", bytes(w1.verify_key)),
             verifier_key("w1.example", bytes(w1_rotated.verify_key)),
             verifier_key("w2.example", bytes(w2.verify_key))]
    opened, signers = open_checkpoint(note, known, 2)
    assert opened == cp and signers == ["blokauto.example/log", "w1.example"]
    with pytest.raises(VerificationError):
        open_checkpoint(note, known, 3)
    note = cosign_note(note, "w2.example", w2)
    assert open_checkpoint(note, known, 3)[1] == ["blokauto.example/log", "w1.example", "w2.example"]


def test_non_checkpoint_note_rejected() -> None:
    with pytest.raises(InputError) as exc:
        open_checkpoint(TEXT + "\n" + PETER_SIG, [PETER_VKEY], 1)
    assert exc.value.code == "bad_checkpoint"


ROOT_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"o\n1\n{ROOT_B64}",  # no final newline
        f"o\n1\n{ROOT_B64}\n\n",  # empty extension line
        f"\n1\n{ROOT_B64}\n",  # empty origin
        "o\n1\n",  # no root
        f"o\n01\n{ROOT_B64}\n",
        f"o\n+1\n{ROOT_B64}\n",
        f"o\n-1\n{ROOT_B64}\n",
        f"o\n 1\n{ROOT_B64}\n",
        f"o\n1.0\n{ROOT_B64}\n",
        f"o\n\u0661\n{ROOT_B64}\n",  # Arabic-Indic digit one
        f"o\n{2**64}\n{ROOT_B64}\n",
        f"o\n1\n{base64.b64encode(bytes(31)).decode()}\n",
        f"o\n1\n{ROOT_B64.rstrip('=')}\n",
        f"o\n1\n{ROOT_B64[:-2]}B=\n",  # non-canonical trailing bits
        f"o\r\n1\n{ROOT_B64}\n",
    ],
)
def test_checkpoint_from_text_strict(text: str) -> None:
    with pytest.raises(InputError):
        Checkpoint.from_text(text)


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(InputError):
        Checkpoint("", 1, bytes(32))
    with pytest.raises(InputError):
        Checkpoint("o", -1, bytes(32))
    with pytest.raises(InputError):
        Checkpoint("o", 1, bytes(31))
    with pytest.raises(InputError):
        Checkpoint("o", 1, bytes(32), ("",))
    with pytest.raises(InputError):
        Checkpoint("o\nx", 1, bytes(32))
    assert Checkpoint.from_text(f"o\n0\n{ROOT_B64}\n").size == 0


_line = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0x20), min_size=1, max_size=30
)


@given(
    origin=_line,
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line, max_size=3).map(tuple),
)
def test_checkpoint_text_round_trip(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> None:
    cp = Checkpoint(origin, size, root, extensions)
    text = cp.to_text()
    assert Checkpoint.from_text(text) == cp
    assert Checkpoint.from_text(text).to_text() == text


@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0x20) | st.just("\n"),
                    max_size=60))
def test_note_round_trip_any_text(text: str) -> None:
    text += "\n"
    sk = SigningKey(b"\x05" * 32)
    note = format_note(text, [sign_note(text, "n.example", sk)])
    assert verify_note(note, [verifier_key("n.example", bytes(sk.verify_key))]) == (text, ["n.example"])
