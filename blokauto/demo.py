"""The demo consortium: nine founding organisations with keys a newcomer can use at once.

Demo keys are derived from public labels, so they are for demonstrations only: anybody can
re-derive them. Their keystores are written with the password ``demo``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from blokauto.crypto.keys import Signer, b64
from blokauto.crypto.keystore import write_keystore

DEMO_CHAIN = "blokauto.example/demo"
DEMO_PASSWORD = "demo"

DEMO_ORGS: list[dict[str, Any]] = [
    {"id": "nordwerk", "name": "Nordwerk Motors AG", "roles": ["manufacturer"]},
    {"id": "kestrel-parts", "name": "Kestrel Components GmbH", "roles": ["parts_maker", "logistics"]},
    {"id": "autohaus-lenz", "name": "Autohaus Lenz", "roles": ["dealer"]},
    {"id": "werkstatt-berg", "name": "Werkstatt Berg", "roles": ["workshop"]},
    {"id": "quickfix", "name": "QuickFix Service Centre", "roles": ["workshop"]},
    {"id": "alpina-insurance", "name": "Alpina Versicherung", "roles": ["insurer"]},
    {"id": "kba-registry", "name": "Vehicle Registry Office", "roles": ["registry", "regulator"]},
    {"id": "hanse-bank", "name": "Hanse Auto Bank", "roles": ["lender", "issuer"]},
    {"id": "eco-recycling", "name": "EcoCycle Recycling", "roles": ["recycler"]},
]
OPERATOR_ORG = "nordwerk"


def demo_admin(org_id: str) -> Signer:
    return Signer.deterministic(f"{DEMO_CHAIN}/{org_id}/admin")


def demo_member(org_id: str, n: int = 1) -> Signer:
    return Signer.deterministic(f"{DEMO_CHAIN}/{org_id}/member{n}")


def demo_node_key(org_id: str) -> Signer:
    return Signer.deterministic(f"{DEMO_CHAIN}/{org_id}/node")


def node_key_name(chain: str, org_id: str) -> str:
    return f"{chain}/{org_id}"


def demo_genesis(time_ms: int | None = None, chain: str = DEMO_CHAIN) -> dict[str, Any]:
    orgs = []
    for spec in DEMO_ORGS:
        org = {**spec, "admins": [demo_admin(spec["id"]).did]}
        org["node"] = {"name": node_key_name(chain, spec["id"]),
                       "public_key": b64(demo_node_key(spec["id"]).public_key)}
        orgs.append(org)
    return {
        "version": 1,
        "chain": chain,
        "time_ms": int(time.time() * 1000) if time_ms is None else time_ms,
        "orgs": orgs,
        "policies": {"checkpoint.quorum": 1, "title.registry_cosign": False},
    }


# Organisations the demo admits by vote after genesis (the parts story): a chip maker in Taiwan and
# a freight forwarder (:mod:`blokauto.demo_parts`).
LATER_ORGS: list[dict[str, Any]] = [
    {"id": "formosa-semi", "name": "Formosa Semiconductor Co. (Hsinchu)", "roles": ["parts_maker"]},
    {"id": "meridian-freight", "name": "Meridian Air & Sea Freight", "roles": ["logistics"]},
]


def write_demo_keystores(directory: Path) -> list[Path]:
    """Admin and one member keystore per organisation (those admitted later too), password ``demo``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in [*DEMO_ORGS, *LATER_ORGS]:
        for suffix, signer in (("admin", demo_admin(spec["id"])), ("member", demo_member(spec["id"]))):
            path = directory / f"{spec['id']}-{suffix}.json"
            if not path.exists():
                write_keystore(path, signer.signing_key, DEMO_PASSWORD, strength="interactive")
            paths.append(path)
    return paths


def seed_demo(data_dir: Path, fleet: int = 0, parts: bool = True) -> int:
    """A little life in the demo ledger: every organisation admits a member key and anchors a document;
    with ``fleet`` > 0, that many sample vehicles with their histories (:mod:`blokauto.demo_fleet`)
    and, with ``parts``, the parts stories, software releases, telematics, a priced insurance period
    and a crash with its claim on them (:mod:`blokauto.demo_parts`, :mod:`blokauto.demo_vehicledata`).

    Returns the number of transactions committed.
    """
    import hashlib

    from blokauto.ledger.tx import sign_tx
    from blokauto.node import Node

    with Node(data_dir) as node:
        futures = []
        for spec in DEMO_ORGS:
            admin, member = demo_admin(spec["id"]), demo_member(spec["id"])
            futures.append(node.submit(sign_tx(node.chain, "org.add_member", admin, 1, {
                "did": member.did, "roles": spec["roles"], "label": "operations"})))
        for f in futures:
            f.result(timeout=60)
        futures = []
        for n, spec in enumerate(DEMO_ORGS):
            member = demo_member(spec["id"])
            document = f"{spec['name']} — sample document {n}".encode()
            futures.append(node.submit(sign_tx(node.chain, "notary.anchor", member, 1, {
                "digest": hashlib.sha256(document).hexdigest(), "kind": "sample", "label": f"sample {n}"})))
        for f in futures:
            f.result(timeout=60)
        total = 2 * len(DEMO_ORGS)
        if fleet > 0:
            from blokauto.demo_fleet import seed_fleet

            summary = seed_fleet(node, vehicles=fleet)
            total += summary.accepted + summary.rejected
            if parts:
                from blokauto.demo_parts import seed_parts
                from blokauto.demo_vehicledata import seed_vehicledata

                total += seed_parts(node).transactions
                total += seed_vehicledata(node).transactions
        return total
