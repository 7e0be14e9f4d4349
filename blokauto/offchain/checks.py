"""Is an off-chain item the one the ledger committed to? Pure checks, run on the node's worker
processes (so they return the refusal rather than raise it: a pickled error loses its code)."""

from __future__ import annotations

from typing import Any

from blokauto.errors import InputError, VerificationError
from blokauto.vehicledata import crash as edr
from blokauto.vehicledata import telematics

Refusal = tuple[str, str, dict[str, Any]]


def check_crash_record(deposit: dict[str, Any], data: bytes) -> Refusal | None:
    """The record is byte for byte what the device signed, and the deposited summary derives from it."""
    try:
        edr.verify_deposit(data, deposit["signature"], deposit["device"], deposit["record_hash"], deposit["summary"],
                           brake_window_ms=deposit["summary"]["brake_window_ms"])
    except (VerificationError, InputError) as exc:
        return exc.code, exc.message, {}
    return None


def check_samples(header: dict[str, Any], data: bytes) -> Refusal | None:
    """The samples hash to the committed root and give the committed aggregates; when the device's
    header lies, the refusal carries a sample-level ``mismatch_proof``. ``header`` was signature-checked
    already (a submitted transaction's, or a committed one), so it is not checked again here."""
    parsed = telematics.header_from_dict({k: v for k, v in header.items() if k != "tx"})
    try:
        telematics.verify_batch(parsed, data, check_signature=False)
    except (VerificationError, InputError) as exc:
        extra: dict[str, Any] = {}
        if exc.code not in ("root_mismatch", "count_mismatch", "bad_length"):   # the device's own lie: prove it
            extra["mismatch_proof"] = telematics.prove_mismatch(parsed, data)
        return exc.code, exc.message, extra
    return None


def check_samples_many(jobs: list[tuple[dict[str, Any], bytes]]) -> list[Refusal | None]:
    """:func:`check_samples` for several batches in one trip to a worker process."""
    return [check_samples(header, data) for header, data in jobs]
