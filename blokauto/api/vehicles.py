"""Vehicle endpoints: the public VIN check, member listings, and the proven history report.

Who reads what: anybody gets the summary (registered, stolen, odometer consistent or flagged,
accidents); any active member key may list vehicles and read a record; the full history (report,
and each of its transactions) is for the owner, holders of the owner's share link, and members
whose role needs it: the vehicle's manufacturer, registries and regulators, the vehicle's insurer
and lenders holding a lien on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from blokauto.api.auth import TokenIssuer
from blokauto.errors import NotFound, Unauthorized
from blokauto.ledger import proofs
from blokauto.node import Node
from blokauto.reports import queries
from blokauto.reports.bundle import build_bundle, verify_bundle
from blokauto.reports.history import build_view, public_summary
from blokauto.reports.parts import vehicle_recalls
from blokauto.reports.share import open_share_token
from blokauto.vin import canonical_vin, normalise_vin

READ_ROLES = frozenset({"registry", "regulator"})
ReportFormat = Literal["json", "html", "pdf"]


def entitled(record: dict[str, Any], did: str | None, member: dict[str, Any] | None) -> bool:
    """May this reader see the vehicle's full history?"""
    if did is not None and did == record.get("owner"):
        return True
    if member is None:
        return False
    org = member["org"]
    return (org == record.get("manufacturer") or not READ_ROLES.isdisjoint(member["roles"])
            or org == record.get("insurer") or any(lien["lender"] == org for lien in record.get("liens", [])))


def add_vehicle_routes(app: FastAPI, node: Node, tokens: TokenIssuer,
                       member_of: Callable[[str | None], dict[str, Any]]) -> Callable[..., None]:
    """Register the routes; returns the check :func:`create_app` uses to guard vehicle transactions."""
    store = node.store

    def record_of(vin: str) -> dict[str, Any]:
        record = node.read_state(f"vehicle/{vin}")
        if record is None:
            raise NotFound(f"no vehicle {vin} is registered", code="unknown_vehicle")
        return dict(record)

    def require_reader(vin: str, record: dict[str, Any], authorization: str | None, share: str | None) -> None:
        if share:
            grant = open_share_token(share, node.chain, int(time.time() * 1000))
            if grant.vin != vin:
                raise Unauthorized("the share link is for another vehicle", code="bad_share_token", http_status=403)
            if grant.by != record.get("owner"):
                raise Unauthorized("the share link was made by someone who no longer owns the vehicle",
                                   code="share_revoked", http_status=403)
            return
        did = tokens.did_of(authorization)
        if not entitled(record, did, node.active_member(did)):
            raise Unauthorized("the vehicle's history is for its owner, holders of the owner's share link, and "
                               "members whose role needs it", code="not_entitled", http_status=403)

    def report_response(vin: str, fmt: str) -> Response:
        quorum = node.checkpoint_quorum()
        keys = node.checkpoint_keys()
        bundle, final = node.finalize(build_bundle(store, vin, keys, quorum))
        if fmt == "json":
            return JSONResponse(bundle, headers={"Content-Disposition": f'inline; filename="{vin}.report.json"'})
        # not yet cosigned by a quorum (a network under strain): the page says who signed
        view = build_view(verify_bundle(bundle, keys, quorum if final else 1), now_ms=int(time.time() * 1000))
        # recalls as this node lists them now (the campaigns are state; which apply is the recall index)
        view["recalls"] = vehicle_recalls(store, bundle["state"]["value"])
        from blokauto.reports.render import render_html, render_pdf

        if fmt == "html":
            return HTMLResponse(render_html(view))
        return Response(render_pdf(view), media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{vin}.report.pdf"'})

    @app.get("/v1/vehicles", tags=["vehicles"])
    def list_vehicles(
        authorization: Annotated[str | None, Header()] = None,
        maker: str | None = None, model: str | None = None,
        year: Annotated[int | None, Query(ge=1900, le=2200)] = None,
        status: str | None = None, powertrain: str | None = None, manufacturer: str | None = None,
        after: Annotated[str, Query(max_length=17)] = "",
        limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 50,
    ) -> dict[str, Any]:
        """Registered vehicles in VIN order (members only); ``next`` is the cursor for ``after``."""
        member_of(authorization)
        filters: dict[str, str | int] = {k: v for k, v in {
            "maker": maker, "model": model, "year": year, "status": status, "powertrain": powertrain,
            "manufacturer": manufacturer}.items() if v is not None}
        return queries.list_vehicles(store, filters, normalise_vin(after), limit)

    @app.get("/v1/vehicles/{vin}", tags=["vehicles"])
    def get_vehicle(vin: str, proof: bool = False,
                    authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A vehicle's record (title holder key, status, liens, head event) for members and its owner;
        ``?proof=1`` adds its state proof."""
        vin = canonical_vin(vin)
        did = tokens.did_of(authorization)
        if node.active_member(did) is None:
            record = node.read_state(f"vehicle/{vin}")
            if record is None or record.get("owner") != did:
                member_of(authorization)   # raises not_a_member
        if proof:
            state, _ = node.finalize(proofs.build_state_proof(store, f"vehicle/{vin}"))
            if state["value"] is None:
                raise NotFound(f"no vehicle {vin} is registered", code="unknown_vehicle")
            return {"vehicle": state["value"], "proof": state}
        return {"vehicle": record_of(vin)}

    @app.get("/v1/vehicles/{vin}/summary", tags=["vehicles"])
    def get_summary(vin: str) -> dict[str, Any]:
        """The public VIN check: registered, stolen, odometer consistent or flagged, accidents."""
        vin = canonical_vin(vin)
        record = record_of(vin)
        return public_summary(record, vin, vehicle_recalls(store, record))

    @app.get("/vin", response_class=HTMLResponse, include_in_schema=False)
    def vin_check_page(vin: Annotated[str, Query(max_length=40)] = "") -> HTMLResponse:
        """The public VIN check as a page: a form, and the summary of the VIN given."""
        from blokauto.errors import BlokError
        from blokauto.reports.render import render_vin_check

        if not vin:
            return HTMLResponse(render_vin_check("", None))
        try:
            checked = canonical_vin(vin)
        except BlokError as exc:
            return HTMLResponse(render_vin_check(vin, None, exc.message), status_code=400)
        record = node.read_state(f"vehicle/{checked}")
        recalls = vehicle_recalls(store, record) if record else None
        return HTMLResponse(render_vin_check(checked, public_summary(record, checked, recalls)),
                            status_code=200 if record else 404)

    @app.get("/v1/vehicles/{vin}/report", tags=["vehicles"],
             responses={200: {"content": {"application/json": {}, "text/html": {}, "application/pdf": {}}}})
    async def get_report(vin: str, format: ReportFormat = "json", share: str | None = None,
                         authorization: Annotated[str | None, Header()] = None) -> Response:
        """The history report: a JSON bundle with every event's proof (check it offline with
        ``blokauto check-report``), or the same history as an HTML page or a PDF."""
        vin = canonical_vin(vin)
        record = record_of(vin)
        require_reader(vin, record, authorization, share)
        return await run_in_threadpool(report_response, vin, format)

    @app.get("/v1/shared/{token}", tags=["vehicles"])
    async def get_shared(token: str, format: ReportFormat = "html") -> Response:
        """The page an owner's share link opens (HTML by default)."""
        grant = open_share_token(token, node.chain, int(time.time() * 1000))
        vin = canonical_vin(grant.vin)
        record = record_of(vin)
        require_reader(vin, record, None, token)
        return await run_in_threadpool(report_response, vin, format)

    def guard_vehicle_tx(body: dict[str, Any], authorization: str | None) -> None:
        """A transaction about a vehicle is part of its history: the same readers, plus its own signers."""
        payload = body.get("payload")
        vin = payload.get("vin") if isinstance(payload, dict) else None
        if not isinstance(vin, str):
            member_of(authorization)
            return
        did = tokens.did_of(authorization)
        if did == body.get("signer") or did in body.get("cosigners", []):
            return
        member = node.active_member(did)
        record = node.read_state(f"vehicle/{vin}")
        if record is None and member is not None:
            return
        if record is None or not entitled(record, did, member):
            raise Unauthorized("this record is part of a vehicle's history: its signers, the owner and members "
                               "whose role needs it may read it", code="not_entitled", http_status=403)

    return guard_vehicle_tx
