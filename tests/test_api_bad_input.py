"""Every bad submission or read gets a 4xx problem+json with a stable code, and writes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_AUTH, DOMAIN_TX, Signer, b64
from blokauto.ledger.tx import MAX_BULK_TX_BYTES, MAX_TX_BYTES, build_body
from tests.conftest import PROBLEM, Env, demo_admin, demo_member, digest, envelope, sign_body

ADMIN = demo_admin("quickfix")
OTHER_ADMIN = demo_admin("werkstatt-berg")
STRANGER = Signer.deterministic("tests/stranger")
ANCHOR = {"digest": digest("invoice 1"), "kind": "invoice"}

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def assert_problem(r: httpx.Response, status: int, code: str | set[str]) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    problem: dict[str, Any] = r.json()
    codes = {code} if isinstance(code, str) else code
    assert problem["code"] in codes, problem
    assert problem["status"] == status
    assert problem["type"].endswith("/" + problem["code"])
    return problem


def refused(env: Env, raw: bytes, status: int, code: str | set[str], *dids: str) -> dict[str, Any]:
    """Post ``raw``, expect the problem, and check the ledger and nonces did not move."""
    watched = tuple(dict.fromkeys((ADMIN.did, *dids)))
    before = env.snapshot(*watched)
    problem = assert_problem(env.post(raw), status, code)
    assert env.snapshot(*watched) == before
    return problem


def body(env: Env, **changes: Any) -> dict[str, Any]:
    b = build_body(env.chain, "notary.anchor", ADMIN.did, 1, dict(ANCHOR))
    b.update(changes)
    return b


def signed(b: dict[str, Any], *signers: Signer) -> bytes:
    return envelope(b, sign_body(b, signers or (ADMIN,)))


def good_raw(env: Env, nonce: int = 1, payload: dict[str, Any] | None = None) -> bytes:
    return env.sign("notary.anchor", ADMIN, nonce, payload or dict(ANCHOR))


# -- the control: the good transaction these cases are built from is accepted -----------------


def test_control_transaction_is_accepted(env: Env) -> None:
    r = env.post(good_raw(env))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"
    assert env.status()["log_size"] == 1
    assert env.nonce(ADMIN.did)["committed"] == 1


def test_raw_utf8_is_canonical_and_accepted(env: Env) -> None:
    raw = good_raw(env, payload={**ANCHOR, "label": "café"})
    assert "café".encode() in raw
    r = env.post(raw)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


# -- malformed and non-canonical bytes -----------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b'{"body":', b"not json", b'{"a":1,}', b"\x00", b"[1,2"])
def test_malformed_json(env: Env, raw: bytes) -> None:
    refused(env, raw, 400, "malformed_json")


def _reencode(raw: bytes, **dumps: Any) -> bytes:
    return json.dumps(json.loads(raw), ensure_ascii=False, **dumps).encode()


NON_CANONICAL: dict[str, Callable[[bytes], bytes]] = {
    "spaces": lambda raw: _reencode(raw, sort_keys=True),
    "indent": lambda raw: _reencode(raw, sort_keys=True, indent=1),
    "trailing_newline": lambda raw: raw + b"\n",
    "leading_space": lambda raw: b" " + raw,
    "unsorted_keys": lambda raw: json.dumps(
        {"signatures": json.loads(raw)["signatures"], "body": dict(reversed(json.loads(raw)["body"].items()))},
        separators=(",", ":")).encode(),
    "escaped_ascii": lambda raw: raw.replace(b'"invoice"', b'"\\u0069nvoice"'),
    "escaped_slash": lambda raw: raw.replace(b"blokauto.example/demo", b"blokauto.example\\/demo"),
    "duplicate_key": lambda raw: raw.replace(b'"kind":"invoice"', b'"kind":"invoice","kind":"invoice"'),
}


@pytest.mark.parametrize("name", sorted(NON_CANONICAL))
def test_non_canonical_encoding(env: Env, name: str) -> None:
    raw = good_raw(env)
    changed = NON_CANONICAL[name](raw)
    assert changed != raw
    refused(env, changed, 400, "non_canonical")


def test_escaped_non_ascii_is_non_canonical(env: Env) -> None:
    raw = good_raw(env, payload={**ANCHOR, "label": "café"})
    escaped = raw.replace("café".encode(), b"caf\\u00e9")
    assert escaped != raw and escaped.isascii()
    refused(env, escaped, 400, "non_canonical")


@pytest.mark.parametrize("extra", [1.5, 1.0, -0.5, 1e300])
def test_float_in_payload(env: Env, extra: float) -> None:
    refused(env, signed(body(env, payload={**ANCHOR, "x": extra})), 400, {"bad_encoding", "non_canonical"})


def test_float_spelled_with_exponent(env: Env) -> None:
    raw = signed(body(env, payload={**ANCHOR, "x": 7})).replace(b'"x":7', b'"x":1e3')
    refused(env, raw, 400, {"bad_encoding", "non_canonical"})


@pytest.mark.parametrize("big", [2**53, -(2**53), 2**63, 2**64, 2**80])
def test_unsafe_integer_in_payload(env: Env, big: int) -> None:
    refused(env, signed(body(env, payload={**ANCHOR, "x": big})), 400, "bad_encoding")


def test_largest_safe_integer_passes_the_encoding_check(env: Env) -> None:
    # 2**53-1 is canonical; the anchor schema then refuses the unknown field instead.
    refused(env, signed(body(env, payload={**ANCHOR, "x": 2**53 - 1})), 400, "bad_payload")


@pytest.mark.parametrize("nonce", [2**53, 2**64 + 1])
def test_unsafe_integer_nonce_is_refused(env: Env, nonce: int) -> None:
    refused(env, signed(body(env, nonce=nonce)), 400, {"bad_encoding", "bad_schema"})



@pytest.mark.parametrize("raw", [b'"\xff"', b'{"a":"\xed\xa0\x80"}', b'{"body":"\xc3"}'])
def test_invalid_utf8_is_a_4xx(env: Env, raw: bytes) -> None:
    refused(env, raw, 400, {"malformed_json", "bad_encoding"})



def test_deeply_nested_json_is_a_4xx(env: Env) -> None:
    refused(env, b"[" * 30000 + b"]" * 30000, 400, {"malformed_json", "bad_encoding"})


# -- envelope and body schema -------------------------------------------------------------------


def _no_signatures(env: Env) -> bytes:
    return canonical.encode_trusted({"body": body(env)})


def _drop(field: str) -> Callable[[Env], bytes]:
    def build(env: Env) -> bytes:
        b = body(env)
        del b[field]
        return signed(b)
    return build


BAD_SCHEMA: dict[str, Callable[[Env], bytes]] = {
    "envelope_without_signatures": _no_signatures,
    "envelope_without_body": lambda env: canonical.encode_trusted({"signatures": sign_body(body(env), [ADMIN])}),
    "envelope_extra_field": lambda env: canonical.encode_trusted(
        {"body": body(env), "memo": "x", "signatures": sign_body(body(env), [ADMIN])}),
    "envelope_is_a_list": lambda env: b"[]",
    "envelope_is_a_string": lambda env: b'"tx"',
    "body_is_a_list": lambda env: envelope([], ["A" * 86 + "=="]),
    "body_without_chain": _drop("chain"),
    "body_without_type": _drop("type"),
    "body_without_signer": _drop("signer"),
    "body_without_nonce": _drop("nonce"),
    "body_without_payload": _drop("payload"),
    "body_extra_field": lambda env: signed(body(env, memo="hi")),
    "nonce_zero": lambda env: signed(body(env, nonce=0)),
    "nonce_negative": lambda env: signed(body(env, nonce=-3)),
    "nonce_string": lambda env: signed(body(env, nonce="1")),
    "nonce_bool": lambda env: signed(body(env, nonce=True)),
    "type_uppercase": lambda env: signed(body(env, type="Notary.Anchor")),
    "type_without_dot": lambda env: signed(body(env, type="anchor")),
    "type_not_string": lambda env: signed(body(env, type=7)),
    "payload_list": lambda env: signed(body(env, payload=[])),
    "payload_null": lambda env: signed(body(env, payload=None)),
    "cosigners_empty": lambda env: signed(body(env, cosigners=[])),
    "cosigners_not_list": lambda env: signed(body(env, cosigners=OTHER_ADMIN.did)),
    "cosigner_is_signer": lambda env: signed(body(env, cosigners=[ADMIN.did]), ADMIN, ADMIN),
    "cosigner_repeated": lambda env: signed(body(env, cosigners=[OTHER_ADMIN.did] * 2), ADMIN, OTHER_ADMIN,
                                            OTHER_ADMIN),
}


@pytest.mark.parametrize("name", sorted(BAD_SCHEMA))
def test_bad_schema(env: Env, name: str) -> None:
    refused(env, BAD_SCHEMA[name](env), 400, "bad_schema")


# -- signatures ---------------------------------------------------------------------------------


def _resigned_other_nonce(env: Env) -> bytes:
    sigs = sign_body(body(env, nonce=2), [ADMIN])
    return envelope(body(env), sigs)


def _auth_domain_signature(env: Env) -> bytes:
    b = body(env)
    return envelope(b, [b64(ADMIN.sign(DOMAIN_AUTH, canonical.encode(b)))])


def _no_domain_signature(env: Env) -> bytes:
    b = body(env)
    return envelope(b, [b64(ADMIN.signing_key.sign(canonical.encode(b)).signature)])


BAD_SIGNATURE: dict[str, Callable[[Env], bytes]] = {
    "missing": lambda env: envelope(body(env), []),
    "two_for_one_signer": lambda env: envelope(body(env), sign_body(body(env), [ADMIN, ADMIN])),
    "signatures_not_list": lambda env: envelope(body(env), sign_body(body(env), [ADMIN])[0]),
    "by_another_key": lambda env: envelope(body(env), sign_body(body(env), [OTHER_ADMIN])),
    "over_another_body": _resigned_other_nonce,
    "auth_domain": _auth_domain_signature,
    "no_domain": _no_domain_signature,
    "zeros": lambda env: envelope(body(env), [b64(bytes(64))]),
    "too_short": lambda env: envelope(body(env), [b64(bytes(63))]),
    "not_a_string": lambda env: envelope(body(env), [123]),
    "missing_cosigner_signature": lambda env: signed(body(env, cosigners=[OTHER_ADMIN.did]), ADMIN),
    "cosigner_signatures_swapped": lambda env: envelope(
        body(env, cosigners=[OTHER_ADMIN.did]),
        list(reversed(sign_body(body(env, cosigners=[OTHER_ADMIN.did]), [ADMIN, OTHER_ADMIN])))),
    "signer_signature_repeated_for_cosigner": lambda env: envelope(
        body(env, cosigners=[OTHER_ADMIN.did]), sign_body(body(env, cosigners=[OTHER_ADMIN.did]), [ADMIN, ADMIN])),
}


@pytest.mark.parametrize("name", sorted(BAD_SIGNATURE))
def test_bad_signature(env: Env, name: str) -> None:
    refused(env, BAD_SIGNATURE[name](env), 401, "bad_signature", ADMIN.did, OTHER_ADMIN.did)


def test_flipped_signature_bit(env: Env) -> None:
    b = body(env)
    sig = bytearray(ADMIN.sign(DOMAIN_TX, canonical.encode(b)))
    sig[10] ^= 0x01
    refused(env, envelope(b, [b64(bytes(sig))]), 401, "bad_signature")


@pytest.mark.parametrize("sig", ["!" * 88, "A" * 88, base64.b64encode(bytes(64)).decode()[:-3] + "B=="])
def test_undecodable_signature_is_bad_signature(env: Env, sig: str) -> None:
    refused(env, envelope(body(env), [sig]), 401, "bad_signature")


# -- chain, type, did, payload --------------------------------------------------------------------


@pytest.mark.parametrize("chain", ["blokauto.example/other", "", "BLOKAUTO.EXAMPLE/DEMO", 5, None])
def test_wrong_chain(env: Env, chain: Any) -> None:
    refused(env, signed(body(env, chain=chain)), 400, "wrong_chain")


def test_transaction_signed_for_another_chain(env: Env) -> None:
    from blokauto.ledger.tx import sign_tx

    refused(env, sign_tx("blokauto.example/test", "notary.anchor", ADMIN, 1, dict(ANCHOR)), 400, "wrong_chain")


@pytest.mark.parametrize("tx_type", ["notary.stamp", "nosuch.thing", "gov.abolish"])
def test_unknown_type(env: Env, tx_type: str) -> None:
    refused(env, signed(body(env, type=tx_type)), 400, "unknown_type")


BAD_PAYLOADS = [
    {"digest": "xyz", "kind": "invoice"},
    {"digest": digest("a").upper(), "kind": "invoice"},
    {"digest": digest("a")},
    {"kind": "invoice"},
    {**ANCHOR, "unexpected": 1},
    {**ANCHOR, "kind": ""},
    {**ANCHOR, "kind": "Invoice!"},
    {**ANCHOR, "label": 5},
    {**ANCHOR, "label": "x" * 201},
    {"digest": 5, "kind": "invoice"},
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS, ids=[str(i) for i in range(len(BAD_PAYLOADS))])
def test_bad_payload(env: Env, payload: dict[str, Any]) -> None:
    refused(env, signed(body(env, payload=payload)), 400, "bad_payload")


def test_bad_payload_of_a_governance_type(env: Env) -> None:
    b = body(env, type="gov.propose", payload={"action": {"kind": "abolish_everything"}})
    refused(env, signed(b), 400, "bad_payload")


@pytest.mark.parametrize("signer", [
    "did:key:zzz",
    "did:key:z6Mk0OIl",                       # not base58btc
    "did:web:example.com",
    "did:key:" + ADMIN.did[len("did:key:z"):],   # multibase prefix missing
    ADMIN.did[:-1],                            # truncated key
    ADMIN.did + "1",
    "did:key:z" + "1" * 60,
    42,
    None,
])
def test_bad_did_of_signer(env: Env, signer: Any) -> None:
    b = body(env, signer=signer)
    refused(env, envelope(b, [b64(bytes(64))]), 400, "bad_did")


@pytest.mark.parametrize("cosigner", ["did:key:zzz", 7, "did:example:1"])
def test_bad_did_of_cosigner(env: Env, cosigner: Any) -> None:
    b = body(env, cosigners=[cosigner])
    refused(env, envelope(b, [b64(bytes(64))] * 2), 400, "bad_did")


# -- nonces ---------------------------------------------------------------------------------------


def test_replayed_transaction(env: Env) -> None:
    raw = good_raw(env)
    assert env.post(raw).json()["status"] == "ok"
    problem = refused(env, raw, 409, "stale_nonce")
    assert "nonce" in problem["detail"]


def test_replayed_rejected_transaction(env: Env) -> None:
    """A transaction rejected by its contract used up its nonce: replaying it is stale too."""
    raw = good_raw(env)
    assert env.post(raw).json()["status"] == "ok"
    again = good_raw(env, nonce=2)  # the same digest again: rejected by the contract
    receipt = env.post(again).json()
    assert (receipt["status"], receipt["code"]) == ("rejected", "already_anchored")
    refused(env, again, 409, "stale_nonce")


def test_lower_and_equal_nonce(env: Env) -> None:
    assert env.post(good_raw(env, nonce=5)).json()["status"] == "ok"
    assert env.nonce(ADMIN.did) == {"did": ADMIN.did, "committed": 5, "next": 6}
    refused(env, good_raw(env, nonce=3, payload={**ANCHOR, "digest": digest("other")}), 409, "stale_nonce")
    refused(env, good_raw(env, nonce=5, payload={**ANCHOR, "digest": digest("other")}), 409, "stale_nonce")
    assert env.post(good_raw(env, nonce=6, payload={**ANCHOR, "digest": digest("other")})).json()["status"] == "ok"


# -- who may send what -------------------------------------------------------------------------------


def test_non_member_cannot_anchor(env: Env) -> None:
    raw = env.sign("notary.anchor", STRANGER, 1, dict(ANCHOR))
    refused(env, raw, 403, "forbidden", STRANGER.did)


def test_non_member_cannot_admit_members(env: Env) -> None:
    raw = env.sign("org.add_member", STRANGER, 1, {"did": Signer.deterministic("x").did, "roles": []})
    refused(env, raw, 403, "forbidden", STRANGER.did)


def _add_member(env: Env, member: Signer, roles: list[str]) -> None:
    receipt = env.post(env.sign("org.add_member", ADMIN, env.nonce(ADMIN.did)["next"],
                                {"did": member.did, "roles": roles})).json()
    assert receipt["status"] == "ok", receipt


def test_member_without_admin_flag_cannot_propose(env: Env) -> None:
    member = demo_member("quickfix")
    _add_member(env, member, ["workshop"])
    action = {"kind": "set_policy", "name": "title.registry_cosign", "value": True}
    raw = env.sign("gov.propose", member, 1, {"action": action})
    refused(env, raw, 403, "forbidden", member.did)


def test_revoked_key(env: Env) -> None:
    member = demo_member("quickfix")
    _add_member(env, member, ["workshop"])
    assert env.post(env.sign("notary.anchor", member, 1, dict(ANCHOR))).json()["status"] == "ok"
    receipt = env.post(env.sign("org.revoke_key", ADMIN, env.nonce(ADMIN.did)["next"], {"did": member.did})).json()
    assert receipt["status"] == "ok", receipt
    raw = env.sign("notary.anchor", member, 2, {**ANCHOR, "digest": digest("after revocation")})
    refused(env, raw, 403, "key_revoked", member.did)


def test_revoked_cosigner(env: Env) -> None:
    member = demo_member("quickfix")
    _add_member(env, member, ["workshop"])
    env.post(env.sign("org.revoke_key", ADMIN, env.nonce(ADMIN.did)["next"], {"did": member.did}))
    raw = env.sign("notary.anchor", ADMIN, env.nonce(ADMIN.did)["next"], dict(ANCHOR), cosigners=[member])
    refused(env, raw, 403, "key_revoked", member.did)


# -- size -----------------------------------------------------------------------------------------------


def test_oversized_body(env: Env) -> None:
    refused(env, b"x" * (MAX_BULK_TX_BYTES + 1), 413, "too_large")


def test_oversized_signed_transaction(env: Env) -> None:
    raw = good_raw(env, payload={**ANCHOR, "label": "x" * (MAX_TX_BYTES + 10)})
    assert len(raw) > MAX_TX_BYTES
    refused(env, raw, 413, "too_large")


def test_oversized_chunked_body_without_length(env: Env) -> None:
    before = env.snapshot(ADMIN.did)
    half = MAX_BULK_TX_BYTES // 2 + 1
    r = env.tc.post("/v1/tx", content=iter([b"x" * half, b"y" * half]))
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "too_large")
    assert env.snapshot(ADMIN.did) == before


@pytest.mark.parametrize("declared", ["999999999", "-1", "abc"])
def test_bad_declared_length(env: Env, declared: str) -> None:
    before = env.snapshot(ADMIN.did)
    assert_problem(env.tc.post("/v1/tx", content=b"{}", headers={"content-length": declared}), 413, "too_large")
    assert env.snapshot(ADMIN.did) == before


# -- reads ------------------------------------------------------------------------------------------------


def test_unknown_tx(env: Env) -> None:
    assert_problem(env.tc.get("/v1/tx/" + "00" * 32), 404, "unknown_tx")


@pytest.mark.parametrize("tx_hash", ["xyz", "00" * 31, "00" * 33, "zz" * 32, "0" * 63, "%20"])
def test_bad_hash(env: Env, tx_hash: str) -> None:
    assert_problem(env.tc.get(f"/v1/tx/{tx_hash}"), 400, "bad_hash")


def test_hash_with_spaces_is_bad(env: Env) -> None:
    assert_problem(env.tc.get("/v1/tx/" + " 00" * 32), 400, "bad_hash")


@pytest.mark.parametrize("height", [1, 7, 2**40])
def test_unknown_block(env: Env, height: int) -> None:
    assert_problem(env.tc.get(f"/v1/blocks/{height}"), 404, "unknown_block")


def out_of_range_height(r: httpx.Response) -> None:
    if r.status_code == 404:
        assert_problem(r, 404, "unknown_block")
    else:
        assert_problem(r, 400, "bad_request")


def test_negative_block_height(env: Env) -> None:
    out_of_range_height(env.tc.get("/v1/blocks/-1"))


def test_block_height_not_a_number(env: Env) -> None:
    assert_problem(env.tc.get("/v1/blocks/abc"), 400, "bad_request")


@pytest.mark.parametrize("height", [2**63, 10**20])
def test_huge_block_height(env: Env, height: int) -> None:
    out_of_range_height(env.tc.get(f"/v1/blocks/{height}"))


@pytest.mark.parametrize("query", ["from=1&to=0", "from=0&to=5", "from=-1&to=0", "from=x&to=0", "to=0"])
def test_bad_consistency_range(env: Env, query: str) -> None:
    r = env.tc.get(f"/v1/proof/consistency?{query}")
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] in {"bad_range", "bad_request"}


@pytest.fixture
def anchored(env: Env) -> str:
    receipt = env.post(good_raw(env)).json()
    assert receipt["status"] == "ok"
    return str(receipt["tx"])


def test_member_only_tx_needs_token(env: Env, anchored: str) -> None:
    assert_problem(env.tc.get(f"/v1/tx/{anchored}"), 401, "token_required")
    assert_problem(env.tc.get(f"/v1/tx/{anchored}", headers={"Authorization": "Basic abc"}), 401, "token_required")
    assert env.tc.get(f"/v1/tx/{anchored}", headers=env.token(ADMIN)).status_code == 200


def test_member_only_state_needs_token(env: Env, anchored: str) -> None:
    key = f"/v1/state/notary/{ANCHOR['digest']}"
    assert_problem(env.tc.get(key), 401, "token_required")
    assert_problem(env.tc.get(key + "?proof=1"), 401, "token_required")
    assert_problem(env.tc.get("/v1/me"), 401, "token_required")
    assert env.tc.get(key, headers=env.token(ADMIN)).json()["value"]["by"] == ADMIN.did


def _forged_tokens() -> list[str]:
    claims = b64(canonical.encode({"did": ADMIN.did, "exp": 2**40}))
    return [
        "abc",
        "a.b",
        "a.b.c",
        f"{claims}.{b64(bytes(32))}",
        f"{claims}.{b64(bytes(31))}",
        f"{claims}.",
        f".{b64(bytes(32))}",
        f"{claims}.{b64(bytes(32))}.x",
        f"{claims}.!!!!",
    ]


@pytest.mark.parametrize("token", _forged_tokens())
def test_forged_token(env: Env, anchored: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    assert_problem(env.tc.get(f"/v1/tx/{anchored}", headers=headers), 401, "bad_token")
    assert_problem(env.tc.get(f"/v1/state/notary/{ANCHOR['digest']}", headers=headers), 401, "bad_token")


def test_token_of_another_node_is_refused(env: Env, anchored: str) -> None:
    """A token carries an HMAC under this node's secret: tampering its claims breaks it."""
    token = env.token(ADMIN)["Authorization"].removeprefix("Bearer ")
    claims_b64, mac = token.split(".")
    claims = canonical.decode(base64.b64decode(claims_b64))
    forged_claims = b64(canonical.encode({**claims, "did": OTHER_ADMIN.did}))
    headers = {"Authorization": f"Bearer {forged_claims}.{mac}"}
    assert_problem(env.tc.get(f"/v1/tx/{anchored}", headers=headers), 401, "bad_token")


def test_token_of_non_member_is_forbidden(env: Env, anchored: str) -> None:
    assert_problem(env.tc.get(f"/v1/tx/{anchored}", headers=env.token(STRANGER)), 403, "not_a_member")


def test_bad_auth_requests(env: Env) -> None:
    challenge = env.tc.post("/v1/auth/challenge").json()["challenge"]
    r = env.tc.post("/v1/auth/token", json={"did": ADMIN.did, "challenge": "nope", "signature": b64(bytes(64))})
    assert_problem(r, 401, "bad_challenge")
    r = env.tc.post("/v1/auth/token", json={"did": ADMIN.did, "challenge": challenge, "signature": b64(bytes(64))})
    assert_problem(r, 401, "bad_signature")
    r = env.tc.post("/v1/auth/token", content=b"{")
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)


# -- fuzzing: no input may crash the node ------------------------------------------------------------------


def fuzz_post(env: Env, raw: bytes) -> None:
    r = env.post(raw)
    assert 400 <= r.status_code < 500, (raw[:200], r.status_code, r.text[:300])
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    assert isinstance(r.json()["code"], str)
    s = env.status()
    assert (s["height"], s["log_size"]) == (0, 0)


@FUZZ
@given(raw=st.binary(max_size=512))
def test_fuzz_random_bytes(env: Env, raw: bytes) -> None:
    fuzz_post(env, raw)


@FUZZ
@given(text=st.text(max_size=512))
def test_fuzz_random_utf8_text(env: Env, text: str) -> None:
    fuzz_post(env, text.encode("utf-8"))


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["notary.anchor", "gov.propose", "org.add_member", ADMIN.did, "blokauto.example/demo",
                     "A" * 86 + "==", digest("x")]),
)
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@FUZZ
@given(value=JSON_VALUES, sort_keys=st.booleans(), compact=st.booleans(), ascii_only=st.booleans())
def test_fuzz_random_json(env: Env, value: Any, sort_keys: bool, compact: bool, ascii_only: bool) -> None:
    raw = json.dumps(value, sort_keys=sort_keys, ensure_ascii=ascii_only,
                     separators=(",", ":") if compact else None).encode()
    fuzz_post(env, raw)


ENVELOPE_BODIES = st.fixed_dictionaries(
    {
        "chain": st.one_of(st.just("blokauto.example/demo"), JSON_LEAVES),
        "type": st.one_of(st.sampled_from(["notary.anchor", "gov.propose", "gov.vote", "org.rotate_key",
                                           "org.add_member", "x.y"]), JSON_LEAVES),
        "signer": st.one_of(st.just(ADMIN.did), st.just(STRANGER.did), JSON_LEAVES),
        "nonce": st.one_of(st.integers(min_value=-5, max_value=2**70), JSON_LEAVES),
        "payload": st.one_of(st.just(dict(ANCHOR)), JSON_VALUES),
    },
    optional={"cosigners": st.one_of(st.lists(st.sampled_from([OTHER_ADMIN.did, ADMIN.did, "did:key:z1"]),
                                              max_size=3), JSON_VALUES)},
)


@FUZZ
@given(b=ENVELOPE_BODIES, signatures=st.one_of(st.lists(st.sampled_from(["A" * 86 + "==", b64(bytes(64)), "", "x"]),
                                                        max_size=3), JSON_VALUES))
def test_fuzz_envelope_shapes(env: Env, b: dict[str, Any], signatures: Any) -> None:
    raw = json.dumps({"body": b, "signatures": signatures}, sort_keys=True, separators=(",", ":"),
                     ensure_ascii=False).encode()
    fuzz_post(env, raw)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_transaction(env: Env, data: st.DataObject) -> None:
    raw = bytearray(good_raw(env, payload={**ANCHOR, "label": "brake pads"}))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="index")
        new = data.draw(st.integers(min_value=0x20, max_value=0x7E).filter(lambda c, i=i: c != raw[i]), label="byte")
        raw[i] = new
    fuzz_post(env, bytes(raw))


@FUZZ
@given(data=st.data())
def test_fuzz_truncated_valid_transaction(env: Env, data: st.DataObject) -> None:
    raw = good_raw(env)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    fuzz_post(env, raw[:cut])


READ_PATHS = ["/v1/tx/{}", "/v1/state/{}", "/v1/state/id/{}?proof=1", "/v1/state/notary/{}?proof=1",
              "/v1/blocks/{}", "/v1/accounts/{}/nonce", "/v1/proof/consistency?from={}&to=0",
              "/v1/proof/consistency?from=0&to={}"]


@FUZZ
@given(template=st.sampled_from(READ_PATHS),
       part=st.one_of(st.text(max_size=80), st.integers(min_value=-(2**80), max_value=2**80).map(str),
                      st.binary(min_size=32, max_size=32).map(bytes.hex)),
       token=st.one_of(st.none(), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                          max_size=60)))
def test_fuzz_reads_never_500(env: Env, template: str, part: str, token: str | None) -> None:
    from urllib.parse import quote

    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    r = env.tc.get(template.format(quote(part, safe="")), headers=headers)
    assert r.status_code < 500, (template, part, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers["content-type"].split(";")[0] == PROBLEM
        assert isinstance(r.json()["code"], str)
