"""The SDK's vehicle-data methods (mixed into :class:`blokauto.client.Client`): what a vehicle's
device sends, and what owners, insurers and regulators read and check."""

from __future__ import annotations

from typing import Any

from blokauto.crypto.keys import b64


class VehicleDataClient:
    """Crash deposits, telematics batches, policies, premiums, claims."""

    # provided by Client
    def _json(self, method: str, path: str, **kwargs: Any) -> Any: ...
    def _request(self, method: str, path: str, **kwargs: Any) -> Any: ...
    def submit(self, tx_type: str, payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]: ...

    # -- the vehicle's side ------------------------------------------------------------------------

    def deposit_crash(self, signed: Any, *, upload: bool = True) -> dict[str, Any]:
        """Deposit a :class:`blokauto.vehicledata.crash.SignedRecord` (this client's key must be the
        vehicle's device key), then upload the full record to the node's off-chain store."""
        vin = self._vin_of(signed)
        receipt = self.submit("crash.deposit", {"vin": vin, "record_hash": signed.record_hash,
                                                "signature": b64(signed.signature), "summary": signed.summary})
        if upload and receipt.get("status") == "ok":
            self.upload_crash_record(signed.record_hash, signed.record)
        return receipt

    @staticmethod
    def _vin_of(signed: Any) -> str:
        from blokauto.vehicledata.crash import decode_record

        return decode_record(signed.record).vin

    def upload_crash_record(self, record_hash: str, record: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self._json("PUT", f"/v1/crash/{record_hash}/record", content=record,
                                            headers={"Content-Type": "application/json"})
        return result

    def send_telematics(self, header: Any, samples: bytes, *, upload: bool = True) -> dict[str, Any]:
        """Commit a sealed batch (:func:`blokauto.vehicledata.telematics.seal_batch`) and upload its samples."""
        from blokauto.vehicledata.telematics import header_to_dict

        receipt = self.submit("telematics.batch", {"header": header_to_dict(header)})
        if upload and receipt.get("status") == "ok":
            self.upload_samples(header.vin, header.seq, samples)
        return receipt

    def upload_samples(self, vin: str, seq: int, samples: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self._json("PUT", f"/v1/telematics/{vin}/{seq}/samples", content=samples,
                                            headers={"Content-Type": "application/octet-stream"})
        return result

    # -- readers -------------------------------------------------------------------------------

    def crash(self, record_hash: str, *, proof: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/crash/{record_hash}", params={"proof": "1" if proof else "0"})
        return result

    def crash_record(self, record_hash: str) -> Any:
        """Fetch a crash record and check it, here, against the deposit the ledger holds: returns
        the parsed :class:`CrashRecord`; any altered byte raises ``VerificationError``."""
        from blokauto.vehicledata.crash import verify_deposit

        deposit = self.crash(record_hash)["deposit"]
        data = self._request("GET", f"/v1/crash/{record_hash}/record").content
        return verify_deposit(data, deposit["signature"], deposit["device"], record_hash, deposit["summary"],
                              brake_window_ms=deposit["summary"]["brake_window_ms"])

    def crashes(self, vin: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", f"/v1/vehicles/{vin}/crashes")["crashes"]
        return result

    def telematics(self, vin: str, *, after: int = -1, limit: int = 100) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/telematics/{vin}", params={"after": after, "limit": limit})
        return result

    def samples(self, vin: str, seq: int) -> bytes:
        data: bytes = self._request("GET", f"/v1/telematics/{vin}/{seq}/samples").content
        return data

    def sample(self, vin: str, seq: int, index: int) -> dict[str, Any]:
        """One sample, its proof checked here against the committed header (raises if it fails)."""
        from blokauto.vehicledata.telematics import header_from_dict, verify_sample

        answer: dict[str, Any] = self._json("GET", f"/v1/telematics/{vin}/{seq}/samples/{index}")
        header = header_from_dict({k: v for k, v in answer["header"].items() if k != "tx"})
        answer["sample"] = verify_sample(header, answer["proof"])._asdict()    # what the proof shows, not the node
        return answer

    def policy(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/policies/{vin}")["policy"]
        return result

    def premium(self, vin: str, period: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/policies/{vin}/premiums/{period}")["premium"]
        return result

    def claim(self, claim: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/claims/{claim}")["claim"]
        return result
