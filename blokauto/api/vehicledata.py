"""Vehicle data endpoints: crash records, telematics samples, policies, premiums and claims.

The ledger holds the commitments; the records and samples come through here into the off-chain
store, accepted only when they match what the device committed. Who reads what:

* a crash deposit and its full record: the vehicle's owner (now, or at the crash), its
  manufacturer, its insurer (now, or at the crash), regulators and registries, and organisations
  the owner consented to (``crash``);
* telematics samples: the owner and the organisations the owner consented to (``telematics``; a
  policy's insurer holds that consent); batch headers (root and aggregates) likewise;
* policies, premiums and claims: the insurer and the owner (claims also regulators).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from blokauto.api.auth import TokenIssuer
from blokauto.contracts.vehicledata import has_consent
from blokauto.crypto import canonical
from blokauto.errors import InputError, NotFound, Unauthorized, VerificationError
from blokauto.ledger import proofs
from blokauto.ledger.tx import SignedTx
from blokauto.node import Node
from blokauto.offchain.checks import check_crash_record, check_samples, check_samples_many
from blokauto.vehicledata import telematics
from blokauto.vin import canonical_vin

HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_RECORD_BYTES = 256 * 1024
MAX_SAMPLES_BYTES = telematics.MAX_SAMPLES * telematics.SAMPLE_SIZE
MAX_INGEST_ITEMS = 64
MAX_INGEST_BODY = 16 * 1024 * 1024     # 64 hour-long batches, or 5 day-long ones
CRASH_ROLES = frozenset({"regulator", "registry"})


def add_vehicle_data_routes(app: FastAPI, node: Node, tokens: TokenIssuer,
                            member_of: Callable[[str | None], dict[str, Any]]) -> None:
    blobs = node.blobs

    def reader(authorization: str | None) -> tuple[str, dict[str, Any] | None]:
        did = tokens.did_of(authorization)
        return did, node.active_member(did)

    def vehicle(vin: str) -> dict[str, Any]:
        record = node.read_state(f"vehicle/{vin}")
        if record is None:
            raise NotFound(f"no vehicle {vin} is registered", code="unknown_vehicle")
        return dict(record)

    def consented(vin: str, org: str | None, scope: str) -> bool:
        return org is not None and has_consent(node.state_reader(), vin, org, scope, int(time.time() * 1000))

    def deny(what: str) -> Unauthorized:
        return Unauthorized(f"{what} is for the vehicle's owner and the organisations entitled to it",
                            code="not_entitled", http_status=403)

    def require_crash_reader(crash: dict[str, Any], authorization: str | None,
                             who: tuple[str, dict[str, Any] | None, dict[str, Any]] | None = None) -> None:
        """``who`` = (reader's key, member record, vehicle record) when the caller has them already."""
        did, member, record = who or (*reader(authorization), vehicle(crash["vin"]))
        at = crash["vehicle_state"]
        if did in (record.get("owner"), at.get("owner")):
            return
        org = None if member is None else member["org"]
        if member is not None and (org in (record.get("manufacturer"), record.get("insurer"), at.get("insurer"))
                                   or not CRASH_ROLES.isdisjoint(member["roles"])):
            return
        if consented(crash["vin"], org, "crash"):
            return
        raise deny("a crash record")

    def require_telematics_reader(vin: str, authorization: str | None) -> None:
        did, member = reader(authorization)
        if did == vehicle(vin).get("owner"):
            return
        if consented(vin, None if member is None else member["org"], "telematics"):
            return
        raise deny("telematics data")

    def crash_of(record_hash: str) -> dict[str, Any]:
        if not HEX64.fullmatch(record_hash):
            raise InputError("a record hash is 64 lowercase hex digits", code="bad_hash")
        crash = node.read_state(f"crash/{record_hash}")
        if crash is None:
            raise NotFound(f"no crash record {record_hash} is deposited", code="unknown_crash")
        return dict(crash)

    async def body(request: Request, limit: int) -> bytes:
        from blokauto.api.app import read_body

        return await read_body(request, limit)

    # -- crash records ----------------------------------------------------------------------------

    @app.put("/v1/crash/{record_hash}/record", tags=["vehicle data"])
    async def put_crash_record(record_hash: str, request: Request) -> dict[str, Any]:
        """Store a deposited crash record: accepted only if it is byte for byte what the device signed
        and the ledger's summary derives from it (anyone may upload: the record proves itself)."""
        crash = crash_of(record_hash)
        data = await body(request, MAX_RECORD_BYTES)
        refusal = check_crash_record(crash, data)
        if refusal is not None:
            raise VerificationError(refusal[1], code=refusal[0])
        stored = await run_in_threadpool(node.store_offchain, "crash", record_hash, data)
        return {"record_hash": record_hash, "stored": stored}

    @app.get("/v1/crash/{record_hash}", tags=["vehicle data"])
    def get_crash(record_hash: str, proof: bool = False,
                  authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A deposit: hash, device signature, summary, the vehicle's state at the crash; ``?proof=1``
        adds its state proof."""
        crash = crash_of(record_hash)
        require_crash_reader(crash, authorization)
        answer: dict[str, Any] = {"deposit": crash, "stored": blobs.get("crash", record_hash) is not None}
        if proof:
            answer["proof"], _ = node.finalize(proofs.build_state_proof(node.store, f"crash/{record_hash}"))
        return answer

    @app.get("/v1/crash/{record_hash}/record", tags=["vehicle data"])
    def get_crash_record(record_hash: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """The full record as the device signed it (canonical JSON); check it against the deposit."""
        crash = crash_of(record_hash)
        require_crash_reader(crash, authorization)
        data = blobs.get("crash", record_hash)
        if data is None:
            raise NotFound("the record has not been uploaded to this node", code="record_not_stored")
        return Response(data, media_type="application/json")

    @app.get("/v1/vehicles/{vin}/crashes", tags=["vehicle data"])
    def list_crashes(vin: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Every crash deposit of a vehicle, oldest first (the same readers as a deposit)."""
        vin = canonical_vin(vin)
        who = (*reader(authorization), vehicle(vin))
        found = []
        for _, record_hash in node.store.scan_index("crashes", f"{vin}|"):
            crash = crash_of(record_hash)
            require_crash_reader(crash, authorization, who)
            found.append(crash)
        return {"vin": vin, "crashes": found}

    # -- telematics ------------------------------------------------------------------------------

    def batch_header(vin: str, seq: int) -> dict[str, Any]:
        stored = node.read_state(f"tbatch/{vin}/{seq}")
        if stored is None:
            raise NotFound(f"no telematics batch {seq} of {vin}", code="unknown_batch")
        return dict(stored)


    @app.put("/v1/telematics/{vin}/{seq}/samples", tags=["vehicle data"])
    async def put_samples(vin: str, seq: Annotated[int, Path(ge=0)], request: Request) -> dict[str, Any]:
        """Store a batch's samples: accepted only if they hash to the committed root and give the
        committed aggregates. Otherwise 422, and when the device lied the problem carries a
        ``mismatch_proof`` for ``telematics.dispute``."""
        vin = canonical_vin(vin)
        header = batch_header(vin, seq)
        data = await body(request, MAX_SAMPLES_BYTES)
        refusal = await run_in_threadpool(node.run_in_worker, check_samples, header, data)
        if refusal is not None:
            code, message, extra = refusal
            raise VerificationError(message, code=code, extra=extra)
        stored = await run_in_threadpool(node.store_offchain, "telematics", header["root"], data)
        return {"vin": vin, "seq": seq, "root": header["root"], "stored": stored}

    def parse_item(item: Any, where: str) -> tuple[bytes, bytes]:
        try:
            return canonical.encode(item["tx"]), base64.b64decode(item["samples"], validate=True)
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise InputError(f'{where}is {{"tx": <transaction>, "samples": <base64>}}: {exc}',
                             code="bad_ingest") from None

    def check_tx(tx_bytes: bytes, where: str) -> SignedTx:
        tx = node.check(tx_bytes)
        if tx.type != "telematics.batch":
            raise InputError(f"{where}this endpoint takes telematics.batch transactions", code="bad_ingest")
        return tx

    def prepare(raw: bytes) -> tuple[bool, list[SignedTx], list[tuple[dict[str, Any], bytes]]]:
        """Everything before the samples' check, in one trip off the event loop: JSON, base64, the
        transactions' stateless and signer checks."""
        try:
            doc = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise InputError(f"the body is not JSON: {exc}", code="bad_ingest") from None
        many = isinstance(doc, dict) and set(doc) == {"batches"}
        items = doc["batches"] if many else [doc]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_INGEST_ITEMS:
            raise InputError(f"batches is a list of 1..{MAX_INGEST_ITEMS} items", code="bad_ingest")
        prefix = (lambda i: f"batches[{i}]: ") if many else (lambda i: "")
        parsed = [parse_item(item, prefix(i)) for i, item in enumerate(items)]
        txs = [check_tx(tx_bytes, prefix(i)) for i, (tx_bytes, _) in enumerate(parsed)]
        return many, txs, [(tx.payload["header"], samples) for tx, (_, samples) in zip(txs, parsed, strict=True)]

    def store_all(jobs: list[tuple[dict[str, Any], bytes]]) -> None:
        for header, samples in jobs:
            node.store_offchain("telematics", header["root"], samples)

    @app.post("/v1/telematics", tags=["vehicle data"])
    async def ingest(request: Request, wait: bool = True) -> Response:
        """Batches with their samples: ``{"tx": <the signed telematics.batch transaction>, "samples":
        <base64 of the samples>}``, or ``{"batches": [...]}`` of up to 64 (a fleet gateway sending many
        vehicles' batches at once). The samples are checked against their headers (root, aggregates)
        on the worker processes and stored before the transactions are ordered, so a batch whose header
        lies is refused at the door (422 naming the batch, with the mismatch proof) and nothing of the
        request is committed. The answer is the receipt, or ``{"receipts": [...]}`` in order."""
        from blokauto.api.app import COMMIT_WAIT_S

        raw = await body(request, MAX_INGEST_BODY)
        many, txs, jobs = await run_in_threadpool(prepare, raw)
        prefix = (lambda i: f"batches[{i}]: ") if many else (lambda i: "")
        refusals = await run_in_threadpool(node.run_in_worker, check_samples_many, jobs)
        for i, refusal in enumerate(refusals):
            if refusal is not None:
                code, message, extra = refusal
                raise VerificationError(prefix(i) + message, code=code, extra=extra)
        await run_in_threadpool(store_all, jobs)
        futures = [node.enqueue(tx) for tx in txs]
        pending = [{"tx": tx.hash_hex, "status": "pending"} for tx in txs]
        if not wait:
            return JSONResponse({"receipts": pending} if many else pending[0], status_code=202)
        try:
            receipts = [await asyncio.wait_for(asyncio.wrap_future(f), COMMIT_WAIT_S) for f in futures]
        except TimeoutError:
            return JSONResponse({"receipts": pending} if many else pending[0], status_code=202)
        return JSONResponse({"receipts": receipts} if many else receipts[0])

    @app.get("/v1/telematics/{vin}", tags=["vehicle data"])
    def get_telematics(vin: str, after: Annotated[int, Query(ge=-1)] = -1,
                       limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
                       authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """The vehicle's telematics chain and its batches (root, start, count), oldest first."""
        vin = canonical_vin(vin)
        require_telematics_reader(vin, authorization)
        batches = []
        for key, value in node.store.scan_index("tbatch", f"{vin}|", limit=limit,
                                                after=f"{vin}|{after:012d}" if after >= 0 else ""):
            root, start_ms, count, tx = value.split("|")
            seq = int(key.rsplit("|", 1)[1])
            batches.append({"seq": seq, "root": root, "start_ms": int(start_ms), "count": int(count), "tx": tx,
                            "disputed": node.read_state(f"tdispute/{vin}/{seq}") is not None})
        return {"vin": vin, "chain": node.read_state(f"telem/{vin}"), "batches": batches}

    @app.get("/v1/telematics/{vin}/{seq}", tags=["vehicle data"])
    def get_batch(vin: str, seq: Annotated[int, Path(ge=0)],
                  authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        vin = canonical_vin(vin)
        require_telematics_reader(vin, authorization)
        header = batch_header(vin, seq)
        return {"header": header, "stored": blobs.get("telematics", header["root"]) is not None,
                "dispute": node.read_state(f"tdispute/{vin}/{seq}")}

    @app.get("/v1/telematics/{vin}/{seq}/samples", tags=["vehicle data"])
    def get_samples(vin: str, seq: Annotated[int, Path(ge=0)],
                    authorization: Annotated[str | None, Header()] = None) -> Response:
        """The batch's samples (26 bytes each, big-endian; layout in docs/domains/vehicledata.md)."""
        vin = canonical_vin(vin)
        require_telematics_reader(vin, authorization)
        data = blobs.get("telematics", batch_header(vin, seq)["root"])
        if data is None:
            raise NotFound("the samples have not been uploaded to this node", code="samples_not_stored")
        return Response(data, media_type="application/octet-stream")

    @app.get("/v1/telematics/{vin}/{seq}/samples/{index}", tags=["vehicle data"])
    def get_sample_proof(vin: str, seq: Annotated[int, Path(ge=0)], index: Annotated[int, Path(ge=0)],
                         authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """One sample with its proof against the batch's committed root (its 16-sample leaf and path)."""
        vin = canonical_vin(vin)
        require_telematics_reader(vin, authorization)
        header = batch_header(vin, seq)
        data = blobs.get("telematics", header["root"])
        if data is None:
            raise NotFound("the samples have not been uploaded to this node", code="samples_not_stored")
        if index >= header["count"]:
            raise NotFound(f"the batch has {header['count']} samples", code="unknown_sample")
        proof = telematics.prove_sample(data, index)
        raw = data[index * telematics.SAMPLE_SIZE:(index + 1) * telematics.SAMPLE_SIZE]
        return {"header": header, "proof": proof, "sample": telematics.decode_sample(raw)._asdict()}

    # -- insurance -------------------------------------------------------------------------------

    def require_policy_reader(vin: str, policy: dict[str, Any], authorization: str | None) -> None:
        did, member = reader(authorization)
        if did == vehicle(vin).get("owner") or (member is not None and member["org"] == policy["insurer"]):
            return
        raise deny("a policy")

    @app.get("/v1/policies/{vin}", tags=["vehicle data"])
    def get_policy(vin: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        vin = canonical_vin(vin)
        policy = node.read_state(f"policy/{vin}")
        if policy is None:
            raise NotFound(f"no policy on {vin}", code="no_policy")
        require_policy_reader(vin, policy, authorization)
        return {"policy": policy}

    @app.get("/v1/policies/{vin}/premiums/{period}", tags=["vehicle data"])
    def get_premium(vin: str, period: Annotated[int, Path(ge=0)],
                    authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A closed period's premium with every term explained."""
        vin = canonical_vin(vin)
        policy = node.read_state(f"policy/{vin}")
        premium = node.read_state(f"premium/{vin}/{period}")
        if policy is None or premium is None:
            raise NotFound(f"no premium for period {period} of {vin}", code="no_premium")
        require_policy_reader(vin, policy, authorization)
        return {"premium": premium}

    @app.get("/v1/claims/{claim}", tags=["vehicle data"])
    def get_claim(claim: str, authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """A claim, linked to its crash record and the vehicle's state at the time."""
        if not HEX64.fullmatch(claim):
            raise InputError("a claim id is 64 lowercase hex digits", code="bad_hash")
        found = node.read_state(f"claim/{claim}")
        if found is None:
            raise NotFound(f"no claim {claim}", code="unknown_claim")
        did, member = reader(authorization)
        insurer_or_authority = member is not None and (
            member["org"] == found["insurer"] or not CRASH_ROLES.isdisjoint(member["roles"]))
        if did != vehicle(found["vin"]).get("owner") and not insurer_or_authority:
            raise deny("a claim")
        return {"claim": found}
