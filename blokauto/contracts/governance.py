"""Consortium identity and governance: organisations, member keys, roles, policies.

State layout (all public, because anybody verifying a record offline needs the keys):
``id/orgs`` the sorted list of active organisation ids; ``id/org/<id>`` an organisation;
``id/key/<did>`` a member key with its organisation, roles, admin flag and status;
``policy/<name>`` a consortium policy; ``gov/proposal/<tx hash>`` a governance proposal.
Consortium changes need the votes of a quorum of organisations (by default a majority), each
organisation voting through any of its admin keys, as signer, cosigner or later by ``gov.vote``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from blokauto.contracts.registry import Payload, contract
from blokauto.crypto.keys import public_key_from_did, unb64
from blokauto.errors import InputError
from blokauto.ledger.state import ADMIN, Context, key_record, require

ROLES = frozenset(
    {
        "manufacturer", "parts_maker", "dealer", "workshop", "insurer", "registry", "lender",
        "recycler", "fleet", "energy", "mobility", "regulator", "issuer", "logistics",
    }
)
POLICIES = {
    "governance.quorum": "organisations whose votes pass a consortium change (>= majority)",
    "checkpoint.quorum": "organisation signatures that make a checkpoint final",
    "title.registry_cosign": "whether ownership transfers need a registry cosignature",
}
ORG_ID = re.compile(r"^[a-z][a-z0-9-]{1,39}$")
NOTE_NAME = re.compile(r"^[!-*,-~]{1,100}$")  # printable, no '+', no space (C2SP note key names)

OrgId = Annotated[str, msgspec.Meta(pattern=ORG_ID.pattern)]
Did = Annotated[str, msgspec.Meta(min_length=10, max_length=64, pattern=r"^did:key:z[1-9A-HJ-NP-Za-km-z]+$")]
Label = Annotated[str, msgspec.Meta(max_length=120)]


class NodeKey(Payload):
    name: Annotated[str, msgspec.Meta(pattern=NOTE_NAME.pattern)]
    public_key: Annotated[str, msgspec.Meta(min_length=44, max_length=44)]


class OrgSpec(Payload):
    id: OrgId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    roles: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)]
    admins: Annotated[list[Did], msgspec.Meta(min_length=1, max_length=16)]
    node: NodeKey | None = None


class AdmitOrg(Payload, tag="admit_org", tag_field="kind"):
    org: OrgSpec


class SuspendOrg(Payload, tag="suspend_org", tag_field="kind"):
    org_id: OrgId


class SetPolicy(Payload, tag="set_policy", tag_field="kind"):
    name: str
    value: int | bool | str


Action = AdmitOrg | SuspendOrg | SetPolicy


class Propose(Payload):
    action: Action
    reason: Label = ""


class Vote(Payload):
    proposal: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class AddMember(Payload):
    did: Did
    roles: Annotated[list[str], msgspec.Meta(max_length=16)]
    admin: bool = False
    label: Label = ""


class SetRoles(Payload):
    did: Did
    roles: Annotated[list[str], msgspec.Meta(max_length=16)]
    admin: bool = False


class RevokeKey(Payload):
    did: Did
    reason: Label = ""


class RotateKey(Payload):
    old: Did
    new: Did


class SetNodeKey(Payload):
    node: NodeKey


# -- reads -------------------------------------------------------------------------------


def get_active_orgs(ctx: Context) -> list[str]:
    return list(ctx.get("id/orgs") or [])


def get_policy(ctx: Context, name: str, default: Any) -> Any:
    value = ctx.get(f"policy/{name}")
    return default if value is None else value


def compute_majority(org_count: int) -> int:
    return org_count // 2 + 1


def get_governance_quorum(ctx: Context) -> int:
    active = len(get_active_orgs(ctx))
    majority = compute_majority(active)
    # a quorum set before suspensions may exceed the organisations left: cap it, or nothing could pass
    return min(active, max(majority, int(get_policy(ctx, "governance.quorum", majority))))


def get_voting_orgs(ctx: Context) -> set[str]:
    """Organisations that voted through this transaction: admins among signer and cosigners."""
    orgs = set()
    active = set(get_active_orgs(ctx))
    for did in ctx.all_signers():
        member = ctx.member_of(did)
        if member and member.get("admin") and member["org"] in active:
            orgs.add(member["org"])
    return orgs


# -- checks (no writes) --------------------------------------------------------------------


def check_roles(roles: list[str], allowed: list[str] | frozenset[str] = ROLES) -> None:
    unknown = sorted(set(roles) - set(allowed))
    require(not unknown, "unknown_role", f"roles not available here: {', '.join(unknown)}")
    require(len(set(roles)) == len(roles), "bad_roles", "roles repeat")


def check_new_key(ctx: Context, did: str) -> None:
    require(ctx.get(key_record(did)) is None, "key_exists", f"{did} is already registered (keys are never reused)")


def check_did(did: str) -> None:
    try:
        public_key_from_did(did)
    except InputError as exc:
        require(False, "bad_did", exc.message)


def check_node_key(node: NodeKey | None) -> None:
    if node is None:
        return
    try:
        unb64(node.public_key, size=32, what="node public key")
    except InputError as exc:
        require(False, "bad_node_key", exc.message)


def check_action(ctx: Context, action: Action) -> None:
    if isinstance(action, AdmitOrg):
        spec = action.org
        require(ctx.get(f"id/org/{spec.id}") is None, "org_exists", f"organisation {spec.id} already exists")
        check_roles(spec.roles)
        check_node_key(spec.node)
        require(len(set(spec.admins)) == len(spec.admins), "bad_admins", "admins repeat")
        for did in spec.admins:
            check_did(did)
            check_new_key(ctx, did)
    elif isinstance(action, SuspendOrg):
        org = ctx.get(f"id/org/{action.org_id}")
        require(org is not None and org["status"] == "active", "unknown_org", f"no active org {action.org_id}")
        require(len(get_active_orgs(ctx)) > 1, "last_org", "the last organisation cannot be suspended")
    elif isinstance(action, SetPolicy):
        require(action.name in POLICIES, "unknown_policy", f"unknown policy {action.name}")
        if action.name == "title.registry_cosign":
            require(type(action.value) is bool, "bad_policy", "title.registry_cosign is true or false")
        if action.name in ("governance.quorum", "checkpoint.quorum"):
            require(
                type(action.value) is int and 1 <= action.value <= len(get_active_orgs(ctx)),
                "bad_policy", f"{action.name} must be an integer between 1 and the number of organisations",
            )
            if action.name == "governance.quorum":
                majority = compute_majority(len(get_active_orgs(ctx)))
                require(action.value >= majority, "bad_policy", "governance quorum below a majority")


# -- writes --------------------------------------------------------------------------------


def process_admit_org(ctx: Context, spec: OrgSpec) -> None:
    record: dict[str, Any] = {
        "id": spec.id, "name": spec.name, "roles": sorted(spec.roles), "admins": list(spec.admins),
        "status": "active", "since": ctx.height,
    }
    ctx.put(f"id/org/{spec.id}", record)
    ctx.put("id/orgs", sorted({*get_active_orgs(ctx), spec.id}))
    for did in spec.admins:
        ctx.put(key_record(did), {"org": spec.id, "roles": sorted(spec.roles), "admin": True,
                                  "status": "active", "since": ctx.height, "label": "admin"})
    if spec.node is not None:
        ctx.put(f"id/node/{spec.id}", {"name": spec.node.name, "public_key": spec.node.public_key})
    ctx.emit("org.admitted", org=spec.id)


def process_action(ctx: Context, action: Action) -> None:
    if isinstance(action, AdmitOrg):
        process_admit_org(ctx, action.org)
    elif isinstance(action, SuspendOrg):
        org = dict(ctx.get(f"id/org/{action.org_id}") or {})
        org["status"] = "suspended"
        ctx.put(f"id/org/{action.org_id}", org)
        ctx.put("id/orgs", [o for o in get_active_orgs(ctx) if o != action.org_id])
        ctx.emit("org.suspended", org=action.org_id)
    elif isinstance(action, SetPolicy):
        ctx.put(f"policy/{action.name}", action.value)
        ctx.emit("policy.set", name=action.name, value=action.value)


def process_votes(ctx: Context, proposal_id: str, proposal: dict[str, Any], new_votes: set[str]) -> None:
    votes = sorted(set(proposal["votes"]) | new_votes)
    proposal = {**proposal, "votes": votes}
    quorum = get_governance_quorum(ctx)
    counted = set(votes) & set(get_active_orgs(ctx))  # votes of organisations suspended since do not count
    if len(counted) >= quorum:
        action = msgspec.convert(proposal["action"], Action, strict=True)
        check_action(ctx, action)
        process_action(ctx, action)
        proposal["status"] = "executed"
        proposal["executed_at"] = ctx.height
        ctx.emit("proposal.executed", proposal=proposal_id, votes=len(votes), quorum=quorum)
    ctx.put(f"gov/proposal/{proposal_id}", proposal)


@contract("gov.propose", payload=Propose, roles={ADMIN}, public=True)
def propose(ctx: Context, p: Propose) -> None:
    """Propose a consortium change; it executes once a quorum of organisations has voted."""
    check_action(ctx, p.action)
    proposal = {
        "action": msgspec.to_builtins(p.action), "reason": p.reason, "proposer": ctx.signer,
        "votes": [], "status": "open", "opened_at": ctx.height,
    }
    ctx.emit("proposal.opened", proposal=ctx.tx_hash)
    process_votes(ctx, ctx.tx_hash, proposal, get_voting_orgs(ctx))


@contract("gov.vote", payload=Vote, roles={ADMIN}, public=True)
def vote(ctx: Context, p: Vote) -> None:
    """Add this organisation's vote to an open proposal."""
    proposal = ctx.get(f"gov/proposal/{p.proposal}")
    require(proposal is not None, "unknown_proposal", f"no proposal {p.proposal}")
    require(proposal["status"] == "open", "proposal_closed", f"proposal is {proposal['status']}")
    voters = get_voting_orgs(ctx)
    require(not voters <= set(proposal["votes"]), "already_voted", "this organisation has already voted")
    process_votes(ctx, p.proposal, proposal, voters)


def get_own_org_member(ctx: Context, did: str) -> dict[str, Any]:
    record = ctx.get(key_record(did))
    require(record is not None, "unknown_key", f"{did} is not a member key")
    require(record["org"] == ctx.org, "other_org", "keys of another organisation cannot be changed")
    return dict(record)


def check_member_roles(ctx: Context, roles: list[str]) -> None:
    org = ctx.get(f"id/org/{ctx.org}") or {}
    check_roles(roles, org.get("roles", []))


@contract("org.add_member", payload=AddMember, roles={ADMIN}, public=True)
def add_member(ctx: Context, p: AddMember) -> None:
    """An organisation admin admits a member key with some of the organisation's roles."""
    check_did(p.did)
    check_new_key(ctx, p.did)
    check_member_roles(ctx, p.roles)
    ctx.put(key_record(p.did), {"org": ctx.org, "roles": sorted(p.roles), "admin": p.admin,
                                "status": "active", "since": ctx.height, "label": p.label})
    if p.admin:
        update_admin_list(ctx, str(ctx.org), remove=p.did, add=p.did)
    ctx.emit("key.added", did=p.did, org=ctx.org)


@contract("org.set_roles", payload=SetRoles, roles={ADMIN}, public=True)
def set_roles(ctx: Context, p: SetRoles) -> None:
    """Change a member key's roles or admin flag."""
    record = get_own_org_member(ctx, p.did)
    require(record["status"] == "active", "key_revoked", "a revoked key cannot be changed")
    check_member_roles(ctx, p.roles)
    check_keeps_an_admin(ctx, p.did, p.admin)
    ctx.put(key_record(p.did), {**record, "roles": sorted(p.roles), "admin": p.admin})
    update_admin_list(ctx, str(ctx.org), remove=p.did, add=p.did if p.admin else None)
    ctx.emit("key.roles", did=p.did, roles=sorted(p.roles), admin=p.admin)


def check_keeps_an_admin(ctx: Context, did: str, stays_admin: bool) -> None:
    org = ctx.get(f"id/org/{ctx.org}") or {}
    admins = [a for a in org.get("admins", []) if (ctx.member_of(a) or {}).get("admin")]
    if not stays_admin:
        require([a for a in admins if a != did], "last_admin", "an organisation keeps at least one admin key")


def update_admin_list(ctx: Context, org_id: str, remove: str, add: str | None = None) -> None:
    org = dict(ctx.get(f"id/org/{org_id}") or {})
    admins = [a for a in org.get("admins", []) if a != remove]
    if add is not None:
        admins.append(add)
    org["admins"] = admins
    ctx.put(f"id/org/{org_id}", org)


@contract("org.revoke_key", payload=RevokeKey, roles={ADMIN}, public=True)
def revoke_key(ctx: Context, p: RevokeKey) -> None:
    """Revoke a member key for good: it signs nothing more."""
    record = get_own_org_member(ctx, p.did)
    require(record["status"] == "active", "key_revoked", "key already revoked")
    if record.get("admin"):
        check_keeps_an_admin(ctx, p.did, False)
        update_admin_list(ctx, record["org"], p.did)
    ctx.put(key_record(p.did), {**record, "status": "revoked", "revoked_at": ctx.height, "reason": p.reason})
    ctx.emit("key.revoked", did=p.did)


@contract("org.rotate_key", payload=RotateKey, roles={ADMIN}, public=True)
def rotate_key(ctx: Context, p: RotateKey) -> None:
    """Replace a member key by a new one with the same roles; the new key must cosign."""
    record = get_own_org_member(ctx, p.old)
    require(record["status"] == "active", "key_revoked", "a revoked key cannot be rotated")
    check_did(p.new)
    check_new_key(ctx, p.new)
    require(p.new in ctx.cosigners, "proof_of_possession", "the new key must cosign its rotation")
    ctx.put(key_record(p.old), {**record, "status": "revoked", "revoked_at": ctx.height, "reason": "rotated"})
    ctx.put(key_record(p.new), {**record, "since": ctx.height, "rotated_from": p.old})
    if record.get("admin"):
        update_admin_list(ctx, record["org"], p.old, p.new)
    ctx.emit("key.rotated", old=p.old, new=p.new)


@contract("org.set_node_key", payload=SetNodeKey, roles={ADMIN}, public=True)
def set_node_key(ctx: Context, p: SetNodeKey) -> None:
    """Name the key this organisation's node signs checkpoints with."""
    check_node_key(p.node)
    ctx.put(f"id/node/{ctx.org}", {"name": p.node.name, "public_key": p.node.public_key})
    ctx.emit("node.key", org=ctx.org, name=p.node.name)


# -- genesis -------------------------------------------------------------------------------


DEFAULT_MAX_BLOCK_TXS = 2000


class OrderingSpec(Payload):
    """How a consortium network cuts blocks from its stream's order (ADR 0006). Fixed at genesis:
    every node must cut the same blocks, and a node replaying the stream cuts long before it has
    executed what precedes, so a value that governance could change mid-stream would not do."""

    max_block_txs: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = DEFAULT_MAX_BLOCK_TXS


class Genesis(Payload):
    """The founding document: chain id, founding organisations with admin keys, policies, and the
    network's block-cutting rule."""

    version: int
    chain: Annotated[str, msgspec.Meta(min_length=3, max_length=100, pattern=r"^[a-z0-9][a-z0-9./_-]*$")]
    time_ms: Annotated[int, msgspec.Meta(ge=0)]
    orgs: Annotated[list[OrgSpec], msgspec.Meta(min_length=1, max_length=200)]
    policies: dict[str, int | bool | str] = msgspec.field(default_factory=dict)
    ordering: OrderingSpec = msgspec.field(default_factory=OrderingSpec)


def parse_genesis(doc: Any) -> Genesis:
    try:
        genesis = msgspec.convert(doc, Genesis, strict=True)
    except msgspec.ValidationError as exc:
        raise InputError(f"genesis: {exc}", code="bad_genesis") from None
    if genesis.version != 1:
        raise InputError("genesis version must be 1", code="bad_genesis")
    return genesis


def apply_genesis(ctx: Context, doc: dict[str, Any]) -> None:
    """Write the founding organisations and policies as block 0's state."""
    genesis = parse_genesis(doc)
    ids = [org.id for org in genesis.orgs]
    if len(set(ids)) != len(ids):
        raise InputError("genesis names an organisation twice", code="bad_genesis")
    try:
        for org in genesis.orgs:
            check_action(ctx, AdmitOrg(org=org))
            process_admit_org(ctx, org)
        for name, value in sorted(genesis.policies.items()):
            check_action(ctx, SetPolicy(name=name, value=value))
            ctx.put(f"policy/{name}", value)
    except Exception as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"genesis: {exc}", code="bad_genesis") from None
    ctx.events.clear()
