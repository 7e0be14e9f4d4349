"""Identity and governance scenarios driven through the SDK client, as a consortium would."""

from __future__ import annotations

from typing import Any

import pytest

from blokauto.client import Client
from blokauto.crypto.keys import Signer, b64
from blokauto.demo import DEMO_ORGS
from blokauto.errors import BlokError
from blokauto.ledger.proofs import verify_record_proof
from tests.conftest import Env, demo_admin, demo_member, digest

ORG = "quickfix"
ORG_IDS = [o["id"] for o in DEMO_ORGS]
PROPOSER = "nordwerk"
VOTERS = ["kestrel-parts", "autohaus-lenz", "werkstatt-berg", "quickfix"]   # with the proposer: 5 of 9
NEWCO_ADMIN = Signer.deterministic("tests/newco/admin")
NEWCO_NODE = Signer.deterministic("tests/newco/node")


def admin(env: Env, org: str = ORG) -> Client:
    return env.client(demo_admin(org))


def anchor(client: Client, label: str) -> dict[str, Any]:
    return client.submit("notary.anchor", {"digest": digest(label), "kind": "invoice"})


def rejected(receipt: dict[str, Any], code: str) -> None:
    assert receipt["status"] == "rejected", receipt
    assert receipt["code"] == code, receipt
    assert isinstance(receipt["leaf_index"], int)


def state(env: Env, key: str) -> Any:
    r = env.tc.get(f"/v1/state/{key}")
    assert r.status_code == 200, r.text
    return r.json()["value"]


def admit_newco(org_id: str = "newco") -> dict[str, Any]:
    return {
        "action": {
            "kind": "admit_org",
            "org": {"id": org_id, "name": "NewCo Mobility", "roles": ["mobility", "fleet"],
                    "admins": [NEWCO_ADMIN.did],
                    "node": {"name": f"blokauto.example/demo/{org_id}", "public_key": b64(NEWCO_NODE.public_key)}},
        },
        "reason": "a car-sharing operator joins",
    }


def set_policy(name: str, value: Any) -> dict[str, Any]:
    return {"action": {"kind": "set_policy", "name": name, "value": value}}


def org_ids(env: Env) -> dict[str, str]:
    return {o["id"]: o["status"] for o in env.tc.get("/v1/orgs").json()}


# -- member keys ------------------------------------------------------------------------------------


def test_admin_adds_member_who_can_anchor(env: Env) -> None:
    member = demo_member(ORG)
    with pytest.raises(BlokError) as refused:
        anchor(env.client(member), "before admission")
    assert (refused.value.code, refused.value.http_status) == ("forbidden", 403)

    receipt = admin(env).submit("org.add_member", {"did": member.did, "roles": ["workshop"], "label": "front desk"})
    assert receipt["status"] == "ok", receipt
    assert {"type": "key.added", "did": member.did, "org": ORG} in receipt["events"]
    record = state(env, f"id/key/{member.did}")
    assert record["org"] == ORG and record["roles"] == ["workshop"]
    assert record["admin"] is False and record["status"] == "active" and record["label"] == "front desk"

    client = env.client(member)
    receipt = anchor(client, "after admission")
    assert receipt["status"] == "ok", receipt
    client.login()
    stored = client.state(f"notary/{digest('after admission')}")["value"]
    assert (stored["by"], stored["org"], stored["height"]) == (member.did, ORG, receipt["height"])
    assert client._json("GET", "/v1/me")["did"] == member.did


def test_member_of_a_multi_role_org_gets_a_subset(env: Env) -> None:
    member = demo_member("kestrel-parts")
    receipt = admin(env, "kestrel-parts").submit("org.add_member", {"did": member.did, "roles": ["logistics"]})
    assert receipt["status"] == "ok", receipt
    assert state(env, f"id/key/{member.did}")["roles"] == ["logistics"]


@pytest.mark.parametrize(("roles", "code"), [
    (["insurer"], "unknown_role"),            # a real role, but not quickfix's
    (["workshop", "dealer"], "unknown_role"),
    (["wizard"], "unknown_role"),             # no such role at all
    (["workshop", "workshop"], "bad_roles"),
])
def test_member_roles_outside_the_org_are_rejected(env: Env, roles: list[str], code: str) -> None:
    member = demo_member(ORG)
    client = admin(env)
    before = env.status()["log_size"]
    receipt = client.submit("org.add_member", {"did": member.did, "roles": roles})
    rejected(receipt, code)
    assert env.status()["log_size"] == before + 1          # the rejection is a record too
    assert state(env, f"id/key/{member.did}") is None       # but it changed no state
    assert env.nonce(demo_admin(ORG).did)["committed"] == 1  # except the signer's nonce
    with pytest.raises(BlokError) as refused:
        anchor(env.client(member), "never admitted")
    assert refused.value.code == "forbidden"


def test_registered_keys_cannot_be_added_again(env: Env) -> None:
    rejected(admin(env).submit("org.add_member", {"did": demo_admin("nordwerk").did, "roles": []}), "key_exists")
    rejected(admin(env).submit("org.add_member", {"did": demo_admin(ORG).did, "roles": []}), "key_exists")


def test_member_admin_flag_needs_an_admin_to_grant_it(env: Env) -> None:
    member = demo_member(ORG)
    assert admin(env).submit("org.add_member", {"did": member.did, "roles": ["workshop"]})["status"] == "ok"
    with pytest.raises(BlokError) as refused:
        env.client(member).submit("org.add_member", {"did": demo_member(ORG, 2).did, "roles": []})
    assert (refused.value.code, refused.value.http_status) == ("forbidden", 403)


# -- rotation and revocation ----------------------------------------------------------------------------


def _with_member(env: Env) -> Signer:
    member = demo_member(ORG)
    assert admin(env).submit("org.add_member", {"did": member.did, "roles": ["workshop"]})["status"] == "ok"
    return member


def test_rotation_needs_the_new_key_as_cosigner(env: Env) -> None:
    old, new = _with_member(env), demo_member(ORG, 2)
    client = admin(env)
    rejected(client.submit("org.rotate_key", {"old": old.did, "new": new.did}), "proof_of_possession")
    assert state(env, f"id/key/{old.did}")["status"] == "active"
    assert state(env, f"id/key/{new.did}") is None
    assert anchor(env.client(old), "old key still works")["status"] == "ok"

    # a cosignature by some other key is no proof of possession either
    other = demo_member(ORG, 3)
    rejected(client.submit("org.rotate_key", {"old": old.did, "new": new.did}, cosigners=[other]),
             "proof_of_possession")

    receipt = client.submit("org.rotate_key", {"old": old.did, "new": new.did}, cosigners=[new])
    assert receipt["status"] == "ok", receipt
    record = state(env, f"id/key/{new.did}")
    assert (record["org"], record["roles"], record["status"], record["rotated_from"]) == (
        ORG, ["workshop"], "active", old.did)
    assert state(env, f"id/key/{old.did}")["status"] == "revoked"

    before = env.snapshot(old.did)
    with pytest.raises(BlokError) as refused:
        anchor(env.client(old), "old key after rotation")
    assert (refused.value.code, refused.value.http_status) == ("key_revoked", 403)
    assert env.snapshot(old.did) == before
    assert anchor(env.client(new), "new key")["status"] == "ok"


def test_rotating_an_admin_key_updates_the_org(env: Env) -> None:
    old, new = demo_admin(ORG), Signer.deterministic("tests/quickfix/admin2")
    receipt = admin(env).submit("org.rotate_key", {"old": old.did, "new": new.did}, cosigners=[new])
    assert receipt["status"] == "ok", receipt
    org = state(env, f"id/org/{ORG}")
    assert org["admins"] == [new.did]
    assert env.client(new).submit("org.add_member", {"did": demo_member(ORG).did, "roles": []})["status"] == "ok"


def test_revoked_key_writes_nothing(env: Env) -> None:
    member = _with_member(env)
    member_client = env.client(member)
    assert anchor(member_client, "before revocation")["status"] == "ok"
    member_client.login()
    assert member_client._json("GET", "/v1/me")["status"] == "active"

    receipt = admin(env).submit("org.revoke_key", {"did": member.did, "reason": "lost laptop"})
    assert receipt["status"] == "ok", receipt
    assert {"type": "key.revoked", "did": member.did} in receipt["events"]

    before = env.snapshot(member.did)
    for label in ("after revocation", "again"):
        with pytest.raises(BlokError) as refused:
            anchor(member_client, label)
        assert (refused.value.code, refused.value.http_status) == ("key_revoked", 403)
    assert env.snapshot(member.did) == before
    # the revoked key's token no longer reads member-only data either
    with pytest.raises(BlokError) as refused:
        member_client._json("GET", "/v1/me")
    assert (refused.value.code, refused.value.http_status) == ("not_a_member", 403)

    rejected(admin(env).submit("org.revoke_key", {"did": member.did}), "key_revoked")
    rejected(admin(env).submit("org.rotate_key", {"old": member.did, "new": demo_member(ORG, 5).did},
                               cosigners=[demo_member(ORG, 5)]), "key_revoked")


def test_keys_of_other_orgs_and_last_admin(env: Env) -> None:
    client = admin(env)
    rejected(client.submit("org.revoke_key", {"did": demo_admin("nordwerk").did}), "other_org")
    rejected(client.submit("org.revoke_key", {"did": demo_member("nordwerk").did}), "unknown_key")
    rejected(client.submit("org.revoke_key", {"did": demo_admin(ORG).did}), "last_admin")
    assert state(env, f"id/key/{demo_admin(ORG).did}")["status"] == "active"


def test_second_admin_added_as_member_lets_the_first_go(env: Env) -> None:
    second = demo_member(ORG)
    receipt = admin(env).submit("org.add_member", {"did": second.did, "roles": ["workshop"], "admin": True})
    assert receipt["status"] == "ok", receipt
    receipt = env.client(second).submit("org.revoke_key", {"did": demo_admin(ORG).did})
    assert receipt["status"] == "ok", receipt   # before the fix: rejected, last_admin
    assert state(env, f"id/org/{ORG}")["admins"] == [second.did]


def test_set_roles_keeps_the_admin_list_in_step(env: Env) -> None:
    member = _with_member(env)
    client = admin(env)
    receipt = client.submit("org.set_roles", {"did": member.did, "roles": ["workshop"], "admin": True})
    assert receipt["status"] == "ok", receipt
    assert state(env, f"id/org/{ORG}")["admins"] == [demo_admin(ORG).did, member.did]
    # now the founding admin may step down, and the list follows
    receipt = env.client(member).submit("org.set_roles", {"did": demo_admin(ORG).did, "roles": [], "admin": False})
    assert receipt["status"] == "ok", receipt
    assert state(env, f"id/org/{ORG}")["admins"] == [member.did]
    # the last admin cannot demote itself
    rejected(env.client(member).submit("org.set_roles", {"did": member.did, "roles": [], "admin": False}),
             "last_admin")
    with pytest.raises(BlokError) as refused:
        client.submit("org.add_member", {"did": demo_member(ORG, 9).did, "roles": []})
    assert (refused.value.code, refused.value.http_status) == ("forbidden", 403)


# -- consortium governance -------------------------------------------------------------------------------


def test_admission_needs_a_majority_of_organisations(env: Env) -> None:
    receipt = admin(env, PROPOSER).submit("gov.propose", admit_newco())
    assert receipt["status"] == "ok", receipt
    proposal_id = receipt["tx"]
    assert {"type": "proposal.opened", "proposal": proposal_id} in receipt["events"]
    proposal = state(env, f"gov/proposal/{proposal_id}")
    assert (proposal["status"], proposal["votes"]) == ("open", [PROPOSER])
    assert proposal["proposer"] == demo_admin(PROPOSER).did

    for n, org in enumerate(VOTERS[:3], start=2):
        receipt = admin(env, org).submit("gov.vote", {"proposal": proposal_id})
        assert receipt["status"] == "ok", receipt
        proposal = state(env, f"gov/proposal/{proposal_id}")
        assert proposal["status"] == "open" and len(proposal["votes"]) == n
        assert "newco" not in org_ids(env)
    with pytest.raises(BlokError) as refused:
        anchor(env.client(NEWCO_ADMIN), "too early")
    assert refused.value.code == "forbidden"

    receipt = admin(env, VOTERS[3]).submit("gov.vote", {"proposal": proposal_id})
    assert receipt["status"] == "ok", receipt
    assert {"type": "proposal.executed", "proposal": proposal_id, "votes": 5, "quorum": 5} in receipt["events"]
    proposal = state(env, f"gov/proposal/{proposal_id}")
    assert proposal["status"] == "executed"
    assert proposal["executed_at"] == receipt["height"]
    assert sorted(proposal["votes"]) == sorted([PROPOSER, *VOTERS])
    orgs = {o["id"]: o for o in env.tc.get("/v1/orgs").json()}
    assert orgs["newco"]["status"] == "active" and orgs["newco"]["admins"] == [NEWCO_ADMIN.did]
    assert state(env, "id/orgs") == sorted([*ORG_IDS, "newco"])

    # the new organisation is a full member at once
    assert anchor(env.client(NEWCO_ADMIN), "newco's first record")["status"] == "ok"
    keys = env.tc.get("/v1/checkpoint/keys").text.splitlines()
    assert any(k.startswith("blokauto.example/demo/newco+") for k in keys)
    # and closed proposals take no more votes
    rejected(admin(env, "alpina-insurance").submit("gov.vote", {"proposal": proposal_id}), "proposal_closed")


def test_one_vote_per_organisation(env: Env) -> None:
    proposal_id = admin(env, PROPOSER).submit("gov.propose", admit_newco())["tx"]
    rejected(admin(env, PROPOSER).submit("gov.vote", {"proposal": proposal_id}), "already_voted")
    assert admin(env, "quickfix").submit("gov.vote", {"proposal": proposal_id})["status"] == "ok"
    rejected(admin(env, "quickfix").submit("gov.vote", {"proposal": proposal_id}), "already_voted")
    # a second key of the same organisation is still the same organisation
    second = demo_member("quickfix")
    assert admin(env, "quickfix").submit(
        "org.add_member", {"did": second.did, "roles": ["workshop"], "admin": True})["status"] == "ok"
    rejected(env.client(second).submit("gov.vote", {"proposal": proposal_id}), "already_voted")
    proposal = state(env, f"gov/proposal/{proposal_id}")
    assert (proposal["status"], sorted(proposal["votes"])) == ("open", sorted([PROPOSER, "quickfix"]))


def test_conflicting_proposal_cannot_execute(env: Env) -> None:
    """Two proposals admit the same organisation: once one has passed, the other's deciding vote fails."""
    first = admin(env, PROPOSER).submit("gov.propose", admit_newco(), cosigners=[demo_admin(o) for o in VOTERS[:3]])
    second = admin(env, "alpina-insurance").submit("gov.propose", admit_newco(),
                                                   cosigners=[demo_admin(o) for o in VOTERS[:3]])
    assert first["status"] == second["status"] == "ok"
    assert admin(env, VOTERS[3]).submit("gov.vote", {"proposal": first["tx"]})["status"] == "ok"
    assert org_ids(env)["newco"] == "active"
    # ten organisations now: the majority is six
    assert admin(env, VOTERS[3]).submit("gov.vote", {"proposal": second["tx"]})["status"] == "ok"
    rejected(admin(env, "hanse-bank").submit("gov.vote", {"proposal": second["tx"]}), "org_exists")
    proposal = state(env, f"gov/proposal/{second['tx']}")
    assert proposal["status"] == "open" and len(proposal["votes"]) == 5 and "hanse-bank" not in proposal["votes"]
    assert sum(o["id"] == "newco" for o in env.tc.get("/v1/orgs").json()) == 1


def test_vote_on_unknown_proposal(env: Env) -> None:
    rejected(admin(env).submit("gov.vote", {"proposal": "ab" * 32}), "unknown_proposal")


def test_members_without_admin_flag_cannot_vote(env: Env) -> None:
    proposal_id = admin(env, PROPOSER).submit("gov.propose", admit_newco())["tx"]
    member = _with_member(env)
    with pytest.raises(BlokError) as refused:
        env.client(member).submit("gov.vote", {"proposal": proposal_id})
    assert (refused.value.code, refused.value.http_status) == ("forbidden", 403)


def test_proposal_with_a_majority_of_cosigners_passes_at_once(env: Env) -> None:
    cosigners = [demo_admin(o) for o in VOTERS]
    receipt = admin(env, PROPOSER).submit("gov.propose", admit_newco(), cosigners=cosigners)
    assert receipt["status"] == "ok", receipt
    assert {"type": "proposal.executed", "proposal": receipt["tx"], "votes": 5, "quorum": 5} in receipt["events"]
    assert state(env, f"gov/proposal/{receipt['tx']}")["status"] == "executed"
    assert org_ids(env)["newco"] == "active"


def test_cosigners_who_are_not_admins_do_not_vote(env: Env) -> None:
    cosigners = [demo_admin(o) for o in VOTERS[:3]] + [Signer.deterministic("tests/outsider")]
    receipt = admin(env, PROPOSER).submit("gov.propose", admit_newco(), cosigners=cosigners)
    assert receipt["status"] == "ok", receipt
    proposal = state(env, f"gov/proposal/{receipt['tx']}")
    assert proposal["status"] == "open" and len(proposal["votes"]) == 4
    assert "newco" not in org_ids(env)


@pytest.mark.parametrize(("policy", "value", "code"), [
    ("governance.quorum", 4, "bad_policy"),     # below the majority of 9 organisations
    ("governance.quorum", 1, "bad_policy"),
    ("governance.quorum", 0, "bad_policy"),
    ("governance.quorum", 10, "bad_policy"),    # more organisations than there are
    ("governance.quorum", "5", "bad_policy"),
    ("governance.quorum", True, "bad_policy"),
    ("checkpoint.quorum", 0, "bad_policy"),
    ("checkpoint.quorum", 10, "bad_policy"),
    ("no.such.policy", 1, "unknown_policy"),
])
def test_bad_policies_are_rejected(env: Env, policy: str, value: Any, code: str) -> None:
    receipt = admin(env, PROPOSER).submit("gov.propose", set_policy(policy, value))
    rejected(receipt, code)
    assert state(env, f"gov/proposal/{receipt['tx']}") is None


def test_raised_quorum_needs_more_votes(env: Env) -> None:
    cosigners = [demo_admin(o) for o in VOTERS]
    receipt = admin(env, PROPOSER).submit("gov.propose", set_policy("governance.quorum", 6), cosigners=cosigners)
    assert receipt["status"] == "ok", receipt
    assert state(env, "policy/governance.quorum") == 6

    receipt = admin(env, PROPOSER).submit("gov.propose", admit_newco(), cosigners=cosigners)
    proposal_id = receipt["tx"]
    assert state(env, f"gov/proposal/{proposal_id}")["status"] == "open"   # 5 votes < 6
    receipt = admin(env, "alpina-insurance").submit("gov.vote", {"proposal": proposal_id})
    assert {"type": "proposal.executed", "proposal": proposal_id, "votes": 6, "quorum": 6} in receipt["events"]
    assert org_ids(env)["newco"] == "active"


def test_suspended_organisation_cannot_sign(env: Env) -> None:
    action = {"action": {"kind": "suspend_org", "org_id": "eco-recycling"}}
    receipt = admin(env, PROPOSER).submit("gov.propose", action, cosigners=[demo_admin(o) for o in VOTERS])
    assert receipt["status"] == "ok", receipt
    assert org_ids(env)["eco-recycling"] == "suspended"
    assert "eco-recycling" not in state(env, "id/orgs")
    with pytest.raises(BlokError) as refused:
        anchor(admin(env, "eco-recycling"), "after suspension")
    assert (refused.value.code, refused.value.http_status) == ("org_suspended", 403)


def test_suspended_organisation_cannot_vote_by_cosigning(env: Env) -> None:
    action = {"action": {"kind": "suspend_org", "org_id": "eco-recycling"}}
    assert admin(env, PROPOSER).submit("gov.propose", action,
                                       cosigners=[demo_admin(o) for o in VOTERS])["status"] == "ok"
    # 8 active organisations: a majority is 5; 4 active ones plus the suspended one must not be enough
    cosigners = [demo_admin(o) for o in VOTERS[:3]] + [demo_admin("eco-recycling")]
    receipt = admin(env, PROPOSER).submit("gov.propose", admit_newco(), cosigners=cosigners)
    assert receipt["status"] == "ok", receipt
    proposal = state(env, f"gov/proposal/{receipt['tx']}")
    assert "eco-recycling" not in proposal["votes"]
    assert proposal["status"] == "open"


# -- rejected transactions are records -------------------------------------------------------------------


def test_rejected_transaction_is_logged_and_provable(env: Env) -> None:
    client = admin(env)
    assert anchor(client, "invoice 7")["status"] == "ok"
    receipt = anchor(client, "invoice 7")   # the same digest twice
    rejected(receipt, "already_anchored")
    assert receipt["leaf_index"] == 1 and env.status()["log_size"] == 2

    with pytest.raises(BlokError) as refused:
        client.tx(receipt["tx"])
    assert (refused.value.code, refused.value.http_status) == ("token_required", 401)
    client.login()
    record = client.tx(receipt["tx"])
    assert record["receipt"]["status"] == "rejected" and record["receipt"]["code"] == "already_anchored"
    assert record["receipt"]["leaf_index"] == receipt["leaf_index"]
    assert record["transaction"]["body"]["nonce"] == 2

    keys = [k for k in env.tc.get("/v1/checkpoint/keys").text.splitlines() if k]
    leaf = verify_record_proof(record["proof"], keys, origin=env.chain)
    assert leaf["result"]["status"] == "rejected" and leaf["result"]["code"] == "already_anchored"
    assert leaf["height"] == receipt["height"] and leaf["tx"] == record["transaction"]
    assert client.verify_tx(receipt["tx"])["result"]["code"] == "already_anchored"


def test_rejected_governance_transaction_is_public_and_provable(env: Env) -> None:
    client = admin(env, PROPOSER)
    receipt = client.submit("gov.propose", set_policy("governance.quorum", 2))
    rejected(receipt, "bad_policy")
    reader = env.client()           # no key, no token: governance records are public
    record = reader.tx(receipt["tx"])
    assert record["receipt"]["code"] == "bad_policy"
    keys, quorum = reader.checkpoint_keys()
    assert quorum == 1 and len(keys) == len(ORG_IDS)
    leaf = verify_record_proof(record["proof"], keys, quorum, origin=env.chain)
    assert leaf["result"] == {"code": "bad_policy", "message": leaf["result"]["message"], "status": "rejected"}


# -- suspension ------------------------------------------------------------------------------------------


def _suspend(env: Env, org: str) -> None:
    action = {"action": {"kind": "suspend_org", "org_id": org}}
    receipt = admin(env, PROPOSER).submit("gov.propose", action, cosigners=[demo_admin(o) for o in VOTERS])
    assert receipt["status"] == "ok", receipt
    assert org_ids(env)[org] == "suspended"


def test_suspended_organisation_loses_member_reads(env: Env) -> None:
    suspended = admin(env, "eco-recycling")
    suspended.login()
    assert suspended._json("GET", "/v1/me")["org"] == "eco-recycling"
    _suspend(env, "eco-recycling")
    with pytest.raises(BlokError) as refused:
        suspended._json("GET", "/v1/me")
    assert refused.value.http_status == 403


def test_votes_of_an_organisation_suspended_later_do_not_count(env: Env) -> None:
    # eco-recycling votes while active (2 votes), then is suspended: 8 active organisations, majority 5
    receipt = admin(env, PROPOSER).submit("gov.propose", admit_newco(), cosigners=[demo_admin("eco-recycling")])
    proposal_id = receipt["tx"]
    assert state(env, f"gov/proposal/{proposal_id}")["votes"] == ["eco-recycling", PROPOSER]
    _suspend(env, "eco-recycling")
    for org in VOTERS[:3]:   # three more active organisations: 4 active votes of 8 is no majority
        assert admin(env, org).submit("gov.vote", {"proposal": proposal_id})["status"] == "ok"
    assert state(env, f"gov/proposal/{proposal_id}")["status"] == "open"
    assert "newco" not in org_ids(env)
