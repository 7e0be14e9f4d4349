"""Parts and recall endpoints.

Who reads what: anybody checks a serial (genuine, where it is in the chain, recalled) and reads
campaigns with their completion figures and a VIN's recalls, as public recall registers do; the
vehicle a part is fitted to, part histories and certificates are for members; the list of
affected vehicles with their owners' keys is for the organisation that opened the campaign and
for regulators and registries (who notify owners).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Header

from blokauto.api.auth import TokenIssuer
from blokauto.contracts.parts import SERIAL_PATTERN
from blokauto.errors import InputError, NotFound, Unauthorized
from blokauto.node import Node
from blokauto.reports import parts
from blokauto.vin import canonical_vin

_SERIAL = re.compile(SERIAL_PATTERN)
_CAMPAIGN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,39}$")
NOTIFY_ROLES = frozenset({"regulator", "registry"})


def check_serial(serial: str) -> str:
    if not _SERIAL.fullmatch(serial):
        raise InputError("a serial is 1-64 letters, digits and . _ - starting with a letter or digit",
                         code="bad_serial")
    return serial


def add_part_routes(app: FastAPI, node: Node, tokens: TokenIssuer,
                    member_of: Callable[[str | None], dict[str, Any]]) -> None:
    store = node.store

    def optional_member(authorization: str | None) -> dict[str, Any] | None:
        if not authorization:
            return None
        return node.active_member(tokens.did_of(authorization))

    @app.get("/v1/parts/{serial}/certificate", tags=["parts"])
    def get_certificate(serial: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A part's offline certificate (members): its batch record's state proof, its leaf and
        inclusion path to the batch root, and its current record's state proof."""
        member_of(authorization)
        cert = parts.build_certificate(store, check_serial(serial))
        batch, _ = node.finalize(cert["batch"])
        part, _ = node.finalize(cert["part"])
        return {**cert, "batch": batch, "part": part}

    @app.get("/v1/parts/{serial}/history", tags=["parts"])
    def get_history(serial: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Every event of a part, from registration to now, following its chain of events (members)."""
        member_of(authorization)
        return parts.part_history(store, check_serial(serial))

    @app.get("/v1/parts/{serial}", tags=["parts"])
    def get_part(serial: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The public authenticity check of a serial: genuine (registered by its maker), where it is,
        whether an open recall names it, and refused attempts to fit it that suggest a counterfeit."""
        return parts.authenticity(store, check_serial(serial), member=optional_member(authorization) is not None)

    @app.get("/v1/recalls", tags=["recalls"])
    def get_recalls() -> dict[str, Any]:
        """Every campaign with its completion figures (public, like a recall register)."""
        return {"campaigns": [parts.campaign_report(store, c["campaign"], vehicles=False)
                              for c in parts.list_campaigns(store)]}

    @app.get("/v1/recalls/{campaign}", tags=["recalls"])
    def get_recall(campaign: str, vehicles: bool = False,
                   authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A campaign and its figures; ``?vehicles=1`` lists every affected vehicle with its owner's key
        (the opening organisation, regulators and registries)."""
        if not _CAMPAIGN.fullmatch(campaign):
            raise InputError("a campaign id is 3-40 letters, digits and . _ -", code="bad_campaign")
        if vehicles:
            member = member_of(authorization)
            report = parts.campaign_report(store, campaign, vehicles=False)
            if member["org"] != report["campaign"]["opened_by"] and NOTIFY_ROLES.isdisjoint(member["roles"]):
                raise Unauthorized("the affected vehicles and their owners are for the organisation that opened "
                                   "the campaign, regulators and registries", code="not_entitled", http_status=403)
        return parts.campaign_report(store, campaign, vehicles=vehicles)

    @app.get("/v1/vehicles/{vin}/recalls", tags=["recalls"])
    def get_vehicle_recalls(vin: str) -> dict[str, Any]:
        """The campaigns that apply to a vehicle, open or remedied (public, like a recall VIN lookup)."""
        vin = canonical_vin(vin)
        record = node.read_state(f"vehicle/{vin}")
        if record is None:
            raise NotFound(f"no vehicle {vin} is registered", code="unknown_vehicle")
        return {"vin": vin, "recalls": parts.vehicle_recalls(store, record)}
