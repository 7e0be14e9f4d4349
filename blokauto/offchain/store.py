"""The off-chain store: data too personal or too large for the ledger, kept beside it.

Full crash records and telematics samples live here, one file per item, named by the commitment
the ledger holds (a record's SHA-256, a batch's Merkle root). Nothing is stored unless it matches
its commitment (the API checks before :meth:`BlobStore.put`), and every reader checks again, so a
node operator who edits a file is caught by anybody who reads it. Erasure (a GDPR request)
deletes the file; the ledger keeps only the commitment, which reveals nothing.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from blokauto.errors import InputError

KINDS = frozenset({"crash", "telematics"})
_NAME = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Files under ``<data dir>/offchain/<kind>/<first two hex>/<commitment>``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, kind: str, name: str) -> Path:
        if kind not in KINDS or not _NAME.fullmatch(name):
            raise InputError(f"no off-chain item {kind}/{name[:80]}", code="bad_blob_name")
        return self.root / kind / name[:2] / name

    def put(self, kind: str, name: str, data: bytes) -> bool:
        """Store ``data``; False when the same item is already stored (stores are idempotent)."""
        path = self._path(kind, name)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def get(self, kind: str, name: str) -> bytes | None:
        path = self._path(kind, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def erase(self, kind: str, name: str) -> bool:
        """Delete an item for good (its commitment stays on the ledger, proving nothing about it)."""
        path = self._path(kind, name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
