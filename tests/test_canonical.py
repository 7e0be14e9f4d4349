"""Canonical encoding: identical to RFC 8785 (the reference `rfc8785` package) on our subset,
one byte form per value, and everything outside the subset refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.errors import InputError
from blokauto.ledger.tx import add_signature, parse_and_verify, parse_tx, sign_tx

SAFE = 2**53 - 1
ascii_keys = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-SAFE, SAFE) | texts,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(ascii_keys, children, max_size=6),
    max_leaves=30,
)


@given(json_values)
def test_encoding_equals_rfc8785_and_round_trips(value: Any) -> None:
    encoded = canonical.encode(value)
    assert encoded == rfc8785.dumps(value)
    assert canonical.decode(encoded) == value


@given(json_values)
def test_any_other_spelling_is_refused(value: Any) -> None:
    pretty = json.dumps(value, indent=1, ensure_ascii=True).encode()
    if pretty != canonical.encode(value):
        with pytest.raises(InputError):
            canonical.decode(pretty)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"a":1.5}', "bad_encoding"),
        (b'{"a":1e3}', "bad_encoding"),
        (b'{"a":9007199254740992}', "bad_encoding"),
        (b'{"a":-9007199254740992}', "bad_encoding"),
        (b'{"b":1,"a":2}', "non_canonical"),
        (b'{"a": 1}', "non_canonical"),
        (b'{"a":"\\u00e9"}', "non_canonical"),
        (b'{"a":1,"a":1}', "non_canonical"),
        (b'{"a":"\\ud800"}', "malformed_json"),
        (b'{"a":', "malformed_json"),
        ('{"é":1}'.encode(), "bad_encoding"),
    ],
)
def test_outside_the_subset(data: bytes, code: str) -> None:
    with pytest.raises(InputError) as caught:
        canonical.decode(data)
    assert caught.value.code == code


@given(st.dictionaries(ascii_keys.filter(bool), json_values, max_size=5), st.integers(1, SAFE))
def test_transactions_round_trip_and_have_one_hash(payload: dict[str, Any], nonce: int) -> None:
    signer = Signer.deterministic("canonical-test")
    raw = sign_tx("test-chain", "notary.anchor", signer, nonce, payload)
    tx = parse_and_verify(raw, "test-chain")
    assert tx.payload == payload and tx.nonce == nonce and tx.raw == raw
    assert parse_tx(canonical.encode(canonical.decode(raw)), "test-chain").hash == tx.hash


def test_cosigning_workflow_and_signature_binding() -> None:
    signer, cosigner = Signer.deterministic("a"), Signer.deterministic("b")
    raw = sign_tx("c", "org.rotate_key", signer, 1, {"old": "x", "new": "y"}, [cosigner])
    assert parse_and_verify(raw, "c").cosigners == (cosigner.did,)
    envelope = canonical.decode(raw)
    envelope["signatures"][1] = envelope["signatures"][0]  # signer's signature in the cosigner's slot
    with pytest.raises(InputError) as caught:
        parse_and_verify(canonical.encode(envelope), "c")
    assert caught.value.code == "bad_signature"
    envelope["signatures"][1] = ""
    with pytest.raises(InputError):
        parse_tx(canonical.encode(envelope), "c")
    assert add_signature(canonical.encode(envelope), cosigner) == raw
