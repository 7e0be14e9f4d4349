"""Anchors: a member proves a document (an invoice, a PDF inspection sheet) existed unchanged.

Only the SHA-256 digest goes on chain; the document stays with its holder, who later shows
the document and the anchor's inclusion proof.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from blokauto.contracts.registry import Payload, contract
from blokauto.ledger.state import MEMBER, Context, require


class Anchor(Payload):
    digest: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""


@contract("notary.anchor", payload=Anchor, roles={MEMBER})
def anchor(ctx: Context, p: Anchor) -> None:
    """Record that a document with this SHA-256 digest existed at this height."""
    key = f"notary/{p.digest}"
    existing = ctx.get(key)
    require(existing is None, "already_anchored",
            f"digest already anchored at height {existing and existing['height']}")
    ctx.put(key, {"kind": p.kind, "label": p.label, "by": ctx.signer, "org": ctx.org, "height": ctx.height,
                  "time_ms": ctx.time_ms})
    ctx.emit("anchored", digest=p.digest, kind=p.kind)
