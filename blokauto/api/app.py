"""The HTTP API of a node (FastAPI, OpenAPI at /docs).

Exactly one error boundary: every :class:`BlokError` becomes ``application/problem+json`` with
its stable ``code``; request-shape errors become 400 ``bad_request``; anything unexpected is a
500 ``internal_error`` without a traceback (it is logged on the node instead).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from blokauto import metrics
from blokauto.api.auth import TokenIssuer
from blokauto.api.parts import add_part_routes
from blokauto.api.software import add_software_routes
from blokauto.api.vehicledata import add_vehicle_data_routes
from blokauto.api.vehicles import add_vehicle_routes
from blokauto.crypto import canonical
from blokauto.crypto.keys import b64
from blokauto.errors import BlokError, InputError, NotFound, Unauthorized
from blokauto.ledger import proofs
from blokauto.ledger.chain import Header as BlockHeader
from blokauto.ledger.tx import MAX_BULK_TX_BYTES
from blokauto.node import Node

log = logging.getLogger("blokauto.api")

PROBLEM = "application/problem+json"
PUBLIC_STATE_PREFIXES = ("id/", "gov/", "policy/", "nonce/")
COMMIT_WAIT_S = 30.0
HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_HEIGHT = 2**62


def problem(status: int, code: str, detail: str, title: str | None = None,
            extra: dict[str, Any] | None = None) -> JSONResponse:
    """RFC 9457 problem details; ``extra`` adds extension members (a mismatch proof, say)."""
    return JSONResponse(
        {**(extra or {}), "type": f"https://blokauto.example/problems/{code}",
         "title": title or code.replace("_", " "), "status": status, "code": code, "detail": detail},
        status_code=status, media_type=PROBLEM,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InputError(f"body larger than {limit} bytes", code="too_large", http_status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"body larger than {limit} bytes", code="too_large", http_status=413)
        chunks.append(chunk)
    return b"".join(chunks)


class TokenRequest(BaseModel):
    did: str
    challenge: str
    signature: str


def create_app(node: Node) -> FastAPI:
    app = FastAPI(
        title="Blok Auto node",
        version="0.1.0",
        description="A permissioned ledger for the whole life of a vehicle. Transactions are canonical "
        "JSON (RFC 8785) signed with Ed25519; every record is provable against C2SP checkpoints.",
    )
    tokens = TokenIssuer(node.chain)
    store = node.store

    @app.exception_handler(BlokError)
    async def blok_error(_: Request, exc: BlokError) -> JSONResponse:
        return problem(exc.http_status, exc.code, exc.message, extra=getattr(exc, "extra", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(400, "bad_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return problem(500, "internal_error", "the node hit an unexpected error; it is logged")

    def member_of(authorization: str | None) -> dict[str, Any]:
        did = tokens.did_of(authorization)
        record = node.active_member(did)
        if record is None:
            raise Unauthorized("the token's key is not an active member key of an active organisation",
                               code="not_a_member", http_status=403)
        return {"did": did, **record}

    guard_vehicle_tx = add_vehicle_routes(app, node, tokens, member_of)
    add_part_routes(app, node, tokens, member_of)
    add_software_routes(app, node, tokens, member_of)
    add_vehicle_data_routes(app, node, tokens, member_of)

    # -- transactions ---------------------------------------------------------------------------

    @app.post("/v1/tx", tags=["transactions"], status_code=200,
              responses={202: {"description": "accepted, not yet committed"}, 400: {}, 401: {}, 403: {},
                         409: {}, 413: {}, 422: {}})
    async def submit_tx(request: Request, wait: bool = True) -> Response:
        """Submit one signed transaction (its canonical JSON bytes as the body).

        With ``wait=true`` (default) the answer is the receipt once the block is committed;
        with ``wait=false`` it is 202 and the receipt is at ``GET /v1/tx/{hash}`` later.
        """
        raw = await read_body(request, MAX_BULK_TX_BYTES)
        tx = await run_in_threadpool(node.check, raw)
        future = node.enqueue(tx)
        location = {"Location": f"/v1/tx/{tx.hash_hex}"}
        if not wait:
            return JSONResponse({"tx": tx.hash_hex, "status": "pending"}, status_code=202, headers=location)
        try:
            receipt = await asyncio.wait_for(asyncio.wrap_future(future), COMMIT_WAIT_S)
        except TimeoutError:
            return JSONResponse({"tx": tx.hash_hex, "status": "pending"}, status_code=202, headers=location)
        return JSONResponse(receipt, headers=location)

    @app.get("/v1/tx/{tx_hash}", tags=["transactions"])
    def get_tx(tx_hash: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A transaction's receipt with its inclusion proof against the latest checkpoint."""
        if not HEX64.fullmatch(tx_hash):
            raise InputError("a transaction hash is 64 lowercase hex digits", code="bad_hash")
        digest = bytes.fromhex(tx_hash)
        found = store.find_leaf(digest)
        if found is None:
            if node.is_pending(digest):
                return {"tx": tx_hash, "status": "pending"}
            raise NotFound(f"no transaction {tx_hash}", code="unknown_tx")
        index, height, leaf = found
        decoded = canonical.decode(leaf)
        body = decoded["tx"]["body"]
        tx_type = node.registry.get(body["type"])
        if tx_type is None or not tx_type.public:
            guard_vehicle_tx(body, authorization)
        receipt = {"tx": tx_hash, "height": height, "leaf_index": index, **decoded["result"]}
        proof, final = node.finalize(proofs.build_record_proof(store, index))
        return {"receipt": receipt, "transaction": decoded["tx"], "proof": proof, "final": final}

    @app.get("/v1/accounts/{did}/nonce", tags=["transactions"])
    def get_nonce(did: str) -> dict[str, Any]:
        """The last committed nonce of a signer and the next one to use."""
        committed = int(node.read_state(f"nonce/{did}") or 0)
        pending = node.pending_nonce(did)
        return {"did": did, "committed": committed, "next": max(committed, pending) + 1}

    # -- log, blocks, checkpoints ---------------------------------------------------------------

    @app.get("/v1/checkpoint", tags=["proofs"], response_class=PlainTextResponse)
    def get_checkpoint() -> PlainTextResponse:
        """The latest checkpoint: a C2SP tlog-checkpoint signed note."""
        return PlainTextResponse(node.latest_note(), media_type="text/plain; charset=utf-8")

    @app.get("/v1/network", tags=["node"])
    def get_network() -> dict[str, Any]:
        """Ordering mode, the latest final (quorum-signed) checkpoint and its signers, and evidence of
        organisations whose checkpoints differed from ours."""
        return node.network_status()

    @app.get("/v1/checkpoint/keys", tags=["proofs"], response_class=PlainTextResponse)
    def get_checkpoint_keys() -> PlainTextResponse:
        """Verifier keys (signed-note ``name+hash+base64key``), one per line, and the quorum."""
        return PlainTextResponse("\n".join(node.checkpoint_keys()) + "\n", media_type="text/plain; charset=utf-8",
                                 headers={"X-Checkpoint-Quorum": str(node.checkpoint_quorum())})

    @app.get("/v1/proof/consistency", tags=["proofs"])
    def get_consistency(size1: Annotated[int, Query(alias="from", ge=0, le=MAX_HEIGHT)],
                        size2: Annotated[int, Query(alias="to", ge=0, le=MAX_HEIGHT)]) -> dict[str, Any]:
        """RFC 9162 consistency proof between two tree sizes."""
        return proofs.build_consistency_proof(store, size1, size2)

    @app.get("/v1/blocks/{height}", tags=["proofs"])
    def get_block(height: Annotated[int, Path(ge=0, le=MAX_HEIGHT)]) -> dict[str, Any]:
        """A block's header, hash, checkpoint and transaction hashes."""
        block = store.get_block(height)
        if block is None:
            raise NotFound(f"no block {height}", code="unknown_block")
        block_hash, header, _, checkpoint = block
        return {"height": height, "hash": b64(block_hash), "header": canonical.decode(header),
                "checkpoint": checkpoint, "transactions": [h.hex() for h in store.block_tx_hashes(height)]}

    @app.get("/v1/status", tags=["node"])
    def get_status() -> dict[str, Any]:
        height, header, _ = proofs.latest_checkpoint(store)
        return {"chain": node.chain, "org": node.org_id, "height": height, "log_size": header.log_size,
                "state_root": b64(header.state_root), "log_root": b64(header.log_root),
                "time_ms": header.time_ms, "queue_depth": node.orderer.depth(), "healthy": node.healthy}

    @app.get("/v1/genesis", tags=["node"])
    def get_genesis() -> dict[str, Any]:
        return node.ledger.genesis

    # -- state ---------------------------------------------------------------------------------

    @app.get("/v1/state/{key:path}", tags=["state"])
    def get_state(key: str, proof: bool = False,
                  authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A state key's value, or its proven absence; ``?proof=1`` adds the sparse-Merkle proof."""
        if not key or len(key) > 512:
            raise InputError("state keys are 1..512 characters", code="bad_key")
        if not key.startswith(PUBLIC_STATE_PREFIXES):
            member_of(authorization)
        if proof:
            state, final = node.finalize(proofs.build_state_proof(store, key))
            return {**state, "final": final}
        encoded = store.get_state(key)
        return {"key": key, "value": None if encoded is None else canonical.decode(encoded)}

    @app.get("/v1/orgs", tags=["identity"])
    def list_orgs() -> list[dict[str, Any]]:
        """The consortium's organisations (public: anybody verifying needs them)."""
        return [canonical.decode(v) for _, v in store.iter_state("id/org/")]

    @app.get("/v1/types", tags=["transactions"])
    def list_types() -> list[dict[str, Any]]:
        """Every transaction type with the roles that may send it."""
        return [{"type": t.name, "roles": sorted(t.roles), "public": t.public, "doc": t.doc}
                for t in sorted(node.registry.values(), key=lambda t: t.name)]

    # -- authentication ------------------------------------------------------------------------

    @app.post("/v1/auth/challenge", tags=["auth"])
    def auth_challenge() -> dict[str, Any]:
        return tokens.new_challenge()

    @app.post("/v1/auth/token", tags=["auth"])
    def auth_token(body: TokenRequest) -> dict[str, Any]:
        """Exchange a signed challenge for a short-lived bearer token."""
        issued = tokens.issue(body.did, body.challenge, body.signature)
        record = node.read_state(f"id/key/{body.did}")
        issued["member"] = record is not None and record.get("status") == "active"
        return issued

    @app.get("/v1/me", tags=["auth"])
    def whoami(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The member record behind a token."""
        return member_of(authorization)

    # -- operations ----------------------------------------------------------------------------

    @app.get("/metrics", tags=["node"], response_class=PlainTextResponse)
    def get_metrics() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["node"])
    def healthz() -> Response:
        if not node.healthy:
            return problem(503, "unhealthy", "the committer is not running")
        return JSONResponse({"ok": True})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(render_home(node))

    return app


def render_home(node: Node) -> str:
    from html import escape

    height, header, note = proofs.latest_checkpoint(node.store)
    orgs = [canonical.decode(v) for _, v in node.store.iter_state("id/org/")]
    rows = "".join(
        f"<tr><td>{escape(o['id'])}</td><td>{escape(o['name'])}</td><td>{escape(', '.join(o['roles']))}</td>"
        f"<td>{escape(o['status'])}</td></tr>" for o in orgs
    )
    blocks = []
    for h in range(height, max(-1, height - 10), -1):
        block = node.store.get_block(h)
        if block:
            hd = BlockHeader.decode(block[1])
            blocks.append(f"<tr><td>{h}</td><td>{hd.tx_count}</td><td>{hd.log_size}</td>"
                          f"<td><code>{b64(block[0])[:16]}…</code></td></tr>")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Blok Auto node</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#1b2330}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}}
td,th{{border-bottom:1px solid #dde;padding:.35rem;text-align:left}}
pre{{background:#f4f6f8;padding:1rem;overflow:auto}}</style></head><body>
<h1>Blok Auto — {escape(node.chain)}</h1>
<p>Node of <b>{escape(node.org_id)}</b>. Height <b id="height">{height}</b>, {header.log_size} records in the log.
<a href="/vin">VIN check</a> · <a href="/docs">API docs</a> · <a href="/v1/checkpoint">checkpoint</a> ·
<a href="/metrics">metrics</a></p>
<h2>Latest checkpoint</h2><pre>{escape(note)}</pre>
<h2>Consortium</h2><table><tr><th>id</th><th>name</th><th>roles</th><th>status</th></tr>{rows}</table>
<h2>Recent blocks</h2><table><tr><th>height</th><th>txs</th><th>log size</th><th>hash</th></tr>{''.join(blocks)}</table>
</body></html>"""
