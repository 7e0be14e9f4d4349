"""Python SDK: sign and submit transactions, read receipts and proofs, verify them offline.

Every HTTP problem answer is raised as a :class:`BlokError` carrying the node's stable code,
so SDK users handle the same error family as the node itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import httpx

from blokauto.client.software import SoftwareClient
from blokauto.client.vehicledata import VehicleDataClient
from blokauto.crypto.keys import DOMAIN_AUTH, Signer, auth_message, b64
from blokauto.errors import BlokError, NetworkError
from blokauto.ledger import proofs
from blokauto.ledger.tx import sign_tx


class Client(SoftwareClient, VehicleDataClient):
    def __init__(self, url: str, key: Signer | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._chain: str | None = None
        self._nonce: int | None = None
        self._lock = threading.Lock()
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {}) or {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise NetworkError(f"{method} {self.url}{path}: {exc}", code="unreachable") from None
        if response.status_code >= 400:
            raise_problem(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    @property
    def chain(self) -> str:
        if self._chain is None:
            self._chain = str(self.status()["chain"])
        return self._chain

    def _require_key(self) -> Signer:
        if self.key is None:
            raise BlokError("this call needs a signing key: Client(url, key=...)", code="no_key", http_status=400)
        return self.key

    # -- transactions ---------------------------------------------------------------------------

    def next_nonce(self) -> int:
        key = self._require_key()
        with self._lock:
            if self._nonce is None:
                self._nonce = int(self._json("GET", f"/v1/accounts/{key.did}/nonce")["next"]) - 1
            self._nonce += 1
            return self._nonce

    def build(self, tx_type: str, payload: dict[str, Any], *, cosigners: Sequence[Signer] = (),
              nonce: int | None = None) -> bytes:
        """Sign a transaction with this client's key (and cosigners' keys) without sending it."""
        key = self._require_key()
        return sign_tx(self.chain, tx_type, key, nonce if nonce is not None else self.next_nonce(), payload,
                       cosigners)

    def submit(self, tx_type: str, payload: dict[str, Any], *, cosigners: Sequence[Signer] = (),
               wait: bool = True) -> dict[str, Any]:
        """Sign, submit and (by default) wait for the receipt of the committed block."""
        try:
            return self.submit_raw(self.build(tx_type, payload, cosigners=cosigners), wait=wait)
        except BlokError as exc:
            if exc.code == "stale_nonce":
                with self._lock:
                    self._nonce = None  # resynchronise with the node on the next call
            raise

    def submit_raw(self, raw: bytes, *, wait: bool = True) -> dict[str, Any]:
        response = self._request("POST", "/v1/tx", params={"wait": str(wait).lower()}, content=raw,
                                 headers={"Content-Type": "application/json"})
        result: dict[str, Any] = response.json()
        return result

    def tx(self, tx_hash: str) -> dict[str, Any]:
        """Receipt, transaction and inclusion proof."""
        result: dict[str, Any] = self._json("GET", f"/v1/tx/{tx_hash}")
        return result

    # -- proofs ---------------------------------------------------------------------------------

    def checkpoint(self) -> str:
        return self._request("GET", "/v1/checkpoint").text

    def checkpoint_keys(self) -> tuple[list[str], int]:
        response = self._request("GET", "/v1/checkpoint/keys")
        keys = [line for line in response.text.splitlines() if line.strip()]
        return keys, int(response.headers.get("X-Checkpoint-Quorum", "1"))

    def consistency(self, size1: int, size2: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/proof/consistency", params={"from": size1, "to": size2})
        return result

    def block(self, height: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/blocks/{height}")
        return result

    def state(self, key: str, *, proof: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/state/{key}", params={"proof": "1" if proof else "0"})
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/status")
        return result

    def verify_tx(self, tx_hash: str, keys: Sequence[str] | None = None, quorum: int | None = None) -> dict[str, Any]:
        """Fetch a record and check its proof locally; returns the proven leaf.

        Pass the consortium's checkpoint ``keys`` you trust; without them the node's own list is
        used (trust on first use), which proves consistency, not independence.
        """
        if keys is None:
            keys, node_quorum = self.checkpoint_keys()
            quorum = quorum or node_quorum
        record = self.tx(tx_hash)
        return proofs.verify_record_proof(record["proof"], keys, quorum or 1, origin=self.chain)

    # -- vehicles -------------------------------------------------------------------------------

    def vehicles(self, *, after: str = "", limit: int = 50, **filters: str | int) -> dict[str, Any]:
        """A page of registered vehicles (member token): filters maker, model, year, status, ..."""
        result: dict[str, Any] = self._json("GET", "/v1/vehicles", params={"after": after, "limit": limit, **filters})
        return result

    def vehicle(self, vin: str, *, proof: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/vehicles/{vin}", params={"proof": "1" if proof else "0"})
        return result

    def vehicle_summary(self, vin: str) -> dict[str, Any]:
        """The public VIN check (no token needed)."""
        result: dict[str, Any] = self._json("GET", f"/v1/vehicles/{vin}/summary")
        return result

    def vehicle_report(self, vin: str, *, format: str = "json", share: str | None = None) -> Any:
        """The report bundle (a dict), or the HTML page (str) or the PDF (bytes)."""
        params = {"format": format, **({"share": share} if share else {})}
        response = self._request("GET", f"/v1/vehicles/{vin}/report", params=params)
        if format == "json":
            return response.json()
        return response.text if format == "html" else response.content

    def verify_vehicle_report(self, vin: str, keys: Sequence[str] | None = None, quorum: int | None = None,
                              share: str | None = None) -> Any:
        """Fetch a report bundle and check it locally (see :meth:`verify_tx` about ``keys``)."""
        from blokauto.reports.bundle import verify_bundle

        if keys is None:
            keys, node_quorum = self.checkpoint_keys()
            quorum = quorum or node_quorum
        return verify_bundle(self.vehicle_report(vin, share=share), keys, quorum or 1, origin=self.chain)

    def share_link(self, vin: str, *, valid_ms: int, now_ms: int | None = None) -> str:
        """An expiring link to the vehicle's full report, signed offline by this client's key (the owner's)."""
        import time

        from blokauto.reports.share import MAX_SHARE_MS, make_share_token

        if not 0 < valid_ms <= MAX_SHARE_MS:
            raise BlokError("a share link lasts between 1 ms and 90 days", code="bad_share_validity", http_status=400)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        token = make_share_token(self._require_key(), self.chain, vin, now + valid_ms)
        return f"{self.url}/v1/shared/{token}"

    # -- parts and recalls ----------------------------------------------------------------------

    def register_parts(self, *, part_number: str, lot: str, plant: str, produced_ms: int, serials: Sequence[str],
                       passports: Sequence[dict[str, Any]] | None = None,
                       materials: Sequence[dict[str, Any]] = (), wait: bool = True) -> dict[str, Any]:
        """Register a batch of parts under the Merkle root this client computes (``part.register_batch``)."""
        from blokauto.contracts.parts import compute_batch_root

        payload: dict[str, Any] = {"part_number": part_number, "lot": lot, "plant": plant,
                                   "produced_ms": produced_ms, "serials": list(serials),
                                   "root": compute_batch_root(part_number, list(serials),
                                                              None if passports is None else list(passports))}
        if passports is not None:
            payload["passports"] = list(passports)
        if materials:
            payload["materials"] = list(materials)
        return self.submit("part.register_batch", payload, wait=wait)

    def part(self, serial: str) -> dict[str, Any]:
        """The authenticity check of a serial (no token needed; a member token adds the VIN it is in)."""
        result: dict[str, Any] = self._json("GET", f"/v1/parts/{serial}")
        return result

    def part_history(self, serial: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/parts/{serial}/history")
        return result

    def part_certificate(self, serial: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/parts/{serial}/certificate")
        return result

    def verify_part(self, serial: str, keys: Sequence[str] | None = None, quorum: int | None = None) -> Any:
        """Fetch a part's certificate and check it locally (see :meth:`verify_tx` about ``keys``)."""
        from blokauto.reports.parts import verify_certificate

        if keys is None:
            keys, node_quorum = self.checkpoint_keys()
            quorum = quorum or node_quorum
        return verify_certificate(self.part_certificate(serial), keys, quorum or 1)

    def recalls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/recalls")["campaigns"]
        return result

    def recall(self, campaign: str, *, vehicles: bool = False) -> dict[str, Any]:
        """A campaign and its figures; ``vehicles`` lists the affected vehicles and their owners' keys."""
        result: dict[str, Any] = self._json("GET", f"/v1/recalls/{campaign}",
                                            params={"vehicles": "1" if vehicles else "0"})
        return result

    def vehicle_recalls(self, vin: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", f"/v1/vehicles/{vin}/recalls")["recalls"]
        return result

    # -- authentication -------------------------------------------------------------------------

    def login(self) -> str:
        """Sign a challenge with this client's key; later reads carry the bearer token."""
        key = self._require_key()
        challenge = self._json("POST", "/v1/auth/challenge")["challenge"]
        signature = key.sign(DOMAIN_AUTH, auth_message(self.chain, challenge, key.did))
        issued = self._json("POST", "/v1/auth/token",
                            json={"did": key.did, "challenge": challenge, "signature": b64(signature)})
        self._token = str(issued["token"])
        return self._token


def raise_problem(response: httpx.Response) -> None:
    try:
        body = response.json()
        code, detail = str(body.get("code", "http_error")), str(body.get("detail", response.text))
    except ValueError:
        code, detail = "http_error", response.text[:300]
    raise BlokError(detail, code=code, http_status=response.status_code)
