"""One error tree for Blok Auto, split by who is at fault.

Every error the project raises inherits from :class:`BlokError`, so the CLI and the HTTP API
each have exactly one boundary that turns it into a message (CLI) or problem+json (HTTP).
``code`` is stable: clients and tests match on it, never on the message.
"""

from __future__ import annotations

from typing import Any


class BlokError(Exception):
    """Root of every Blok Auto error."""

    code: str = "error"
    http_status: int = 500
    extra: dict[str, Any] | None = None    # problem+json extension members (a mismatch proof, say)

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        if extra is not None:
            self.extra = extra


class InputError(BlokError):
    """The caller sent something malformed: bad JSON, bad encoding, bad signature, bad schema."""

    code = "bad_input"
    http_status = 400


class Rejected(BlokError):
    """A transaction was refused by the ledger's rules (auth, nonce, or a contract)."""

    code = "rejected"
    http_status = 422


class NotFound(BlokError):
    code = "not_found"
    http_status = 404


class Unauthorized(BlokError):
    """A read or operation needs a credential the caller did not present."""

    code = "unauthorized"
    http_status = 401


class VerificationError(BlokError):
    """A proof, signature, checkpoint or stored record failed to verify."""

    code = "verification_failed"
    http_status = 422


class StorageError(BlokError):
    code = "storage_error"
    http_status = 503


class NetworkError(BlokError):
    code = "network_error"
    http_status = 502
